"""Fan-out and join: an uploaded video fans out to three parallel steps; the orchestrator
waits for all three completion events of each video, matched by correlation id.

The orchestrator publishes one job per video to `video.uploaded` with a `correlation_id`
header (the video id). Transcode, thumbnail and captions are separate consumer groups, so
each gets every job and they run in parallel. Each step publishes a completion event to
`video.step-completed` with the same correlation id; the orchestrator reads that topic and
marks a video live once all three of its steps reported.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import defaultdict

from logstore import Consumer, Producer
from logstore.examples._common import Deadline, create_topics, finish, run_id, say
from logstore.patterns import headers as h

STEPS = {"transcode": 0.06, "thumbnail": 0.02, "captions": 0.04}  # seconds of "work"
VIDEOS = ["abc123", "def456"]


def step_worker(
    step: str, bootstrap: str, jobs: str, events: str, deadline: Deadline, stop: threading.Event
) -> None:
    with (
        Consumer(
            bootstrap,
            group_id=f"{step}.{jobs}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        ) as consumer,
        Producer(bootstrap, linger_ms=0) as producer,
    ):
        consumer.subscribe([jobs])
        while not stop.is_set() and not deadline.passed():
            records = consumer.poll(timeout=0.1)
            for record in records:
                job = json.loads(record.value or b"{}")
                time.sleep(STEPS[step])
                say(f"  {step:>9}: done for {job['video_id']}")
                event = {"event": f"{step}.complete", "video_id": job["video_id"]}
                producer.send(
                    events,
                    json.dumps(event).encode(),
                    key=record.key,
                    headers={
                        h.CORRELATION_ID: h.header(record.headers, h.CORRELATION_ID),
                        "step": step.encode(),
                    },
                ).result()
            if records:
                consumer.commit()


def main(args: argparse.Namespace) -> bool:
    suffix = run_id()
    jobs, events = f"video.uploaded.{suffix}", f"video.step-completed.{suffix}"
    create_topics(args.bootstrap_server, {jobs: 2, events: 1})
    deadline = Deadline(args.timeout)
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=step_worker, args=(s, args.bootstrap_server, jobs, events, deadline, stop)
        )
        for s in STEPS
    ]
    completed: dict[str, set[str]] = defaultdict(set)
    live: list[str] = []
    with Consumer(args.bootstrap_server, auto_offset_reset="earliest") as orchestrator:
        orchestrator.assign([(events, 0)])
        for worker in workers:
            worker.start()
        with Producer(args.bootstrap_server, linger_ms=0) as producer:
            for video in VIDEOS:
                job = {"video_id": video, "s3_path": f"s3://uploads/raw/{video}.mp4"}
                headers = {h.CORRELATION_ID: video.encode()}
                producer.send(jobs, json.dumps(job).encode(), key=video.encode(), headers=headers)
            producer.flush()
        say(f"orchestrator: published {len(VIDEOS)} upload jobs, waiting for {sorted(STEPS)}")
        while len(live) < len(VIDEOS) and not deadline.passed():
            for record in orchestrator.poll(timeout=0.2):
                video = h.header_str(record.headers, h.CORRELATION_ID) or ""
                completed[video].add(h.header_str(record.headers, "step") or "")
                if completed[video] == set(STEPS) and video not in live:
                    live.append(video)
                    say(f"orchestrator: all steps done for {video}: video is live")
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    return sorted(live) == sorted(VIDEOS)


if __name__ == "__main__":
    finish(main, __doc__ or "")

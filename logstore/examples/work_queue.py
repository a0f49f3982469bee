"""Competing consumers: three workers in one group share the partitions of `tasks`.

Each partition belongs to one worker at a time, so each task is done by exactly one
worker, and adding workers (up to the partition count) adds throughput. The workers join
first; once the group has shared out the four partitions, twelve tasks are queued.
"""

from __future__ import annotations

import argparse
import threading
from collections import Counter

from logstore import Consumer, Producer
from logstore.examples._common import Deadline, create_topics, finish, run_id, say, wait_for

WORKERS = 3
PARTITIONS = 4
TASKS = 12


def work(
    name: str,
    bootstrap: str,
    topic: str,
    deadline: Deadline,
    owned: dict[str, int],
    done: list[tuple[str, str]],
    lock: threading.Lock,
) -> None:
    with Consumer(
        bootstrap,
        group_id=f"workers.{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=200,
    ) as consumer:
        consumer.subscribe([topic])
        while not deadline.passed():
            with lock:
                if len(done) >= TASKS:
                    break
            records = consumer.poll(timeout=0.1)
            owned[name] = len(consumer.assignment())
            for record in records:
                task = (record.value or b"").decode()
                with lock:
                    done.append((name, task))
                say(f"  {name}: resized {task} (partition {record.partition})")
            if records:
                consumer.commit()  # done before the next poll, where a rebalance may move it


def main(args: argparse.Namespace) -> bool:
    topic = f"tasks.{run_id()}"
    create_topics(args.bootstrap_server, {topic: PARTITIONS})
    deadline = Deadline(args.timeout)
    owned: dict[str, int] = {}
    done: list[tuple[str, str]] = []
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=work,
            args=(f"worker-{n}", args.bootstrap_server, topic, deadline, owned, done, lock),
        )
        for n in range(1, WORKERS + 1)
    ]
    for thread in threads:
        thread.start()
    shared = wait_for(
        lambda: len(owned) == WORKERS and all(owned.values()) and sum(owned.values()) == PARTITIONS,
        deadline,
    )
    if not shared:
        say(f"the group did not share out its partitions in time: {owned}")
        return False
    say(f"group shared {PARTITIONS} partitions: {dict(sorted(owned.items()))}")
    with Producer(args.bootstrap_server, linger_ms=0) as producer:
        for n in range(TASKS):
            producer.send(topic, f"image-{n:02d}.jpg".encode(), key=f"img{n}".encode()).result()
    say(f"upload service: queued {TASKS} images")
    for thread in threads:
        thread.join(deadline.left() + 5)
    tasks = Counter(task for _, task in done)
    per_worker = Counter(name for name, _ in done)
    say(f"done per worker: {dict(sorted(per_worker.items()))}")
    once = len(tasks) == TASKS and all(count == 1 for count in tasks.values())
    say(f"every task done exactly once: {once}")
    return once and len(per_worker) == WORKERS


if __name__ == "__main__":
    finish(main, __doc__ or "")

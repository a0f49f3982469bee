"""A consumer-group member in its own process, for tests that kill one outright.

    python group_worker.py BOOTSTRAP GROUP TOPIC OUT_FILE STOP_FILE [CLIENT_ID]

It subscribes to TOPIC as a member of GROUP, and after every poll() that returned records
appends one JSON line per record to OUT_FILE ({"p": partition, "o": offset}), flushes, and
only then commits, so every committed offset is on disk before the commit and a record
can be read twice only if it was written but not committed. Rebalance events are appended
as {"event": "assigned" | "revoked" | "lost", "partitions": [[topic, p], ...]}. It closes
the consumer and exits once STOP_FILE exists, or after RUN_LIMIT_S in any case.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from logstore.client.consumer import Consumer, ConsumerRebalanceListener
from logstore.errors import LogStoreError
from logstore.types import TopicPartition

#: the longest a worker runs (s), so a test that forgets it cannot leave it behind
RUN_LIMIT_S = 120.0
#: the shortest session the coordinator accepts (ms): a killed worker's partitions move soon
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 300
#: small polls, each "processed" for a while before its commit, so a kill lands mid-stream
MAX_POLL_RECORDS = 10
PAUSE_S = 0.02


class EventLog(ConsumerRebalanceListener):
    """Writes rebalance events to the output file, in order with the records."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def _write(self, event: str, partitions: set[TopicPartition]) -> None:
        line = {"event": event, "partitions": sorted(partitions)}
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._write("assigned", assigned)

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._write("revoked", revoked)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._write("lost", lost)


def run(bootstrap: str, group: str, topic: str, out_path: Path, stop: Path, client_id: str) -> None:
    consumer = Consumer(
        bootstrap,
        group_id=group,
        client_id=client_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_records=MAX_POLL_RECORDS,
        fetch_max_wait_ms=100,
    )
    deadline = time.monotonic() + RUN_LIMIT_S
    with out_path.open("a") as out, consumer:
        consumer.subscribe([topic], listener=EventLog(out))
        while not stop.exists() and time.monotonic() < deadline:
            try:
                records = consumer.poll(timeout=0.1)
                if records:
                    for r in records:
                        out.write(json.dumps({"p": r.partition, "o": r.offset}) + "\n")
                    out.flush()  # to the kernel: a kill -9 of this process keeps it
                    # "processing": a kill often lands between reading and committing
                    time.sleep(PAUSE_S)
                    consumer.commit()
            except LogStoreError as exc:  # e.g. a commit refused mid-rebalance: carry on
                print(f"{client_id}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    bootstrap, group, topic, out_file, stop_file, *rest = sys.argv[1:]
    run(bootstrap, group, topic, Path(out_file), Path(stop_file), rest[0] if rest else "worker")

"""Delivery guarantees as consume loops: where the commit sits decides what a crash costs.

| guarantee       | loop                                        | a crash mid-batch ...        |
|-----------------|---------------------------------------------|------------------------------|
| at most once    | poll, commit, then process                  | loses the uncommitted rest   |
| at least once   | poll, process, then commit                  | processes the batch again    |
| effectively once| at least once + idempotent producer + ids   | skips what was processed     |

(the third is `IdempotentConsumer` with a `Producer(enable_idempotence=True)`).

Both loops take a consumer with `enable_auto_commit=False` (auto-commit would commit on
its own schedule, which is neither guarantee) that is already subscribed or assigned, and
stop after `max_records` records or `timeout_s` seconds, whichever comes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from logstore.client.consumer import Consumer
from logstore.types import ConsumerRecord, TopicPartition

Handler = Callable[[ConsumerRecord], object]


def run_at_most_once(
    consumer: Consumer,
    handler: Handler,
    *,
    max_records: int | None = None,
    timeout_s: float = 10.0,
    poll_timeout: float = 0.2,
) -> int:
    """Commit each poll's positions before handling its records; returns how many records
    were handed to `handler`. A handler exception propagates: that record and the rest of
    its poll are never seen again by this group (that is the guarantee's price)."""
    return _loop(consumer, handler, True, max_records, timeout_s, poll_timeout)


def run_at_least_once(
    consumer: Consumer,
    handler: Handler,
    *,
    max_records: int | None = None,
    timeout_s: float = 10.0,
    poll_timeout: float = 0.2,
) -> int:
    """Handle each poll's records, then commit; returns how many were handled. A handler
    exception propagates before the commit, so the failed record (and its poll's earlier
    ones) are delivered again to whoever reads next; this consumer is also rewound to the
    failed record, so calling the loop again retries it."""
    return _loop(consumer, handler, False, max_records, timeout_s, poll_timeout)


def _loop(
    consumer: Consumer,
    handler: Handler,
    commit_first: bool,
    max_records: int | None,
    timeout_s: float,
    poll_timeout: float,
) -> int:
    deadline = time.monotonic() + timeout_s
    handled = 0
    while time.monotonic() < deadline and (max_records is None or handled < max_records):
        limit = None if max_records is None else max_records - handled
        records = consumer.poll(timeout=poll_timeout, max_records=limit)
        if not records:
            continue
        if commit_first:
            consumer.commit()
        for index, record in enumerate(records):
            try:
                handler(record)
            except BaseException:
                if not commit_first:
                    rewind(consumer, records[index:])
                raise
            handled += 1
        if not commit_first:
            consumer.commit()
    return handled


def rewind(consumer: Consumer, unsettled: Sequence[ConsumerRecord]) -> None:
    """Seek each partition of `unsettled` back to its first record there.

    poll() has already moved the positions past every record it returned; after a failure
    mid-batch this makes the same consumer read the unsettled records again, and keeps a
    later `commit()` from committing past them.
    """
    first: dict[TopicPartition, int] = {}
    for record in unsettled:
        tp = (record.topic, record.partition)
        if tp not in first or record.offset < first[tp]:
            first[tp] = record.offset
    owned = consumer.assignment()
    for (topic, partition), offset in first.items():
        if (topic, partition) in owned:
            consumer.seek(topic, partition, offset)


def run_bounded(
    poll_once: Callable[[float], object],
    duration_s: float | None,
    until: Callable[[], bool] | None,
    poll_timeout: float,
) -> None:
    """Call `poll_once(poll_timeout)` until `until()` is true or `duration_s` seconds have
    passed. One of the two is required, so the loop is bounded: the `run()` of every
    worker in this package."""
    if duration_s is None and until is None:
        raise ValueError("give duration_s or until, or call poll_once() in your own loop")
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while not (until is not None and until()):
        if deadline is not None and time.monotonic() >= deadline:
            break
        poll_once(poll_timeout)

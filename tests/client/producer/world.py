"""A producer core without a broker: a RecordAccumulator on a ManualClock, and functions that
play the sender's and the broker's parts."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future

from logstore.client._connection import is_retriable
from logstore.client.producer.accumulator import Batch, Outcome, Partition, RecordAccumulator, Topic
from logstore.client.producer.futures import (
    RecordFuture,
    new_record_future,
    plain_record_future,
    settle,
)
from logstore.client.producer.retry import RetryPolicy
from logstore.clock import ManualClock
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.types import RecordMetadata

NewFuture = Callable[[Batch, int], Future[RecordMetadata]]
#: the broker leading every partition of a World
LEADER = "127.0.0.1:9092"
#: the two ways the producer makes a record's future: a view of its batch, or a plain Future
RECORD_FUTURES: dict[str, NewFuture] = {"view": RecordFuture, "plain": plain_record_future}
#: what a new World's accumulator makes record futures with (the `record_futures` fixture
#: switches it, so the core tests run with each kind whatever this Python supports)
NEW_FUTURE: NewFuture = new_record_future


class World:
    """One topic of `partitions` partitions feeding an accumulator; time moves by hand."""

    def __init__(
        self,
        partitions: int = 1,
        *,
        batch_size: int = 1_000,
        linger_ms: float = 10,
        buffer_memory: int = 1_000_000,
        max_in_flight: int = 5,
        max_request_size: int = 1_000_000,
        delivery_timeout_ms: float = 10_000,
        acks: int = -1,
        producer_id: int = 1_000,
    ) -> None:
        self.clock = ManualClock()
        self.wakes = 0
        self.freed = 0
        self.retry = RetryPolicy(
            backoff_ms=100,
            backoff_max_ms=1_000,
            delivery_timeout_ms=delivery_timeout_ms,
            acks=acks,
            is_retriable=is_retriable,
            uniform=lambda low, high: 1.0,  # no jitter: deadlines are exact
        )
        self.acc = RecordAccumulator(
            batch_size=batch_size,
            linger_ms=linger_ms,
            buffer_memory=buffer_memory,
            max_in_flight=max_in_flight,
            max_request_size=max_request_size,
            codec=fmt.CODEC_NONE,
            retry=self.retry,
            clock=self.clock,
            wake=self._wake,
            space_freed=self._freed,
        )
        self.topic = Topic("t")
        self.topic.partitions = [
            Partition(self.topic, p, producer_id, 0) for p in range(partitions)
        ]
        for part in self.topic.partitions:
            part.leader = LEADER
        self.acc.new_future = NEW_FUTURE
        #: every record's future, in append order
        self.futures: list[Future[RecordMetadata]] = []
        self._values = itertools.count()

    def _wake(self) -> None:
        self.wakes += 1

    def _freed(self) -> None:
        self.freed += 1

    @property
    def now(self) -> int:
        return self.clock.monotonic_ms()

    def part(self, p: int = 0) -> Partition:
        return self.topic.partitions[p]

    def append(self, p: int = 0, value: bytes | None = None, size: int = 100) -> Batch:
        """Append one record (a fresh numbered value unless given) of `size` bytes; return
        the batch it went to (its future is the last of `futures`)."""
        if value is None:
            value = b"%d" % next(self._values)
        part = self.part(p)
        record = (None, value, None, 1_000)
        self.futures.append(self.acc.append(part, record, size))
        # The record went to the open batch, which stays open or, once full, is closed last.
        batch = part.open if part.open is not None else part.closed[-1]
        assert batch.records[-1] is record
        return batch

    def encode_due(self, force: bool = False) -> None:
        """What the sender does first in a round: close what is due, encode, queue."""
        if force:
            self.acc.forcing += 1
        try:
            for part in self.acc.close_due(self.now):
                batches = self.acc.take_closed(part)
                for batch in batches:
                    self.acc.encode(batch)
                self.acc.queue_ready(part, batches)
        finally:
            if force:
                self.acc.forcing -= 1

    def drain(self, slots: int = 5, leader: str = LEADER) -> list[list[Batch]]:
        return self.acc.drain(self.now, slots, leader)

    def ack(self, batch: Batch, base_offset: int = 0) -> Outcome | None:
        return self.acc.answered(batch, None, base_offset, -1, self.now)

    def fail(self, batch: Batch, error: Exception) -> Outcome | None:
        return self.acc.answered(batch, error, -1, -1, self.now)  # type: ignore[arg-type]

    def finish(self, outcomes: list[Outcome]) -> None:
        """What the sender does with outcomes: settle their futures, then mark them done."""
        for outcome in outcomes:
            settle(outcome)
        self.acc.finished([outcome.batch for outcome in outcomes])


def values_of(batch: Batch) -> list[bytes | None]:
    """The record values an encoded batch carries, decoded from its bytes."""
    return [r.value for r in rb.decode_batch(batch.data).records]


def header_of(batch: Batch) -> rb.BatchHeader:
    return rb.validate_batch(batch.data)

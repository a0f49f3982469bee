"""The producer's I/O-free core: records gathered into per-partition batches, and each
batch's way from the first append to the broker's answer.

A batch is, in turn: open (records are appended), closed (`batch_size` reached, linger up,
or forced), encoded (its bytes and sequence fixed), ready (queued for a request), in flight,
and claimed (its outcome decided, buffer space released). A retriable failure puts it back
in its partition's ready queue, in sequence order.

`RecordAccumulator` decides everything here (what is closed, what may be sent and in which
requests, what a failure means) and does no I/O: the caller holds one lock around every
call, passes the time in, and is told about work through two callbacks (`wake`: the sender
has something new; `space_freed`: buffer space came back). Sizes are in bytes (estimated
before compression), times in ms of the injected clock's monotonic reading.
"""

from __future__ import annotations

import itertools
import operator
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, NamedTuple

from logstore import errors
from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec.partitioner import StickyPartitioner
from logstore.types import Headers, RecordMetadata

from .futures import PENDING, BatchGroup, new_record_future
from .retry import RetryPolicy, Verdict
from .sequences import PartitionSequence

if TYPE_CHECKING:
    from .futures import RecordFuture

#: Bytes a record adds to its key, value and headers inside a batch (length, attributes,
#: timestamp and offset deltas, key/value lengths, header count): a typical upper bound.
#: `batch_size` and `buffer_memory` are measured with this estimate, before compression.
RECORD_OVERHEAD_BYTES = 16
#: bytes a header adds to its name and value (two length varints)
HEADER_OVERHEAD_BYTES = 2
#: the longest the sender sleeps while anything is unfinished, so expiry is noticed (ms)
MAX_IDLE_WAIT_MS = 500

_new_tuple = tuple.__new__  # skips NamedTuple.__new__'s Python frame
_timestamp_of = operator.itemgetter(3)
_by_order = operator.attrgetter("order")


def _nothing() -> None:
    pass


def _probe(part: Partition) -> Batch | None:
    """The partition's first queued batch of unknown fate (see `Batch.unresolved`), if any."""
    return next((b for b in part.ready if b.unresolved and not b.claimed), None)


class Outcome(NamedTuple):
    """How a claimed batch ends: acknowledged at `base_offset`, or failed with `error`."""

    batch: Batch
    base_offset: int
    log_append_time: int
    error: BaseException | None


class Batch:
    """Records bound for one partition, from the first append to the broker's answer.

    Invariants: `records` grows only while the batch is its partition's open batch; after
    encoding only their `timestamps` (ms) are kept. `data` is set once when the batch is
    encoded, changes only when a sequence reset re-stamps it, and is dropped when the batch
    ends. `size` bytes of buffer_memory are released exactly once, when `claimed` turns
    True; `done` turns True after the futures are finished (`state` FINISHED, with
    `base_offset`/`log_append_time` or `error`). `order` increases with encode order, so
    sorting a partition's batches by it restores sequence order. `created` is in ms.
    `unresolved` is True while the broker may or may not hold the batch (an attempt ended
    without a definite answer): such a batch keeps its producer id and sequence until an
    answer says which, so a sequence reset never appends it a second time.
    """

    __slots__ = (
        "attempts",
        "base_offset",
        "base_seq",
        "claimed",
        "condition",
        "created",
        "data",
        "done",
        "error",
        "group",
        "group_index",
        "last_error",
        "log_append_time",
        "order",
        "part",
        "plain",
        "record_count",
        "records",
        "size",
        "solo",
        "state",
        "timestamps",
        "unresolved",
        "watched",
    )

    def __init__(self, part: Partition, created: float) -> None:
        self.part = part
        self.created = created
        self.records: list[rb.RecordInput] = []
        self.condition = threading.Condition()
        self.state = PENDING
        self.error: BaseException | None = None
        self.base_offset = -1
        self.log_append_time = fmt.NO_TIMESTAMP
        self.watched: dict[RecordFuture, None] = {}
        #: the records' own futures where `RecordFuture` views cannot be used (by index)
        self.plain: list[tuple[int, Future[RecordMetadata]]] | None = None
        self.size = 0
        self.record_count = 0
        self.timestamps: list[int] = []
        self.data = b""
        self.base_seq = fmt.NO_SEQUENCE
        self.order = 0
        self.attempts = 0
        self.last_error = ""
        self.solo = False
        #: an attempt failed in a way that leaves open whether the broker appended it
        self.unresolved = False
        self.claimed = False
        self.done = False
        self.group: BatchGroup | None = None
        self.group_index = 0

    def metadata(self, index: int) -> RecordMetadata:
        """Where record `index` of this acknowledged batch landed (offset -1 with acks=0)."""
        offset = self.base_offset + index if self.base_offset >= 0 else -1
        timestamp = self.log_append_time
        if timestamp == fmt.NO_TIMESTAMP:
            timestamp = self.timestamps[index]
        return _new_tuple(
            RecordMetadata, (self.part.topic.name, self.part.partition, offset, timestamp)
        )


class Partition:
    """One partition's batches on their way: open, closed (to encode), ready, in flight.

    Invariants: `ready` is sorted by `Batch.order`; `inflight` counts this partition's
    batches in requests not yet answered; `sequence` numbers batches as they are encoded
    (under `encode_lock`, so sequence order is queue order). `draining` means a batch
    failed, or the partition moved to another leader, and nothing is sent until `inflight`
    is 0; `reset_pending` means a batch failed for good, so the remaining ones get a fresh
    producer id and sequences from 0 first. `leader` is the address of the broker its
    requests go to (None: not known now, nothing is sent). `retry_at` is in ms.
    """

    __slots__ = (
        "closed",
        "draining",
        "encode_lock",
        "inflight",
        "leader",
        "name",
        "open",
        "partition",
        "ready",
        "reset_pending",
        "retry_at",
        "sequence",
        "topic",
    )

    def __init__(self, topic: Topic, partition: int, producer_id: int, epoch: int) -> None:
        self.topic = topic
        self.partition = partition
        self.name = f"{topic.name}-{partition}"
        self.open: Batch | None = None
        self.closed: list[Batch] = []
        self.ready: deque[Batch] = deque()
        self.inflight = 0
        self.draining = False
        self.reset_pending = False
        self.retry_at = 0.0
        self.sequence = PartitionSequence(producer_id, epoch)
        self.encode_lock = threading.Lock()
        self.leader: str | None = None


class Topic:
    """A topic's partitions as last described by the broker.

    Invariant: `partitions` only grows (partitions keep their sequence state); `sticky` is
    the partition null-key records go to, as the StickyPartitioner last said.
    """

    __slots__ = ("name", "partitions", "stale", "sticky")

    def __init__(self, name: str) -> None:
        self.name = name
        self.partitions: list[Partition] = []
        self.sticky = 0
        self.stale = False


class RecordAccumulator:
    """Every partition's batches, and the decisions about them (caller holds one lock).

    Invariants: `buffered` is the estimated size of every batch not yet claimed (never
    above `buffer_memory` except by one record or send_batch chunk a caller waited for);
    `incomplete` holds every batch whose futures are not finished; a partition is in
    `open_parts` / `closed_parts` / `ready_parts` while it has an open batch / closed
    batches / ready batches (ready_parts may briefly keep an emptied one); `reset_parts`
    holds the partitions with `reset_pending`. At most one batch per partition is in a
    request, and a partition with `inflight == max_in_flight` sends nothing more. A
    request holds batches of partitions with one leader only.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        linger_ms: float,
        buffer_memory: int,
        max_in_flight: int,
        max_request_size: int,
        codec: int,
        retry: RetryPolicy,
        clock: Clock = SYSTEM_CLOCK,
        sticky: StickyPartitioner | None = None,
        wake: Callable[[], None] = _nothing,
        space_freed: Callable[[], None] = _nothing,
    ) -> None:
        self.batch_size = batch_size
        self.linger_ms = linger_ms
        self.buffer_memory = buffer_memory
        self.max_in_flight = max_in_flight
        self.max_request_size = max_request_size
        self.codec = codec
        self.retry = retry
        self.acks = retry.acks
        self.clock = clock
        self.sticky = sticky or StickyPartitioner()
        self.wake = wake
        self.space_freed = space_freed
        self.buffered = 0
        self.incomplete: dict[Batch, None] = {}
        self.open_parts: dict[Partition, None] = {}
        self.closed_parts: dict[Partition, None] = {}
        self.ready_parts: dict[Partition, None] = {}
        self.reset_parts: dict[Partition, None] = {}
        #: flushes in progress plus senders blocked on buffer space: close every open batch
        self.forcing = 0
        #: the producer is closing: every open batch is closed at once, as when forced
        self.closing = False
        self._order = itertools.count()
        #: makes a record's future from (its batch, its index in the batch)
        self.new_future = new_record_future

    # --- appending -------------------------------------------------------------------------

    def append(self, part: Partition, record: rb.RecordInput, size: int) -> Future[RecordMetadata]:
        """Append one record of `size` estimated bytes to the partition's open batch; return
        the record's future. The once-per-record path: keep it short."""
        batch = part.open
        if batch is not None and batch.size + size > self.batch_size and batch.records:
            # as Kafka: a record that does not fit starts the next batch, so a batch
            # outgrows batch_size only when a single record does
            self.close_open(part)
            batch = None
        if batch is None:
            batch = self._open_batch(part)
        records = batch.records
        future = self.new_future(batch, len(records))
        records.append(record)
        batch.size += size
        self.buffered += size
        if batch.size >= self.batch_size:
            self.close_open(part)
        return future

    def _open_batch(self, part: Partition) -> Batch:
        """Start the partition's open batch; its linger time starts now."""
        batch = Batch(part, self.clock.monotonic_ms())
        part.open = batch
        self.incomplete[batch] = None
        self.open_parts[part] = None
        self.wake()  # the sender must learn the new linger deadline
        return batch

    def close_open(self, part: Partition) -> None:
        """Close the partition's open batch, if any: it goes to be encoded."""
        batch = part.open
        if batch is None:
            return
        part.open = None
        del self.open_parts[part]
        part.closed.append(batch)
        self.closed_parts[part] = None
        self.move_sticky(part)
        self.wake()

    def move_sticky(self, part: Partition) -> None:
        """Tell the sticky partitioner `part`'s batch is done, if null keys were going there."""
        meta = part.topic
        if meta.sticky == part.partition:
            count = len(meta.partitions)
            self.sticky.on_new_batch(meta.name, count, part.partition)
            meta.sticky = self.sticky.partition(meta.name, count)

    def close_due(self, now: float) -> list[Partition]:
        """Close every open batch whose linger time is up (all of them while forced); return
        the partitions with closed batches to encode."""
        force = self.forcing or self.closing
        for part in list(self.open_parts):
            batch = part.open
            if batch is None:
                continue
            # As Kafka's accumulator: while an earlier batch still waits for a free
            # in-flight slot, the open one keeps filling, so a short linger_ms under load
            # makes bigger batches instead of a queue of one-record requests.
            backlog = bool(part.ready) or bool(part.closed)
            if force or (now - batch.created >= self.linger_ms and not backlog):
                self.close_open(part)
        return list(self.closed_parts)

    def take_closed(self, part: Partition, take_open: bool = False) -> list[Batch]:
        """The partition's closed batches (with its open one if `take_open`), to encode."""
        if take_open and part.open is not None:
            self.close_open(part)
        batches = part.closed
        part.closed = []
        self.closed_parts.pop(part, None)
        return batches

    # --- encoding (under the partition's encode_lock, not the accumulator's lock) ---------

    def encode(self, batch: Batch) -> None:
        """Encode a closed batch once, with its partition's next sequence."""
        part = batch.part
        records = batch.records
        count = len(records)
        seq = part.sequence.take(count)
        batch.data = rb.encode_batch(
            records,
            codec=self.codec,
            producer_id=part.sequence.producer_id,
            producer_epoch=part.sequence.producer_epoch,
            base_sequence=seq,
        )
        batch.timestamps = list(map(_timestamp_of, records))
        batch.records = []  # the encoded bytes are all the sender needs now
        self._encoded(batch, count, seq)

    def encode_values(
        self,
        batch: Batch,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        headers: list[Headers | None] | None,
        timestamp: int,
    ) -> None:
        """Encode one send_batch chunk, all stamped `timestamp` (ms), into `batch`."""
        part = batch.part
        count = len(values)
        seq = part.sequence.take(count)
        batch.data = rb.encode_values(
            values,
            timestamp,
            keys=keys,
            headers=headers,  # type: ignore[arg-type]
            codec=self.codec,
            producer_id=part.sequence.producer_id,
            producer_epoch=part.sequence.producer_epoch,
            base_sequence=seq,
        )
        self._encoded(batch, count, seq)

    def _encoded(self, batch: Batch, count: int, seq: int) -> None:
        batch.record_count = count
        batch.base_seq = seq
        batch.order = next(self._order)

    def new_chunk_batch(self, part: Partition, size: int, group: BatchGroup) -> Batch:
        """A send_batch chunk's batch of `size` bytes; its buffer space is counted now.

        It is incomplete from now on, as a batch opened by `append`: a flush started while
        the chunk is encoded waits for it, and close() after its timeout claims it.
        """
        batch = Batch(part, self.clock.monotonic_ms())
        batch.size = size
        batch.group = group
        batch.group_index = group.add()
        self.buffered += size
        self.incomplete[batch] = None
        return batch

    def queue_ready(self, part: Partition, batches: list[Batch]) -> None:
        """Hand encoded batches to the sender, after any already queued.

        Batches were registered in `incomplete` when they were created; one claimed while it
        was encoded (close() gave up on it) has ended already and is not queued.
        """
        live = []
        for batch in batches:
            if batch.claimed:
                batch.data = b""  # ended: its futures read nothing from the bytes
            else:
                live.append(batch)
        if not live:
            return
        part.ready.extend(live)
        self.ready_parts[part] = None
        self.wake()

    # --- what to send ----------------------------------------------------------------------

    def expire(self, now: float) -> list[Outcome]:
        """Fail ready batches older than delivery_timeout_ms."""
        outcomes = []
        for part in list(self.ready_parts):
            self._drop_claimed(part)
            while part.ready and self.retry.expired(part.ready[0].created, now):
                batch = part.ready.popleft()
                outcomes.append(self.fail_for_good(batch, self.expired_error(batch, now)))
                self._drop_claimed(part)
        return outcomes

    def expired_error(self, batch: Batch, now: float) -> errors.RequestTimedOutError:
        """The error for a batch given up on: how old it is (ms) and what went wrong last."""
        why = batch.last_error or "it could not be sent"
        return errors.RequestTimedOutError(
            f"{batch.record_count} record(s) for {batch.part.name} expired after "
            f"{now - batch.created:.0f} ms without an acknowledgement (delivery_timeout_ms="
            f"{self.retry.delivery_timeout_ms:.0f}), after {batch.attempts} attempt(s): {why}"
        )

    @staticmethod
    def _drop_claimed(part: Partition) -> None:
        """Forget queued batches that already ended (failed by close())."""
        ready = part.ready
        while ready and ready[0].claimed:
            ready.popleft()

    def sendable(self, part: Partition, now: float) -> bool:
        """Whether the partition's next batch may go out now: not backing off, not waiting
        for a sequence reset, and after a failure only once nothing is in flight, so
        retries keep sequence order."""
        self._drop_claimed(part)
        if not part.ready or now < part.retry_at:
            return False
        if part.reset_pending:
            # Before renumbering, batches of unknown fate are resent as they are, one at a
            # time: the broker answers a copy it holds with its offset, else refuses it.
            return not part.inflight and _probe(part) is not None
        if part.draining:
            if part.inflight:
                return False
            part.draining = False
        return part.inflight < self.max_in_flight

    def ready_leaders(self) -> set[str]:
        """The leaders (addresses) of the partitions with batches ready to send."""
        return {p.leader for p in self.ready_parts if p.ready and p.leader is not None}

    def set_leader(self, part: Partition, leader: str | None) -> None:
        """Send `part`'s batches to `leader` from now on (None: no leader known, send
        nothing). Batches in flight to the previous leader are answered first, so batches
        reach the new leader in sequence order."""
        if part.leader == leader:
            return
        if part.inflight:
            part.draining = True
        part.leader = leader
        if part.ready:
            self.ready_parts[part] = None
            self.wake()

    def drain(self, now: float, slots: int, leader: str | None) -> list[list[Batch]]:
        """Up to `slots` requests' worth of ready batches of the partitions `leader` leads,
        each at most one batch per partition and `max_request_size` bytes; they count as
        in flight from now."""
        requests = []
        while slots > 0:
            batches = self._pick_batches(now, leader)
            if not batches:
                break
            requests.append(batches)
            slots -= 1
        for part in [p for p in self.ready_parts if not p.ready]:
            del self.ready_parts[part]
        return requests

    def _pick_batches(self, now: float, leader: str | None) -> list[Batch]:
        """One request's batches for `leader`: at most one per partition, up to
        max_request_size bytes."""
        batches: list[Batch] = []
        size = 0
        for part in list(self.ready_parts):
            if part.leader != leader or not self.sendable(part, now):
                continue
            if part.reset_pending:
                batch = _probe(part)
                assert batch is not None  # sendable() said so
            else:
                batch = part.ready[0]
            if batches and (batch.solo or size + len(batch.data) > self.max_request_size):
                continue
            if part.reset_pending:
                part.ready.remove(batch)
            else:
                part.ready.popleft()
            if self.acks:
                part.inflight += 1
            batch.attempts += 1
            batches.append(batch)
            size += len(batch.data)
            # Rotate, so the next request starts with partitions this one did not serve.
            del self.ready_parts[part]
            self.ready_parts[part] = None
            if batch.solo:
                break
        return batches

    def next_deadline(self, now: float) -> float | None:
        """When (ms) the sender has something to do on its own; None: only when woken."""
        if not self.incomplete and not self.reset_parts:
            return None
        deadline = now + MAX_IDLE_WAIT_MS
        for part in self.open_parts:
            # a batch held open behind a backlog waits for an answer, which wakes us anyway
            if part.open is not None and not part.ready and not part.closed:
                deadline = min(deadline, part.open.created + self.linger_ms)
        for part in self.ready_parts:
            if part.retry_at > now:
                deadline = min(deadline, part.retry_at)
        if self.closed_parts:  # send_batch held their encode lock: look again soon
            deadline = min(deadline, now + max(self.linger_ms, 5))
        return deadline

    # --- answers ---------------------------------------------------------------------------

    def answered(
        self,
        batch: Batch,
        error: errors.LogStoreError | None,
        base_offset: int,
        log_append_time: int,
        now: float,
    ) -> Outcome | None:
        """The broker answered for an in-flight `batch`: an outcome to finish, or None when
        the batch is retried (or already ended)."""
        batch.part.inflight -= 1
        if batch.claimed:
            return None
        if error is None:
            self.claim([batch])
            return Outcome(batch, base_offset, log_append_time, None)
        return self.failed(batch, error, now)

    def failed(
        self, batch: Batch, error: errors.LogStoreError, now: float, backoff: bool = True
    ) -> Outcome | None:
        """An attempt of `batch` failed: requeue it if it may still succeed, else fail it."""
        part = batch.part
        batch.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, errors.UnknownTopicOrPartitionError):
            part.topic.stale = True  # the next send() describes the topic again
        verdict = self.retry.verdict(error, batch.created, now, part.draining)
        if verdict is Verdict.RETRY:
            # only a sequence refusal proves the broker did not append the batch
            batch.unresolved = not isinstance(error, errors.OutOfOrderSequenceError)
            self.requeue(batch, now, backoff)
            return None
        if verdict is Verdict.EXPIRE:
            return self.fail_for_good(batch, self.expired_error(batch, now))
        return self.fail_for_good(batch, error)

    def fail_for_good(self, batch: Batch, error: BaseException) -> Outcome:
        """Fail `batch`. Its partition then needs new sequences: the broker still expects
        this batch's, so later batches would all be out of order."""
        part = batch.part
        if part.sequence.idempotent:
            part.reset_pending = True
            self.reset_parts[part] = None
        part.draining = True
        self.claim([batch])
        return Outcome(batch, -1, -1, error)

    def requeue(self, batch: Batch, now: float, backoff: bool) -> None:
        """Put `batch` back in its partition's queue, in sequence order."""
        part = batch.part
        part.draining = True
        if backoff:
            part.retry_at = max(part.retry_at, now + self.retry.backoff_ms(batch.attempts))
        ready = part.ready
        ready.append(batch)
        if len(ready) > 1 and ready[-2].order > batch.order:
            part.ready = deque(sorted(ready, key=_by_order))
        self.ready_parts[part] = None

    def lost(self, batches: list[Batch], error: errors.LogStoreError, now: float) -> list[Outcome]:
        """In-flight `batches` whose fate is unknown (the stream broke): each is judged as if
        it had failed with `error`."""
        outcomes = []
        for batch in batches:
            outcome = self.answered(batch, error, -1, -1, now)
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def rejected(
        self, batches: list[Batch], error: errors.LogStoreError, now: float
    ) -> list[Outcome]:
        """The broker refused one whole request of in-flight `batches`. With one batch, that
        batch is at fault; with several, each is retried alone so the next refusal names
        the culprit."""
        if len(batches) == 1:
            return self.lost(batches, error, now)
        for batch in batches:
            batch.part.inflight -= 1
            if not batch.claimed:
                batch.solo = True
                self.requeue(batch, now, backoff=False)
        return []

    def unsent(self, batches: list[Batch], now: float, counted: bool = True) -> None:
        """Queue again, without backoff, batches the broker never read (`counted`: they
        were in flight)."""
        for batch in batches:
            if counted:
                batch.part.inflight -= 1
            if not batch.claimed:
                batch.attempts -= 1  # never reached the broker
                self.requeue(batch, now, backoff=False)

    # --- sequence resets -------------------------------------------------------------------

    def parts_to_reset(self) -> list[Partition]:
        """Partitions waiting for a new producer id with nothing in flight any more and no
        batch of unknown fate left."""
        return [p for p in self.reset_parts if not p.inflight and _probe(p) is None]

    def reset_sequences(self, part: Partition, producer_id: int, producer_epoch: int) -> None:
        """Renumber the partition's unsent batches from 0 under a new producer id, and let
        them go (caller holds the partition's encode_lock too)."""
        if part.inflight or _probe(part) is not None:
            return
        part.ready = deque(b for b in part.ready if not b.claimed)
        seqs = part.sequence.reset(
            producer_id, producer_epoch, (b.record_count for b in part.ready)
        )
        for batch, seq in zip(part.ready, seqs, strict=True):
            data = bytearray(batch.data)
            rb.set_producer_state(data, 0, len(data), producer_id, producer_epoch, seq)
            batch.data = bytes(data)
            batch.base_seq = seq
        part.reset_pending = False
        part.draining = False
        del self.reset_parts[part]
        if part.ready:
            self.ready_parts[part] = None

    # --- ending ----------------------------------------------------------------------------

    def claim(self, batches: list[Batch]) -> list[Batch]:
        """Mark `batches` as ending and release their buffer space; returns those that were
        not claimed before."""
        claimed = []
        for batch in batches:
            if not batch.claimed:
                batch.claimed = True
                self.buffered -= batch.size
                claimed.append(batch)
        if claimed:
            self.space_freed()
        return claimed

    def finished(self, batches: list[Batch]) -> None:
        """The futures of these claimed batches are finished: nothing waits for them now."""
        for batch in batches:
            batch.done = True
            self.incomplete.pop(batch, None)

    def abort(self) -> list[Batch]:
        """Claim every batch not finished yet (close() after its timeout)."""
        for part in list(self.open_parts):
            self.close_open(part)
        return self.claim([b for b in self.incomplete if not b.claimed])

"""Fetch positions: per assigned partition, how far it has been read and fetched.

The I/O-free core the fetcher threads and the application share (under one lock held by
`fetcher.SharedFetchState`): what an assignment change, a seek or a reset does to a
position, which partitions to fetch next, and what a fetch answer may advance. Offsets
are record offsets; sizes are bytes of RecordBatch data as fetched; `now` arguments are
monotonic seconds, passed in so that time is the caller's to choose.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import NamedTuple

from logstore import errors
from logstore.client.consumer.options import MAX_RETRY_BACKOFF_S
from logstore.client.consumer.record_buffer import Chunk, RecordBuffer
from logstore.codec.record_batch import batch_span
from logstore.types import ConsumerRecord, TopicPartition

log = logging.getLogger("logstore.client.consumer")


class PartitionState:
    """How far one assigned partition has been read.

    `position` is what the application sees: the offset after the last record poll()
    returned. `fetch_position` is the next offset the fetcher asks for; records in
    [position, fetch_position) are buffered or being decoded. Both are None while the
    position is unresolved; `strategy` then says how to resolve it ("committed",
    "earliest", "latest" or "error"). `epoch` changes whenever `fetch_position` is moved by
    anything other than the fetcher's own advance, so a fetch sent under an older epoch is
    discarded instead of delivering records from the old position; epochs are unique
    across the positions, so this holds across a revoke and re-assign too. `buffered`
    counts the fetched bytes of this partition not yet drained. A `halted` partition is not
    fetched until the error chunk in the buffer has been raised to the application.
    `missing`: the broker last said the topic or partition does not exist. `leader` is the
    address of the broker the partition is fetched from (None: not known now, so it is not
    fetched); moving it keeps every position, so the next fetch, from the new leader,
    starts where the last accepted answer ended.

    Fetching ahead: while a partition has a backlog (`ahead`: at least one more answer's
    worth of records waited behind the last answer), a second fetch is sent before the
    first is answered, asking the broker to start where the first will end (FetchPartition
    .skip_bytes). An answer is used only from `fetch_position` on: one that starts past it
    (the first fetch ended early, e.g. cut by the response's byte budget) is dropped, so a
    miss costs a round trip, never a record. `inflight` counts this partition's unanswered
    fetches of the current epoch; the oldest always starts at `fetch_position`.
    """

    __slots__ = (
        "ahead",
        "buffered",
        "epoch",
        "failures",
        "fetch_position",
        "halted",
        "high_watermark",
        "inflight",
        "leader",
        "missing",
        "paused",
        "position",
        "reason",
        "retry_at",
        "strategy",
    )

    def __init__(self, strategy: str, epoch: int) -> None:
        self.epoch = epoch
        self.position: int | None = None
        self.fetch_position: int | None = None
        self.strategy: str | None = strategy
        self.reason = ""
        self.buffered = 0
        self.halted = False
        #: set by Consumer.pause(): not fetched, and its buffered records are not returned
        self.paused = False
        self.missing = False
        self.retry_at = 0.0
        self.failures = 0
        self.inflight = 0
        self.ahead = False
        self.high_watermark = -1
        self.leader: str | None = None

    def renew(self, epoch: int) -> None:
        """Start a new epoch: fetches sent before it no longer count for this partition."""
        self.epoch = epoch
        self.forget_fetches()

    def forget_fetches(self) -> None:
        """No fetch of this partition is in flight any more (answered, dropped or cancelled)."""
        self.inflight = 0
        self.ahead = False


def fetchable(state: PartitionState, ahead: bool) -> bool:
    """Whether to fetch `state`'s partition now: from its position when nothing is in
    flight, or (`ahead`) after the one fetch in flight while it has a backlog."""
    if not ahead:
        return state.inflight == 0
    return state.inflight == 1 and state.ahead


class Arrival(NamedTuple):
    """Fetched bytes of one partition, accepted (positions advanced) but not yet decoded."""

    tp: TopicPartition
    epoch: int
    fetch_offset: int
    next_offset: int
    #: bytes of a Fetch answer, or a view of a FetchStream answer
    data: bytes | memoryview


#: (tp, fetch offset, epoch) of a partition to fetch
Planned = tuple[TopicPartition, int, int]


class FetchPositions:
    """The assigned partitions' states and their buffered records.

    Invariants: `states` holds exactly the assigned partitions and `records` only chunks
    of those; a position moves backwards only by `reposition` (seek, reset), and then
    under a new epoch; `fetch_position` moves forward only by an accepted answer of the
    current epoch that starts at or before it. `interrupt` is set whenever a fetch in
    flight may no longer match the assignment or positions. `retriable` tells a transient
    partition error (retried after a backoff) from one raised to the application.
    """

    def __init__(
        self,
        limit: int,
        partition_limit: int,
        *,
        reset_policy: str = "latest",
        retry_backoff_s: float = 0.1,
        retriable: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self.records = RecordBuffer(limit, partition_limit)
        self.states: dict[TopicPartition, PartitionState] = {}
        self.reset_policy = reset_policy
        self.retry_backoff_s = retry_backoff_s
        self.retriable = retriable
        #: set when the in-flight fetch no longer matches the assignment or positions
        self.interrupt = False
        #: False only when every state is known to have a position (a hint for poll())
        self.unresolved = False
        #: assigned partitions the broker says do not exist (see PartitionState.missing)
        self.missing: set[TopicPartition] = set()
        self._rotation = 0
        self._epochs = itertools.count(1)

    def next_epoch(self) -> int:
        return next(self._epochs)

    # --- the application's changes --------------------------------------------------------

    def reposition(
        self, tp: TopicPartition, offset: int | None, strategy: str | None, reason: str = ""
    ) -> None:
        """Move `tp` to `offset` (or make it unresolved with `strategy`), dropping what was
        buffered or in flight for it."""
        state = self.states[tp]
        self.records.purge(tp, state)
        state.renew(self.next_epoch())
        state.position = state.fetch_position = offset
        self.unresolved |= offset is None
        state.strategy = strategy
        state.reason = reason
        state.halted = False
        state.failures = 0
        state.retry_at = 0.0
        self.interrupt = True

    def set_assignment(self, wanted: set[TopicPartition], strategy: str) -> None:
        """Own exactly `wanted`: drop the others (and their records), add new ones
        unresolved with `strategy`; kept partitions keep their positions."""
        for tp in [tp for tp in self.states if tp not in wanted]:
            self.records.purge(tp, self.states.pop(tp))
            self.missing.discard(tp)
        for tp in wanted:
            if tp not in self.states:
                self.states[tp] = PartitionState(strategy, self.next_epoch())
                self.unresolved = True
        self.interrupt = True

    def drain(self, limit: int) -> list[ConsumerRecord]:
        """Up to `limit` buffered records, in offset order per partition (see RecordBuffer)."""
        return self.records.drain(self.states, limit)

    # --- resolving positions --------------------------------------------------------------

    def unresolved_states(self) -> dict[TopicPartition, tuple[int, str, str]]:
        """(epoch, strategy, reason) of each partition without a position, not halted."""
        pending = {
            tp: (s.epoch, s.strategy or self.reset_policy, s.reason)
            for tp, s in self.states.items()
            if s.fetch_position is None and not s.halted
        }
        self.unresolved = bool(pending)
        return pending

    def resolved(
        self, found: dict[TopicPartition, int], pending: dict[TopicPartition, tuple[int, str, str]]
    ) -> bool:
        """Give the partitions in `found` their position, unless they were revoked or
        repositioned since `pending` was taken. True if any position was set."""
        changed = False
        for tp, offset in found.items():
            state = self.states.get(tp)
            if state is None or state.epoch != pending[tp][0] or state.fetch_position is not None:
                continue
            state.position = state.fetch_position = offset
            state.strategy = None
            state.reason = ""
            self.set_missing(tp, state, False)
            changed = True
        if changed:
            self.interrupt = True
        return changed

    def set_missing(self, tp: TopicPartition, state: PartitionState, missing: bool) -> None:
        """Record whether the broker knows `tp` (per its last answer about it)."""
        if state.missing != missing:
            state.missing = missing
            if missing:
                self.missing.add(tp)
            else:
                self.missing.discard(tp)

    # --- planning fetches -----------------------------------------------------------------

    def plan(
        self, now: float, ahead: bool = False, leader: str | None = None
    ) -> tuple[list[Planned], float | None]:
        """(tp, fetch offset, epoch) of each partition to fetch now, and the earliest time a
        backed-off partition becomes fetchable (None if none waits). Counts the fetches as
        sent. `ahead`: only partitions with one fetch in flight and a backlog behind it,
        from where that fetch is expected to end; otherwise only those with none in flight.
        `leader`: only the partitions that broker leads (None: every partition).
        """
        candidates, retry_at = self.candidates(now, self.records.partition_limit, leader)
        ready: list[Planned] = []
        for tp, state in candidates:
            if not fetchable(state, ahead):
                continue
            state.inflight += 1
            ready.append((tp, state.fetch_position, state.epoch))  # type: ignore[arg-type]
        if len(ready) > 1:
            # Rotate so partitions late in the request are not starved by the byte cap.
            self._rotation = (self._rotation + 1) % len(ready)
            ready = ready[self._rotation :] + ready[: self._rotation]
        return ready, retry_at

    def candidates(
        self, now: float, partition_limit: int, leader: str | None = None
    ) -> tuple[list[tuple[TopicPartition, PartitionState]], float | None]:
        """The partitions that may be fetched now (positioned, not halted, paused or backed
        off, under `partition_limit` buffered bytes), whatever is in flight; and the earliest
        time a backed-off partition becomes fetchable (None if none waits). `leader`: only
        the partitions that broker leads (None: every partition)."""
        if self.records.buffered >= self.records.limit:
            return [], None
        ready: list[tuple[TopicPartition, PartitionState]] = []
        retry_at: float | None = None
        for tp, state in self.states.items():
            if state.fetch_position is None or state.halted or state.paused:
                continue
            if leader is not None and state.leader != leader:
                continue
            if state.buffered >= partition_limit:
                continue
            if state.retry_at > now:
                retry_at = state.retry_at if retry_at is None else min(retry_at, state.retry_at)
                continue
            ready.append((tp, state))
        return ready, retry_at

    # --- fetch answers --------------------------------------------------------------------

    def accept(
        self,
        tp: TopicPartition,
        state: PartitionState,
        offset: int,
        error: errors.LogStoreError | None,
        data: bytes | memoryview,
        high_watermark: int,
        now: float,
        ahead: bool,
    ) -> Arrival | None:
        """Take one partition's answer to a fetch from `offset` (or `ahead` of it), sent
        under `state`'s current epoch: advance `fetch_position` past its records (reserving
        their bytes) and return them for decoding, or handle its error. None: nothing to
        decode."""
        if error is not None:
            if ahead:
                state.ahead = False  # left to the fetch from the position, which meets it too
            else:
                self._partition_failed(tp, state, offset, error, now)
            return None
        if not ahead:
            state.failures = 0
        if state.missing:
            self.set_missing(tp, state, False)
        return self._arrival(tp, state, offset, data, high_watermark, ahead)

    def _arrival(
        self,
        tp: TopicPartition,
        state: PartitionState,
        offset: int,
        data: bytes | memoryview,
        high_watermark: int,
        ahead: bool,
    ) -> Arrival | None:
        position = state.fetch_position
        assert position is not None  # set before any fetch of this epoch was sent
        if high_watermark > state.high_watermark:
            state.high_watermark = high_watermark
        span = batch_span(data) if data else None
        if span is None or (ahead and span[0] > position):
            # No records, or records ahead that start past the position: the fetch before
            # this one ended early, so using them would skip records. (A log with a gap in
            # its offsets answers a fetch from the position past it too: that is kept.)
            state.ahead = False
            if data and span is None and not ahead:
                error = errors.CorruptRecordError(
                    f"{tp[0]}-{tp[1]}: fetch at offset {offset} returned {len(data)} bytes "
                    "without one whole record batch"
                )
                self.halt(tp, state, offset, error)
            return None
        first, next_offset = span
        if next_offset <= position:
            return None  # an answer ahead that holds nothing new
        state.fetch_position = next_offset
        # Fetch ahead while at least one more answer's worth of records waits behind this one.
        state.ahead = state.high_watermark - next_offset >= next_offset - first
        self.records.add(state, len(data))
        return Arrival(tp, state.epoch, position, next_offset, data)

    def _partition_failed(
        self,
        tp: TopicPartition,
        state: PartitionState,
        offset: int,
        error: errors.LogStoreError,
        now: float,
    ) -> None:
        missing = isinstance(error, errors.UnknownTopicOrPartitionError)
        self.set_missing(tp, state, missing)
        if isinstance(error, errors.OffsetOutOfRangeError):
            # Kafka semantics: the position left the log (retention, truncation): reset it.
            log.info("%s-%d: %s; resetting per auto_offset_reset", tp[0], tp[1], error)
            self.reposition(tp, None, self.reset_policy, reason=str(error))
        elif missing or self.retriable(error):
            state.failures += 1
            delay = min(self.retry_backoff_s * 2 ** (state.failures - 1), MAX_RETRY_BACKOFF_S)
            state.retry_at = now + delay
            log.debug("%s-%d: fetch failed, retrying in %.2fs: %s", tp[0], tp[1], delay, error)
        else:
            self.halt(tp, state, offset, error)

    def halt(
        self, tp: TopicPartition, state: PartitionState, offset: int, error: errors.LogStoreError
    ) -> None:
        """Stop fetching `tp` at `offset` until `error` has been raised by poll()."""
        self.records.chunks.append(Chunk(tp, [], 0, offset, 0, error))
        state.fetch_position = offset
        state.renew(self.next_epoch())  # a fetch sent from a later offset must not deliver
        state.halted = True

    def deliver(
        self,
        arrival: Arrival,
        records: list[ConsumerRecord],
        skip: int,
        error: errors.LogStoreError | None,
        error_offset: int,
    ) -> bool:
        """Buffer the decoded records of `arrival` (from index `skip`), then halt at
        `error_offset` if decoding met `error`. False if the partition was revoked or
        repositioned while decoding (its bytes were released then)."""
        state = self.states.get(arrival.tp)
        if state is None or state.epoch != arrival.epoch:
            return False
        end = arrival.next_offset if error is None else error_offset
        self.records.chunks.append(Chunk(arrival.tp, records, skip, end, len(arrival.data)))
        if error is not None:
            self.halt(arrival.tp, state, error_offset, error)
        return True

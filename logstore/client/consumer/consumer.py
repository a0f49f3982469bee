"""`Consumer`: reads records from topics, tracks positions and commits them for a group.

Threads and what they own:

- the application thread calls every public method (a consumer is not thread-safe, as in
  Kafka); it resolves starting positions, drains the record buffer and commits;
- one fetcher thread keeps a Fetch in flight for the assigned partitions (and one more
  ahead for partitions with a backlog), decodes the answers into `ConsumerRecord`s and
  appends them to a bounded buffer;
- one commit thread (started on first use) runs `commit_async` requests in order;
- with subscribe(), one heartbeat thread keeps the consumer a member of its group
  (`_GroupMember`): it only talks to the coordinator and records the newest assignment,
  which the application thread applies inside poll(), as Kafka does.

State the application and the fetcher share lives in `_Buffer`, under its lock. Offsets are
record offsets; sizes are bytes of RecordBatch data as fetched; times are seconds unless a
name ends in `_ms`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import operator
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc

from logstore import errors
from logstore.client._connection import (
    ClientSecurity,
    is_retriable,
    make_stub,
    open_channel,
    partition_error,
    resolve_bootstrap,
    translate,
)
from logstore.codec.record_batch import batch_span, decode_all, decode_batch, iter_batches
from logstore.codec.wire import (
    EARLIEST_TIMESTAMP,
    LATEST_TIMESTAMP,
    PartitionAnswer,
    TopicAnswers,
    decode_response,
)
from logstore.types import (
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    TopicPartition,
    check_assignor_name,
)
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)

#: accepted auto_offset_reset values; "none" is Kafka's spelling of "error"
_RESET_POLICIES = frozenset({"earliest", "latest", "error", "none"})
#: strategy of a partition whose position comes from the group's commit, else the policy
_COMMITTED = "committed"
_INT32_MAX = 2**31 - 1
#: the longest wait between retries of a failing request
MAX_RETRY_BACKOFF_S = 1.0
#: fetches the fetcher keeps unanswered: one from the real positions, and one ahead of it
#: while a partition has a backlog (see `_PartitionState`)
MAX_FETCHES_IN_FLIGHT = 2
#: how long close() waits for the fetcher thread and for pending async commits
CLOSE_JOIN_S = 5.0
_OFFSET_OF = operator.itemgetter(2)  # ConsumerRecord.offset, without an attribute lookup

CommitCallback = Callable[[dict[TopicPartition, OffsetAndMetadata], Exception | None], None]
Deserializer = Callable[[bytes], Any]


class ConsumerRebalanceListener:
    """Callbacks around changes of a subscription's assignment; override what you need.

    All run in the application thread, inside `poll()` (and `unsubscribe()` / `close()`).
    In `on_partitions_revoked` the partitions are still owned, so committing their
    positions there works; in `on_partitions_assigned` they are owned, so seeking works.
    In `on_partitions_lost` they may already belong to another member, so they cannot be
    committed.
    """

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called before `revoked` partitions stop being read."""

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Called after `assigned` partitions became owned, before they are read."""

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Called before `lost` partitions stop being read, when the group took them
        without a rebalance (the member was fenced, expired, or left the group because
        poll() stalled). By default the same as `on_partitions_revoked`, as in Kafka."""
        self.on_partitions_revoked(lost)


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    """Validated consumer options (Kafka names in snake_case; sizes in bytes, times in ms)."""

    group_id: str | None
    auto_offset_reset: str
    enable_auto_commit: bool
    auto_commit_interval_ms: int
    max_poll_records: int
    fetch_min_bytes: int
    fetch_max_wait_ms: int
    fetch_max_bytes: int
    max_partition_fetch_bytes: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    max_poll_interval_ms: int
    request_timeout_ms: int
    retry_backoff_ms: int
    metadata_max_age_ms: int
    client_id: str
    group_remote_assignor: str | None

    def validate(self) -> None:
        if self.group_id == "":
            raise errors.InvalidRequestError("group_id must be None or a non-empty string")
        if self.group_remote_assignor is not None:
            check_assignor_name(self.group_remote_assignor)
        if self.auto_offset_reset not in _RESET_POLICIES:
            raise errors.InvalidRequestError(
                f"auto_offset_reset {self.auto_offset_reset!r}: use 'earliest', 'latest' or 'error'"
            )
        for name in (
            "auto_commit_interval_ms",
            "max_poll_records",
            "fetch_max_bytes",
            "max_partition_fetch_bytes",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "max_poll_interval_ms",
            "request_timeout_ms",
            "metadata_max_age_ms",
        ):
            if getattr(self, name) <= 0:
                raise errors.InvalidRequestError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("fetch_min_bytes", "fetch_max_wait_ms", "retry_backoff_ms"):
            if getattr(self, name) < 0:
                raise errors.InvalidRequestError(f"{name} must be >= 0, got {getattr(self, name)}")
        # sent as int32 request fields: a larger value would fail in a background thread
        for name in (
            "fetch_min_bytes",
            "fetch_max_wait_ms",
            "fetch_max_bytes",
            "max_partition_fetch_bytes",
            "session_timeout_ms",
            "max_poll_interval_ms",
        ):
            if getattr(self, name) > _INT32_MAX:
                raise errors.InvalidRequestError(
                    f"{name} must be <= {_INT32_MAX}, got {getattr(self, name)}"
                )

    @property
    def reset_policy(self) -> str:
        return "error" if self.auto_offset_reset == "none" else self.auto_offset_reset


class _Backoff:
    """Exponential retry delay in seconds: base, 2 x base, ... capped at MAX_RETRY_BACKOFF_S."""

    def __init__(self, base_s: float) -> None:
        self._base = max(base_s, 0.001)
        self._next = self._base

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, MAX_RETRY_BACKOFF_S)
        return delay

    def reset(self) -> None:
        self._next = self._base


# --- state shared with the fetcher -----------------------------------------------------------


class _PartitionState:
    """How far one assigned partition has been read.

    `position` is what the application sees: the offset after the last record poll()
    returned. `fetch_position` is the next offset the fetcher asks for; records in
    [position, fetch_position) are buffered or being decoded. Both are None while the
    position is unresolved; `strategy` then says how to resolve it ("committed",
    "earliest", "latest" or "error"). `epoch` changes whenever `fetch_position` is moved by
    anything other than the fetcher's own advance, so a fetch sent under an older epoch is
    discarded instead of delivering records from the old position; epochs are unique
    across the buffer, so this holds across a revoke and re-assign too. `buffered` counts the
    fetched bytes of this partition not yet drained. A `halted` partition is not fetched
    until the error chunk in the buffer has been raised to the application.

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
        self.retry_at = 0.0
        self.failures = 0
        self.inflight = 0
        self.ahead = False
        self.high_watermark = -1

    def renew(self, epoch: int) -> None:
        """Start a new epoch: fetches sent before it no longer count for this partition."""
        self.epoch = epoch
        self.forget_fetches()

    def forget_fetches(self) -> None:
        """No fetch of this partition is in flight any more (answered, dropped or cancelled)."""
        self.inflight = 0
        self.ahead = False


class _Chunk:
    """Records of one partition from one fetch, in offset order, consumed from `pos`.

    Draining the last record moves the partition's position to `next_offset` (which also
    covers offsets without a record to return). An `error` chunk carries no records: it is
    raised once the records before it are returned. `nbytes` are the fetched bytes the
    chunk holds against the buffer bounds.
    """

    __slots__ = ("error", "nbytes", "next_offset", "pos", "records", "tp")

    def __init__(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        pos: int,
        next_offset: int,
        nbytes: int,
        error: errors.LogStoreError | None = None,
    ) -> None:
        self.tp = tp
        self.records = records
        self.pos = pos
        self.next_offset = next_offset
        self.nbytes = nbytes
        self.error = error


class _Buffer:
    """Partition states and fetched records, shared by the application and the fetcher.

    Invariants, under `lock`: `states` holds exactly the assigned partitions and `chunks`
    only chunks of those; a partition's chunks are in offset order, the first starting at
    its `position`; `buffered` is the sum of every state's `buffered`. The fetcher sends no
    fetch while `buffered` >= `limit`, nor for a partition whose own `buffered` is at least
    `partition_limit`, so memory stays bounded by about `limit` + MAX_FETCHES_IN_FLIGHT
    fetches.
    """

    def __init__(self, limit: int, partition_limit: int) -> None:
        self.lock = threading.Lock()
        #: poll() waits here for records
        self.data_ready = threading.Condition(self.lock)
        #: the fetcher waits here for work, answers and interrupts
        self.fetcher_wake = threading.Condition(self.lock)
        self.limit = limit
        self.partition_limit = partition_limit
        self.states: dict[TopicPartition, _PartitionState] = {}
        self.chunks: deque[_Chunk] = deque()
        self.buffered = 0
        self.closed = False
        #: set when the in-flight fetch no longer matches the assignment or positions
        self.interrupt = False
        #: a whole-fetch failure the application has not seen yet
        self.fetch_error: errors.LogStoreError | None = None
        #: False only when every state is known to have a position (a hint for poll())
        self.unresolved = False
        self._rotation = 0
        self._epochs = itertools.count(1)

    # The methods below expect the caller to hold `lock`.

    def next_epoch(self) -> int:
        return next(self._epochs)

    def wake_fetcher(self) -> None:
        """Make the fetcher re-plan now, cancelling a long poll that is out of date."""
        self.interrupt = True
        self.fetcher_wake.notify_all()

    def purge(self, tp: TopicPartition, state: _PartitionState) -> None:
        """Drop the buffered records of `tp` and release their bytes."""
        if state.buffered:
            self.buffered -= state.buffered
            state.buffered = 0
            self.fetcher_wake.notify_all()
        if any(chunk.tp == tp for chunk in self.chunks):
            self.chunks = deque(chunk for chunk in self.chunks if chunk.tp != tp)

    def reposition(
        self, tp: TopicPartition, offset: int | None, strategy: str | None, reason: str = ""
    ) -> None:
        """Move `tp` to `offset` (or make it unresolved with `strategy`), dropping what was
        buffered or in flight for it."""
        state = self.states[tp]
        self.purge(tp, state)
        state.renew(self.next_epoch())
        state.position = state.fetch_position = offset
        self.unresolved |= offset is None
        state.strategy = strategy
        state.reason = reason
        state.halted = False
        state.failures = 0
        state.retry_at = 0.0
        self.wake_fetcher()

    def set_assignment(self, wanted: set[TopicPartition], strategy: str) -> None:
        """Own exactly `wanted`: drop the others, add new ones unresolved with `strategy`."""
        for tp in [tp for tp in self.states if tp not in wanted]:
            self.purge(tp, self.states.pop(tp))
        for tp in wanted:
            if tp not in self.states:
                self.states[tp] = _PartitionState(strategy, self.next_epoch())
                self.unresolved = True
        self.wake_fetcher()

    def release(self, state: _PartitionState, nbytes: int) -> None:
        if nbytes:
            state.buffered -= nbytes
            self.buffered -= nbytes
            self.fetcher_wake.notify_all()

    def drain(self, limit: int) -> list[ConsumerRecord]:
        """Up to `limit` buffered records of partitions not paused, advancing positions past
        them. Raises a chunk's error when it is reached with nothing else to return.
        """
        if not any(self.states[c.tp].paused for c in self.chunks):
            return self._drain(limit)
        # Set the paused partitions' chunks aside (each partition's chunks stay in order).
        held = deque(c for c in self.chunks if self.states[c.tp].paused)
        self.chunks = deque(c for c in self.chunks if not self.states[c.tp].paused)
        try:
            return self._drain(limit)
        finally:
            self.chunks.extend(held)

    def _drain(self, limit: int) -> list[ConsumerRecord]:
        out: list[ConsumerRecord] = []
        chunks = self.chunks
        while chunks and len(out) < limit:
            chunk = chunks[0]
            state = self.states[chunk.tp]
            if chunk.error is not None:
                if out:
                    break  # deliver what precedes the error first
                self._raise_chunk_error(chunk, state)
            records = chunk.records
            end = len(records)
            if chunk.pos < end:
                stop = min(end, chunk.pos + limit - len(out))
                out += records[chunk.pos : stop]
                chunk.pos = stop
                state.position = records[stop - 1].offset + 1
                if stop < end:
                    break
            chunks.popleft()
            state.position = chunk.next_offset
            self.release(state, chunk.nbytes)
        return out

    def _raise_chunk_error(self, chunk: _Chunk, state: _PartitionState) -> None:
        self.chunks.popleft()
        state.position = chunk.next_offset
        self.release(state, chunk.nbytes)
        # Fetching resumes at the failed offset; a persistent fault is raised again there.
        state.halted = False
        self.wake_fetcher()
        assert chunk.error is not None
        raise chunk.error

    def plan(
        self, now: float, ahead: bool = False
    ) -> tuple[list[tuple[TopicPartition, int, int]], float | None]:
        """(tp, fetch offset, epoch) of each partition to fetch now, and the earliest time a
        backed-off partition becomes fetchable (None if none waits). Counts the fetches as
        sent. `ahead`: only partitions with one fetch in flight and a backlog behind it,
        from where that fetch is expected to end; otherwise only those with none in flight.
        """
        candidates, retry_at = self.candidates(now, self.partition_limit)
        ready: list[tuple[TopicPartition, int, int]] = []
        for tp, state in candidates:
            if not _fetchable(state, ahead):
                continue
            state.inflight += 1
            ready.append((tp, state.fetch_position, state.epoch))  # type: ignore[arg-type]
        if len(ready) > 1:
            # Rotate so partitions late in the request are not starved by the byte cap.
            self._rotation = (self._rotation + 1) % len(ready)
            ready = ready[self._rotation :] + ready[: self._rotation]
        return ready, retry_at

    def candidates(
        self, now: float, partition_limit: int
    ) -> tuple[list[tuple[TopicPartition, _PartitionState]], float | None]:
        """The partitions that may be fetched now (positioned, not halted, paused or backed
        off, under `partition_limit` buffered bytes), whatever is in flight; and the earliest
        time a backed-off partition becomes fetchable (None if none waits)."""
        if self.buffered >= self.limit:
            return [], None
        ready: list[tuple[TopicPartition, _PartitionState]] = []
        retry_at: float | None = None
        for tp, state in self.states.items():
            if state.fetch_position is None or state.halted or state.paused:
                continue
            if state.buffered >= partition_limit:
                continue
            if state.retry_at > now:
                retry_at = state.retry_at if retry_at is None else min(retry_at, state.retry_at)
                continue
            ready.append((tp, state))
        return ready, retry_at


def _fetchable(state: _PartitionState, ahead: bool) -> bool:
    """Whether to fetch `state`'s partition now: from its position when nothing is in
    flight, or (`ahead`) after the one fetch in flight while it has a backlog."""
    if not ahead:
        return state.inflight == 0
    return state.inflight == 1 and state.ahead


# --- the fetcher -----------------------------------------------------------------------------


class _InFlight(NamedTuple):
    future: grpc.Future
    #: (fetch offset, epoch) per partition asked for
    sent: dict[TopicPartition, tuple[int, int]]
    #: a fetch ahead: each partition's records start where its fetch in flight ends
    ahead: bool


class _Arrival(NamedTuple):
    """Fetched bytes of one partition, accepted but not yet decoded."""

    tp: TopicPartition
    epoch: int
    fetch_offset: int
    next_offset: int
    #: bytes of a Fetch answer, or a view of a FetchStream answer
    data: bytes | memoryview


class _Fetcher(threading.Thread):
    """Keeps a Fetch in flight for every fetchable partition and buffers the records.

    Positions advance only when an answer is accepted, so a failed or cancelled fetch loses
    nothing: the same offsets are asked for again after a backoff. The next fetch is sent
    before the current answer is decoded, so network and broker time overlap decoding;
    partitions with a backlog also get a fetch ahead (see `_PartitionState`), so one
    answer travels while the next is read, up to MAX_FETCHES_IN_FLIGHT. Answers are taken
    in the order the fetches were sent.
    """

    def __init__(self, buffer: _Buffer, stub: Any, options: _Options, address: str) -> None:
        name = options.client_id or options.group_id or "standalone"
        super().__init__(name=f"logstore-consumer-fetcher[{name}]", daemon=True)
        self._buffer = buffer
        self._stub = stub
        self._options = options
        self._address = address
        self._backoff = _Backoff(options.retry_backoff_ms / 1000)
        self._rpc_timeout_s = (options.fetch_max_wait_ms + options.request_timeout_ms) / 1000

    def stop(self, timeout_s: float) -> None:
        with self._buffer.lock:
            self._buffer.closed = True
            self._buffer.fetcher_wake.notify_all()
        self.join(timeout_s)

    def run(self) -> None:
        pending: deque[_InFlight] = deque()
        while not self._buffer.closed:
            try:
                if not pending:
                    self._send_into(pending, block=True)
                elif not self._finish(pending):
                    self._abandon(pending)
            except Exception as exc:  # a fault here must not stop consumption for good
                log.exception("consumer fetcher failed; retrying")
                self._report(errors.InternalBrokerError(f"fetcher failed: {exc!r}"))
                self._abandon(pending)
                self._sleep(self._backoff.next())
        self._abandon(pending)

    def _finish(self, pending: deque[_InFlight]) -> bool:
        """Wait for the oldest fetch; accept its answer, send the next fetches, then decode.
        False when it was cancelled or failed: the fetches behind it are then moot."""
        response = self._await(pending[0])
        if response is None:
            return False
        arrivals = self._accept(pending.popleft(), response)
        self._send_into(pending, block=False)
        self._deliver(arrivals)
        return True

    def _abandon(self, pending: deque[_InFlight]) -> None:
        """Cancel every unanswered fetch; their partitions are fetched afresh."""
        if not pending:
            return
        for inflight in pending:
            inflight.future.cancel()
        pending.clear()
        with self._buffer.lock:
            for state in self._buffer.states.values():
                state.forget_fetches()

    # --- sending -----------------------------------------------------------------------------

    def _send_into(self, pending: deque[_InFlight], block: bool) -> None:
        """Send a fetch for partitions with none in flight (waiting for one to be fetchable
        if `block` and nothing is in flight), then one ahead, up to MAX_FETCHES_IN_FLIGHT."""
        for ahead in (False, True):
            if len(pending) >= MAX_FETCHES_IN_FLIGHT:
                return
            inflight = self._send(block=block and not ahead and not pending, ahead=ahead)
            if inflight is not None:
                pending.append(inflight)

    def _send(self, block: bool, ahead: bool = False) -> _InFlight | None:
        plan = self._plan(block, ahead)
        if not plan:
            return None
        by_topic: dict[str, list[pb.FetchPartition]] = {}
        for (topic, partition), offset, _ in plan:
            by_topic.setdefault(topic, []).append(
                pb.FetchPartition(
                    partition=partition,
                    fetch_offset=offset,
                    partition_max_bytes=self._options.max_partition_fetch_bytes,
                    # ahead: start where the fetch in flight (from `offset`) will end
                    skip_bytes=self._options.max_partition_fetch_bytes if ahead else 0,
                )
            )
        request = pb.FetchRequest(
            topics=[pb.FetchTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
            # a fetch ahead asks for records known to be there: it has no reason to wait
            max_wait_ms=0 if ahead else self._options.fetch_max_wait_ms,
            min_bytes=0 if ahead else self._options.fetch_min_bytes,
            max_bytes=self._options.fetch_max_bytes,
        )
        future = self._stub.Fetch.future(request, timeout=self._rpc_timeout_s)
        # Outside the lock: the callback runs at once, in this thread, if already done.
        future.add_done_callback(self._on_done)
        return _InFlight(future, {tp: (offset, epoch) for tp, offset, epoch in plan}, ahead)

    def _plan(self, block: bool, ahead: bool) -> list[tuple[TopicPartition, int, int]]:
        buffer = self._buffer
        with buffer.lock:
            while not buffer.closed:
                plan, retry_at = buffer.plan(time.monotonic(), ahead)
                if not ahead:
                    # This plan reflects every change so far. (Not a plan ahead: a change
                    # since the last plan must still cancel the fetches it made.)
                    buffer.interrupt = False
                if plan or not block:
                    return plan
                wait = None if retry_at is None else max(retry_at - time.monotonic(), 0.0)
                buffer.fetcher_wake.wait(wait)
        return []

    def _on_done(self, _future: grpc.Future) -> None:
        with self._buffer.lock:
            self._buffer.fetcher_wake.notify_all()

    # --- receiving ---------------------------------------------------------------------------

    def _await(self, inflight: _InFlight) -> pb.FetchResponse | None:
        """The answer, or None when the fetch was cancelled or failed (after a backoff)."""
        buffer = self._buffer
        future = inflight.future
        with buffer.lock:
            while not future.done() and not buffer.interrupt and not buffer.closed:
                buffer.fetcher_wake.wait(1.0)
            buffer.interrupt = False
        if not future.done() and future.cancel():
            return None
        try:
            response = future.result()
        except grpc.FutureCancelledError:
            return None
        except grpc.RpcError as exc:
            self._request_failed(translate(exc, self._address))
            return None
        self._backoff.reset()
        return response

    def _request_failed(self, exc: errors.LogStoreError) -> None:
        if self._buffer.closed:
            return
        if is_retriable(exc):
            log.debug("fetch failed, retrying: %s", exc)
        else:
            log.warning("fetch failed: %s", exc)
            self._report(exc)
        self._sleep(self._backoff.next())

    def _report(self, exc: errors.LogStoreError) -> None:
        with self._buffer.lock:
            self._buffer.fetch_error = exc
            self._buffer.data_ready.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the consumer closes."""
        deadline = time.monotonic() + seconds
        with self._buffer.lock:
            while not self._buffer.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._buffer.fetcher_wake.wait(remaining)

    def _accept(self, inflight: _InFlight, response: pb.FetchResponse) -> list[_Arrival]:
        """Advance fetch positions past the answer (reserving its bytes), handle errors."""
        results = {
            (topic_result.topic, result.partition): result
            for topic_result in response.topics
            for result in topic_result.partitions
        }
        arrivals: list[_Arrival] = []
        now = time.monotonic()
        buffer = self._buffer
        with buffer.lock:
            for tp, (offset, epoch) in inflight.sent.items():
                state = buffer.states.get(tp)
                if state is None or state.epoch != epoch:
                    continue  # reassigned or repositioned since the fetch was sent
                state.inflight -= 1
                result = results.get(tp)
                if result is None:
                    continue  # not answered: fetched again from fetch_position
                arrival = self._accept_one(tp, state, offset, result, now, inflight.ahead)
                if arrival is not None:
                    arrivals.append(arrival)
        return arrivals

    def _accept_one(
        self,
        tp: TopicPartition,
        state: _PartitionState,
        offset: int,
        result: pb.FetchPartitionResult | PartitionAnswer,
        now: float,
        ahead: bool,
    ) -> _Arrival | None:
        error = partition_error(result.error)
        if error is not None:
            if ahead:
                state.ahead = False  # left to the fetch from the position, which meets it too
            else:
                self._partition_failed(tp, state, offset, error, now)
            return None
        if not ahead:
            state.failures = 0
        return self._arrival(tp, state, offset, result, ahead)

    def _arrival(
        self,
        tp: TopicPartition,
        state: _PartitionState,
        offset: int,
        result: pb.FetchPartitionResult | PartitionAnswer,
        ahead: bool,
    ) -> _Arrival | None:
        """Take the records of `result` (a fetch from `offset`, or ahead of it) from the
        fetch position on, and advance the position past them."""
        position = state.fetch_position
        assert position is not None  # set before any fetch of this epoch was sent
        state.high_watermark = max(state.high_watermark, result.high_watermark)
        data = result.records
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
                self._halt(tp, state, offset, error)
            return None
        first, next_offset = span
        if next_offset <= position:
            return None  # an answer ahead that holds nothing new
        state.fetch_position = next_offset
        # Fetch ahead while at least one more answer's worth of records waits behind this one.
        state.ahead = state.high_watermark - next_offset >= next_offset - first
        state.buffered += len(data)
        self._buffer.buffered += len(data)
        return _Arrival(tp, state.epoch, position, next_offset, data)

    def _partition_failed(
        self,
        tp: TopicPartition,
        state: _PartitionState,
        offset: int,
        error: errors.LogStoreError,
        now: float,
    ) -> None:
        if isinstance(error, errors.OffsetOutOfRangeError):
            # Kafka semantics: the position left the log (retention, truncation): reset it.
            log.info("%s-%d: %s; resetting per auto_offset_reset", tp[0], tp[1], error)
            self._buffer.reposition(tp, None, self._options.reset_policy, reason=str(error))
            self._buffer.data_ready.notify_all()
        elif is_retriable(error) or isinstance(error, errors.UnknownTopicOrPartitionError):
            state.failures += 1
            delay = min(
                self._options.retry_backoff_ms / 1000 * 2 ** (state.failures - 1),
                MAX_RETRY_BACKOFF_S,
            )
            state.retry_at = now + delay
            log.debug("%s-%d: fetch failed, retrying in %.2fs: %s", tp[0], tp[1], delay, error)
        else:
            self._halt(tp, state, offset, error)

    def _halt(
        self, tp: TopicPartition, state: _PartitionState, offset: int, error: errors.LogStoreError
    ) -> None:
        """Stop fetching `tp` at `offset` until `error` has been raised by poll()."""
        self._buffer.chunks.append(_Chunk(tp, [], 0, offset, 0, error))
        state.fetch_position = offset
        state.renew(self._buffer.next_epoch())  # a fetch sent from a later offset must not deliver
        state.halted = True
        self._buffer.data_ready.notify_all()

    def _deliver(self, arrivals: list[_Arrival]) -> None:
        """Decode each arrival (without the lock) and append it to the buffer."""
        for arrival in arrivals:
            records, skip, error, error_offset = _decode(arrival)
            buffer = self._buffer
            with buffer.lock:
                state = buffer.states.get(arrival.tp)
                if state is None or state.epoch != arrival.epoch:
                    continue  # repositioned while decoding; its bytes were released then
                end = arrival.next_offset if error is None else error_offset
                nbytes = len(arrival.data)
                buffer.chunks.append(_Chunk(arrival.tp, records, skip, end, nbytes))
                if error is not None:
                    self._halt(arrival.tp, state, error_offset, error)
                buffer.data_ready.notify_all()


# --- the streaming fetcher -------------------------------------------------------------------

#: FetchPartition.fetch_offset on a FetchStream: continue where the previous answer ended
CONTINUE_OFFSET = -1
FETCH_STREAM_METHOD = "/logstore.v1.LogStore/FetchStream"
#: fetches a consumer keeps in flight on its FetchStream (and, per partition, how many
#: max_partition_fetch_bytes it may have buffered or in flight)
STREAM_DEPTH = 4

#: per partition in a request on the stream: (explicit offset or None to continue, epoch,
#: the stream's token for the partition's chain of continuations)
_StreamSent = dict[TopicPartition, tuple[int | None, int, int]]


class _Stream:
    """One open FetchStream and what is in flight on it; guarded by the buffer's lock.

    `chains` maps a partition to (epoch, token) of the request that last set the broker's
    position for it on this stream with an explicit offset; requests that continue from
    there carry the same token. An error for the partition ends its chain, so answers to
    continuations sent after the failed request are ignored.
    """

    def __init__(self, call: Any, outbox: queue.SimpleQueue[pb.FetchRequest | None]) -> None:
        self.call = call
        self.outbox = outbox
        #: (what each request in flight asked for, when it was sent), in request order
        self.pending: deque[tuple[_StreamSent, float]] = deque()
        self.inflight: dict[TopicPartition, int] = {}
        self.chains: dict[TopicPartition, tuple[int, int]] = {}
        #: partitions whose last answer had records: only these get more than one fetch
        #: in flight, so a caught-up partition does not cut its own long polls short
        self.hot: set[TopicPartition] = set()
        self.failed: errors.LogStoreError | None = None
        self.unimplemented = False
        self.tokens = itertools.count(1)


class _StreamFetcher(_Fetcher):
    """Fetches over one FetchStream with up to STREAM_DEPTH requests in flight.

    Same buffer, positions and epochs as `_Fetcher`; the difference is that a partition
    with records to read keeps several fetches in flight, each continuing where the one
    before ended (fetch_offset -1), so the broker reads the next chunk while the previous
    one is on the wire or being decoded. This thread plans and sends; a reader thread
    accepts and decodes the answers in order. A broker without FetchStream (UNIMPLEMENTED)
    is read with unary Fetch calls, as `_Fetcher` does.
    """

    def __init__(
        self, buffer: _Buffer, stub: Any, options: _Options, address: str, channel: grpc.Channel
    ) -> None:
        super().__init__(buffer, stub, options, address)
        # Answers are decoded by hand so that records stay views of the received bytes.
        self._fetch_stream = channel.stream_stream(
            FETCH_STREAM_METHOD,
            request_serializer=pb.FetchRequest.SerializeToString,
            response_deserializer=decode_response,
        )

    def run(self) -> None:
        while not self._buffer.closed:
            try:
                stream = self._open()
                self._pump(stream)
                if stream.unimplemented:
                    log.info("broker has no FetchStream; fetching with unary calls")
                    super().run()
                    return
                if stream.failed is not None:
                    self._request_failed(stream.failed)
            except Exception as exc:  # a fault here must not stop consumption for good
                log.exception("consumer fetcher failed; retrying")
                self._report(errors.InternalBrokerError(f"fetcher failed: {exc!r}"))
                self._sleep(self._backoff.next())

    def _open(self) -> _Stream:
        outbox: queue.SimpleQueue[pb.FetchRequest | None] = queue.SimpleQueue()
        call = self._fetch_stream(iter(outbox.get, None))
        return _Stream(call, outbox)

    def _pump(self, stream: _Stream) -> None:
        """Send fetches while the stream lives; the reader thread takes the answers."""
        reader = threading.Thread(
            target=self._read, args=(stream,), name=f"{self.name}-reader", daemon=True
        )
        reader.start()
        try:
            while True:
                request = self._next_request(stream)
                if request is None:
                    return
                stream.outbox.put(request)
        finally:
            stream.outbox.put(None)
            stream.call.cancel()
            reader.join(CLOSE_JOIN_S)

    def _next_request(self, stream: _Stream) -> pb.FetchRequest | None:
        """Wait until a fetch is due and record it as in flight; None when the stream ends."""
        buffer = self._buffer
        with buffer.lock:
            while not buffer.closed and stream.failed is None:
                now = time.monotonic()
                if stream.pending and now - stream.pending[0][1] > self._rpc_timeout_s:
                    stream.failed = errors.RequestTimedOutError("fetch stream: answer overdue")
                    break
                sent, wait = self._plan_stream(stream, now)
                buffer.interrupt = False
                if sent:
                    stream.pending.append((sent, now))
                    return self._stream_request(sent)
                buffer.fetcher_wake.wait(wait)
        return None

    def _plan_stream(self, stream: _Stream, now: float) -> tuple[_StreamSent, float]:
        """The partitions to put in the next request (empty if none is due or the window
        is full), and how long to wait before planning again."""
        wait = self._rpc_timeout_s
        if len(stream.pending) >= STREAM_DEPTH:
            return {}, wait
        fetch_bytes = self._options.max_partition_fetch_bytes
        budget = max(self._buffer.partition_limit, STREAM_DEPTH * fetch_bytes)
        ready, retry_at = self._buffer.candidates(now, budget)
        if retry_at is not None:
            wait = min(wait, max(retry_at - now, 0.0))
        sent: _StreamSent = {}
        for tp, state in ready:
            inflight = stream.inflight.get(tp, 0)
            if inflight and tp not in stream.hot:
                continue
            if state.buffered + inflight * fetch_bytes >= budget:
                continue
            assert state.fetch_position is not None
            sent[tp] = self._chain(stream, tp, state.fetch_position, state.epoch)
            stream.inflight[tp] = inflight + 1
        return sent, wait

    @staticmethod
    def _chain(
        stream: _Stream, tp: TopicPartition, offset: int, epoch: int
    ) -> tuple[int | None, int, int]:
        """Continue the partition's chain if it was started under `epoch`, else start one
        at `offset`."""
        chain = stream.chains.get(tp)
        if chain is not None and chain[0] == epoch:
            return None, epoch, chain[1]
        token = next(stream.tokens)
        stream.chains[tp] = (epoch, token)
        return offset, epoch, token

    def _stream_request(self, sent: _StreamSent) -> pb.FetchRequest:
        by_topic: dict[str, list[pb.FetchPartition]] = {}
        for (topic, partition), (offset, _, _) in sent.items():
            by_topic.setdefault(topic, []).append(
                pb.FetchPartition(
                    partition=partition,
                    fetch_offset=CONTINUE_OFFSET if offset is None else offset,
                    partition_max_bytes=self._options.max_partition_fetch_bytes,
                )
            )
        return pb.FetchRequest(
            topics=[pb.FetchTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
            max_wait_ms=self._options.fetch_max_wait_ms,
            min_bytes=self._options.fetch_min_bytes,
            max_bytes=self._options.fetch_max_bytes,
        )

    # --- the reader thread ---------------------------------------------------------------

    def _read(self, stream: _Stream) -> None:
        """Accept and decode each answer in order; record how the stream ended."""
        failure: errors.LogStoreError
        try:
            for response in stream.call:
                arrivals = self._accept_answer(stream, response)
                self._backoff.reset()
                self._deliver(arrivals)
            failure = errors.BrokerUnavailableError("the broker ended the fetch stream")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                stream.unimplemented = True
            failure = translate(exc, self._address)
        with self._buffer.lock:
            if stream.failed is None:
                stream.failed = failure
            self._buffer.fetcher_wake.notify_all()

    def _accept_answer(self, stream: _Stream, response: TopicAnswers) -> list[_Arrival]:
        buffer = self._buffer
        now = time.monotonic()
        arrivals: list[_Arrival] = []
        with buffer.lock:
            sent, _ = stream.pending.popleft()
            for tp in sent:
                stream.inflight[tp] -= 1
            for topic, answers in response:
                for answer in answers:
                    tp = (topic, answer.partition)
                    arrival = self._accept_stream_one(stream, sent, tp, answer, now)
                    if arrival is not None:
                        arrivals.append(arrival)
            buffer.fetcher_wake.notify_all()
        return arrivals

    def _accept_stream_one(
        self,
        stream: _Stream,
        sent: _StreamSent,
        tp: TopicPartition,
        result: PartitionAnswer,
        now: float,
    ) -> _Arrival | None:
        asked = sent.get(tp)
        state = self._buffer.states.get(tp)
        chain = stream.chains.get(tp)
        if asked is None or state is None or state.fetch_position is None:
            return None
        offset, epoch, token = asked
        if state.epoch != epoch or chain is None or chain[1] != token:
            return None  # repositioned since, or a continuation of a failed chain
        if offset is None:
            offset = state.fetch_position
        if result.error.code:
            del stream.chains[tp]  # the broker's position is unknown: restart explicitly
        arrival = self._accept_one(tp, state, offset, result, now, ahead=False)
        if arrival is None:
            stream.hot.discard(tp)
        else:
            stream.hot.add(tp)
        return arrival


def _decode(
    arrival: _Arrival,
) -> tuple[list[ConsumerRecord], int, errors.LogStoreError | None, int]:
    """(records, index of the first at/after the fetch offset, error, offset of the error).

    The broker answers with whole batches from the one holding the fetch offset, so
    records before it are skipped by index rather than copied out.
    """
    prefix = arrival.tp
    try:
        records = decode_all(arrival.data, record_type=ConsumerRecord, prefix=prefix)
        error: errors.LogStoreError | None = None
        error_offset = arrival.next_offset
    except Exception:
        records, error, error_offset = _salvage(arrival)
    skip = 0
    if records and records[0].offset < arrival.fetch_offset:
        skip = bisect.bisect_left(records, arrival.fetch_offset, key=_OFFSET_OF)
    return records, skip, error, error_offset


def _salvage(
    arrival: _Arrival,
) -> tuple[list[ConsumerRecord], errors.LogStoreError | None, int]:
    """Decode batch by batch up to the first bad one, so the records before it are kept.

    Returns (records, error, offset where reading stopped).
    """
    records: list[ConsumerRecord] = []
    for pos, header in iter_batches(arrival.data):
        try:
            batch = decode_batch(arrival.data, pos, record_type=ConsumerRecord, prefix=arrival.tp)
        except Exception as exc:  # any decoding fault means the bytes are corrupt
            return (
                records,
                _as_corrupt(arrival, header.base_offset, exc),
                max(header.base_offset, arrival.fetch_offset),
            )
        records.extend(batch.records)
    return records, None, arrival.next_offset


def _as_corrupt(arrival: _Arrival, offset: int, exc: Exception) -> errors.LogStoreError:
    if isinstance(exc, errors.LogStoreError):
        return exc
    topic, partition = arrival.tp
    return errors.CorruptRecordError(f"{topic}-{partition}: batch at offset {offset}: {exc!r}")


# --- group membership ------------------------------------------------------------------------

#: member_epoch values with a meaning of their own in GroupHeartbeatRequest
JOIN_EPOCH = 0
LEAVE_EPOCH = -1
_GROUP_RPC = {JOIN_EPOCH: "JoinGroup", LEAVE_EPOCH: "LeaveGroup"}
#: errors after which the coordinator no longer counts our partitions as ours: rejoin
_REJOIN_ERRORS = (errors.UnknownMemberIdError, errors.FencedMemberEpochError)


class _Rebalance(NamedTuple):
    """How the consumer applies a change of assignment, on the application thread.

    `revoke` commits (with auto-commit), calls the listener while the partitions are still
    owned, then stops reading them; `lose` calls the listener without committing, then stops
    reading them; `add` starts reading, then calls the listener. Each is given the
    partitions and the listener (or None); `revoke` and `lose` stop reading the partitions
    even when the listener raises.
    """

    revoke: Callable[[set[TopicPartition], ConsumerRebalanceListener | None], None]
    lose: Callable[[set[TopicPartition], ConsumerRebalanceListener | None], None]
    add: Callable[[set[TopicPartition], ConsumerRebalanceListener | None], None]


class _Membership:
    """What the consumer needs from group coordination.

    `poll_hook()` runs inside every poll() (and at least every heartbeat interval while poll
    waits); it is where assignment changes are applied. `has_news()` says, without locking,
    that poll_hook has something to apply, so poll stops waiting for records.
    `commit_identity()` gives what commits carry (member id and epoch), the partitions
    they may cover, and why the member lost its partitions if it did (until poll() has
    dropped them and rejoins).
    """

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener | None) -> None:
        raise NotImplementedError

    def poll_hook(self) -> None:
        raise NotImplementedError

    def has_news(self) -> bool:
        raise NotImplementedError

    def subscription(self) -> list[str]:
        raise NotImplementedError

    def commit_identity(self) -> tuple[str, int, frozenset[TopicPartition], str | None]:
        raise NotImplementedError

    def commit_refused(self, member_id: str, epoch: int, reason: str) -> None:
        """The coordinator refused a commit made as (`member_id`, `epoch`) because it no
        longer knows that member: give up the partitions and rejoin, as a heartbeat that
        met the same error would."""
        raise NotImplementedError

    def leave(self, timeout_s: float) -> None:
        """Give up the assignment (revoking it) and leave the group."""
        raise NotImplementedError

    def close(self, timeout_s: float) -> None:
        """Leave, then stop whatever runs in the background."""
        raise NotImplementedError


class _GroupMember(_Membership):
    """Membership of a consumer group through the coordinator's heartbeat protocol.

    A heartbeat thread (started by the first subscribe()) joins, heartbeats every
    `interval_s` and leaves; it only talks to the broker and records the newest assignment
    the coordinator answered. The application thread applies it in `poll_hook()`: it
    releases revoked partitions (then asks for a heartbeat at once, so the coordinator can
    hand them on) and takes added ones.

    Invariants, under `_cond`:

    - `_owned` is what the application holds and what heartbeats report as `owned`: a
      partition is added to it before it is read and removed only after reading stopped,
      so a heartbeat never reports a partition released that is still being read;
    - the member is in the group exactly when `_epoch` > 0; `_member_id` outlives a leave
      so that a rejoin replaces the old incarnation instead of adding one;
    - `_lost` (why) is set only by the heartbeat thread, when the group may already have
      given our partitions to others; until poll_hook has dropped them nothing but a leave
      is sent and commits may cover no partition;
    - `_target` is the newest assignment answered and not yet applied (None: nothing new).

    The heartbeat thread may take the consumer's buffer lock (through `wake`) while it
    holds `_cond`; nothing takes `_cond` while holding the buffer lock. Times are monotonic
    seconds unless a name ends in `_ms`.
    """

    def __init__(
        self,
        stub: Any,
        options: _Options,
        address: str,
        rebalance: _Rebalance,
        wake: Callable[[], None],
    ) -> None:
        assert options.group_id is not None
        self._group = options.group_id
        self._stub = stub
        self._options = options
        self._address = address
        self._rebalance = rebalance
        self._wake = wake
        self._configured_interval_s = options.heartbeat_interval_ms / 1000
        self._session_s = options.session_timeout_ms / 1000
        self._max_poll_s = options.max_poll_interval_ms / 1000
        # A heartbeat answered after the session would have lapsed is of no use.
        self._rpc_timeout_s = min(options.request_timeout_ms, options.session_timeout_ms) / 1000
        self._backoff = _Backoff(options.retry_backoff_ms / 1000)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._topics: tuple[str, ...] = ()
        self._listener: ConsumerRebalanceListener | None = None
        # Chosen here, as KIP-848 clients do: a join whose answer is lost is retried under
        # the same id, which replaces the first incarnation instead of orphaning it.
        self._member_id = str(uuid.uuid4())
        self._epoch = JOIN_EPOCH
        self._owned: frozenset[TopicPartition] = frozenset()
        self._target: frozenset[TopicPartition] | None = None
        self._lost: str | None = None
        self._error: errors.LogStoreError | None = None
        self._interval_s = self._configured_interval_s
        self._beat_at = 0.0
        #: a heartbeat is wanted now (after a release), whatever `_beat_at` says
        self._prompt = False
        self._in_flight = False
        self._stopping = False
        self._last_poll = time.monotonic()
        self._last_answer = time.monotonic()
        #: set when poll_hook has something to apply; read by poll() without the lock
        self._news = False

    # --- the application thread --------------------------------------------------------------

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener | None) -> None:
        with self._cond:
            self._topics = tuple(sorted(set(topics)))
            self._listener = listener
            self._last_poll = time.monotonic()
            self._prompt = True
            self._cond.notify_all()
        if self._thread is None:
            name = self._options.client_id or self._group
            self._thread = threading.Thread(
                target=self._run, name=f"logstore-consumer-heartbeat[{name}]", daemon=True
            )
            self._thread.start()

    def subscription(self) -> list[str]:
        with self._cond:
            return list(self._topics)

    def has_news(self) -> bool:
        return self._news

    def commit_identity(self) -> tuple[str, int, frozenset[TopicPartition], str | None]:
        with self._cond:
            committable = frozenset() if self._lost is not None else self._owned
            return self._member_id, self._epoch, committable, self._lost

    def commit_refused(self, member_id: str, epoch: int, reason: str) -> None:
        with self._cond:
            if (member_id, epoch) != (self._member_id, self._epoch) or self._epoch <= 0:
                return  # the membership moved on since that commit was made
            self._mark_lost(f"commit refused: {reason}")
            self._epoch = JOIN_EPOCH
            self._cond.notify_all()

    def poll_hook(self) -> None:
        """Apply what the heartbeat thread recorded: drop lost partitions (then rejoin), or
        move to the newest assignment; raise (once) a heartbeat error the application has
        not seen. Counts as a poll for max_poll_interval_ms."""
        with self._cond:
            self._last_poll = time.monotonic()
            self._news = False
            error, self._error = self._error, None
            lost, target, self._target = self._lost, self._target, None
            owned, listener = self._owned, self._listener
        if lost is not None:
            self._drop_lost(owned, listener)
        elif target is not None:
            self._apply(owned, target, listener)
        if error is not None:
            raise error

    def _drop_lost(
        self, owned: frozenset[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        log.info("group %s: dropping lost partitions %s; rejoining", self._group, sorted(owned))
        try:
            if owned:
                self._rebalance.lose(set(owned), listener)
        finally:
            with self._cond:
                self._owned = frozenset()
                self._lost = None
                self._prompt = True  # rejoin now that nothing of the old assignment is read
                self._cond.notify_all()

    def _apply(
        self,
        owned: frozenset[TopicPartition],
        target: frozenset[TopicPartition],
        listener: ConsumerRebalanceListener | None,
    ) -> None:
        """Release `owned - target`, report that at once, then take `target - owned`.

        A listener's exception does not stop the change: it is raised once both steps ran.
        """
        revoked, added = owned - target, target - owned
        failure: Exception | None = None
        if revoked:
            log.info("group %s: revoking %s", self._group, sorted(revoked))
            try:
                self._rebalance.revoke(set(revoked), listener)
            except Exception as exc:
                failure = exc
            self._set_owned(owned - revoked, prompt=True)
        if added:
            log.info("group %s: assigned %s", self._group, sorted(added))
            self._set_owned(target, prompt=False)
            try:
                self._rebalance.add(set(added), listener)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _set_owned(self, owned: frozenset[TopicPartition], prompt: bool) -> None:
        with self._cond:
            self._owned = owned
            self._prompt |= prompt
            self._cond.notify_all()

    def leave(self, timeout_s: float) -> None:
        """Give up every partition (revoking it, or dropping it as lost if the group may
        have taken it already) and leave the group; wait up to `timeout_s` for that."""
        with self._cond:
            owned, lost, listener = self._owned, self._lost, self._listener
        try:
            if owned and lost is None:
                self._rebalance.revoke(set(owned), listener)
            elif owned:
                self._rebalance.lose(set(owned), listener)
        finally:
            with self._cond:
                # Only now: the revocation may commit, which needs us still in the group.
                self._topics = ()
                self._target = None
                self._owned = frozenset()
                self._lost = None
                self._cond.notify_all()
                if self._thread is not None:
                    self._cond.wait_for(self._out_of_group, timeout_s)

    def close(self, timeout_s: float) -> None:
        try:
            self.leave(timeout_s)
        finally:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout_s)

    def _out_of_group(self) -> bool:
        return self._epoch <= 0 and not self._in_flight

    # --- the heartbeat thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                request = self._next_request()
            if request is None:
                return
            self._exchange(request)

    def _next_request(self) -> pb.GroupHeartbeatRequest | None:
        """Wait until a request is due and return it; None once stopping and out of the
        group. Caller holds `_cond`."""
        while True:
            now = time.monotonic()
            in_group = self._epoch > 0
            if in_group and (self._stopping or not self._topics or self._lost is not None):
                return self._request(LEAVE_EPOCH)
            if self._stopping:
                return None
            if in_group and self._check_liveness(now):
                continue
            if self._topics and self._lost is None and (self._prompt or now >= self._beat_at):
                return self._request(self._epoch)
            self._cond.wait(self._idle_s(now))

    def _check_liveness(self, now: float) -> bool:
        """Mark the partitions lost if poll() stalled (we then leave, so they move on) or
        no heartbeat was answered for a session (the coordinator has dropped us)."""
        if now - self._last_poll > self._max_poll_s:
            self._mark_lost(
                f"poll() was not called for max_poll_interval_ms="
                f"{self._options.max_poll_interval_ms}; left the group so its partitions "
                "move to other members"
            )
            return True
        if now - self._last_answer > self._session_s:
            self._mark_lost(
                f"no heartbeat answered for session_timeout_ms={self._options.session_timeout_ms}"
            )
            self._epoch = JOIN_EPOCH
            return True
        return False

    def _idle_s(self, now: float) -> float | None:
        """How long nothing is due (None: until notified)."""
        due: list[float] = []
        if self._topics and self._lost is None:
            due.append(self._beat_at)
            if self._epoch > 0:
                due += [self._last_poll + self._max_poll_s, self._last_answer + self._session_s]
        return max(min(due) - now, 0.0) if due else None

    def _request(self, epoch: int) -> pb.GroupHeartbeatRequest:
        """A leave (-1), join (0) or heartbeat; marks it in flight. Caller holds `_cond`."""
        self._in_flight = True
        if epoch == LEAVE_EPOCH:
            return pb.GroupHeartbeatRequest(
                group_id=self._group, member_id=self._member_id, member_epoch=LEAVE_EPOCH
            )
        self._prompt = False
        self._beat_at = time.monotonic() + self._interval_s
        options = self._options
        return pb.GroupHeartbeatRequest(
            group_id=self._group,
            member_id=self._member_id,
            member_epoch=epoch,
            subscription=pb.Subscription(topics=list(self._topics)),
            assignor=options.group_remote_assignor or "",
            session_timeout_ms=options.session_timeout_ms,
            rebalance_timeout_ms=options.max_poll_interval_ms,
            client_id=options.client_id,
            owned=_assignment_proto(self._owned),
        )

    def _exchange(self, request: pb.GroupHeartbeatRequest) -> None:
        method = _GROUP_RPC.get(request.member_epoch, "Heartbeat")
        try:
            response = getattr(self._stub, method)(request, timeout=self._rpc_timeout_s)
        except grpc.RpcError as exc:
            self._on_failure(request, translate(exc, self._address))
        except Exception as exc:  # a fault here must not end the membership
            log.exception("group %s: %s failed", self._group, method)
            self._on_failure(request, errors.BrokerUnavailableError(f"{method} failed: {exc!r}"))
        else:
            self._on_answer(request, response)

    def _on_answer(
        self, request: pb.GroupHeartbeatRequest, response: pb.GroupHeartbeatResponse
    ) -> None:
        with self._cond:
            self._in_flight = False
            if request.member_epoch == LEAVE_EPOCH:
                self._epoch = JOIN_EPOCH
            else:
                self._accept(response)
            self._cond.notify_all()

    def _accept(self, response: pb.GroupHeartbeatResponse) -> None:
        now = time.monotonic()
        self._member_id = response.member_id
        self._epoch = response.member_epoch
        self._last_answer = now
        self._backoff.reset()
        server_s = response.heartbeat_interval_ms / 1000
        self._interval_s = min(self._configured_interval_s, server_s or self._configured_interval_s)
        self._beat_at = now + self._interval_s
        if not self._topics or self._lost is not None:
            return  # unsubscribed or lost meanwhile: this assignment is not to be applied
        assignment = frozenset(
            (t.topic, p) for t in response.assignment.topics for p in t.partitions
        )
        self._target = None if assignment == self._owned else assignment
        if self._target is not None:
            self._tell_poll()

    def _on_failure(self, request: pb.GroupHeartbeatRequest, exc: errors.LogStoreError) -> None:
        with self._cond:
            self._in_flight = False
            if request.member_epoch == LEAVE_EPOCH:
                # Not retried: if it was lost the session timeout removes us anyway.
                log.info("group %s: leaving failed: %s", self._group, exc)
                self._epoch = JOIN_EPOCH
            elif isinstance(exc, _REJOIN_ERRORS):
                self._mark_lost(str(exc))
                self._epoch = JOIN_EPOCH
            elif is_retriable(exc):
                log.debug("group %s: heartbeat failed, retrying: %s", self._group, exc)
                self._beat_at = time.monotonic() + self._backoff.next()
            else:
                log.warning("group %s: heartbeat refused: %s", self._group, exc)
                self._error = exc
                self._tell_poll()
                self._beat_at = time.monotonic() + max(self._interval_s, self._backoff.next())
            self._cond.notify_all()

    def _mark_lost(self, reason: str) -> None:
        log.warning("group %s: member %s: %s", self._group, self._member_id, reason)
        self._lost = reason
        self._target = None
        self._tell_poll()

    def _tell_poll(self) -> None:
        """Make a waiting poll() run poll_hook now. Caller holds `_cond`."""
        self._news = True
        self._wake()


def _assignment_proto(partitions: Iterable[TopicPartition]) -> pb.Assignment:
    return pb.Assignment(
        topics=[
            pb.TopicPartitions(topic=topic, partitions=[p for p, _ in ps])
            for topic, ps in _by_topic((tp, None) for tp in sorted(partitions)).items()
        ]
    )


def _member_commit_failed(group: str, reason: str) -> errors.CommitFailedError:
    """As in Kafka, a commit by a member the group has dropped (its session expired, the
    broker restarted, poll() came too late) fails with CommitFailedError; the consumer
    rejoins in its next poll()."""
    return errors.CommitFailedError(
        f"group {group}: commit refused, this consumer is no longer a member of the group "
        f"({reason}). It rejoins in the next poll(); records after the last committed "
        "offsets may be delivered again."
    )


# --- the consumer ----------------------------------------------------------------------------


class Consumer:
    """Reads records from assigned or subscribed partitions, Kafka-style.

    >>> with Consumer("127.0.0.1:9092", group_id="billing",        # doctest: +SKIP
    ...               auto_offset_reset="earliest") as consumer:
    ...     consumer.subscribe(["orders"])
    ...     for record in consumer.poll(timeout=1.0):
    ...         print(record.offset, record.value)
    ...     consumer.commit()

    A consumer is used from one thread. poll() returns records from a buffer that a
    background thread keeps filled; `position()` is the offset after the last record poll()
    returned, and commit() commits those positions. Deserializers, if given, are applied
    to non-null keys and values in poll() (a cost per record).

    subscribe() makes the consumer a member of its group: the group's coordinator shares
    the partitions of the subscribed topics among the members (`group_remote_assignor`:
    "sticky", "range" or "roundrobin"; members that name one must all name the same, and
    None, the default, takes the group's: "sticky" for a new group) and
    moves them when members come and go. A background thread heartbeats every
    `heartbeat_interval_ms`; a member silent for `session_timeout_ms`, or whose
    application has not called poll() for `max_poll_interval_ms`, loses its partitions.
    Changes of assignment are applied inside poll(), calling the listener.

    Options follow Kafka's consumer settings in snake_case, with Kafka's defaults, except
    `auto_offset_reset="error"` (Kafka's "none", also accepted). `metadata_max_age_ms` is
    accepted and validated but has no effect: the coordinator notices partitions added to
    subscribed topics at each heartbeat.

    Security: `ssl_cafile` is the CA bundle (PEM) the broker's certificate must chain to;
    setting it turns TLS on. `ssl_certfile` / `ssl_keyfile`: client certificate and key
    (PEM) for mutual TLS. `token`: bearer token sent with every request. Each falls back
    to its environment variable (LOGSTORE_TLS_CA, LOGSTORE_TLS_CERT, LOGSTORE_TLS_KEY,
    LOGSTORE_TOKEN).
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        max_poll_records: int = 500,
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 52_428_800,
        max_partition_fetch_bytes: int = 1_048_576,
        session_timeout_ms: int = 45_000,
        heartbeat_interval_ms: int = 3000,
        max_poll_interval_ms: int = 300_000,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        metadata_max_age_ms: int = 5000,
        client_id: str = "",
        group_remote_assignor: str | None = None,
        key_deserializer: Deserializer | None = None,
        value_deserializer: Deserializer | None = None,
        ssl_cafile: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        token: str | None = None,
        fetch_stream: bool = True,
    ) -> None:
        self._options = _Options(
            group_id,
            auto_offset_reset,
            enable_auto_commit,
            auto_commit_interval_ms,
            max_poll_records,
            fetch_min_bytes,
            fetch_max_wait_ms,
            fetch_max_bytes,
            max_partition_fetch_bytes,
            session_timeout_ms,
            heartbeat_interval_ms,
            max_poll_interval_ms,
            request_timeout_ms,
            retry_backoff_ms,
            metadata_max_age_ms,
            client_id,
            group_remote_assignor,
        )
        self._options.validate()
        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self.address = resolve_bootstrap(bootstrap)
        self._timeout_s = request_timeout_ms / 1000
        self._channel = open_channel(
            self.address, ClientSecurity.resolve(ssl_cafile, ssl_certfile, ssl_keyfile, token)
        )
        self._stub = make_stub(self._channel)
        # Room for two fetches per partition: one answer is drained while the next arrives.
        self._buffer = _Buffer(2 * fetch_max_bytes, 2 * max_partition_fetch_bytes)
        self._membership: _Membership | None = None
        if group_id is not None:
            rebalance = _Rebalance(
                self._revoke_partitions, self._lose_partitions, self._add_partitions
            )
            self._membership = _GroupMember(
                self._stub, self._options, self.address, rebalance, self._wake_poll
            )
        #: "assign", "subscribe" or None: the two ways to own partitions exclude each other
        self._mode: str | None = None
        self._closed = False
        self._closing = False
        self._committer: ThreadPoolExecutor | None = None
        self._pending_commits: set[Future[None]] = set()
        self._next_auto_commit = time.monotonic() + auto_commit_interval_ms / 1000
        #: unresolved positions are not looked up again before this (monotonic seconds)
        self._resolve_at = 0.0
        self._resolve_backoff = _Backoff(retry_backoff_ms / 1000)
        self._fetcher: _Fetcher
        if fetch_stream:
            self._fetcher = _StreamFetcher(
                self._buffer, self._stub, self._options, self.address, self._channel
            )
        else:
            self._fetcher = _Fetcher(self._buffer, self._stub, self._options, self.address)
        self._fetcher.start()

    # --- assignment --------------------------------------------------------------------------

    def subscribe(
        self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None
    ) -> None:
        """Join the group to share the partitions of `topics` with its other members.

        Joining happens in the background; partitions are assigned (and the listener
        called) inside later poll() calls. Needs a group_id; excludes assign(). An empty
        list unsubscribes; calling it again replaces the subscription.
        """
        self._ensure_open()
        names = [topics] if isinstance(topics, str) else list(topics)
        if self._membership is None:
            raise errors.InvalidRequestError("subscribe() needs a group_id; use assign() without")
        bad = [name for name in names if not isinstance(name, str) or not name]
        if bad:
            raise errors.InvalidRequestError(f"topic names must be non-empty strings: {bad!r}")
        if self._mode == "assign":
            raise errors.InvalidRequestError(
                "subscribe() after assign(): a consumer uses one or the other "
                "(call unsubscribe() first)"
            )
        if not names:
            self.unsubscribe()
            return
        self._mode = "subscribe"
        self._membership.subscribe(names, listener)

    def unsubscribe(self) -> None:
        """Give up every partition, whether subscribed or assigned; a member revokes its
        partitions (committing them with auto-commit) and leaves the group."""
        self._ensure_open()
        if self._mode == "subscribe" and self._membership is not None:
            self._membership.leave(min(self._timeout_s, CLOSE_JOIN_S))
        else:
            self._change_assignment(set(self._assigned()), set())
        self._mode = None

    def subscription(self) -> set[str]:
        self._ensure_open()
        if self._mode != "subscribe" or self._membership is None:
            return set()
        return set(self._membership.subscription())

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Own exactly `partitions` (topic, partition), without group coordination.

        Positions start at the group's committed offsets when there is a group_id, else
        (and when nothing is committed) per auto_offset_reset. Excludes subscribe().
        """
        self._ensure_open()
        wanted = {_tp(tp) for tp in partitions}
        if self._mode == "subscribe":
            raise errors.InvalidRequestError(
                "assign() after subscribe(): a consumer uses one or the other "
                "(call unsubscribe() first)"
            )
        self._mode = "assign" if wanted else None
        self._change_assignment(set(self._assigned()), wanted)

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer currently owns (for a group member: as of the last
        change poll() applied)."""
        self._ensure_open()
        return set(self._assigned())

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching `partitions` and returning their records from poll(), keeping
        their positions and what is already buffered, until resume(). A group member keeps
        heartbeating meanwhile (Kafka's pause: flow control, e.g. while a downstream is
        slow or a retry is not yet due). Raises InvalidRequestError for a partition this
        consumer does not own; a pause ends when the partition is revoked."""
        self._set_paused(partitions, True)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch and return `partitions` again after pause()."""
        self._set_paused(partitions, False)

    def paused(self) -> set[TopicPartition]:
        """The owned partitions that are paused."""
        self._ensure_open()
        with self._buffer.lock:
            return {tp for tp, state in self._buffer.states.items() if state.paused}

    def _set_paused(self, partitions: Iterable[TopicPartition], paused: bool) -> None:
        self._ensure_open()
        wanted = [_tp(tp) for tp in partitions]
        buffer = self._buffer
        with buffer.lock:
            unknown = [f"{t}-{p}" for t, p in wanted if (t, p) not in buffer.states]
            if unknown:
                verb = "pause" if paused else "resume"
                raise errors.InvalidRequestError(
                    f"cannot {verb} {', '.join(sorted(unknown))}: not assigned to this consumer"
                )
            for tp in wanted:
                buffer.states[tp].paused = paused
            buffer.wake_fetcher()
            buffer.data_ready.notify_all()

    def _assigned(self) -> list[TopicPartition]:
        with self._buffer.lock:
            return list(self._buffer.states)

    def _revoke_partitions(
        self, revoked: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Give `revoked` back to the group: commit their positions (with auto-commit; not
        again while closing, which has just committed), tell the listener while they are
        still owned, then stop reading them, even if the listener raises."""
        try:
            # An older async commit landing after this one would move the offsets back.
            self._await_pending_commits(CLOSE_JOIN_S if self._closing else self._timeout_s)
            if self._auto_commit_enabled() and not self._closing:
                self._commit_quietly(self._consumed(revoked), self._timeout_s)
            if listener is not None:
                listener.on_partitions_revoked(set(revoked))
        finally:
            self._drop_partitions(revoked)

    def _lose_partitions(
        self, lost: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Drop `lost` without committing (another member may own them already), telling
        the listener first."""
        try:
            if listener is not None:
                callback = getattr(listener, "on_partitions_lost", listener.on_partitions_revoked)
                callback(set(lost))
        finally:
            self._drop_partitions(lost)

    def _add_partitions(
        self, added: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Start reading `added` (from the committed offsets, else per auto_offset_reset),
        then tell the listener, which may seek them."""
        self._set_states(set(self._assigned()) | added)
        if listener is not None:
            listener.on_partitions_assigned(set(added))

    def _drop_partitions(self, tps: set[TopicPartition]) -> None:
        self._set_states(set(self._assigned()) - tps)

    def _wake_poll(self) -> None:
        """Make a waiting poll() look at the membership now (called by the heartbeat
        thread)."""
        with self._buffer.lock:
            self._buffer.data_ready.notify_all()

    def _change_assignment(self, old: set[TopicPartition], new: set[TopicPartition]) -> None:
        # As Kafka's assign(): positions of dropped partitions are committed asynchronously.
        removed = old - new
        if removed and self._auto_commit_enabled():
            offsets = self._consumed(removed)
            if offsets:
                self._submit_commit(offsets, self._log_auto_commit)
        self._set_states(new)

    def _set_states(self, wanted: set[TopicPartition]) -> None:
        strategy = _COMMITTED if self._options.group_id else self._options.reset_policy
        with self._buffer.lock:
            self._buffer.set_assignment(wanted, strategy)
        self._resolve_at = 0.0  # new partitions resolve at once

    # --- polling -----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_records: int | None = None) -> list[ConsumerRecord]:
        """Up to `max_records` (default max_poll_records) records, waiting up to `timeout`
        seconds for some; [] if none arrived in time.

        Per partition, records come in offset order and continue exactly where the previous
        poll() (or seek) left off. A group member applies assignment changes here, calling
        the listener, before it returns records. Raises NoOffsetForPartitionError when a
        position cannot be resolved with auto_offset_reset="error", and errors the fetcher
        or the group coordinator answered (once each).
        """
        self._ensure_open()
        if self._mode is None:
            raise errors.InvalidRequestError(
                "poll() needs partitions: call subscribe() or assign() first"
            )
        limit = max_records or self._options.max_poll_records
        deadline = time.monotonic() + max(timeout, 0.0)
        member = self._membership if self._mode == "subscribe" else None
        self._maybe_auto_commit()
        buffer = self._buffer
        while True:
            if member is not None:
                member.poll_hook()
            retry_in = self._try_resolve_positions()
            with buffer.lock:
                self._raise_fetch_error()
                records = buffer.drain(limit)
                remaining = deadline - time.monotonic()
                if records or remaining <= 0:
                    break
                if member is None or not member.has_news():
                    # bounded so the membership sees this poll at least once an interval
                    heartbeat_s = self._options.heartbeat_interval_ms / 1000
                    buffer.data_ready.wait(min(remaining, retry_in, heartbeat_s))
        return self._deserialize(records)

    def _raise_fetch_error(self) -> None:
        """Raise (once) a fetch failure the application has not seen; caller holds the lock."""
        error, self._buffer.fetch_error = self._buffer.fetch_error, None
        if error is not None:
            raise error

    def _deserialize(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        key_fn, value_fn = self._key_deserializer, self._value_deserializer
        if key_fn is None and value_fn is None:
            return records
        new = tuple.__new__
        return [
            new(
                ConsumerRecord,
                (
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4] if key_fn is None or r[4] is None else key_fn(r[4]),
                    r[5] if value_fn is None or r[5] is None else value_fn(r[5]),
                    r[6],
                ),
            )
            for r in records
        ]

    # --- positions ---------------------------------------------------------------------------

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Make the next poll() return `topic`-`partition` records from `offset` on."""
        self._ensure_open()
        if offset < 0:
            raise errors.InvalidRequestError(f"cannot seek to negative offset {offset}")
        tp = _tp((topic, partition))
        with self._buffer.lock:
            self._require_assigned([tp])
            self._buffer.reposition(tp, offset, None)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Read `partitions` (default: all assigned) from their log start, resolved lazily."""
        self._seek_to("earliest", partitions)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Read `partitions` (default: all assigned) from their end, resolved lazily."""
        self._seek_to("latest", partitions)

    def _seek_to(self, strategy: str, partitions: Iterable[TopicPartition] | None) -> None:
        self._ensure_open()
        with self._buffer.lock:
            tps = list(self._buffer.states) if partitions is None else [_tp(p) for p in partitions]
            self._require_assigned(tps)
            for tp in tps:
                self._buffer.reposition(tp, None, strategy)
        self._resolve_at = 0.0

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record poll() returns for `tp` (resolving it if needed,
        for up to request_timeout_ms)."""
        self._ensure_open()
        tp = _tp(tp)
        deadline = time.monotonic() + self._timeout_s
        while True:
            with self._buffer.lock:
                self._require_assigned([tp])
                position = self._buffer.states[tp].position
            if position is not None:
                return position
            self._resolve_at = 0.0  # the caller is waiting: ask now, back off after
            retry_in = self._try_resolve_positions()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.RequestTimedOutError(f"position of {tp[0]}-{tp[1]} not resolved")
            if retry_in != float("inf"):
                time.sleep(min(retry_in, remaining))

    def _require_assigned(self, tps: Iterable[TopicPartition]) -> None:
        missing = [tp for tp in tps if tp not in self._buffer.states]
        if missing:
            raise errors.InvalidRequestError(
                f"partitions {sorted(missing)} are not assigned to this consumer"
            )

    def _try_resolve_positions(self) -> float:
        """Resolve what is unresolved, at most once per backoff while the broker cannot
        answer; returns seconds until the next attempt is due (inf if none is needed)."""
        now = time.monotonic()
        if now < self._resolve_at:
            return self._resolve_at - now
        try:
            pending = self._resolve_positions()
        except errors.LogStoreError as exc:
            if not is_retriable(exc):
                raise
            log.debug("resolving positions failed, retrying: %s", exc)
            pending = True
        if not pending:
            self._resolve_backoff.reset()
            return float("inf")
        delay = self._resolve_backoff.next()
        self._resolve_at = time.monotonic() + delay
        return delay

    def _resolve_positions(self) -> bool:
        """Give unresolved partitions a position: the committed offset, else the reset
        policy. Returns True if some stay unresolved (unknown topic); raises
        NoOffsetForPartitionError for partitions whose policy is "error"."""
        with self._buffer.lock:
            if not self._buffer.unresolved:
                return False
            pending = {
                tp: (s.epoch, s.strategy or self._options.reset_policy, s.reason)
                for tp, s in self._buffer.states.items()
                if s.fetch_position is None and not s.halted
            }
            self._buffer.unresolved = bool(pending)
        if not pending:
            return False
        found: dict[TopicPartition, int] = {}
        committing = [tp for tp, (_, strategy, _) in pending.items() if strategy == _COMMITTED]
        if committing:
            committed = self._fetch_committed(committing)
            found.update({tp: om.offset for tp, om in committed.items()})
        policy = self._options.reset_policy
        wanted = {
            tp: policy if strategy == _COMMITTED else strategy
            for tp, (_, strategy, _) in pending.items()
            if tp not in found
        }
        specs = {
            tp: EARLIEST_TIMESTAMP if s == "earliest" else LATEST_TIMESTAMP
            for tp, s in wanted.items()
        }
        specs = {tp: spec for tp, spec in specs.items() if wanted[tp] != "error"}
        listed, failed = self._list_offsets(specs)
        found.update({tp: ot.offset for tp, ot in listed.items()})
        self._apply_positions(found, pending)
        self._raise_no_offset([tp for tp, s in wanted.items() if s == "error"], pending)
        for exc in failed.values():
            if not isinstance(exc, errors.UnknownTopicOrPartitionError):
                raise exc
        return bool(failed)

    def _apply_positions(
        self,
        found: dict[TopicPartition, int],
        pending: dict[TopicPartition, tuple[int, str, str]],
    ) -> None:
        with self._buffer.lock:
            for tp, offset in found.items():
                state = self._buffer.states.get(tp)
                # Skip partitions revoked or repositioned while we asked the broker.
                if state is None or state.epoch != pending[tp][0]:
                    continue
                if state.fetch_position is not None:
                    continue
                state.position = state.fetch_position = offset
                state.strategy = None
                state.reason = ""
            if found:
                self._buffer.wake_fetcher()

    def _raise_no_offset(
        self,
        tps: list[TopicPartition],
        pending: dict[TopicPartition, tuple[int, str, str]],
    ) -> None:
        if not tps:
            return
        reasons = sorted({pending[tp][2] for tp in tps if pending[tp][2]})
        why = "; ".join(reasons) if reasons else "no committed offset"
        raise errors.NoOffsetForPartitionError(
            f"no valid position for {sorted(tps)} ({why}) and auto_offset_reset='error': "
            "seek() to an offset or use auto_offset_reset='earliest' or 'latest'"
        )

    # --- offset queries ----------------------------------------------------------------------

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """Per partition, the first offset whose record timestamp (ms) is >= the one
        given, with that timestamp; None when no record is that new."""
        self._ensure_open()
        specs = {_tp(tp): int(ts) for tp, ts in timestamps.items()}
        bad = {tp: ts for tp, ts in specs.items() if ts < 0}
        if bad:
            raise errors.InvalidRequestError(f"timestamps must be >= 0 ms, got {bad}")
        listed = self._list_offsets_or_raise(specs)
        return {tp: (ot if ot.offset >= 0 else None) for tp, ot in listed.items()}

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition."""
        self._ensure_open()
        listed = self._list_offsets_or_raise({_tp(tp): EARLIEST_TIMESTAMP for tp in partitions})
        return {tp: ot.offset for tp, ot in listed.items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last readable record of each partition."""
        self._ensure_open()
        listed = self._list_offsets_or_raise({_tp(tp): LATEST_TIMESTAMP for tp in partitions})
        return {tp: ot.offset for tp, ot in listed.items()}

    def _list_offsets_or_raise(
        self, specs: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp]:
        listed, failed = self._list_offsets(specs)
        for exc in failed.values():
            raise exc
        return listed

    def _list_offsets(
        self, specs: Mapping[TopicPartition, int]
    ) -> tuple[
        dict[TopicPartition, OffsetAndTimestamp], dict[TopicPartition, errors.LogStoreError]
    ]:
        """ListOffsets for (tp -> -2 | -1 | timestamp ms): results and per-partition errors."""
        if not specs:
            return {}, {}
        request = pb.ListOffsetsRequest(
            topics=[
                pb.ListOffsetsTopic(
                    topic=topic,
                    partitions=[pb.ListOffsetsPartition(partition=p, timestamp=ts) for p, ts in ps],
                )
                for topic, ps in _by_topic(specs.items()).items()
            ]
        )
        listed: dict[TopicPartition, OffsetAndTimestamp] = {}
        failed: dict[TopicPartition, errors.LogStoreError] = {}
        for topic in self._call("ListOffsets", request).topics:
            for p in topic.partitions:
                error = partition_error(p.error)
                if error is not None:
                    failed[(topic.topic, p.partition)] = error
                else:
                    listed[(topic.topic, p.partition)] = OffsetAndTimestamp(p.offset, p.timestamp)
        return listed, failed

    def committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        """What the group has committed for `tp` (the next offset it will read), or None."""
        self._ensure_open()
        tp = _tp(tp)
        return self._fetch_committed([tp]).get(tp)

    def _fetch_committed(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        group = self._require_group("committed offsets")
        request = pb.FetchCommittedOffsetsRequest(
            group_id=group,
            topics=[
                pb.TopicPartitions(topic=topic, partitions=[p for p, _ in ps])
                for topic, ps in _by_topic((tp, None) for tp in tps).items()
            ],
        )
        return {
            (o.topic, o.partition): OffsetAndMetadata(o.offset, o.metadata, o.commit_timestamp)
            for o in self._call("FetchCommittedOffsets", request).offsets
            if o.offset >= 0
        }

    # --- commits -----------------------------------------------------------------------------

    def commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None
    ) -> None:
        """Commit `offsets` (default: the position of every assigned partition, i.e. the
        offset after what poll() returned) and wait for the broker to store them.

        A subscribed consumer commits as its group member (id and epoch) and only the
        partitions it owns now; others are skipped. Retriable failures are retried for up
        to request_timeout_ms. Raises CommitFailedError when the group refuses the commit,
        also when the coordinator has dropped this member (its session expired, or the
        broker restarted): the consumer then rejoins in the next poll(). Otherwise raises
        the error met.
        """
        self._ensure_open()
        self._require_group("commit()")
        chosen = self._consumed() if offsets is None else _normalize_offsets(offsets)
        self._commit_sync(chosen, self._timeout_s)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None,
        callback: CommitCallback | None = None,
    ) -> Future[None]:
        """Commit in the background (one attempt, in call order), then call
        `callback(offsets, exception or None)` from the commit thread.

        The offsets are taken now (default: current positions). Returns a Future that
        completes with the commit (its result() raises the commit's error).
        """
        self._ensure_open()
        self._require_group("commit_async()")
        chosen = self._consumed() if offsets is None else _normalize_offsets(offsets)
        return self._submit_commit(chosen, callback)

    def _submit_commit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: CommitCallback | None
    ) -> Future[None]:
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="logstore-consumer-commit")
        future = self._committer.submit(self._commit_once, offsets, callback)
        self._pending_commits.add(future)
        future.add_done_callback(self._pending_commits.discard)
        return future

    def _commit_once(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: CommitCallback | None
    ) -> None:
        error: Exception | None = None
        try:
            self._send_commit(offsets)
        except errors.LogStoreError as exc:
            error = exc
        if callback is not None:
            try:
                callback(offsets, error)
            except Exception:
                log.exception("commit callback failed")
        if error is not None:
            raise error

    def _commit_sync(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        backoff = _Backoff(self._options.retry_backoff_ms / 1000)
        while True:
            try:
                self._send_commit(offsets)
                return
            except errors.LogStoreError as exc:
                delay = backoff.next()
                if not is_retriable(exc) or time.monotonic() + delay >= deadline:
                    raise
                log.debug("commit failed, retrying in %.2fs: %s", delay, exc)
                time.sleep(delay)

    def _send_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        group = self._require_group("commit")
        member_id, epoch, offsets = self._as_committer(group, offsets)
        if not offsets:
            return
        request = pb.CommitOffsetsRequest(
            group_id=group,
            member_id=member_id,
            generation_id=epoch,
            topics=[
                pb.CommitTopic(
                    topic=topic,
                    partitions=[
                        pb.CommitPartition(partition=p, offset=om.offset, metadata=om.metadata)
                        for p, om in ps
                    ],
                )
                for topic, ps in _by_topic(offsets.items()).items()
            ],
        )
        try:
            response = self._call("CommitOffsets", request)
        except _REJOIN_ERRORS as exc:
            if self._membership is not None and member_id:
                self._membership.commit_refused(member_id, epoch, str(exc))
            raise _member_commit_failed(group, str(exc)) from exc
        for topic in response.topics:
            for p in topic.partitions:
                error = partition_error(p.error)
                if error is not None:
                    raise error

    def _as_committer(
        self, group: str, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> tuple[str, int, dict[TopicPartition, OffsetAndMetadata]]:
        """(member id, member epoch, offsets) of a commit.

        A group member commits as itself and only partitions it owns now: a partition it
        was never given, or gave up in a rebalance, may be another member's, whose commits
        must not be overwritten (the broker refuses them too). A member that has lost its
        partitions commits nothing and raises CommitFailedError. Outside the group protocol
        (assign()) the commit carries "" and -1, which the broker accepts only while the
        group has no members.
        """
        if self._mode != "subscribe" or self._membership is None:
            return "", -1, offsets
        member_id, epoch, owned, lost = self._membership.commit_identity()
        if lost is not None and offsets:
            raise _member_commit_failed(group, lost)
        foreign = sorted(set(offsets) - owned)
        if foreign:
            log.info("group %s: not committing %s: not owned by this member", group, foreign)
        return member_id, epoch, {tp: om for tp, om in offsets.items() if tp in owned}

    def _await_pending_commits(self, timeout_s: float) -> None:
        if self._pending_commits:
            wait_futures(list(self._pending_commits), timeout=timeout_s)

    def _consumed(
        self, tps: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The current position of each (assigned, resolved) partition, as commit offsets."""
        with self._buffer.lock:
            states = self._buffer.states
            chosen = states if tps is None else [tp for tp in tps if tp in states]
            return {
                tp: OffsetAndMetadata(states[tp].position)  # type: ignore[arg-type]
                for tp in chosen
                if states[tp].position is not None
            }

    def _auto_commit_enabled(self) -> bool:
        return self._options.enable_auto_commit and self._options.group_id is not None

    def _maybe_auto_commit(self) -> None:
        if not self._auto_commit_enabled() or time.monotonic() < self._next_auto_commit:
            return
        self._next_auto_commit = time.monotonic() + self._options.auto_commit_interval_ms / 1000
        offsets = self._consumed()
        if offsets:
            self._submit_commit(offsets, self._log_auto_commit)

    @staticmethod
    def _log_auto_commit(
        offsets: dict[TopicPartition, OffsetAndMetadata], exc: Exception | None
    ) -> None:
        if exc is not None:
            log.warning("auto-commit of %d partitions failed: %s", len(offsets), exc)

    def _commit_quietly(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_s: float
    ) -> None:
        try:
            self._commit_sync(offsets, timeout_s)
        except errors.LogStoreError as exc:
            log.warning("auto-commit of %d partitions failed: %s", len(offsets), exc)

    def _require_group(self, what: str) -> str:
        group = self._options.group_id
        if group is None:
            raise errors.InvalidRequestError(f"{what} needs a consumer created with a group_id")
        return group

    # --- plumbing and lifecycle --------------------------------------------------------------

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from None

    def _ensure_open(self) -> None:
        if self._closed:
            raise errors.ClientClosedError("the consumer is closed")

    def close(self, timeout: float | None = None) -> None:
        """Stop fetching, commit positions (with auto-commit), revoke the assignment and
        leave the group (so its partitions move at once, not after the session timeout),
        disconnect.

        `timeout` (seconds, default request_timeout_ms) bounds the final commit; waits for
        the leave, the heartbeat thread and pending async commits are bounded by it and by
        CLOSE_JOIN_S each. Idempotent; every other method then raises ClientClosedError.
        """
        if self._closed or self._closing:
            return
        # Closed only at the end, so a listener may still commit in on_partitions_revoked.
        self._closing = True
        limit_s = self._timeout_s if timeout is None else max(timeout, 0.0)
        self._fetcher.stop(min(CLOSE_JOIN_S, limit_s + 1.0))
        try:
            if self._auto_commit_enabled():
                self._commit_quietly(self._consumed(), limit_s)
            if self._membership is not None:
                self._membership.close(min(CLOSE_JOIN_S, limit_s))
        except Exception:
            log.exception("error while closing the consumer")
        finally:
            self._closed = True
            self._finish_close(limit_s)

    def _finish_close(self, limit_s: float) -> None:
        self._await_pending_commits(min(CLOSE_JOIN_S, limit_s))
        if self._committer is not None:
            self._committer.shutdown(wait=False, cancel_futures=True)
        self._channel.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------------


def _tp(value: TopicPartition | tuple[str, int]) -> TopicPartition:
    topic, partition = value
    return (str(topic), int(partition))


def _by_topic(items: Iterable[tuple[TopicPartition, Any]]) -> dict[str, list[tuple[int, Any]]]:
    """Group ((topic, partition), value) pairs by topic for the per-topic request layout."""
    grouped: dict[str, list[tuple[int, Any]]] = {}
    for (topic, partition), value in items:
        grouped.setdefault(topic, []).append((partition, value))
    return grouped


def _normalize_offsets(
    offsets: Mapping[TopicPartition, int | OffsetAndMetadata],
) -> dict[TopicPartition, OffsetAndMetadata]:
    normalized: dict[TopicPartition, OffsetAndMetadata] = {}
    for tp, value in offsets.items():
        om = value if isinstance(value, OffsetAndMetadata) else OffsetAndMetadata(int(value))
        if om.offset < 0:
            raise errors.InvalidRequestError(f"cannot commit offset {om.offset} for {tp}")
        normalized[_tp(tp)] = om
    return normalized

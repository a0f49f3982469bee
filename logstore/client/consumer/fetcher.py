"""The fetcher threads: keep fetches in flight and buffer what they bring.

Thin I/O around `fetch_positions.FetchPositions`: which partitions to fetch, what an answer
advances and which answers to drop are decided there; here requests are sent, answers
read and decoded. One fetcher per leader broker (see `routing`), each fetching the
partitions whose `PartitionState.leader` is its address. Times are seconds unless a name
ends in `_ms`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import operator
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import grpc

from logstore import errors
from logstore.client._connection import (
    METADATA_STALE_KINDS,
    is_retriable,
    partition_error,
    translate,
)
from logstore.client.consumer.fetch_positions import Arrival, FetchPositions, Planned
from logstore.client.consumer.options import Backoff, ConsumerOptions
from logstore.client.consumer.progress import ProgressMonitor
from logstore.codec.record_batch import decode_all, decode_batch, iter_batches
from logstore.codec.wire import PartitionAnswer, TopicAnswers, decode_response
from logstore.types import ConsumerRecord, TopicPartition
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger("logstore.client.consumer")

#: fetches the unary fetcher keeps unanswered: one from the real positions, and one ahead
#: of it while a partition has a backlog (see `PartitionState`)
MAX_FETCHES_IN_FLIGHT = 2
#: how long stopping waits for a reader thread (s)
CLOSE_JOIN_S = 5.0
_OFFSET_OF = operator.itemgetter(2)  # ConsumerRecord.offset, without an attribute lookup


class SharedFetchState:
    """`FetchPositions` and the lock and conditions the application and the fetcher share.

    Every access to `positions` holds `lock`. `data_ready` wakes a waiting poll();
    `fetcher_wake` wakes the fetcher (work, answers, interrupts, released bytes).
    """

    def __init__(self, positions: FetchPositions) -> None:
        self.positions = positions
        self.lock = threading.Lock()
        self.data_ready = threading.Condition(self.lock)
        self.fetcher_wake = threading.Condition(self.lock)
        self.closed = False
        #: a whole-fetch failure the application has not seen yet
        self.fetch_error: errors.LogStoreError | None = None

    # The methods below expect the caller to hold `lock`.

    def wake_fetcher(self) -> None:
        """Make the fetcher re-plan now, cancelling a long poll that is out of date."""
        self.positions.interrupt = True
        self.fetcher_wake.notify_all()

    def drain(self, limit: int) -> list[ConsumerRecord]:
        """Up to `limit` records (see RecordBuffer.drain); tells the fetcher when bytes
        were released, so it may fetch more."""
        records = self.positions.records
        before = records.buffered
        try:
            out = self.positions.drain(limit)
        except errors.LogStoreError:
            self.wake_fetcher()  # the halted partition is fetchable again
            raise
        if records.buffered != before:
            self.fetcher_wake.notify_all()
        return out


class _InFlight(NamedTuple):
    future: grpc.Future
    #: (fetch offset, epoch) per partition asked for
    sent: dict[TopicPartition, tuple[int, int]]
    #: a fetch ahead: each partition's records start where its fetch in flight ends
    ahead: bool


def _ignore_stale(topic: str | None) -> None:
    """The default `on_stale`: a single broker leads everything, nothing to look up."""


class Fetcher(threading.Thread):
    """Keeps a Fetch in flight for every fetchable partition `address` leads and buffers
    the records.

    Positions advance only when an answer is accepted, so a failed or cancelled fetch loses
    nothing: the same offsets are asked for again after a backoff (from the partition's
    leader then). The next fetch is sent before the current answer is decoded, so network
    and broker time overlap decoding; partitions with a backlog also get a fetch ahead (see
    `PartitionState`), so one answer travels while the next is read, up to
    MAX_FETCHES_IN_FLIGHT. Answers are taken in the order the fetches were sent.
    `on_stale(topic)` is told (shared lock possibly held) when the broker says it does not
    lead a partition of `topic` (the partition is then unrouted until the metadata says
    where it went), or (None) when the broker cannot be reached.
    """

    def __init__(
        self,
        shared: SharedFetchState,
        stub: Any,
        options: ConsumerOptions,
        address: str,
        progress: ProgressMonitor,
        on_stale: Callable[[str | None], None] = _ignore_stale,
    ) -> None:
        name = options.client_id or options.group_id or "standalone"
        super().__init__(name=f"logstore-consumer-fetcher[{name}]", daemon=True)
        self._shared = shared
        self._stub = stub
        self._options = options
        #: the broker fetched from
        self.address = address
        self._progress = progress
        self._on_stale = on_stale
        self._backoff = Backoff(options.retry_backoff_ms / 1000)
        self._rpc_timeout_s = (options.fetch_max_wait_ms + options.request_timeout_ms) / 1000
        #: set by retire(): this broker leads nothing any more (guarded by the shared lock)
        self._retired = False

    @property
    def _stopping(self) -> bool:
        return self._shared.closed or self._retired

    def stop(self, timeout_s: float) -> None:
        """Stop every fetcher of the consumer (closing), and wait for this one."""
        with self._shared.lock:
            self._shared.closed = True
            self._shared.fetcher_wake.notify_all()
        self.join(timeout_s)

    def retire(self) -> None:
        """End this fetcher only (its broker is gone); returns at once. Caller holds no lock."""
        with self._shared.lock:
            self._retired = True
            self._shared.fetcher_wake.notify_all()

    def run(self) -> None:
        pending: deque[_InFlight] = deque()
        while not self._stopping:
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
        with self._shared.lock:
            states = self._shared.positions.states
            for inflight in pending:
                for tp, (_, epoch) in inflight.sent.items():
                    state = states.get(tp)
                    if state is not None and state.epoch == epoch:
                        state.forget_fetches()
        pending.clear()

    # --- sending ------------------------------------------------------------------------

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

    def _plan(self, block: bool, ahead: bool) -> list[Planned]:
        shared = self._shared
        with shared.lock:
            while not self._stopping:
                plan, retry_at = shared.positions.plan(time.monotonic(), ahead, self.address)
                if not ahead:
                    # This plan reflects every change so far. (Not a plan ahead: a change
                    # since the last plan must still cancel the fetches it made.)
                    shared.positions.interrupt = False
                if plan or not block:
                    return plan
                wait = None if retry_at is None else max(retry_at - time.monotonic(), 0.0)
                shared.fetcher_wake.wait(wait)
        return []

    def _on_done(self, _future: grpc.Future) -> None:
        with self._shared.lock:
            self._shared.fetcher_wake.notify_all()

    # --- receiving ----------------------------------------------------------------------

    def _await(self, inflight: _InFlight) -> pb.FetchResponse | None:
        """The answer, or None when the fetch was cancelled or failed (after a backoff)."""
        shared = self._shared
        future = inflight.future
        with shared.lock:
            while not future.done() and not shared.positions.interrupt and not self._stopping:
                shared.fetcher_wake.wait(1.0)
            shared.positions.interrupt = False
        if not future.done() and future.cancel():
            return None
        try:
            response = future.result()
        except grpc.FutureCancelledError:
            return None
        except grpc.RpcError as exc:
            self._request_failed(translate(exc, self.address))
            return None
        self._answered()
        return response

    def _answered(self) -> None:
        self._backoff.reset()
        self._progress.broker_answered()

    def _request_failed(self, exc: errors.LogStoreError) -> None:
        if self._stopping:
            return
        if isinstance(exc, errors.BrokerUnavailableError):
            self._progress.broker_failed(str(exc))
            self._on_stale(None)  # is it still the leader, and alive?
        if is_retriable(exc):
            log.debug("fetch failed, retrying: %s", exc)
        else:
            log.warning("fetch failed: %s", exc)
            self._report(exc)
        self._sleep(self._backoff.next())

    def _report(self, exc: errors.LogStoreError) -> None:
        with self._shared.lock:
            self._shared.fetch_error = exc
            self._shared.data_ready.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the consumer closes."""
        deadline = time.monotonic() + seconds
        with self._shared.lock:
            while not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._shared.fetcher_wake.wait(remaining)

    def _accept(self, inflight: _InFlight, response: pb.FetchResponse) -> list[Arrival]:
        """Advance fetch positions past the answer (reserving its bytes), handle errors."""
        results = {
            (topic_result.topic, result.partition): result
            for topic_result in response.topics
            for result in topic_result.partitions
        }
        arrivals: list[Arrival] = []
        now = time.monotonic()
        shared = self._shared
        positions = shared.positions
        with shared.lock:
            for tp, (offset, epoch) in inflight.sent.items():
                state = positions.states.get(tp)
                if state is None or state.epoch != epoch:
                    continue  # reassigned or repositioned since the fetch was sent
                state.inflight -= 1
                result = results.get(tp)
                if result is None:
                    continue  # not answered: fetched again from fetch_position
                arrival = self._accept_one(tp, offset, result, now, inflight.ahead)
                if arrival is not None:
                    arrivals.append(arrival)
        return arrivals

    def _accept_one(
        self,
        tp: TopicPartition,
        offset: int,
        result: pb.FetchPartitionResult | PartitionAnswer,
        now: float,
        ahead: bool,
    ) -> Arrival | None:
        """One partition's answer, through `FetchPositions.accept`; caller holds the lock."""
        shared = self._shared
        state = shared.positions.states[tp]
        error = partition_error(result.error) if result.error.code else None
        if error is not None and type(error).__name__ in METADATA_STALE_KINDS:
            # fetched again, from the same position, once the metadata names the leader
            state.leader = None
            self._on_stale(tp[0])
        arrival = shared.positions.accept(
            tp, state, offset, error, result.records, result.high_watermark, now, ahead
        )
        if error is not None or (arrival is None and state.halted):
            shared.data_ready.notify_all()  # an error to raise, or a reset to resolve
        return arrival

    def _deliver(self, arrivals: list[Arrival]) -> None:
        """Decode each arrival (without the lock) and append it to the buffer."""
        shared = self._shared
        for arrival in arrivals:
            records, skip, error, error_offset = decode(arrival)
            with shared.lock:
                if shared.positions.deliver(arrival, records, skip, error, error_offset):
                    shared.data_ready.notify_all()


# --- the streaming fetcher ----------------------------------------------------------------

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
    """One open FetchStream and what is in flight on it; guarded by the shared lock.

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


class StreamFetcher(Fetcher):
    """Fetches over one FetchStream with up to STREAM_DEPTH requests in flight.

    Same positions and epochs as `Fetcher`; the difference is that a partition with
    records to read keeps several fetches in flight, each continuing where the one before
    ended (fetch_offset -1), so the broker reads the next chunk while the previous one is
    on the wire or being decoded. This thread plans and sends; a reader thread accepts and
    decodes the answers in order. A broker without FetchStream (UNIMPLEMENTED) is read
    with unary Fetch calls, as `Fetcher` does.
    """

    def __init__(
        self,
        shared: SharedFetchState,
        stub: Any,
        options: ConsumerOptions,
        address: str,
        progress: ProgressMonitor,
        channel: grpc.Channel,
        on_stale: Callable[[str | None], None] = _ignore_stale,
    ) -> None:
        super().__init__(shared, stub, options, address, progress, on_stale)
        # Answers are decoded by hand so that records stay views of the received bytes.
        self._fetch_stream = channel.stream_stream(
            FETCH_STREAM_METHOD,
            request_serializer=pb.FetchRequest.SerializeToString,
            response_deserializer=decode_response,
        )

    def run(self) -> None:
        while not self._stopping:
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
        shared = self._shared
        with shared.lock:
            while not self._stopping and stream.failed is None:
                now = time.monotonic()
                if stream.pending and now - stream.pending[0][1] > self._rpc_timeout_s:
                    stream.failed = errors.RequestTimedOutError("fetch stream: answer overdue")
                    break
                sent, wait = self._plan_stream(stream, now)
                shared.positions.interrupt = False
                if sent:
                    stream.pending.append((sent, now))
                    return self._stream_request(sent)
                shared.fetcher_wake.wait(wait)
        return None

    def _plan_stream(self, stream: _Stream, now: float) -> tuple[_StreamSent, float]:
        """The partitions to put in the next request (empty if none is due or the window
        is full), and how long to wait before planning again."""
        wait = self._rpc_timeout_s
        if len(stream.pending) >= STREAM_DEPTH:
            return {}, wait
        fetch_bytes = self._options.max_partition_fetch_bytes
        positions = self._shared.positions
        budget = max(positions.records.partition_limit, STREAM_DEPTH * fetch_bytes)
        ready, retry_at = positions.candidates(now, budget, self.address)
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

    # --- the reader thread --------------------------------------------------------------

    def _read(self, stream: _Stream) -> None:
        """Accept and decode each answer in order; record how the stream ended."""
        failure: errors.LogStoreError
        try:
            for response in stream.call:
                arrivals = self._accept_answer(stream, response)
                self._answered()
                self._deliver(arrivals)
            failure = errors.BrokerUnavailableError("the broker ended the fetch stream")
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                stream.unimplemented = True
            failure = translate(exc, self.address)
        with self._shared.lock:
            if stream.failed is None:
                stream.failed = failure
            self._shared.fetcher_wake.notify_all()

    def _accept_answer(self, stream: _Stream, response: TopicAnswers) -> list[Arrival]:
        shared = self._shared
        now = time.monotonic()
        arrivals: list[Arrival] = []
        with shared.lock:
            sent, _ = stream.pending.popleft()
            for tp in sent:
                stream.inflight[tp] -= 1
            for topic, answers in response:
                for answer in answers:
                    tp = (topic, answer.partition)
                    arrival = self._accept_stream_one(stream, sent, tp, answer, now)
                    if arrival is not None:
                        arrivals.append(arrival)
            shared.fetcher_wake.notify_all()
        return arrivals

    def _accept_stream_one(
        self,
        stream: _Stream,
        sent: _StreamSent,
        tp: TopicPartition,
        result: PartitionAnswer,
        now: float,
    ) -> Arrival | None:
        asked = sent.get(tp)
        state = self._shared.positions.states.get(tp)
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
        arrival = self._accept_one(tp, offset, result, now, ahead=False)
        if arrival is None:
            stream.hot.discard(tp)
        else:
            stream.hot.add(tp)
        return arrival


# --- decoding -----------------------------------------------------------------------------


def decode(
    arrival: Arrival,
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
    arrival: Arrival,
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


def _as_corrupt(arrival: Arrival, offset: int, exc: Exception) -> errors.LogStoreError:
    if isinstance(exc, errors.LogStoreError):
        return exc
    topic, partition = arrival.tp
    return errors.CorruptRecordError(f"{topic}-{partition}: batch at offset {offset}: {exc!r}")

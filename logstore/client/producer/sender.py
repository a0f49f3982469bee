"""The producer's I/O: a sender thread that turns ready batches into requests on one
pipelined `ProduceStream` per leader broker, and a reader thread per stream that matches
answers to requests.

Every decision (what to close, what to send, what an answer or a broken stream means) is
the `RecordAccumulator`'s; this module only moves bytes and wakes threads. One stream
instead of one call per request saves the ~0.5 ms a unary gRPC call costs in Python.
Answers come in request order. After a retriable failure a partition waits for its
requests in flight, then resends its batches byte for byte, in sequence order, on a new
stream (to its leader as the metadata says then), so the broker recognises a batch it
already has and answers with the original offset. With one broker (standalone) there is
one stream, to it. Times are in ms of the accumulator's clock; gRPC timeouts and waits in
seconds.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from logstore import errors
from logstore.client._connection import (
    ERROR_KIND_KEY,
    METADATA_STALE_KINDS,
    partition_error,
    translate,
)
from logstore.codec.wire import encode_produce_request
from logstore.v1 import logstore_pb2 as pb

from .accumulator import Batch, Outcome, Partition, RecordAccumulator
from .futures import settle

log = logging.getLogger("logstore.client.producer")


class Request:
    """One ProduceRequest: at most one batch per partition, sent as one message."""

    __slots__ = ("batches", "cid", "message", "sent_at")

    def __init__(self, cid: int, batches: list[Batch], acks: int, now: float) -> None:
        self.cid = cid
        self.batches = batches
        self.sent_at = now  # ms
        by_topic: dict[str, list[tuple[int, bytes]]] = {}
        for batch in batches:
            by_topic.setdefault(batch.part.topic.name, []).append(
                (batch.part.partition, batch.data)
            )
        #: the serialized ProduceRequest
        self.message = encode_produce_request(acks, cid, by_topic)


class Stream:
    """One `ProduceStream` call to `node`'s broker and the requests on it (guarded by the
    producer lock).

    Invariants: `to_write` holds requests gRPC has not taken yet; `unanswered` holds, in send
    order, every acks != 0 request given to this stream and not answered yet. Once `dead`,
    both are empty and the stream is never used again.
    """

    def __init__(self, lock: threading.Lock, node: Node) -> None:
        self.node = node
        self.to_write: deque[Request] = deque()
        self.unanswered: deque[Request] = deque()
        self.wakeup = threading.Condition(lock)
        self.dead = False
        self.finishing = False
        #: why the producer cancelled the call itself, if it did
        self.cancelled_because: errors.LogStoreError | None = None
        self.call: Any = None
        self.reader: threading.Thread | None = None


class Node:
    """A leader broker the sender talks to: its live stream, if any, and the backoff
    before the next one after streams to it failed (`retry_at`, ms)."""

    __slots__ = ("address", "failures", "retry_at", "stream")

    def __init__(self, address: str) -> None:
        self.address = address
        self.stream: Stream | None = None
        self.failures = 0
        self.retry_at = 0.0


class Sender:
    """The sender thread and the streams' reader threads around one `RecordAccumulator`.

    Invariants: `lock` guards the accumulator, the streams and every field here; at most one
    stream per leader broker is live (`Node.stream`), and a request goes to the stream of
    the leader of all its batches' partitions; futures are settled with no lock held.
    `idle` is notified whenever batches finish, `wake` whenever the sender has something
    new to look at. `on_stale(topic)` (lock held) is told when a broker said it no longer
    leads a partition of `topic`, or (None) when a leader stopped answering.
    """

    def __init__(
        self,
        accumulator: RecordAccumulator,
        lock: threading.Lock,
        *,
        stub: Any,
        open_call: Callable[[str, Iterator[bytes]], Any],
        address: str,
        request_timeout_ms: float,
        on_tick: Callable[[float], float],
        on_stale: Callable[[str | None], None],
    ) -> None:
        self.acc = accumulator
        self.lock = lock
        self.wake = threading.Condition(lock)
        self.idle = threading.Condition(lock)
        self._stub = stub
        self._open_call = open_call
        self._address = address
        self._request_timeout_ms = request_timeout_ms
        #: called every round with the time (ms); returns when (ms) it must run next
        self._on_tick = on_tick
        self._on_stale = on_stale
        self._tick_at = 0.0
        self._wake_pending = False
        #: the leader brokers, by address
        self._nodes: dict[str, Node] = {}
        self._reset_retry_at = 0.0
        self._correlation = itertools.count(1)
        self.stopping = False
        self._thread = threading.Thread(target=self._run, name="logstore-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Wake the sender thread (lock held); remembered if it is not waiting yet."""
        self._wake_pending = True
        self.wake.notify()

    # --- the sender thread -------------------------------------------------------------

    def _run(self) -> None:
        """Rounds of `_step` until the producer is closed and drained."""
        while True:
            try:
                if self._step():
                    return
            except Exception:
                # A bug here must not silently stop delivery: log it and keep going, unless
                # close() is waiting for this thread.
                log.exception("producer sender loop failed")
                if self.stopping:
                    return
                time.sleep(0.1)

    def _step(self) -> bool:
        """One round; True when the producer is stopped and the thread ends."""
        now = self.acc.clock.monotonic_ms()
        with self.lock:
            due = self.acc.close_due(now)
        for part in due:
            # send_batch may hold the lock while it waits for space; it encodes these itself.
            if part.encode_lock.acquire(blocking=False):
                try:
                    self.encode_closed(part)
                finally:
                    part.encode_lock.release()
        with self.lock:
            expired = self.acc.expire(now)
        self.finish(expired)
        self._tick_at = self._on_tick(now)
        self._reset_sequences(now)
        self._send_ready(now)
        return self._wait(now)

    def encode_closed(self, part: Partition, take_open: bool = False) -> None:
        """Encode the partition's closed batches (and its open one) and queue them.

        The caller holds `part.encode_lock`, so sequences follow queue order.
        """
        with self.lock:
            batches = self.acc.take_closed(part, take_open)
        if not batches:
            return
        for batch in batches:
            self.acc.encode(batch)
        with self.lock:
            self.acc.queue_ready(part, batches)

    def _reset_sequences(self, now: float) -> None:
        """Give partitions whose batch failed for good a fresh producer id, once drained."""
        with self.lock:
            due = self.acc.parts_to_reset()
            if not due or now < self._reset_retry_at:
                return
        try:
            # One attempt: the sender thread must not stall while the broker is away.
            response = self._stub.InitProducerId(
                pb.InitProducerIdRequest(), timeout=self._request_timeout_ms / 1000
            )
        except grpc.RpcError as rpc_error:
            exc = translate(rpc_error, self._address)
            log.warning("producer id for a sequence reset not available yet: %s", exc)
            with self.lock:
                self._reset_retry_at = now + self.acc.retry.backoff_ms(2)
            return
        for part in due:
            if part.encode_lock.acquire(blocking=False):
                try:
                    with self.lock:
                        self.acc.reset_sequences(
                            part, response.producer_id, response.producer_epoch
                        )
                finally:
                    part.encode_lock.release()

    def _send_ready(self, now: float) -> None:
        """Pack ready batches into requests and give them to their leaders' streams."""
        if self._cancel_if_stuck(now):
            return
        with self.lock:
            if not self.acc.ready_parts:
                return
            for address in self.acc.ready_leaders():
                node = self._nodes.get(address)
                if node is None:
                    node = self._nodes[address] = Node(address)
                self._send_to(node, now)

    def _send_to(self, node: Node, now: float) -> None:
        """Give `node`'s stream the requests its free in-flight slots allow (lock held)."""
        acks = self.acc.acks
        stream = node.stream
        if stream is None and now >= node.retry_at:
            stream = self._open_stream(node)
        if stream is None:
            return
        busy = len(stream.unanswered) if acks else len(stream.to_write)
        requests = [
            Request(next(self._correlation), batches, acks, now)
            for batches in self.acc.drain(now, self.acc.max_in_flight - busy, node.address)
        ]
        if requests:
            stream.to_write.extend(requests)
            if acks:
                stream.unanswered.extend(requests)
            stream.wakeup.notify()

    def _cancel_if_stuck(self, now: float) -> bool:
        """Break each stream whose oldest request is unanswered for request_timeout_ms (its
        reader thread then requeues everything on it); True if one was."""
        stuck = []
        with self.lock:
            for node in self._nodes.values():
                stream = node.stream
                if stream is None or not stream.unanswered or stream.cancelled_because:
                    continue
                if now - stream.unanswered[0].sent_at <= self._request_timeout_ms:
                    continue
                stream.cancelled_because = errors.RequestTimedOutError(
                    f"no answer from {node.address} within request_timeout_ms="
                    f"{self._request_timeout_ms:.0f}"
                )
                stuck.append(stream)
        for stream in stuck:
            log.warning("%s: reconnecting", stream.cancelled_because)
            stream.call.cancel()
        return bool(stuck)

    def _wait(self, now: float) -> bool:
        """Sleep until there is work or a deadline; True when the thread should end."""
        with self.lock:
            if self.stopping and not self.acc.incomplete:
                return True
            if self._wake_pending:
                self._wake_pending = False
                return False
            deadline = self.acc.next_deadline(now)
            if deadline is not None and self.acc.ready_parts:
                # a broker backing off gets a new stream when its backoff ends (one whose
                # backoff ended has one already, or leads nothing ready)
                for node in self._nodes.values():
                    if node.stream is None and node.retry_at > now:
                        deadline = min(deadline, node.retry_at)
            # even with nothing to send, the tick (the metadata refresh) comes when due
            deadline = self._tick_at if deadline is None else min(deadline, self._tick_at)
            self.wake.wait(None if deadline is None else max(0.0, deadline - now) / 1000)
            self._wake_pending = False
        return False

    # --- the stream ----------------------------------------------------------------------

    def _open_stream(self, node: Node) -> Stream:
        """Start a ProduceStream call to `node` and its reader thread (lock held)."""
        stream = Stream(self.lock, node)
        stream.call = self._open_call(node.address, self._requests_of(stream))
        stream.reader = threading.Thread(
            target=self._read, args=(stream,), name="logstore-producer-reader", daemon=True
        )
        node.stream = stream
        stream.reader.start()
        return stream

    def _requests_of(self, stream: Stream) -> Iterator[bytes]:
        """What gRPC writes to the stream: requests as the sender queues them."""
        while True:
            with self.lock:
                while not stream.to_write and not stream.dead and not stream.finishing:
                    stream.wakeup.wait()
                if stream.dead or not stream.to_write:
                    return
                request = stream.to_write.popleft()
                handed = []
                if self.acc.acks == 0:
                    # With acks=0 a written request frees its slot: the sender may send more.
                    handed = self.acc.claim(request.batches)
                    self.kick()
            if handed:
                # acks=0: the record counts as sent once gRPC has it, as in Kafka.
                self.finish([Outcome(b, -1, -1, None) for b in handed])
            yield request.message

    def _read(self, stream: Stream) -> None:
        """The reader thread: answers in, futures out, until the stream ends."""
        try:
            for response in stream.call:
                self._on_response(stream, response)
        except grpc.RpcError as exc:
            self._on_stream_failed(stream, exc)
        except Exception as exc:
            log.exception("producer stream reader failed")
            stream.call.cancel()
            self._on_stream_failed(stream, exc)
        else:
            self._on_stream_failed(stream, None)

    def _on_response(self, stream: Stream, response: pb.ProduceResponse) -> None:
        """Match an answer to the oldest unanswered request and settle its batches."""
        with self.lock:
            if stream.dead or not stream.unanswered:
                return  # acks=0 answers, or a stream already given up on
            request = stream.unanswered.popleft()
            if response.correlation_id != request.cid:
                stream.unanswered.appendleft(request)
                raise errors.InternalBrokerError(
                    f"answer {response.correlation_id} arrived while {request.cid} was expected"
                )
            stream.node.failures = 0
            results = {(t.topic, r.partition): r for t in response.topics for r in t.partitions}
            now = self.acc.clock.monotonic_ms()
            outcomes = []
            for batch in request.batches:
                part = batch.part
                result = results.get((part.topic.name, part.partition))
                if result is None:
                    error: errors.LogStoreError | None = errors.InternalBrokerError(
                        f"the broker's answer has no result for {part.name}"
                    )
                    outcome = self.acc.answered(batch, error, -1, -1, now)
                else:
                    error = partition_error(result.error)
                    if error is not None and type(error).__name__ in METADATA_STALE_KINDS:
                        self._on_stale(part.topic.name)
                    outcome = self.acc.answered(
                        batch, error, result.base_offset, result.log_append_time, now
                    )
                if outcome is not None:
                    outcomes.append(outcome)
            self.kick()
        self.finish(outcomes)

    def _on_stream_failed(self, stream: Stream, exc: BaseException | None) -> None:
        """The stream ended: settle every request still on it and plan a new stream."""
        error = stream.cancelled_because or self._stream_error(exc, stream.node.address)
        rejected = self._rejected_by_broker(exc, error)
        outcomes: list[Outcome] = []
        acc = self.acc
        with self.lock:
            if stream.dead:
                return
            stream.dead = True
            stream.wakeup.notify_all()
            node = stream.node
            if node.stream is stream:
                node.stream = None
            unanswered = list(stream.unanswered)
            unwritten = [] if acc.acks else list(stream.to_write)
            stream.unanswered.clear()
            stream.to_write.clear()
            now = acc.clock.monotonic_ms()
            if rejected and unanswered:
                # The broker refused the first unanswered request and stopped reading: the
                # later ones were never processed and go again as they are.
                outcomes += acc.rejected(unanswered.pop(0).batches, error, now)
                for request in unanswered:
                    acc.unsent(request.batches, now)
            else:
                if exc is not None or unanswered:
                    node.failures += 1
                    node.retry_at = now + acc.retry.backoff_ms(node.failures)
                if isinstance(error, errors.BrokerUnavailableError):
                    self._on_stale(None)  # the leader may be gone: where are its partitions?
                for request in unanswered:
                    outcomes += acc.lost(request.batches, error, now)
            for request in unwritten:
                acc.unsent(request.batches, now, counted=False)
            self.kick()
        if exc is not None and outcomes:
            log.debug("produce stream ended: %s", error)
        self.finish(outcomes)

    def _stream_error(self, exc: BaseException | None, stream_address: str) -> errors.LogStoreError:
        """What broke the stream. Anything but a refusal by the broker leaves the requests
        on it with an unknown fate, so it is reported as retriable."""
        if exc is None:
            return errors.BrokerUnavailableError(
                f"the broker at {stream_address} ended the produce stream"
            )
        if isinstance(exc, grpc.RpcError):
            return translate(exc, stream_address)
        return errors.BrokerUnavailableError(f"produce stream broke: {exc}")

    def _rejected_by_broker(self, exc: BaseException | None, error: errors.LogStoreError) -> bool:
        """True when the broker itself ended the stream over one request it refused (its
        abort names the error kind); False for a transport failure (broker gone, reset)."""
        if not isinstance(exc, grpc.RpcError) or self.acc.retry.retriable(error):
            return False
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        return any(key == ERROR_KIND_KEY for key, _ in trailing or ())

    # --- finishing -----------------------------------------------------------------------

    def finish(self, outcomes: list[Outcome]) -> None:
        """Complete the futures of claimed batches, then mark them done (lock not held)."""
        if not outcomes:
            return
        for outcome in outcomes:
            settle(outcome)
        with self.lock:
            self.acc.finished([outcome.batch for outcome in outcomes])
            self.idle.notify_all()

    def shutdown(self) -> None:
        """Stop the sender thread and end the streams (after a flush)."""
        with self.lock:
            self.stopping = True
            self.kick()
        self._thread.join(timeout=max(self._request_timeout_ms / 1000, 1.0))
        with self.lock:
            streams = [node.stream for node in self._nodes.values() if node.stream is not None]
            for stream in streams:
                stream.finishing = True
                stream.wakeup.notify_all()
        # the streams end together: the request timeout bounds the whole wait
        deadline = time.monotonic() + self._request_timeout_ms / 1000
        for stream in streams:
            if stream.reader is not None:
                stream.reader.join(timeout=max(0.0, deadline - time.monotonic()))
                if stream.reader.is_alive():
                    stream.call.cancel()

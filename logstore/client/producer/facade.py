"""`Producer`: batches records per partition and sends them to each partition's leader
over one pipelined stream per leader broker.

Life of a record:

1. `Producer.send` checks it, picks a partition and appends ``(key, value, headers,
   timestamp_ms)`` to that partition's open batch in the `RecordAccumulator`: one lock, one
   tuple, one future.
2. The sender thread (`Sender`) closes a batch when it holds `batch_size` bytes, when its
   oldest record is `linger_ms` old, or when `flush()`/`close()` (or a full buffer) asks,
   and encodes it once with `record_batch.encode_batch`, stamped with the producer id and
   the partition's next sequence number (`PartitionSequence`).
3. Encoded batches of the partitions one broker leads are packed into `ProduceRequest`s
   of at most `max_request_size` bytes and written to that broker's long-lived
   `ProduceStream`, with up to `max_in_flight_requests_per_connection` requests
   unanswered. Leaders come from the cluster's metadata (`ClusterMetadata`); a standalone
   broker leads everything, so it gets the one stream.
4. A reader thread matches each answer to its request and completes the futures; what a
   failure means (retry after a backoff, or give up) is the `RetryPolicy`'s. A broker that
   no longer leads a partition, or a leader that stops answering, makes the producer ask
   for metadata again; the batches go again, unchanged, to the leader it names.

Sizes are in bytes, times in ms, timestamps in ms since the Unix epoch.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Unpack

import grpc

from logstore import errors
from logstore.client._connection import (
    BrokerChannels,
    SecurityOptions,
    client_security,
    is_retriable,
    resolve_bootstrap,
    translate,
)
from logstore.client.metadata import ClusterMetadata
from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import format as fmt
from logstore.codec.partitioner import StickyPartitioner, partition_for_key
from logstore.codec.wire import passthrough
from logstore.types import Headers, RecordMetadata
from logstore.v1 import logstore_pb2 as pb

from .accumulator import (
    HEADER_OVERHEAD_BYTES,
    MAX_IDLE_WAIT_MS,
    RECORD_OVERHEAD_BYTES,
    Outcome,
    Partition,
    RecordAccumulator,
    Topic,
)
from .futures import BatchGroup, BatchMetadata, failed_future
from .retry import RetryPolicy
from .sender import Sender

__all__ = ["BatchMetadata", "Producer"]

_ACKS = {"all": -1, "-1": -1, -1: -1, "1": 1, 1: 1, "0": 0, 0: 0}
#: Kafka's `compression.type` names: none, gzip, snappy, lz4, zstd
_CODECS: dict[str | None, int] = {None: fmt.CODEC_NONE} | {
    name: codec for codec, name in fmt.CODEC_NAMES.items()
}
#: the broker remembers this many batches per producer and partition for duplicate checks
_MAX_IDEMPOTENT_IN_FLIGHT = 5
PRODUCE_STREAM_METHOD = "/logstore.v1.LogStore/ProduceStream"


# --- argument checks -----------------------------------------------------------------------


def _as_bytes(data: object, what: str) -> bytes:
    """`data` as bytes: bytes-like objects are copied (the caller may reuse its buffer)."""
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        raise TypeError(f"{what} must be bytes or None, not str: encode it, e.g. s.encode()")
    raise TypeError(f"{what} must be bytes or None, not {type(data).__name__}")


def _normalize_headers(headers: object) -> tuple[Headers, int]:
    """Headers (a mapping or pairs) as a tuple of (str, bytes | None), and their size."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    size = 0
    for name, value in items:  # type: ignore[attr-defined]
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, f"header {name!r}")
        out.append((name, value))
        size += len(name) + (len(value) if value is not None else 0) + HEADER_OVERHEAD_BYTES
    return tuple(out), size


def _check_at_least(name: str, value: float, minimum: float = 0) -> None:
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


# --- the producer --------------------------------------------------------------------------


class Producer:
    """Sends records to LogStore topics, batched per partition, over one pipelined stream.

    >>> with Producer("127.0.0.1:9092", acks="all", compression="zstd") as p:  # doctest: +SKIP
    ...     md = p.send("orders", value=b"...", key=b"user_123").result()

    `bootstrap` is "HOST:PORT[,HOST:PORT...]" (default $LOGSTORE_BOOTSTRAP, else
    127.0.0.1:9092): the brokers asked, in order, where the cluster's partition leaders are;
    any live one is enough.

    Options follow Kafka's producer configs (snake_case):

    * `acks`: 0 (futures complete when the request is handed to gRPC, offset -1), 1 (written
      to the log), "all"/-1 (fsynced to disk).
    * `compression`: Kafka's `compression.type`: None/"none", "gzip", "snappy", "lz4" or
      "zstd". Each batch's records are compressed once, as a whole, in the form every
      Kafka client reads (`logstore.codec.compression`). zstd packs about as tight as
      gzip and compresses several times faster; lz4 and snappy are fastest and pack
      least (`python -m bench.codec_bench`).
    * `batch_size`: bytes per partition batch, estimated before compression. 256 KiB, not
      Kafka's 16 KiB: every request costs Python far more than the JVM, so fewer, larger
      requests are what reaches high throughput.
    * `linger_ms`: how long a batch waits for more records before it is sent (ms).
    * `buffer_memory`: bytes of records held before `send()` blocks.
    * `max_block_ms`: how long `send()` blocks for buffer space or topic metadata (ms).
    * `delivery_timeout_ms`: a record not acknowledged this long after it was sent (ms)
      fails with `RequestTimedOutError`.
    * `request_timeout_ms`: an unanswered request this old breaks the stream (ms).
    * `retry_backoff_ms` / `retry_backoff_max_ms`: retry delay, doubling from one to the
      other, with +-20% jitter (ms).
    * `enable_idempotence`: stamp batches with a producer id and sequences so retries never
      append twice (needs at most 5 requests in flight; not applied with acks=0, where
      nothing is retried).
    * `max_in_flight_requests_per_connection`: unanswered requests on the stream.
    * `max_request_size`: bytes per request (and the largest record accepted).
    * `metadata_max_age_ms`: how often known topics are described again in the background,
      so added partitions get keyed records and moved leaders are found (ms).
    * `clock`: the monotonic clock every duration above is measured on (linger, backoff,
      delivery and request timeouts, `max_block_ms`, metadata age), and the `flush()` and
      `close()` timeouts. Waits are real time and read it again at least every 500 ms, so
      it need not run at real speed; a gRPC call's own deadline is real time, and record
      timestamps are wall-clock (`time.time`).
    * `client_id`: sent to the broker as the `client-id` call metadata.
    * `**security`: the keyword arguments of `SecurityOptions` (`ssl_cafile`,
      `ssl_certfile`, `ssl_keyfile`, `token`), each falling back to its environment
      variable.

    `value` and `key` must be bytes (or bytes-like, copied) or None: a str raises TypeError
    rather than being encoded with a guessed charset. Thread-safe: any number of threads may
    call `send()` at once. Records of one partition are delivered in `send()` order.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        acks: int | str = "all",
        compression: str | None = None,
        batch_size: int = 262_144,
        linger_ms: float = 5,
        buffer_memory: int = 67_108_864,
        max_block_ms: float = 60_000,
        delivery_timeout_ms: float = 120_000,
        request_timeout_ms: float = 30_000,
        retry_backoff_ms: float = 100,
        retry_backoff_max_ms: float = 1_000,
        enable_idempotence: bool = True,
        max_in_flight_requests_per_connection: int = 5,
        max_request_size: int = 8_388_608,
        metadata_max_age_ms: float = 300_000,
        client_id: str = "",
        clock: Clock = SYSTEM_CLOCK,
        **security: Unpack[SecurityOptions],
    ) -> None:
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1 or 'all' (-1), got {acks!r}")
        if compression not in _CODECS:
            raise errors.UnsupportedCompressionError(
                f"compression {compression!r} is not supported: use one of "
                "'none', 'gzip', 'snappy', 'lz4' or 'zstd'"
            )
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("linger_ms", linger_ms, 0),
            ("buffer_memory", buffer_memory, 1),
            ("max_block_ms", max_block_ms, 0),
            ("delivery_timeout_ms", delivery_timeout_ms, 1),
            ("request_timeout_ms", request_timeout_ms, 1),
            ("retry_backoff_ms", retry_backoff_ms, 0),
            ("retry_backoff_max_ms", retry_backoff_max_ms, 0),
            ("max_in_flight_requests_per_connection", max_in_flight_requests_per_connection, 1),
            ("max_request_size", max_request_size, fmt.BATCH_HEADER_SIZE),
            ("metadata_max_age_ms", metadata_max_age_ms, 1),
        ):
            _check_at_least(name, value, minimum)
        self._acks = _ACKS[acks]
        self._idempotent = enable_idempotence and self._acks != 0
        if self._idempotent and max_in_flight_requests_per_connection > _MAX_IDEMPOTENT_IN_FLIGHT:
            raise ValueError(
                "enable_idempotence needs max_in_flight_requests_per_connection <= 5 "
                f"(the broker remembers 5 batches per producer), got "
                f"{max_in_flight_requests_per_connection}"
            )
        self._max_block_s = max_block_ms / 1000
        self._max_request_size = max_request_size
        self._max_record_size = min(max_request_size, buffer_memory)
        self._metadata_max_age_ms = metadata_max_age_ms
        self._request_timeout_s = request_timeout_ms / 1000
        self._retry = RetryPolicy(
            backoff_ms=retry_backoff_ms,
            backoff_max_ms=retry_backoff_max_ms,
            delivery_timeout_ms=delivery_timeout_ms,
            acks=self._acks,
            is_retriable=is_retriable,
        )
        self._clock = clock
        self._metadata_refresh_at = clock.monotonic_ms() + metadata_max_age_ms
        self._call_metadata = (("client-id", client_id),) if client_id else None

        self.address = resolve_bootstrap(bootstrap)
        self._metadata = ClusterMetadata(
            max_age_ms=metadata_max_age_ms,
            backoff_ms=retry_backoff_ms,
            backoff_max_ms=retry_backoff_max_ms,
            clock=clock,
        )
        self._channels = BrokerChannels(
            self.address,
            client_security("Producer", security),
            self._metadata,
            request_timeout_s=self._request_timeout_s,
        )
        #: topic, producer id and other requests without a leader go to the home broker
        self._stub = self._channels.home_stub()
        #: each leader's ProduceStream method (guarded by _lock)
        self._produce_streams: dict[str, Any] = {}
        self._topics: dict[str, Topic] = {}
        # Re-entrant: a metadata answer got while loading a topic re-routes on that thread.
        self._metadata_lock = threading.RLock()
        self._producer_id = fmt.NO_PRODUCER_ID
        self._producer_epoch = fmt.NO_PRODUCER_EPOCH
        self._closed = False

        # The accumulator, the sender's state and `_closed` are guarded by _lock.
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._accumulator = RecordAccumulator(
            batch_size=batch_size,
            linger_ms=linger_ms,
            buffer_memory=buffer_memory,
            max_in_flight=max_in_flight_requests_per_connection,
            max_request_size=max_request_size,
            codec=_CODECS[compression],
            retry=self._retry,
            clock=clock,
            sticky=StickyPartitioner(),
            space_freed=self._space.notify_all,
        )
        self._sender = Sender(
            self._accumulator,
            self._lock,
            stub=self._stub,
            open_call=self._open_produce_stream,
            address=self.address,
            request_timeout_ms=request_timeout_ms,
            on_tick=self._refresh_metadata,
            on_stale=self._metadata_stale,
        )
        self._accumulator.wake = self._sender.kick
        self._channels.on_change = self._leaders_changed
        self._sender.start()

    # --- public API ----------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Mapping[str, bytes | None] | Iterable[tuple[str, bytes | None]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> Future[RecordMetadata]:
        """Queue one record; the future resolves to its `RecordMetadata` once acknowledged.

        Blocks only for topic metadata (first send to a topic) or buffer space, each up to
        `max_block_ms`, then raises `BufferExhaustedError` (buffer) or fails the future
        (metadata). Raises `ClientClosedError` after `close()` and TypeError for a str value
        or key. An unknown topic or partition, or a record over `max_request_size` bytes,
        fails the returned future.
        """
        if self._closed:
            raise errors.ClientClosedError("the producer is closed")
        if value is not None and type(value) is not bytes:
            value = _as_bytes(value, "value")
        if key is not None and type(key) is not bytes:
            key = _as_bytes(key, "key")
        size = RECORD_OVERHEAD_BYTES
        if value is not None:
            size += len(value)
        if key is not None:
            size += len(key)
        if headers:
            headers, header_size = _normalize_headers(headers)
            size += header_size
        else:
            headers = None
        if timestamp_ms is None:
            timestamp_ms = time.time_ns() // 1_000_000
        elif type(timestamp_ms) is not int or timestamp_ms < 0:
            raise TypeError(f"timestamp_ms must be a non-negative int (ms), got {timestamp_ms!r}")
        meta = self._topics.get(topic)
        part = None
        if meta is not None and not meta.stale and size <= self._max_record_size:
            parts = meta.partitions
            if partition is None:
                part = (
                    parts[meta.sticky] if key is None else parts[partition_for_key(key, len(parts))]
                )
            elif type(partition) is int and 0 <= partition < len(parts):
                part = parts[partition]
        if part is None:
            try:
                part = self._route(topic, key, partition, size)
            except errors.LogStoreError as exc:
                return failed_future(exc)
        acc = self._accumulator
        with self._lock:
            if self._closed:
                raise errors.ClientClosedError("the producer is closed")
            if acc.buffered + size > acc.buffer_memory:
                self._wait_for_space(size)
            return acc.append(part, (key, value, headers, timestamp_ms), size)

    def send_batch(
        self,
        topic: str,
        values: Sequence[bytes | None],
        keys: Sequence[bytes | None] | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | None] | Sequence[Any] | None = None,
    ) -> Future[list[BatchMetadata]]:
        """Queue many records at once; the fastest way in. No per-record futures.

        `keys` (optional) lines up with `values`; `headers` is one mapping for every record or
        a sequence lining up with `values` (each a mapping, pairs or None). Records go to
        `partition` if given, else by key, else all to one sticky partition. They are encoded
        here, straight into batches of up to `batch_size` bytes, with one timestamp for the
        whole call. The future resolves to one `BatchMetadata` per batch once all are
        acknowledged, or fails with the first batch failure (the other batches are still
        delivered). Blocks for buffer space per batch, up to `max_block_ms` each, then raises
        `BufferExhaustedError` (batches queued before that are still sent).
        """
        values = [v if v is None or type(v) is bytes else _as_bytes(v, "value") for v in values]
        if keys is not None:
            keys = [k if k is None or type(k) is bytes else _as_bytes(k, "key") for k in keys]
            if len(keys) != len(values):
                raise ValueError(f"{len(keys)} keys for {len(values)} values")
        per_record = self._batch_headers(headers, len(values))
        if self._closed:
            raise errors.ClientClosedError("the producer is closed")
        if not values:
            done: Future[list[BatchMetadata]] = Future()
            done.set_result([])
            return done
        try:
            routes = self._route_many(topic, values, keys, partition)
        except errors.LogStoreError as exc:
            return failed_future(exc)
        group = BatchGroup()
        timestamp = time.time_ns() // 1_000_000
        for part, indexes in routes:
            self._queue_records(part, group, values, keys, per_record, indexes, timestamp)
        group.seal()
        return group.future

    def partitions_for(self, topic: str) -> set[int]:
        """The partition ids of `topic` as this producer routes to them now (Kafka's
        `partitions_for`). Metadata is fetched once if the topic is not known yet, and is
        refreshed in the background every `metadata_max_age_ms`, so partitions added later
        appear here without a send. Raises UnknownTopicOrPartitionError for no such topic,
        and ClientClosedError after `close()`."""
        if self._closed:
            raise errors.ClientClosedError("the producer is closed")
        meta = self._topics.get(topic)
        if meta is None or meta.stale:
            meta = self._load_topic(topic)
        with self._metadata_lock:
            return set(range(len(meta.partitions)))

    def flush(self, timeout: float | None = None) -> None:
        """Send everything buffered now and wait until all of it is acknowledged or failed.

        `timeout` is in seconds (None: no limit); raises `RequestTimedOutError` when it
        passes first. Records sent by other threads meanwhile may be waited for too.
        """
        deadline = None if timeout is None else self._deadline_ms(timeout)
        acc = self._accumulator
        with self._lock:
            waiting = list(acc.incomplete)
            acc.forcing += 1
            self._sender.kick()
            try:
                while waiting:
                    remaining = None if deadline is None else self._seconds_until(deadline)
                    if remaining is not None and remaining <= 0:
                        raise errors.RequestTimedOutError(
                            f"flush timed out after {timeout} s with {len(waiting)} "
                            "batch(es) still unacknowledged"
                        )
                    self._sender.idle.wait(None if remaining is None else _real_wait(remaining))
                    waiting = [b for b in waiting if not b.done]
            finally:
                acc.forcing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout` s), stop the sender thread and close the channel.

        Records still unacknowledged when the timeout passes fail with `ClientClosedError`.
        Calling it again does nothing; `send()` afterwards raises `ClientClosedError`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._accumulator.closing = True
            self._space.notify_all()
        try:
            self.flush(timeout)
        except errors.RequestTimedOutError:
            error = errors.ClientClosedError(f"producer closed after {timeout} s before delivery")
            with self._lock:
                aborted = self._accumulator.abort()
            self._sender.finish([Outcome(b, -1, -1, error) for b in aborted])
        finally:
            self._sender.shutdown()
            self._channels.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- routing and metadata (caller threads) ---------------------------------------------

    def _route(self, topic: str, key: bytes | None, partition: int | None, size: int) -> Partition:
        """The partition a record goes to; raises for what fails the record's future."""
        if size > self._max_record_size:
            raise errors.RecordTooLargeError(
                f"record of about {size} bytes exceeds max_request_size "
                f"{self._max_request_size} or buffer_memory {self._accumulator.buffer_memory}"
            )
        meta = self._topics.get(topic)
        if meta is None or meta.stale:
            meta = self._load_topic(topic)
        count = len(meta.partitions)
        if partition is None:
            partition = meta.sticky if key is None else partition_for_key(key, count)
        elif not 0 <= partition < count:
            return self._explicit_partition(meta, partition)
        return meta.partitions[partition]

    def _explicit_partition(self, meta: Topic, partition: int) -> Partition:
        """An explicit partition the cached metadata does not know: look again, once."""
        if type(partition) is not int:
            raise TypeError(f"partition must be an int or None, not {type(partition).__name__}")
        meta.stale = True
        meta = self._load_topic(meta.name)
        count = len(meta.partitions)
        if not 0 <= partition < count:
            raise errors.UnknownTopicOrPartitionError(
                f"partition {partition} of topic {meta.name!r} does not exist: "
                f"it has {count} partition(s), 0..{count - 1}"
            )
        return meta.partitions[partition]

    def _route_many(
        self,
        topic: str,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        partition: int | None,
    ) -> list[tuple[Partition, range | list[int]]]:
        """(partition, record indexes) for a send_batch call, in partition order."""
        meta = self._topics.get(topic)
        if meta is None or meta.stale:
            meta = self._load_topic(topic)
        everything = range(len(values))
        if partition is not None:
            if not 0 <= partition < len(meta.partitions):
                return [(self._explicit_partition(meta, partition), everything)]
            return [(meta.partitions[partition], everything)]
        count = len(meta.partitions)
        if keys is None or all(k is None for k in keys):
            with self._lock:
                part = meta.partitions[meta.sticky]
                self._accumulator.move_sticky(part)
            return [(part, everything)]
        by_partition: dict[int, list[int]] = {}
        sticky = meta.sticky
        for i, key in enumerate(keys):
            p = sticky if key is None else partition_for_key(key, count)
            by_partition.setdefault(p, []).append(i)
        return [(meta.partitions[p], idx) for p, idx in sorted(by_partition.items())]

    def _load_topic(self, name: str) -> Topic:
        """Describe `name` (once; again when stale) and return its partitions."""
        with self._metadata_lock:
            meta = self._topics.get(name)
            if meta is not None and not meta.stale:
                return meta
            count = self._describe_partitions(name)
            if self._idempotent and self._producer_id < 0:
                self._producer_id, self._producer_epoch = self._init_producer_id(self._max_block_s)
            meta = meta or Topic(name)
            self._grow(meta, count)
            meta.stale = False
            self._topics[name] = meta
            return meta

    def _grow(self, meta: Topic, count: int) -> None:
        """Add the partitions the topic gained (`_metadata_lock` held); never shrink."""
        known = len(meta.partitions)
        leaders = self._channels.leaders((meta.name, p) for p in range(known, count))
        for p in range(known, count):
            part = Partition(meta, p, self._producer_id, self._producer_epoch)
            part.leader = leaders[(meta.name, p)]
            meta.partitions.append(part)
        meta.sticky = self._accumulator.sticky.partition(meta.name, len(meta.partitions))

    def _refresh_metadata(self, now: float) -> float:
        """Ask about every known topic again once metadata_max_age_ms has passed, or soon
        after a broker said it no longer leads a partition; return when (ms) to look again,
        so an idle sender still wakes for it.

        Asynchronous: the answers update the partition lists and leaders from another
        thread, so the sender never waits for them and cached metadata stays in use if the
        brokers are away. A broker without the Metadata RPC is asked with DescribeTopic.
        """
        if now < self._metadata_refresh_at:
            return self._metadata_refresh_at
        if self._metadata.supported and self._channels.bootstrapped:
            return self._refresh_leaders(now)
        self._metadata_refresh_at = now + self._metadata_max_age_ms
        home = self._channels.stub(self._channels.home)
        for meta in list(self._topics.values()):
            call = home.DescribeTopic.future(
                pb.DescribeTopicRequest(name=meta.name), timeout=self._request_timeout_s
            )
            call.add_done_callback(lambda done, meta=meta: self._on_described(meta, done))
        return self._metadata_refresh_at

    def _refresh_leaders(self, now: float) -> float:
        """Start a Metadata refresh of the known topics when one is due; return when (ms)
        to look again: when the next is due, and while one runs, after a backoff."""
        with self._channels.lock:
            due = self._metadata.refresh_due()
            next_at = self._metadata.next_refresh_ms()
        if next_at is None:
            next_at = now + self._metadata_max_age_ms
        if due:
            self._channels.refresh_in_background(list(self._topics))
            next_at = max(next_at, now + self._retry.backoff_ms(1))
        self._metadata_refresh_at = next_at
        return next_at

    def _metadata_stale(self, topic: str | None) -> None:
        """A broker no longer leads a partition of `topic`, or (None) a leader stopped
        answering: ask for metadata at the sender's next round (producer lock held)."""
        if not self._metadata.supported:
            return  # a standalone broker without Metadata: nothing else could lead
        with self._channels.lock:
            self._metadata.invalidate(topic)
        self._metadata_refresh_at = 0.0
        self._sender.kick()

    def _leaders_changed(self) -> None:
        """A metadata answer moved leaders or added partitions: route every partition to
        its leader now (on the thread that got the answer)."""
        with self._metadata_lock:
            for meta in list(self._topics.values()):
                self._grow(meta, len(self._metadata.partitions_for(meta.name) or ()))
            parts = [part for meta in self._topics.values() for part in meta.partitions]
        leaders = self._channels.leaders((part.topic.name, part.partition) for part in parts)
        with self._lock:
            for part in parts:
                self._accumulator.set_leader(part, leaders[(part.topic.name, part.partition)])
            self._sender.kick()

    def _open_produce_stream(self, address: str, requests: Iterator[bytes]) -> Any:
        """Start a ProduceStream call to `address` (producer lock held)."""
        method = self._produce_streams.get(address)
        if method is None:
            # Requests are serialized by hand (see `logstore.codec.wire`): the stream sends
            # bytes.
            method = self._channels.channel(address).stream_stream(
                PRODUCE_STREAM_METHOD,
                request_serializer=passthrough,
                response_deserializer=pb.ProduceResponse.FromString,
            )
            self._produce_streams[address] = method
        return method(requests, metadata=self._call_metadata)

    def _on_described(self, meta: Topic, call: Any) -> None:
        """Apply a background DescribeTopic answer (runs on a gRPC thread)."""
        try:
            response = call.result()
        except grpc.RpcError as exc:
            if isinstance(translate(exc), errors.UnknownTopicOrPartitionError):
                meta.stale = True  # deleted: the next send() finds out and says so
            return
        with self._metadata_lock:
            self._grow(meta, len(response.topic.partitions))

    def _deadline_ms(self, timeout_s: float) -> float:
        """The clock reading (ms) `timeout_s` seconds from now."""
        return self._clock.monotonic_ms() + timeout_s * 1000

    def _seconds_until(self, deadline_ms: float) -> float:
        """Seconds left until the clock reads `deadline_ms` (negative once it passed)."""
        return (deadline_ms - self._clock.monotonic_ms()) / 1000

    def _retrying(self, what: str, call: Callable[[float], Any], budget_s: float) -> Any:
        """Run `call(timeout_s)` until it succeeds, fails for good, or `budget_s` passes."""
        deadline = self._deadline_ms(budget_s)
        attempt = 0
        while True:
            if self._closed and self._sender.stopping:
                raise errors.ClientClosedError("the producer is closed")
            remaining = self._seconds_until(deadline)
            try:
                return call(max(0.001, min(self._request_timeout_s, remaining)))
            except grpc.RpcError as exc:
                error = translate(exc, self.address)
            except errors.LogStoreError as exc:
                error = exc
            attempt += 1
            remaining = self._seconds_until(deadline)
            if not is_retriable(error) or remaining <= 0:
                if is_retriable(error):
                    raise type(error)(f"{what} failed for {budget_s * 1000:.0f} ms: {error}")
                raise error
            time.sleep(min(self._retry.backoff_ms(attempt) / 1000, max(remaining, 0)))

    def _describe_partitions(self, name: str) -> int:
        """The topic's partition count (its leaders too, from a broker that has the
        Metadata RPC), retrying for up to max_block_ms."""
        return self._retrying(
            f"describing topic {name!r}",
            lambda timeout: self._partition_count(name, timeout),
            self._max_block_s,
        )

    def _partition_count(self, name: str, timeout_s: float) -> int:
        """One attempt: Metadata for `name` and the known topics (the first one is the
        start-up's), else DescribeTopic for a broker without the Metadata RPC."""
        channels = self._channels
        if not channels.bootstrapped:
            channels.bootstrap(timeout_s, [name, *self._topics])
        elif self._metadata.supported:
            channels.refresh([name, *self._topics], timeout_s)
        if not self._metadata.supported:
            request = pb.DescribeTopicRequest(name=name)
            return len(self._stub.DescribeTopic(request, timeout=timeout_s).topic.partitions)
        with channels.lock:
            partitions = self._metadata.partitions_for(name)
            missing = self._metadata.missing(name)
        if partitions is not None:
            return len(partitions)
        if missing is None:
            # Left out without a word: the broker hides topics the principal may not
            # describe. DescribeTopic says which error it is (e.g. AuthorizationError).
            request = pb.DescribeTopicRequest(name=name)
            self._stub.DescribeTopic(request, timeout=timeout_s)
            raise errors.ClusterMetadataUnavailableError(
                f"topic {name!r} is not in the cluster metadata yet"
            )
        raise errors.UnknownTopicOrPartitionError(missing)

    def _init_producer_id(self, budget_s: float) -> tuple[int, int]:
        """A new (producer id, epoch) from the broker, retrying for up to `budget_s` s."""
        response = self._retrying(
            "InitProducerId",
            lambda timeout: self._stub.InitProducerId(pb.InitProducerIdRequest(), timeout=timeout),
            budget_s,
        )
        return response.producer_id, response.producer_epoch

    # --- buffer space (producer lock held) ---------------------------------------------------

    def _wait_for_space(self, size: int) -> None:
        """Block (lock held) until `size` more bytes fit in buffer_memory."""
        acc = self._accumulator
        deadline = self._deadline_ms(self._max_block_s)
        acc.forcing += 1
        self._sender.kick()
        try:
            while acc.buffered + size > acc.buffer_memory:
                if self._closed:
                    raise errors.ClientClosedError("the producer was closed while send() waited")
                remaining = self._seconds_until(deadline)
                if remaining <= 0:
                    raise errors.BufferExhaustedError(
                        f"buffer_memory of {acc.buffer_memory} bytes stayed full for "
                        f"{self._max_block_s * 1000:.0f} ms (max_block_ms): the broker is "
                        f"unreachable or slower than the producer ({acc.buffered} bytes "
                        "waiting)"
                    )
                self._space.wait(_real_wait(remaining))
        finally:
            acc.forcing -= 1

    # --- send_batch encoding (caller thread) -------------------------------------------------

    @staticmethod
    def _batch_headers(headers: object, count: int) -> list[Headers | None] | None:
        """Per-record headers for send_batch: None, one mapping for all, or one per record."""
        if headers is None:
            return None
        if isinstance(headers, Mapping):
            shared = _normalize_headers(headers)[0] or None
            return [shared] * count
        per_record = [
            _normalize_headers(h)[0] or None if h else None
            for h in headers  # type: ignore[attr-defined]
        ]
        if len(per_record) != count:
            raise ValueError(f"{len(per_record)} headers for {count} values")
        return per_record

    def _queue_records(
        self,
        part: Partition,
        group: BatchGroup,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        headers: list[Headers | None] | None,
        indexes: range | list[int],
        timestamp: int,
    ) -> None:
        """Encode the records at `indexes` into batches of `part` and queue them."""
        acc = self._accumulator
        with part.encode_lock:
            # Records send() put in this partition earlier go first, to keep send order.
            self._sender.encode_closed(part, take_open=True)
            for chunk, size in self._chunks(values, keys, headers, indexes):
                with self._lock:
                    if self._closed:
                        raise errors.ClientClosedError("the producer is closed")
                    if acc.buffered + size > acc.buffer_memory:
                        self._wait_for_space(min(size, acc.buffer_memory))
                    batch = acc.new_chunk_batch(part, size, group)
                acc.encode_values(
                    batch,
                    _pick(values, chunk),
                    None if keys is None else _pick(keys, chunk),
                    None if headers is None else _pick(headers, chunk),
                    timestamp,
                )
                with self._lock:
                    acc.queue_ready(part, [batch])

    def _chunks(
        self,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        headers: list[Headers | None] | None,
        indexes: range | list[int],
    ) -> Iterator[tuple[range | list[int], int]]:
        """Split `indexes` into runs of about `batch_size` bytes: (indexes, their bytes).

        A run holds at least one record, so a record larger than batch_size goes alone.
        """
        sizes = [RECORD_OVERHEAD_BYTES + len(values[i] or b"") for i in indexes]
        if keys is not None:
            sizes = [s + len(keys[i] or b"") for s, i in zip(sizes, indexes, strict=True)]
        if headers is not None:
            for n, i in enumerate(indexes):
                for name, value in headers[i] or ():
                    sizes[n] += len(name) + len(value or b"") + HEADER_OVERHEAD_BYTES
        # Running totals and a binary search per run: no Python work per record.
        batch_size = self._accumulator.batch_size
        totals = list(itertools.accumulate(sizes, initial=0))
        start = 0
        while start < len(sizes):
            end = bisect.bisect_right(totals, totals[start] + batch_size, lo=start + 2) - 1
            yield indexes[start:end], totals[end] - totals[start]
            start = end


def _real_wait(remaining_s: float) -> float:
    """How long (real s) to wait before reading the clock again: `remaining_s` on the
    injected clock, at most MAX_IDLE_WAIT_MS, since that clock need not run at real speed."""
    return min(remaining_s, MAX_IDLE_WAIT_MS / 1000)


def _pick(items: list[Any], indexes: range | list[int]) -> list[Any]:
    """items[i] for i in `indexes`: a slice when they are a range (no per-record work)."""
    if isinstance(indexes, range):
        return items[indexes.start : indexes.stop]
    return [items[i] for i in indexes]

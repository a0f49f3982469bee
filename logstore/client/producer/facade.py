"""`Producer`: batches records per partition and sends them over one pipelined stream.

Life of a record:

1. `Producer.send` checks it, picks a partition and appends ``(key, value, headers,
   timestamp_ms)`` to that partition's open batch: one lock, one tuple, one future.
2. The sender thread closes a batch when it holds `batch_size` bytes, when its oldest record
   is `linger_ms` old, or when `flush()`/`close()` (or a full buffer) asks, and encodes it
   once as a RecordBatch v2 stamped with the producer id and the partition's next sequence
   number.
3. Encoded batches of many partitions are packed into `ProduceRequest`s of at most
   `max_request_size` bytes and written to one long-lived `ProduceStream`, with up to
   `max_in_flight_requests_per_connection` requests unanswered. One stream instead of one
   call per request saves the ~0.5 ms a unary gRPC call costs in Python.
4. A reader thread matches each answer to its request (answers come in request order) and
   completes the futures. After a retriable failure a partition waits for its requests in
   flight, then resends its batches byte for byte, in sequence order, on a new stream, so the
   broker recognises a batch it already has and answers with the original offset.

Sizes are in bytes, times in ms (monotonic seconds internally), timestamps in ms since the
Unix epoch.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import operator
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures._base import FINISHED, PENDING
from typing import Any, NamedTuple

import crc32c
import grpc
import zstandard

from logstore import errors
from logstore.client._connection import (
    ERROR_KIND_KEY,
    ClientSecurity,
    is_retriable,
    make_stub,
    open_channel,
    partition_error,
    resolve_bootstrap,
    translate,
)
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec.partitioner import StickyPartitioner, partition_for_key
from logstore.codec.wire import encode_produce_request, passthrough
from logstore.types import Headers, RecordMetadata
from logstore.v1 import logstore_pb2 as pb

__all__ = ["BatchMetadata", "Producer"]

log = logging.getLogger(__name__)

#: Bytes a record adds to its key, value and headers inside a batch (length, attributes,
#: timestamp and offset deltas, key/value lengths, header count): a typical upper bound.
#: `batch_size` and `buffer_memory` are measured with this estimate, before compression.
RECORD_OVERHEAD_BYTES = 16
#: bytes a header adds to its name and value (two length varints)
HEADER_OVERHEAD_BYTES = 2
#: the longest the sender sleeps while anything is unfinished, so expiry is noticed (s)
_MAX_IDLE_WAIT_S = 0.5
_SEQUENCE_MODULUS = 2**31
_ACKS = {"all": -1, "-1": -1, -1: -1, "1": 1, 1: 1, "0": 0, 0: 0}
_CODECS = {None: fmt.CODEC_NONE, "none": fmt.CODEC_NONE, "zstd": fmt.CODEC_ZSTD}
#: the broker remembers this many batches per producer and partition for duplicate checks
_MAX_IDEMPOTENT_IN_FLIGHT = 5
PRODUCE_STREAM_METHOD = "/logstore.v1.LogStore/ProduceStream"


_new_tuple = tuple.__new__  # skips NamedTuple.__new__'s Python frame, once per record
_timestamp_of = operator.itemgetter(3)


class BatchMetadata(NamedTuple):
    """Where one batch of a `Producer.send_batch` call landed: offsets
    ``base_offset .. base_offset + record_count - 1`` of ``topic``-``partition``."""

    topic: str
    partition: int
    base_offset: int
    record_count: int


# --- futures -------------------------------------------------------------------------------


class _RecordFuture(Future[RecordMetadata]):
    """The `concurrent.futures.Future` of one record: a view of its batch.

    Why: a plain `Future()` builds a Condition, an RLock and two lists per record, and
    finishing it costs as much again; with hundreds of thousands of records in flight that
    (and the garbage collector walking those objects) costs more than the rest of the
    producer. Here the attributes `Future`'s methods read (`_condition`, `_state`, `_result`,
    `_exception`, `_waiters`, `_done_callbacks`; CPython 3.11-3.13) are properties over the
    batch, so a batch of N records is finished in O(1), plus the futures someone waits on
    or added a callback to (they register in `_Batch.watched`).

    Invariants: the state is the batch's; `_result` is built on demand from the batch's base
    offset and the record's index and timestamp (ms). A record future cannot be cancelled or
    completed from outside (the record may already be on the wire).
    """

    __slots__ = ("_batch", "_callback_list", "_index", "_waiter_list")

    def __init__(self, batch: _Batch, index: int) -> None:  # no super(): see docstring
        self._batch = batch
        self._index = index
        self._waiter_list: list[Any] | None = None
        self._callback_list: list[Callable[[Future[Any]], object]] | None = None

    @property
    def _condition(self) -> threading.Condition:
        return self._batch.condition

    @property
    def _state(self) -> str:
        return self._batch.state

    @property
    def _exception(self) -> BaseException | None:
        error = self._batch.error
        if error is not None:
            # One exception serves every record of the batch; each raise would otherwise
            # append its frames to the same traceback.
            error.__traceback__ = None
        return error

    @property
    def _result(self) -> RecordMetadata:
        return self._batch.metadata(self._index)

    @property
    def _waiters(self) -> list[Any]:
        if self._waiter_list is None:
            self._waiter_list = []
            self._batch.watched[self] = None
        return self._waiter_list

    @property
    def _done_callbacks(self) -> list[Callable[[Future[Any]], object]]:
        if self._callback_list is None:
            self._callback_list = []
            self._batch.watched[self] = None
        return self._callback_list

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """The record's metadata; waits up to `timeout` s (None: no limit) for the broker."""
        batch = self._batch
        # `state` is set to FINISHED once, under the batch's condition, and never changes
        # again: reading it without the lock is safe and spares every later call the lock.
        if batch.state is FINISHED:
            if batch.error is not None:
                raise batch.error.with_traceback(None)
            return batch.metadata(self._index)
        return super().result(timeout)

    def cancel(self) -> bool:
        """Always False: a record handed to the producer cannot be recalled."""
        return False

    # Only the producer settles a record: its state lives in the batch.
    def set_running_or_notify_cancel(self) -> bool:
        raise RuntimeError("a record future is run by the producer")

    def set_result(self, result: object) -> None:
        raise RuntimeError("a record future is completed by the producer")

    def set_exception(self, exception: BaseException | None) -> None:
        raise RuntimeError("a record future is completed by the producer")


def _finish_batch_futures(
    batch: _Batch, base_offset: int, log_append_time: int, error: BaseException | None
) -> None:
    """Finish every record future of `batch` at once: they all read the batch's state."""
    with batch.condition:
        batch.base_offset = base_offset
        batch.log_append_time = log_append_time
        batch.error = error
        batch.state = FINISHED
        watched = list(batch.watched)
        for future in watched:
            for waiter in future._waiter_list or ():
                if error is None:
                    waiter.add_result(future)
                else:
                    waiter.add_exception(future)
        batch.condition.notify_all()
    for future in watched:
        if future._callback_list:
            future._invoke_callbacks()  # type: ignore[attr-defined]


def _failed_future(exc: BaseException) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


class _BatchGroup:
    """The batches of one `send_batch` call and the future of their `BatchMetadata` list.

    Invariant: the future is settled once: after `seal()`, when every batch added has been
    acknowledged, or at the first batch failure (the other batches are still delivered).
    """

    def __init__(self) -> None:
        self.future: Future[list[BatchMetadata]] = Future()
        self._results: list[BatchMetadata | None] = []
        self._pending = 0
        self._sealed = False
        self._settled = False
        self._lock = threading.Lock()

    def add(self) -> int:
        """Count one more batch; returns its index in the results."""
        with self._lock:
            self._results.append(None)
            self._pending += 1
            return len(self._results) - 1

    def acknowledged(self, index: int, metadata: BatchMetadata) -> None:
        with self._lock:
            self._results[index] = metadata
            self._pending -= 1
            results = self._settle_if_complete()
        if results is not None:
            self.future.set_result(results)

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._pending -= 1
            first = not self._settled
            self._settled = True
        if first:
            self.future.set_exception(exc)

    def seal(self) -> None:
        with self._lock:
            self._sealed = True
            results = self._settle_if_complete()
        if results is not None:
            self.future.set_result(results)

    def _settle_if_complete(self) -> list[BatchMetadata] | None:
        """The results, once, when sealed and nothing is pending (lock held)."""
        if self._settled or not self._sealed or self._pending:
            return None
        self._settled = True
        return [md for md in self._results if md is not None]


# --- batches, partitions, requests ---------------------------------------------------------


class _Batch:
    """Records bound for one partition, from the first append to the broker's answer.

    Invariants: `records` grows only while the batch is its partition's open batch (producer
    lock held); after encoding only their `timestamps` (ms) are kept. `data` is set once
    when the batch is encoded, changes only when a sequence reset re-stamps its producer id
    and sequence, and is dropped when the batch ends. `size` bytes of buffer_memory are
    released exactly once, when `claimed` turns True; `done` turns True after the futures
    are finished (`state` FINISHED, with `base_offset`/`log_append_time` or `error`).
    `order` increases with encode order, so sorting a partition's batches by it restores
    sequence order.
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
        "record_count",
        "records",
        "size",
        "solo",
        "state",
        "timestamps",
        "watched",
    )

    def __init__(self, part: _Partition, created: float) -> None:
        self.part = part
        self.created = created  # monotonic s
        self.records: list[rb.RecordInput] = []
        self.condition = threading.Condition()
        self.state = PENDING
        self.error: BaseException | None = None
        self.base_offset = -1
        self.log_append_time = fmt.NO_TIMESTAMP
        self.watched: dict[_RecordFuture, None] = {}
        self.size = 0
        self.record_count = 0
        self.timestamps: list[int] = []
        self.data = b""
        self.base_seq = fmt.NO_SEQUENCE
        self.order = 0
        self.attempts = 0
        self.last_error = ""
        self.solo = False
        self.claimed = False
        self.done = False
        self.group: _BatchGroup | None = None
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


class _Partition:
    """One partition's batches on their way: open, closed (to encode), ready, in flight.

    Invariants: `ready` is sorted by `_Batch.order`; `inflight` counts this partition's
    batches in requests not yet answered; `next_seq` is the base sequence of the next batch
    encoded (guarded by `encode_lock`). `draining` means a batch failed and nothing is sent
    until `inflight` is 0; `reset_pending` means a batch failed for good, so the remaining
    ones get a fresh producer id and sequences from 0 before anything is sent.
    """

    __slots__ = (
        "closed",
        "draining",
        "encode_lock",
        "inflight",
        "name",
        "next_seq",
        "open",
        "partition",
        "producer_epoch",
        "producer_id",
        "ready",
        "reset_pending",
        "retry_at",
        "topic",
    )

    def __init__(self, topic: _Topic, partition: int, producer_id: int, epoch: int) -> None:
        self.topic = topic
        self.partition = partition
        self.name = f"{topic.name}-{partition}"
        self.open: _Batch | None = None
        self.closed: list[_Batch] = []
        self.ready: deque[_Batch] = deque()
        self.inflight = 0
        self.draining = False
        self.reset_pending = False
        self.retry_at = 0.0  # monotonic s
        self.producer_id = producer_id
        self.producer_epoch = epoch
        self.next_seq = 0
        self.encode_lock = threading.Lock()


class _Topic:
    """A topic's partition count and partitions as last described by the broker.

    Invariant: `partitions` only grows (partitions keep their sequence state); `sticky` is
    the partition null-key records go to, as the StickyPartitioner last said.
    """

    __slots__ = ("name", "partitions", "stale", "sticky")

    def __init__(self, name: str) -> None:
        self.name = name
        self.partitions: list[_Partition] = []
        self.sticky = 0
        self.stale = False


class _Request:
    """One ProduceRequest: at most one batch per partition, sent as one message."""

    __slots__ = ("batches", "cid", "message", "sent_at")

    def __init__(self, cid: int, batches: list[_Batch], acks: int) -> None:
        self.cid = cid
        self.batches = batches
        self.sent_at = time.monotonic()
        by_topic: dict[str, list[tuple[int, bytes]]] = {}
        for batch in batches:
            by_topic.setdefault(batch.part.topic.name, []).append(
                (batch.part.partition, batch.data)
            )
        #: the serialized ProduceRequest
        self.message = encode_produce_request(acks, cid, by_topic)


class _Stream:
    """One `ProduceStream` call and the requests on it (guarded by the producer lock).

    Invariants: `to_write` holds requests gRPC has not taken yet; `unanswered` holds, in send
    order, every acks != 0 request given to this stream and not answered yet. Once `dead`,
    both are empty and the stream is never used again.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self.to_write: deque[_Request] = deque()
        self.unanswered: deque[_Request] = deque()
        self.wakeup = threading.Condition(lock)
        self.dead = False
        self.finishing = False
        #: why the producer cancelled the call itself, if it did
        self.cancelled_because: errors.LogStoreError | None = None
        self.call: Any = None
        self.reader: threading.Thread | None = None


# --- encoding ------------------------------------------------------------------------------


class _Outcome(NamedTuple):
    """How a claimed batch ends: acknowledged at `base_offset`, or failed with `error`."""

    batch: _Batch
    base_offset: int
    log_append_time: int
    error: BaseException | None


#: per value length L: the bytes before each value of a null-key, header-less record with
#: timestamp delta 0, indexed by offset delta (see `_fast_records`)
_PREFIXES: dict[int, list[bytes]] = {}
_PREFIX_CACHE_LENGTHS = 32
_PREFIX_LOCK = threading.Lock()


def _prefixes(length: int, count: int) -> list[bytes]:
    """Record prefixes for `count` values of `length` bytes: cached, built once per length."""
    table = _PREFIXES.get(length)
    if table is not None and len(table) >= count:
        return table
    size = max(count, 1024)
    value_len = rb.encode_varint(length)
    built = []
    for i in range(size):
        delta = rb.encode_varint(i)
        body = 4 + len(delta) + len(value_len) + length  # attrs, ts, key len, header count
        # Each prefix starts with the previous record's header count (0), so a batch is
        # prefix, value, prefix, value, ..., b"\x00": two list slices and one join.
        lead = b"\x00" if i else b""
        built.append(lead + rb.encode_varint(body) + b"\x00\x00" + delta + b"\x01" + value_len)
    with _PREFIX_LOCK:
        if len(_PREFIXES) >= _PREFIX_CACHE_LENGTHS:
            _PREFIXES.clear()
        _PREFIXES[length] = built
    return built


def _fast_records(values: list[bytes]) -> list[bytes] | None:
    """The records section for null-key, header-less `values` sharing one timestamp, when
    every value has the same length, as pieces to join; else None. Byte for byte what
    `encode_records` gives, at C speed: it is the `send_batch` hot path."""
    lengths = set(map(len, values))
    if len(lengths) != 1:
        return None
    count = len(values)
    parts: list[bytes] = [b""] * (2 * count)
    parts[0::2] = _prefixes(lengths.pop(), count)[:count]
    parts[1::2] = values
    parts.append(b"\x00")
    return parts


#: a records section in at most this many pieces is framed without joining it first (its
#: CRC is chained over the pieces): large values are then copied once, not twice
_FRAME_PIECES_MAX = 64


def _frame_batch(
    records: bytes | list[bytes],
    count: int,
    timestamp: int,
    codec: int,
    pid: int,
    epoch: int,
    seq: int,
) -> bytes:
    """A RecordBatch v2 around an encoded records section (bytes, or pieces to join) whose
    records all carry `timestamp` (ms): what `rb.encode_batch` builds, field for field."""
    pieces = [records] if isinstance(records, bytes) else records
    if codec == fmt.CODEC_ZSTD or len(pieces) > _FRAME_PIECES_MAX:
        joined = b"".join(pieces)
        if codec == fmt.CODEC_ZSTD:
            joined = zstandard.ZstdCompressor(level=3).compress(joined)
        pieces = [joined]
    after_crc = fmt.BATCH_HEADER_AFTER_CRC.pack(
        codec, count - 1, timestamp, timestamp, pid, epoch, seq, count
    )
    crc = crc32c.crc32c(after_crc)
    for piece in pieces:
        crc = crc32c.crc32c(piece, crc)
    length = fmt.BATCH_HEADER_SIZE - fmt.LOG_OVERHEAD + sum(map(len, pieces))
    prefix = fmt.BATCH_PREFIX.pack(0, length, fmt.NO_PARTITION_LEADER_EPOCH, fmt.MAGIC_V2)
    return b"".join((prefix, fmt.UINT32.pack(crc), after_crc, *pieces))


def _restamp(data: bytes, pid: int, epoch: int, seq: int) -> bytes:
    """`data` (one batch) with a new producer id, epoch and base sequence, CRC fixed."""
    buf = bytearray(data)
    fmt.INT64.pack_into(buf, fmt.PRODUCER_ID_OFFSET, pid)
    fmt.INT16.pack_into(buf, fmt.PRODUCER_EPOCH_OFFSET, epoch)
    fmt.INT32.pack_into(buf, fmt.BASE_SEQUENCE_OFFSET, seq)
    fmt.UINT32.pack_into(buf, fmt.CRC_OFFSET, rb.compute_crc(buf, 0, len(buf)))
    return bytes(buf)


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

    Options follow Kafka's producer configs (snake_case):

    * `acks`: 0 (futures complete when the request is handed to gRPC, offset -1), 1 (written
      to the log), "all"/-1 (fsynced to disk).
    * `compression`: None/"none" or "zstd" (whole batch compressed once, codec 4).
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
      so added partitions get keyed records (ms).
    * `client_id`: sent to the broker as the `client-id` call metadata.
    * `ssl_cafile`: CA bundle (PEM) the broker's certificate must chain to; setting it turns
      TLS on. `ssl_certfile` / `ssl_keyfile`: client certificate and key (PEM) for mutual
      TLS. `token`: bearer token sent with every request. Each falls back to its
      environment variable (LOGSTORE_TLS_CA, LOGSTORE_TLS_CERT, LOGSTORE_TLS_KEY,
      LOGSTORE_TOKEN).

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
        ssl_cafile: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        token: str | None = None,
    ) -> None:
        if acks not in _ACKS:
            raise ValueError(f"acks must be 0, 1 or 'all' (-1), got {acks!r}")
        if compression not in _CODECS:
            raise errors.UnsupportedCompressionError(
                f"compression {compression!r} is not supported: use 'zstd' or 'none'"
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
        self._codec = _CODECS[compression]
        self._batch_size = batch_size
        self._linger_s = linger_ms / 1000
        self._buffer_memory = buffer_memory
        self._max_block_s = max_block_ms / 1000
        self._delivery_timeout_s = delivery_timeout_ms / 1000
        self._request_timeout_s = request_timeout_ms / 1000
        self._backoff_s = retry_backoff_ms / 1000
        self._backoff_max_s = max(retry_backoff_max_ms, retry_backoff_ms) / 1000
        self._max_in_flight = max_in_flight_requests_per_connection
        self._max_request_size = max_request_size
        self._max_record_size = min(max_request_size, buffer_memory)
        self._metadata_max_age_s = metadata_max_age_ms / 1000
        self._metadata_refresh_at = time.monotonic() + self._metadata_max_age_s
        self._call_metadata = (("client-id", client_id),) if client_id else None

        self.address = resolve_bootstrap(bootstrap)
        self._channel = open_channel(
            self.address, ClientSecurity.resolve(ssl_cafile, ssl_certfile, ssl_keyfile, token)
        )
        self._stub = make_stub(self._channel)
        # Requests are serialized by hand (see `logstore.codec.wire`): the stream sends bytes.
        self._produce_stream = self._channel.stream_stream(
            PRODUCE_STREAM_METHOD,
            request_serializer=passthrough,
            response_deserializer=pb.ProduceResponse.FromString,
        )
        self._sticky = StickyPartitioner()
        self._topics: dict[str, _Topic] = {}
        self._metadata_lock = threading.Lock()
        self._producer_id = fmt.NO_PRODUCER_ID
        self._producer_epoch = fmt.NO_PRODUCER_EPOCH

        # Everything below is guarded by _lock.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._wake_pending = False
        self._buffered = 0
        self._incomplete: dict[_Batch, None] = {}
        self._open_parts: dict[_Partition, None] = {}
        self._closed_parts: dict[_Partition, None] = {}
        self._ready_parts: dict[_Partition, None] = {}
        self._reset_parts: dict[_Partition, None] = {}
        self._reset_retry_at = 0.0
        self._forcing = 0  # flushes in progress plus senders blocked on buffer space
        self._stream: _Stream | None = None
        self._stream_failures = 0
        self._stream_retry_at = 0.0
        self._closed = False
        self._stopping = False
        self._order = itertools.count()
        self._correlation = itertools.count(1)

        self._sender = threading.Thread(target=self._run, name="logstore-producer", daemon=True)
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
                return _failed_future(exc)
        with self._lock:
            if self._closed:
                raise errors.ClientClosedError("the producer is closed")
            if self._buffered + size > self._buffer_memory:
                self._wait_for_space(size)
            batch = part.open
            if batch is not None and batch.size + size > self._batch_size and batch.records:
                # as Kafka: a record that does not fit starts the next batch, so a batch
                # outgrows batch_size only when a single record does
                self._close_open(part)
                batch = None
            if batch is None:
                batch = self._open_batch(part)
            records = batch.records
            future = _RecordFuture(batch, len(records))
            records.append((key, value, headers, timestamp_ms))
            batch.size += size
            self._buffered += size
            if batch.size >= self._batch_size:
                self._close_open(part)
        return future

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
            return _failed_future(exc)
        group = _BatchGroup()
        timestamp = time.time_ns() // 1_000_000
        for part, indexes in routes:
            self._queue_records(part, group, values, keys, per_record, indexes, timestamp)
        group.seal()
        return group.future

    def flush(self, timeout: float | None = None) -> None:
        """Send everything buffered now and wait until all of it is acknowledged or failed.

        `timeout` is in seconds (None: no limit); raises `RequestTimedOutError` when it
        passes first. Records sent by other threads meanwhile may be waited for too.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            waiting = list(self._incomplete)
            self._forcing += 1
            self._kick()
            try:
                while waiting:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise errors.RequestTimedOutError(
                            f"flush timed out after {timeout} s with {len(waiting)} "
                            "batch(es) still unacknowledged"
                        )
                    self._idle.wait(remaining)
                    waiting = [b for b in waiting if not b.done]
            finally:
                self._forcing -= 1

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to `timeout` s), stop the sender thread and close the channel.

        Records still unacknowledged when the timeout passes fail with `ClientClosedError`.
        Calling it again does nothing; `send()` afterwards raises `ClientClosedError`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._space.notify_all()
        try:
            self.flush(timeout)
        except errors.RequestTimedOutError:
            self._abort_incomplete(
                errors.ClientClosedError(f"producer closed after {timeout} s before delivery")
            )
        finally:
            self._shutdown()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- routing and metadata (caller threads) ---------------------------------------------

    def _route(self, topic: str, key: bytes | None, partition: int | None, size: int) -> _Partition:
        """The partition a record goes to; raises for what fails the record's future."""
        if size > self._max_record_size:
            raise errors.RecordTooLargeError(
                f"record of about {size} bytes exceeds max_request_size "
                f"{self._max_request_size} or buffer_memory {self._buffer_memory}"
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

    def _explicit_partition(self, meta: _Topic, partition: int) -> _Partition:
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
    ) -> list[tuple[_Partition, range | list[int]]]:
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
                self._move_sticky(part)
            return [(part, everything)]
        by_partition: dict[int, list[int]] = {}
        sticky = meta.sticky
        for i, key in enumerate(keys):
            p = sticky if key is None else partition_for_key(key, count)
            by_partition.setdefault(p, []).append(i)
        return [(meta.partitions[p], idx) for p, idx in sorted(by_partition.items())]

    def _load_topic(self, name: str) -> _Topic:
        """Describe `name` (once; again when stale) and return its partitions."""
        with self._metadata_lock:
            meta = self._topics.get(name)
            if meta is not None and not meta.stale:
                return meta
            count = self._describe_partitions(name)
            if self._idempotent and self._producer_id < 0:
                self._producer_id, self._producer_epoch = self._init_producer_id(self._max_block_s)
            meta = meta or _Topic(name)
            self._grow(meta, count)
            meta.stale = False
            self._topics[name] = meta
            return meta

    def _grow(self, meta: _Topic, count: int) -> None:
        """Add the partitions the topic gained (`_metadata_lock` held); never shrink."""
        for p in range(len(meta.partitions), count):
            meta.partitions.append(_Partition(meta, p, self._producer_id, self._producer_epoch))
        meta.sticky = self._sticky.partition(meta.name, len(meta.partitions))

    def _refresh_metadata(self, now: float) -> None:
        """Describe every known topic again once metadata_max_age_ms has passed.

        Asynchronous: the answers update the partition lists from a gRPC thread, so the
        sender never waits for them and cached metadata stays in use if the broker is away.
        """
        if now < self._metadata_refresh_at:
            return
        self._metadata_refresh_at = now + self._metadata_max_age_s
        for meta in list(self._topics.values()):
            call = self._stub.DescribeTopic.future(
                pb.DescribeTopicRequest(name=meta.name), timeout=self._request_timeout_s
            )
            call.add_done_callback(lambda done, meta=meta: self._on_described(meta, done))

    def _on_described(self, meta: _Topic, call: Any) -> None:
        """Apply a background DescribeTopic answer (runs on a gRPC thread)."""
        try:
            response = call.result()
        except grpc.RpcError as exc:
            if isinstance(translate(exc), errors.UnknownTopicOrPartitionError):
                meta.stale = True  # deleted: the next send() finds out and says so
            return
        with self._metadata_lock:
            self._grow(meta, len(response.topic.partitions))

    def _retrying(self, what: str, call: Callable[[float], Any], budget_s: float) -> Any:
        """Run `call(timeout_s)` until it succeeds, fails for good, or `budget_s` passes."""
        deadline = time.monotonic() + budget_s
        attempt = 0
        while True:
            if self._closed and self._stopping:
                raise errors.ClientClosedError("the producer is closed")
            remaining = deadline - time.monotonic()
            try:
                return call(max(0.001, min(self._request_timeout_s, remaining)))
            except grpc.RpcError as exc:
                error = translate(exc, self.address)
            attempt += 1
            remaining = deadline - time.monotonic()
            if not is_retriable(error) or remaining <= 0:
                if is_retriable(error):
                    raise type(error)(f"{what} failed for {budget_s * 1000:.0f} ms: {error}")
                raise error
            time.sleep(min(self._backoff_delay(attempt), max(remaining, 0)))

    def _describe_partitions(self, name: str) -> int:
        """The topic's partition count, retrying for up to max_block_ms."""
        request = pb.DescribeTopicRequest(name=name)
        response = self._retrying(
            f"describing topic {name!r}",
            lambda timeout: self._stub.DescribeTopic(request, timeout=timeout),
            self._max_block_s,
        )
        return len(response.topic.partitions)

    def _init_producer_id(self, budget_s: float) -> tuple[int, int]:
        """A new (producer id, epoch) from the broker, retrying for up to `budget_s` s."""
        response = self._retrying(
            "InitProducerId",
            lambda timeout: self._stub.InitProducerId(pb.InitProducerIdRequest(), timeout=timeout),
            budget_s,
        )
        return response.producer_id, response.producer_epoch

    # --- accumulating (producer lock held) ---------------------------------------------------

    def _kick(self) -> None:
        """Wake the sender thread (lock held); remembered if it is not waiting yet."""
        self._wake_pending = True
        self._wake.notify()

    def _open_batch(self, part: _Partition) -> _Batch:
        """Start the partition's open batch (lock held); its linger time starts now."""
        batch = _Batch(part, time.monotonic())
        part.open = batch
        self._incomplete[batch] = None
        self._open_parts[part] = None
        self._kick()  # the sender must learn the new linger deadline
        return batch

    def _close_open(self, part: _Partition) -> None:
        """Close the partition's open batch: it goes to the sender to be encoded."""
        batch = part.open
        if batch is None:
            return
        part.open = None
        del self._open_parts[part]
        part.closed.append(batch)
        self._closed_parts[part] = None
        self._move_sticky(part)
        self._kick()

    def _move_sticky(self, part: _Partition) -> None:
        """Tell the sticky partitioner `part`'s batch is done, if null keys were going there."""
        meta = part.topic
        if meta.sticky == part.partition:
            count = len(meta.partitions)
            self._sticky.on_new_batch(meta.name, count, part.partition)
            meta.sticky = self._sticky.partition(meta.name, count)

    def _wait_for_space(self, size: int) -> None:
        """Block (lock held) until `size` more bytes fit in buffer_memory."""
        deadline = time.monotonic() + self._max_block_s
        self._forcing += 1
        self._kick()
        try:
            while self._buffered + size > self._buffer_memory:
                if self._closed:
                    raise errors.ClientClosedError("the producer was closed while send() waited")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise errors.BufferExhaustedError(
                        f"buffer_memory of {self._buffer_memory} bytes stayed full for "
                        f"{self._max_block_s * 1000:.0f} ms (max_block_ms): the broker is "
                        f"unreachable or slower than the producer ({self._buffered} bytes "
                        "waiting)"
                    )
                self._space.wait(remaining)
        finally:
            self._forcing -= 1

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
        part: _Partition,
        group: _BatchGroup,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        headers: list[Headers | None] | None,
        indexes: range | list[int],
        timestamp: int,
    ) -> None:
        """Encode the records at `indexes` into batches of `part` and queue them."""
        with part.encode_lock:
            # Records send() put in this partition earlier go first, to keep send order.
            self._encode_closed(part, take_open=True)
            for chunk, size in self._chunks(values, keys, headers, indexes):
                with self._lock:
                    if self._closed:
                        raise errors.ClientClosedError("the producer is closed")
                    if self._buffered + size > self._buffer_memory:
                        self._wait_for_space(min(size, self._buffer_memory))
                    self._buffered += size
                batch = _Batch(part, time.monotonic())
                batch.size = size
                batch.group = group
                batch.group_index = group.add()
                self._encode_chunk(part, batch, values, keys, headers, chunk, timestamp)
                with self._lock:
                    self._incomplete[batch] = None
                    self._queue_ready(part, [batch])

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
        totals = list(itertools.accumulate(sizes, initial=0))
        start = 0
        while start < len(sizes):
            end = bisect.bisect_right(totals, totals[start] + self._batch_size, lo=start + 2) - 1
            yield indexes[start:end], totals[end] - totals[start]
            start = end

    def _encode_chunk(
        self,
        part: _Partition,
        batch: _Batch,
        values: list[bytes | None],
        keys: list[bytes | None] | None,
        headers: list[Headers | None] | None,
        indexes: range | list[int],
        timestamp: int,
    ) -> None:
        """Encode one send_batch chunk into `batch` (`part.encode_lock` held)."""
        count = len(indexes)
        seq = self._take_sequence(part, count)
        records: bytes | list[bytes] | None = None
        if keys is None and headers is None:
            chunk = values[indexes.start : indexes.stop] if isinstance(indexes, range) else None
            if chunk is not None and None not in chunk:
                records = _fast_records(chunk)  # type: ignore[arg-type]
        if records is None:
            inputs = [
                (
                    keys[i] if keys is not None else None,
                    values[i],
                    headers[i] if headers is not None else None,
                    timestamp,
                )
                for i in indexes
            ]
            records = rb.encode_records(inputs, timestamp)
        batch.data = _frame_batch(
            records, count, timestamp, self._codec, part.producer_id, part.producer_epoch, seq
        )
        batch.record_count = count
        batch.base_seq = seq
        batch.order = next(self._order)

    def _take_sequence(self, part: _Partition, count: int) -> int:
        """The base sequence for the next `count` records of `part` (`encode_lock` held)."""
        if not self._idempotent:
            return fmt.NO_SEQUENCE
        seq = part.next_seq
        part.next_seq = (seq + count) % _SEQUENCE_MODULUS
        return seq

    # --- encoding (sender thread, or send_batch) ----------------------------------------------

    def _encode_closed(self, part: _Partition, take_open: bool = False) -> None:
        """Encode the partition's closed batches (and its open one) and queue them.

        The caller holds `part.encode_lock`, so sequences follow queue order.
        """
        with self._lock:
            if take_open and part.open is not None:
                self._close_open(part)
            batches = part.closed
            part.closed = []
            self._closed_parts.pop(part, None)
        if not batches:
            return
        for batch in batches:
            self._encode(part, batch)
        with self._lock:
            self._queue_ready(part, batches)

    def _encode(self, part: _Partition, batch: _Batch) -> None:
        """Encode a closed batch once, with the partition's next sequence (encode lock held)."""
        records = batch.records
        count = len(records)
        seq = self._take_sequence(part, count)
        batch.data = rb.encode_batch(
            records,
            codec=self._codec,
            producer_id=part.producer_id,
            producer_epoch=part.producer_epoch,
            base_sequence=seq,
        )
        batch.timestamps = list(map(_timestamp_of, records))
        batch.records = []  # the encoded bytes are all the sender needs now
        batch.record_count = count
        batch.base_seq = seq
        batch.order = next(self._order)

    def _queue_ready(self, part: _Partition, batches: list[_Batch]) -> None:
        """Hand encoded batches to the sender (lock held), after any already queued."""
        part.ready.extend(batches)
        self._ready_parts[part] = None
        self._kick()

    # --- the sender thread -------------------------------------------------------------------

    def _run(self) -> None:
        """The sender thread: rounds of `_step` until the producer is closed and drained."""
        while True:
            try:
                if self._step():
                    return
            except Exception:
                # A bug here must not silently stop delivery: log it and keep going, unless
                # close() is waiting for this thread.
                log.exception("producer sender loop failed")
                if self._stopping:
                    return
                time.sleep(self._backoff_s or 0.1)

    def _step(self) -> bool:
        """One round of the sender; True when the producer is stopped and the thread ends."""
        now = time.monotonic()
        for part in self._close_due(now):
            # send_batch may hold the lock while it waits for space; it encodes these itself.
            if part.encode_lock.acquire(blocking=False):
                try:
                    self._encode_closed(part)
                finally:
                    part.encode_lock.release()
        self._expire(now)
        self._refresh_metadata(now)
        self._reset_sequences(now)
        self._send_ready(now)
        return self._wait(now)

    def _close_due(self, now: float) -> list[_Partition]:
        """Close every open batch whose linger time is up (or all, when forced); return the
        partitions with closed batches to encode."""
        with self._lock:
            force = self._forcing or self._closed
            for part in list(self._open_parts):
                batch = part.open
                if batch is None:
                    continue
                # As Kafka's accumulator: while an earlier batch still waits for a free
                # in-flight slot, the open one keeps filling, so a short linger_ms under load
                # makes bigger batches instead of a queue of one-record requests.
                backlog = bool(part.ready) or bool(part.closed)
                if force or (now - batch.created >= self._linger_s and not backlog):
                    self._close_open(part)
            return list(self._closed_parts)

    def _expire(self, now: float) -> None:
        """Fail ready batches older than delivery_timeout_ms."""
        outcomes = []
        with self._lock:
            for part in list(self._ready_parts):
                self._drop_claimed(part)
                while part.ready and now - part.ready[0].created >= self._delivery_timeout_s:
                    batch = part.ready.popleft()
                    outcomes.append(self._fail_for_good(batch, self._expired_error(batch, now)))
                    self._drop_claimed(part)
        self._finish(outcomes)

    def _expired_error(self, batch: _Batch, now: float) -> errors.RequestTimedOutError:
        """The error for a batch given up on: how old it is (ms) and what went wrong last."""
        age_ms = (now - batch.created) * 1000
        why = batch.last_error or "it could not be sent"
        return errors.RequestTimedOutError(
            f"{batch.record_count} record(s) for {batch.part.name} expired after "
            f"{age_ms:.0f} ms without an acknowledgement (delivery_timeout_ms="
            f"{self._delivery_timeout_s * 1000:.0f}), after {batch.attempts} attempt(s): {why}"
        )

    def _reset_sequences(self, now: float) -> None:
        """Give partitions whose batch failed for good a fresh producer id, once drained."""
        with self._lock:
            due = [p for p in self._reset_parts if p.inflight == 0]
            if not due or now < self._reset_retry_at:
                return
        try:
            # One attempt: the sender thread must not stall while the broker is away.
            response = self._stub.InitProducerId(
                pb.InitProducerIdRequest(), timeout=self._request_timeout_s
            )
            pid, epoch = response.producer_id, response.producer_epoch
        except grpc.RpcError as rpc_error:
            exc = translate(rpc_error, self.address)
            log.warning("producer id for a sequence reset not available yet: %s", exc)
            with self._lock:
                self._reset_retry_at = now + self._backoff_delay(2)
            return
        for part in due:
            if part.encode_lock.acquire(blocking=False):
                try:
                    self._restamp_partition(part, pid, epoch)
                finally:
                    part.encode_lock.release()

    def _restamp_partition(self, part: _Partition, pid: int, epoch: int) -> None:
        """Renumber the partition's unsent batches from 0 under a new producer id."""
        with self._lock:
            if part.inflight:
                return
            part.ready = deque(b for b in part.ready if not b.claimed)
            seq = 0
            for batch in part.ready:
                batch.data = _restamp(batch.data, pid, epoch, seq)
                batch.base_seq = seq
                seq = (seq + batch.record_count) % _SEQUENCE_MODULUS
            part.producer_id, part.producer_epoch, part.next_seq = pid, epoch, seq
            part.reset_pending = False
            part.draining = False
            del self._reset_parts[part]
            if part.ready:
                self._ready_parts[part] = None

    def _send_ready(self, now: float) -> None:
        """Pack ready batches into requests and give them to the stream."""
        if self._cancel_if_stuck(now):
            return
        with self._lock:
            if not self._ready_parts:
                return
            stream = self._stream
            if stream is None and now >= self._stream_retry_at:
                stream = self._open_stream()
            if stream is None:
                return
            requests = self._build_requests(stream, now)
            if requests:
                stream.to_write.extend(requests)
                if self._acks:
                    stream.unanswered.extend(requests)
                stream.wakeup.notify()

    def _cancel_if_stuck(self, now: float) -> bool:
        """Break the stream when its oldest request is unanswered for request_timeout_ms;
        the reader thread then requeues everything on it."""
        with self._lock:
            stream = self._stream
            if stream is None or not stream.unanswered:
                return False
            if now - stream.unanswered[0].sent_at <= self._request_timeout_s:
                return False
            stream.cancelled_because = errors.RequestTimedOutError(
                f"no answer within request_timeout_ms={self._request_timeout_s * 1000:.0f}"
            )
        log.warning("%s: reconnecting", stream.cancelled_because)
        stream.call.cancel()
        return True

    @staticmethod
    def _drop_claimed(part: _Partition) -> None:
        """Forget queued batches that already ended (failed by close()) (lock held)."""
        ready = part.ready
        while ready and ready[0].claimed:
            ready.popleft()

    def _sendable(self, part: _Partition, now: float) -> bool:
        """Whether the partition's next batch may go out now (lock held): not backing off,
        not waiting for a sequence reset, and after a failure only once nothing is in flight,
        so retries keep sequence order."""
        self._drop_claimed(part)
        if not part.ready or part.reset_pending or now < part.retry_at:
            return False
        if part.draining:
            if part.inflight:
                return False
            part.draining = False
        return part.inflight < self._max_in_flight

    def _build_requests(self, stream: _Stream, now: float) -> list[_Request]:
        """Requests for the ready batches the in-flight limit allows (lock held)."""
        busy = len(stream.unanswered) if self._acks else len(stream.to_write)
        slots = self._max_in_flight - busy
        requests = []
        while slots > 0:
            batches = self._pick_batches(now)
            if not batches:
                break
            requests.append(_Request(next(self._correlation), batches, self._acks))
            slots -= 1
        for part in [p for p in self._ready_parts if not p.ready]:
            del self._ready_parts[part]
        return requests

    def _pick_batches(self, now: float) -> list[_Batch]:
        """At most one batch per partition, up to max_request_size bytes (lock held)."""
        batches: list[_Batch] = []
        size = 0
        for part in list(self._ready_parts):
            if not self._sendable(part, now):
                continue
            batch = part.ready[0]
            if batches and (batch.solo or size + len(batch.data) > self._max_request_size):
                continue
            part.ready.popleft()
            if self._acks:
                part.inflight += 1
            batch.attempts += 1
            batches.append(batch)
            size += len(batch.data)
            # Rotate, so the next request starts with partitions this one did not serve.
            del self._ready_parts[part]
            self._ready_parts[part] = None
            if batch.solo:
                break
        return batches

    def _wait(self, now: float) -> bool:
        """Sleep until there is work or a deadline; True when the thread should end."""
        with self._lock:
            if self._stopping and not self._incomplete:
                return True
            if self._wake_pending:
                self._wake_pending = False
                return False
            timeout = self._next_deadline(now)
            self._wake.wait(timeout)
            self._wake_pending = False
        return False

    def _next_deadline(self, now: float) -> float | None:
        """Seconds until the sender has something to do on its own (lock held)."""
        if not self._incomplete and not self._reset_parts:
            return None
        deadline = now + _MAX_IDLE_WAIT_S
        for part in self._open_parts:
            # a batch held open behind a backlog waits for an answer, which wakes us anyway
            if part.open is not None and not part.ready and not part.closed:
                deadline = min(deadline, part.open.created + self._linger_s)
        for part in self._ready_parts:
            if part.retry_at > now:
                deadline = min(deadline, part.retry_at)
        if self._stream is None and self._ready_parts:
            deadline = min(deadline, self._stream_retry_at)
        if self._closed_parts:  # send_batch held their encode lock: look again soon
            deadline = min(deadline, now + max(self._linger_s, 0.005))
        return max(0.0, deadline - now)

    # --- the stream ----------------------------------------------------------------------------

    def _open_stream(self) -> _Stream:
        """Start a ProduceStream call and its reader thread (lock held)."""
        stream = _Stream(self._lock)
        stream.call = self._produce_stream(self._requests_of(stream), metadata=self._call_metadata)
        stream.reader = threading.Thread(
            target=self._read, args=(stream,), name="logstore-producer-reader", daemon=True
        )
        self._stream = stream
        stream.reader.start()
        return stream

    def _requests_of(self, stream: _Stream) -> Iterator[bytes]:
        """What gRPC writes to the stream: requests as the sender queues them."""
        while True:
            with self._lock:
                while not stream.to_write and not stream.dead and not stream.finishing:
                    stream.wakeup.wait()
                if stream.dead or not stream.to_write:
                    return
                request = stream.to_write.popleft()
                handed = []
                if self._acks == 0:
                    # With acks=0 a written request frees its slot: the sender may send more.
                    handed = self._claim(request.batches)
                    self._kick()
            if handed:
                # acks=0: the record counts as sent once gRPC has it, as in Kafka.
                self._finish([_Outcome(b, -1, -1, None) for b in handed])
            yield request.message

    def _read(self, stream: _Stream) -> None:
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

    def _on_response(self, stream: _Stream, response: pb.ProduceResponse) -> None:
        """Match an answer to the oldest unanswered request and settle its batches."""
        with self._lock:
            if stream.dead or not stream.unanswered:
                return  # acks=0 answers, or a stream already given up on
            request = stream.unanswered.popleft()
            if response.correlation_id != request.cid:
                stream.unanswered.appendleft(request)
                raise errors.InternalBrokerError(
                    f"answer {response.correlation_id} arrived while {request.cid} was expected"
                )
            self._stream_failures = 0
            results = {(t.topic, r.partition): r for t in response.topics for r in t.partitions}
            now = time.monotonic()
            outcomes = []
            for batch in request.batches:
                part = batch.part
                part.inflight -= 1
                outcome = self._judge(batch, results.get((part.topic.name, part.partition)), now)
                if outcome is not None:
                    outcomes.append(outcome)
            self._kick()
        self._finish(outcomes)

    def _judge(
        self, batch: _Batch, result: pb.ProducePartitionResult | None, now: float
    ) -> _Outcome | None:
        """What one batch's answer means: an outcome to finish, or None when it is retried."""
        if batch.claimed:
            return None
        if result is None:
            error: errors.LogStoreError | None = errors.InternalBrokerError(
                f"the broker's answer has no result for {batch.part.name}"
            )
        else:
            error = partition_error(result.error)
        if error is None:
            assert result is not None
            self._claim([batch])
            return _Outcome(batch, result.base_offset, result.log_append_time, None)
        return self._on_batch_error(batch, error, now)

    def _on_batch_error(
        self, batch: _Batch, error: errors.LogStoreError, now: float, backoff: bool = True
    ) -> _Outcome | None:
        """Retry `batch` if it may still succeed, else fail it (lock held)."""
        part = batch.part
        batch.last_error = f"{type(error).__name__}: {error}"
        if isinstance(error, errors.OutOfOrderSequenceError):
            # Expected after an earlier batch of the partition failed in this round: this
            # one was not appended and will be resent once that one is.
            retriable = part.draining
        else:
            retriable = is_retriable(error)
        if isinstance(error, errors.UnknownTopicOrPartitionError):
            part.topic.stale = True  # the next send() describes the topic again
        if retriable and self._acks != 0:
            if now - batch.created < self._delivery_timeout_s:
                self._requeue(batch, now, backoff)
                return None
            error = self._expired_error(batch, now)
        return self._fail_for_good(batch, error)

    def _fail_for_good(self, batch: _Batch, error: BaseException) -> _Outcome:
        """Fail `batch` (lock held). Its partition then needs new sequences: the broker still
        expects this batch's, so later batches would all be out of order."""
        part = batch.part
        if self._idempotent:
            part.reset_pending = True
            self._reset_parts[part] = None
        part.draining = True
        self._claim([batch])
        return _Outcome(batch, -1, -1, error)

    def _requeue(self, batch: _Batch, now: float, backoff: bool) -> None:
        """Put `batch` back in its partition's queue, in sequence order (lock held)."""
        part = batch.part
        part.draining = True
        if backoff:
            part.retry_at = max(part.retry_at, now + self._backoff_delay(batch.attempts))
        ready = part.ready
        ready.append(batch)
        if len(ready) > 1 and ready[-2].order > batch.order:
            part.ready = deque(sorted(ready, key=operator.attrgetter("order")))
        self._ready_parts[part] = None

    def _on_stream_failed(self, stream: _Stream, exc: BaseException | None) -> None:
        """The stream ended: settle every request still on it and plan a new stream."""
        error = stream.cancelled_because or self._stream_error(exc)
        rejected = self._rejected_by_broker(exc, error)
        outcomes: list[_Outcome] = []
        with self._lock:
            if stream.dead:
                return
            stream.dead = True
            stream.wakeup.notify_all()
            if self._stream is stream:
                self._stream = None
            unanswered = list(stream.unanswered)
            unwritten = [] if self._acks else list(stream.to_write)
            stream.unanswered.clear()
            stream.to_write.clear()
            now = time.monotonic()
            if rejected and unanswered:
                # The broker refused the first unanswered request and stopped reading: the
                # later ones were never processed and go again as they are.
                outcomes += self._settle_rejected(unanswered.pop(0), error, now)
                self._requeue_unprocessed(unanswered, now)
            else:
                if exc is not None or unanswered:
                    self._stream_failures += 1
                    self._stream_retry_at = now + self._backoff_delay(self._stream_failures)
                for request in unanswered:
                    for batch in request.batches:
                        batch.part.inflight -= 1
                        if not batch.claimed:
                            outcome = self._on_batch_error(batch, error, now)
                            if outcome is not None:
                                outcomes.append(outcome)
            self._requeue_unprocessed(unwritten, now, counted=False)
            self._kick()
        if exc is not None and outcomes:
            log.debug("produce stream ended: %s", error)
        self._finish(outcomes)

    def _stream_error(self, exc: BaseException | None) -> errors.LogStoreError:
        """What broke the stream. Anything but a refusal by the broker leaves the requests
        on it with an unknown fate, so it is reported as retriable."""
        if exc is None:
            return errors.BrokerUnavailableError("the broker ended the produce stream")
        if isinstance(exc, grpc.RpcError):
            return translate(exc, self.address)
        return errors.BrokerUnavailableError(f"produce stream broke: {exc}")

    @staticmethod
    def _rejected_by_broker(exc: BaseException | None, error: errors.LogStoreError) -> bool:
        """True when the broker itself ended the stream over one request it refused (its
        abort names the error kind); False for a transport failure (broker gone, reset)."""
        if not isinstance(exc, grpc.RpcError) or is_retriable(error):
            return False
        trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
        return any(key == ERROR_KIND_KEY for key, _ in trailing or ())

    def _settle_rejected(
        self, request: _Request, error: errors.LogStoreError, now: float
    ) -> list[_Outcome]:
        """The broker refused `request` as a whole (lock held). With one batch, that batch is
        at fault; with several, each is retried alone so the next refusal names the culprit."""
        batches = [b for b in request.batches if not b.claimed]
        for batch in request.batches:
            batch.part.inflight -= 1
        if len(request.batches) == 1:
            return [o for o in (self._on_batch_error(b, error, now) for b in batches) if o]
        for batch in batches:
            batch.solo = True
            self._requeue(batch, now, backoff=False)
        return []

    def _requeue_unprocessed(
        self, requests: list[_Request], now: float, counted: bool = True
    ) -> None:
        """Queue again, without backoff, requests the broker never read (lock held)."""
        for request in requests:
            for batch in request.batches:
                if counted:
                    batch.part.inflight -= 1
                if not batch.claimed:
                    batch.attempts -= 1  # never reached the broker
                    self._requeue(batch, now, backoff=False)

    # --- finishing batches -------------------------------------------------------------------

    def _claim(self, batches: list[_Batch]) -> list[_Batch]:
        """Mark `batches` as ending and release their buffer space (lock held)."""
        claimed = []
        for batch in batches:
            if not batch.claimed:
                batch.claimed = True
                self._buffered -= batch.size
                claimed.append(batch)
        if claimed:
            self._space.notify_all()
        return claimed

    def _finish(self, outcomes: list[_Outcome]) -> None:
        """Complete the futures of claimed batches, then mark them done (lock not held)."""
        if not outcomes:
            return
        for outcome in outcomes:
            self._complete(outcome)
        with self._lock:
            for outcome in outcomes:
                outcome.batch.done = True
                self._incomplete.pop(outcome.batch, None)
            self._idle.notify_all()

    @staticmethod
    def _complete(outcome: _Outcome) -> None:
        """Settle the futures of one claimed batch (lock not held: callbacks may run)."""
        batch, base_offset, log_append_time, error = outcome
        batch.data = b""  # futures may outlive the batch's trip: keep only what they read
        if batch.group is None:
            _finish_batch_futures(batch, base_offset, log_append_time, error)
        elif error is None:
            part = batch.part
            batch.group.acknowledged(
                batch.group_index,
                BatchMetadata(part.topic.name, part.partition, base_offset, batch.record_count),
            )
        else:
            batch.group.failed(error)

    def _abort_incomplete(self, error: BaseException) -> None:
        """Fail every batch not finished yet (close() after its timeout)."""
        with self._lock:
            for part in list(self._open_parts):
                self._close_open(part)
            batches = self._claim([b for b in self._incomplete if not b.claimed])
        self._finish([_Outcome(b, -1, -1, error) for b in batches])

    def _shutdown(self) -> None:
        """Stop the sender, end the stream and close the channel (after a flush)."""
        with self._lock:
            self._stopping = True
            self._kick()
        self._sender.join(timeout=max(self._request_timeout_s, 1.0))
        with self._lock:
            stream = self._stream
            if stream is not None:
                stream.finishing = True
                stream.wakeup.notify_all()
        if stream is not None and stream.reader is not None:
            stream.reader.join(timeout=self._request_timeout_s)
            if stream.reader.is_alive():
                stream.call.cancel()
        self._channel.close()

    # --- helpers -----------------------------------------------------------------------------

    def _backoff_delay(self, attempt: int) -> float:
        """Seconds before retry number `attempt` (1-based): doubling, capped, +-20% jitter."""
        base = min(self._backoff_max_s, self._backoff_s * 2 ** max(0, attempt - 1))
        return base * random.uniform(0.8, 1.2)

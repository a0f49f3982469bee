"""Kafka RecordBatch v2: encode, decode, validate, and read header fields in place.

The byte layout is documented in `logstore.codec.format`. The broker never decodes records on
its hot path: it validates a batch with `validate_batch` (header checks + one CRC-32C pass,
no record parsing), patches the base offset with `set_base_offset`, and copies bytes.
Clients encode with `encode_batch` (records of their own keys, headers and timestamps) or
`encode_values` (one timestamp for all, as the producer's `send_batch` does), and decode
with `decode_batch`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import crc32c

from logstore.codec import compression, records_reference
from logstore.codec import format as fmt
from logstore.errors import CorruptRecordError, RecordTooLargeError, UnsupportedCompressionError

_c_decode_records: Callable[..., list[Any]] | None
try:
    if os.environ.get("LOGSTORE_PURE_PYTHON"):
        raise ImportError("LOGSTORE_PURE_PYTHON is set")
    from logstore.codec._record_decoder import decode_records as _c_decode_records
except ImportError:  # not built (no C compiler at install time): the reference serves
    _c_decode_records = None
#: the record decoder in use: the C one when built, else `records_reference`, the format
#: spec in code. Same arguments, equal records, the same CorruptRecordError messages.
_decode_records: Callable[..., list[Any]] = _c_decode_records or records_reference.decode_records

Header = tuple[str, bytes | None]
#: what a producer hands the encoder: (key, value, headers, timestamp_ms or None for "now")
RecordInput = tuple[bytes | None, bytes | None, Sequence[Header] | None, int | None]

#: Kafka's codecs: none and the four of `logstore.codec.compression`; attributes bits
#: 0-2 may also hold 5-7, which Kafka does not define
_SUPPORTED_CODECS = frozenset(fmt.CODEC_NAMES)
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


class BatchHeader(NamedTuple):
    """The 61-byte header of a RecordBatch v2, field for field (see `logstore.codec.format`)."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def size(self) -> int:
        """Total bytes of the batch on disk, header included."""
        return self.batch_length + fmt.LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> int:
        return self.attributes & fmt.COMPRESSION_CODEC_MASK

    @property
    def timestamp_type(self) -> int:
        return (self.attributes & fmt.TIMESTAMP_TYPE_MASK) >> 3

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & fmt.TRANSACTIONAL_FLAG_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & fmt.CONTROL_FLAG_MASK)

    @property
    def last_sequence(self) -> int:
        """The sequence of the last record, wrapping at int32 max like Kafka; -1 if none."""
        if self.base_sequence == fmt.NO_SEQUENCE:
            return fmt.NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) % (_INT32_MAX + 1)


class Record(NamedTuple):
    """One decoded record. `offset` is absolute; `timestamp` is in ms since the epoch."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]


class DecodedBatch(NamedTuple):
    """A batch header with its decoded records."""

    header: BatchHeader
    records: list[Record]


# --- varints -------------------------------------------------------------------------------


def _encode_zigzag_varint(value: int) -> bytes:
    """Zigzag varint (protobuf sint64) of a signed 64-bit integer."""
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _varint_table(limit: int) -> tuple[bytes, ...]:
    """Zigzag varints of -1 .. limit - 1 (limit <= 2**13: one or two bytes each), built
    without a call per entry: every client and the CLI pay for this at import."""
    table = [b"\x01"]  # -1
    table += [bytes((z,)) for z in range(0, min(2 * limit, 0x80), 2)]
    table += [bytes((z & 0x7F | 0x80, z >> 7)) for z in range(0x80, 2 * limit, 2)]
    return tuple(table)


#: _VARINT[n + 1] is the zigzag varint of n for -1 <= n < _VARINT_TABLE_LIMIT. Encoding a
#: record is mostly varints; a table lookup is several times faster than computing them.
#: Lengths, deltas and counts from 8 KiB up take the computed path, which costs little
#: beside records that large.
_VARINT_TABLE_LIMIT = 1 << 13
_VARINT: tuple[bytes, ...] = _varint_table(_VARINT_TABLE_LIMIT)
_NULL_LENGTH = _VARINT[0]


def encode_varint(value: int) -> bytes:
    """Zigzag varint of `value`, from the table when it is small."""
    if -1 <= value < _VARINT_TABLE_LIMIT:
        return _VARINT[value + 1]
    return _encode_zigzag_varint(value)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a zigzag varint at `pos`; return (value, position after it).

    Raises CorruptRecordError on a varint that runs past the data or past 10 bytes.
    """
    return records_reference.read_varint(data, pos, len(data))


# --- encoding ------------------------------------------------------------------------------


def _encode_headers(headers: Sequence[Header]) -> list[bytes]:
    parts = [encode_varint(len(headers))]
    for name, value in headers:
        name_bytes = name.encode("utf-8")
        parts.append(encode_varint(len(name_bytes)))
        parts.append(name_bytes)
        if value is None:
            parts.append(_NULL_LENGTH)
        else:
            parts.append(encode_varint(len(value)))
            parts.append(value)
    return parts


def encode_records(
    records: Sequence[RecordInput],
    base_timestamp: int,
    offset_deltas: Iterable[int] | None = None,
) -> bytes:
    """Encode records into the records section of a batch (uncompressed).

    Offset deltas are the records' positions in `records` unless `offset_deltas` gives
    them (increasing; a compacted batch keeps its records' offsets); timestamp deltas are
    relative to `base_timestamp` (ms). Every timestamp must already be resolved (no None).
    """
    parts: list[bytes] = []
    append = parts.append
    table = _VARINT
    limit = _VARINT_TABLE_LIMIT
    deltas = range(len(records)) if offset_deltas is None else offset_deltas
    for offset_delta, (key, value, headers, timestamp) in zip(deltas, records, strict=True):
        ts_delta = timestamp - base_timestamp  # type: ignore[operator]
        ts_part = table[ts_delta + 1] if -1 <= ts_delta < limit else encode_varint(ts_delta)
        od_part = table[offset_delta + 1] if offset_delta < limit else encode_varint(offset_delta)
        if key is None:
            key_len_part = _NULL_LENGTH
            key = b""
        else:
            key_len = len(key)
            key_len_part = table[key_len + 1] if key_len < limit else encode_varint(key_len)
        if value is None:
            value_len_part = _NULL_LENGTH
            value = b""
        else:
            value_len = len(value)
            value_len_part = table[value_len + 1] if value_len < limit else encode_varint(value_len)
        header_bytes = b"".join(_encode_headers(headers)) if headers else b"\x00"
        body_len = (
            1
            + len(ts_part)
            + len(od_part)
            + len(key_len_part)
            + len(key)
            + len(value_len_part)
            + len(value)
            + len(header_bytes)
        )
        append(table[body_len + 1] if body_len < limit else encode_varint(body_len))
        append(b"\x00")  # record attributes: unused in v2
        append(ts_part)
        append(od_part)
        append(key_len_part)
        append(key)
        append(value_len_part)
        append(value)
        append(header_bytes)
    return b"".join(parts)


def encode_batch(
    records: Sequence[RecordInput],
    *,
    base_offset: int = 0,
    codec: int = fmt.CODEC_NONE,
    now_ms: int | None = None,
    producer_id: int = fmt.NO_PRODUCER_ID,
    producer_epoch: int = fmt.NO_PRODUCER_EPOCH,
    base_sequence: int = fmt.NO_SEQUENCE,
    partition_leader_epoch: int = fmt.NO_PARTITION_LEADER_EPOCH,
    timestamp_type: int = fmt.TIMESTAMP_TYPE_CREATE_TIME,
    is_transactional: bool = False,
) -> bytes:
    """Encode `records` as one RecordBatch v2 and return its bytes.

    A record whose timestamp is None gets `now_ms` (required then). The batch's base
    timestamp is the first record's; max timestamp the largest. At least one record.
    `codec` is none or one of Kafka's four (`fmt.CODEC_*`): the records section is
    compressed once, as a whole (`logstore.codec.compression`).
    """
    if not records:
        raise ValueError("a record batch holds at least one record")
    if any(r[3] is None for r in records):
        if now_ms is None:
            raise ValueError("now_ms is required when a record has no timestamp")
        records = [(k, v, h, now_ms if t is None else t) for k, v, h, t in records]
    timestamps = [r[3] for r in records]
    base_timestamp: int = timestamps[0]  # type: ignore[assignment]
    max_timestamp: int = max(timestamps)  # type: ignore[type-var,assignment]
    if max_timestamp - min(timestamps) > _INT64_MAX:  # type: ignore[type-var,operator]
        raise ValueError("record timestamps differ by more than a signed 64-bit delta holds")
    payload = compression.compress(codec, encode_records(records, base_timestamp))
    attributes = codec | (timestamp_type << 3)
    if is_transactional:
        attributes |= fmt.TRANSACTIONAL_FLAG_MASK
    fields = (
        attributes,
        len(records) - 1,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        len(records),
    )
    return _assemble(base_offset, partition_leader_epoch, fields, payload)


#: a payload in at most this many pieces is framed without joining it first (its CRC is
#: chained over the pieces), so large values are copied once, not twice
_ASSEMBLE_PIECES_MAX = 64


def _assemble(
    base_offset: int,
    partition_leader_epoch: int,
    after_crc_fields: tuple[int, ...],
    payload: bytes | list[bytes],
) -> bytes:
    """A whole batch: prefix, CRC-32C over the header fields after it and the payload.

    `payload` is the (compressed) records section, as bytes or as pieces in order.
    """
    pieces = [payload] if isinstance(payload, bytes) else payload
    if len(pieces) > _ASSEMBLE_PIECES_MAX:
        pieces = [b"".join(pieces)]  # one C-level CRC pass beats thousands of calls
    after_crc = fmt.BATCH_HEADER_AFTER_CRC.pack(*after_crc_fields)
    crc = crc32c.crc32c(after_crc)
    for piece in pieces:
        crc = crc32c.crc32c(piece, crc)
    batch_length = fmt.BATCH_HEADER_SIZE - fmt.LOG_OVERHEAD + sum(map(len, pieces))
    prefix = fmt.BATCH_PREFIX.pack(base_offset, batch_length, partition_leader_epoch, fmt.MAGIC_V2)
    return b"".join((prefix, fmt.UINT32.pack(crc), after_crc, *pieces))


#: per value length L: the bytes before each value of a null-key, header-less record with
#: timestamp delta 0, indexed by offset delta (see `_same_length_records`)
_PREFIXES: dict[int, list[bytes]] = {}
#: value lengths whose prefixes are kept; more distinct lengths clear the cache
_PREFIX_CACHE_LENGTHS = 32
_PREFIX_LOCK = threading.Lock()


def _prefixes(length: int, count: int) -> list[bytes]:
    """Record prefixes for `count` values of `length` bytes: cached, built once per length.

    Each prefix starts with the previous record's header count (0) except the first, so a
    records section is prefix, value, prefix, value, ..., b"\x00".
    """
    table = _PREFIXES.get(length)
    if table is not None and len(table) >= count:
        return table
    value_len = encode_varint(length)
    built = []
    for i in range(max(count, 1024)):
        delta = encode_varint(i)
        body = 4 + len(delta) + len(value_len) + length  # attrs, ts, key len, header count
        lead = b"\x00" if i else b""
        built.append(lead + encode_varint(body) + b"\x00\x00" + delta + b"\x01" + value_len)
    with _PREFIX_LOCK:  # producers encode on caller threads and the sender thread at once
        if len(_PREFIXES) >= _PREFIX_CACHE_LENGTHS:
            _PREFIXES.clear()
        _PREFIXES[length] = built
    return built


def _same_length_records(values: list[bytes]) -> list[bytes] | None:
    """The records section of null-key, header-less `values` sharing the batch's timestamp,
    as pieces to join, when every value has the same length; else None. Byte for byte what
    `encode_records` gives, with two list slices instead of a Python loop per record."""
    lengths = set(map(len, values))
    if len(lengths) != 1:
        return None
    count = len(values)
    pieces: list[bytes] = [b""] * (2 * count)
    pieces[0::2] = _prefixes(lengths.pop(), count)[:count]
    pieces[1::2] = values
    pieces.append(b"\x00")
    return pieces


def encode_values(
    values: list[bytes | None],
    timestamp_ms: int,
    *,
    keys: list[bytes | None] | None = None,
    headers: list[Sequence[Header] | None] | None = None,
    codec: int = fmt.CODEC_NONE,
    producer_id: int = fmt.NO_PRODUCER_ID,
    producer_epoch: int = fmt.NO_PRODUCER_EPOCH,
    base_sequence: int = fmt.NO_SEQUENCE,
) -> bytes:
    """One RecordBatch v2 (base offset 0) of records that all carry `timestamp_ms` (ms).

    Exactly the bytes `encode_batch` gives for ``(key, value, headers, timestamp_ms)``
    records; `keys` and `headers`, when given, line up with `values`. Null-key, header-less
    values of one length (a producer's bulk send) skip the per-record loop entirely.
    """
    count = len(values)
    if not count:
        raise ValueError("a record batch holds at least one record")
    payload: bytes | list[bytes] | None = None
    if keys is None and headers is None and None not in values:
        payload = _same_length_records(values)  # type: ignore[arg-type]
    if payload is None:
        records = [
            (
                None if keys is None else keys[i],
                values[i],
                None if headers is None else headers[i],
                timestamp_ms,
            )
            for i in range(count)
        ]
        payload = encode_records(records, timestamp_ms)
    if codec != fmt.CODEC_NONE:
        joined = payload if isinstance(payload, bytes) else b"".join(payload)
        payload = compression.compress(codec, joined)
    fields = (
        codec,
        count - 1,
        timestamp_ms,
        timestamp_ms,
        producer_id,
        producer_epoch,
        base_sequence,
        count,
    )
    return _assemble(0, fmt.NO_PARTITION_LEADER_EPOCH, fields, payload)


def rewrite_batch(header: BatchHeader, kept: Sequence[Record]) -> bytes:
    """The batch `header` describes, holding only `kept` (some of its records, in order).

    What compaction writes. Everything the header says about the batch stays: base offset
    and lastOffsetDelta (so offsets stay dense from batch to batch), producer id, epoch
    and base sequence (so idempotent producers' state replays the same), timestamps,
    timestamp type and the transactional flag. Records keep their offsets and timestamps.
    With nothing kept the batch is empty (recordCount 0, no compression): 61 bytes that
    still cover the batch's offsets, as Kafka's cleaner leaves them.
    """
    base_offset, base_timestamp = header.base_offset, header.base_timestamp
    if any(not base_offset <= r.offset <= header.last_offset for r in kept):
        raise ValueError("a kept record lies outside the batch's offsets")
    log_append_time = header.timestamp_type == fmt.TIMESTAMP_TYPE_LOG_APPEND_TIME
    inputs = [
        (r.key, r.value, r.headers, base_timestamp if log_append_time else r.timestamp)
        for r in kept
    ]
    codec = header.codec if kept else fmt.CODEC_NONE
    payload = b""
    if kept:
        deltas = [r.offset - base_offset for r in kept]
        payload = compression.compress(codec, encode_records(inputs, base_timestamp, deltas))
    fields = (
        (header.attributes & ~fmt.COMPRESSION_CODEC_MASK) | codec,
        header.last_offset_delta,
        base_timestamp,
        header.max_timestamp,
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        len(kept),
    )
    return _assemble(base_offset, header.partition_leader_epoch, fields, payload)


# --- header access and validation ----------------------------------------------------------


def read_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Unpack the header of the batch at `pos` without looking at its records.

    Raises CorruptRecordError if fewer than 61 bytes remain.
    """
    if len(buf) - pos < fmt.BATCH_HEADER_SIZE:
        raise CorruptRecordError(
            f"record batch header needs {fmt.BATCH_HEADER_SIZE} bytes, "
            f"only {len(buf) - pos} available"
        )
    return BatchHeader(*fmt.BATCH_HEADER.unpack_from(buf, pos))


def compute_crc(buf: bytes | bytearray | memoryview, pos: int, size: int) -> int:
    """CRC-32C of the batch at `pos` of `size` bytes, over the range the format covers."""
    view = memoryview(buf)[pos + fmt.CRC_COVERED_FROM : pos + size]
    return crc32c.crc32c(view)


def check_header(header: BatchHeader, available: int, max_batch_bytes: int | None = None) -> None:
    """Check a batch header's framing: length, magic, size limit, bytes present.

    `available` is the number of bytes present from the batch's start. Raises
    CorruptRecordError (or RecordTooLargeError) naming the broken field. The fields the CRC
    covers are checked by `check_contents`, after the CRC, so a damaged byte is reported
    as a CRC failure rather than as a strange record count.
    """
    if header.batch_length < fmt.BATCH_HEADER_SIZE - fmt.LOG_OVERHEAD:
        raise CorruptRecordError(
            f"record batch length {header.batch_length} is below the minimum "
            f"{fmt.BATCH_HEADER_SIZE - fmt.LOG_OVERHEAD}"
        )
    if header.magic != fmt.MAGIC_V2:
        raise CorruptRecordError(f"record batch magic {header.magic} is not supported: use 2")
    if max_batch_bytes is not None and header.size > max_batch_bytes:
        raise RecordTooLargeError(
            f"record batch of {header.size} bytes exceeds max.message.bytes {max_batch_bytes}"
        )
    if header.size > available:
        raise CorruptRecordError(
            f"record batch claims {header.size} bytes but only {available} are present"
        )


def check_contents(header: BatchHeader, dense: bool = True) -> None:
    """Check the CRC-covered header fields: record count and codec.

    `dense` (what a producer sends): one record per offset, recordCount = lastOffsetDelta
    + 1 >= 1. Otherwise (a stored batch, which compaction may have thinned out, down to
    no records at all): 0 <= recordCount <= lastOffsetDelta + 1.
    """
    if dense:
        if header.record_count < 1 or header.last_offset_delta != header.record_count - 1:
            raise CorruptRecordError(
                f"record batch has recordCount {header.record_count} and lastOffsetDelta "
                f"{header.last_offset_delta}: expected recordCount >= 1 and "
                "lastOffsetDelta = recordCount - 1"
            )
    elif header.last_offset_delta < 0 or not (
        0 <= header.record_count <= header.last_offset_delta + 1
    ):
        raise CorruptRecordError(
            f"record batch has recordCount {header.record_count} and lastOffsetDelta "
            f"{header.last_offset_delta}: expected lastOffsetDelta >= 0 and "
            "0 <= recordCount <= lastOffsetDelta + 1"
        )
    if header.codec not in _SUPPORTED_CODECS:
        raise UnsupportedCompressionError(
            f"record batch uses compression codec "
            f"{fmt.CODEC_NAMES.get(header.codec, header.codec)}: Kafka defines none (0), "
            "gzip (1), snappy (2), lz4 (3) and zstd (4)"
        )


def validate_batch(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    max_batch_bytes: int | None = None,
    dense: bool = True,
) -> BatchHeader:
    """Validate the batch at `pos` (header fields and CRC-32C) and return its header.

    Per-batch work only: records are not decoded. Raises CorruptRecordError,
    UnsupportedCompressionError or RecordTooLargeError with a message naming the problem.
    `dense=False` accepts a stored batch that compaction thinned out (`check_contents`).
    """
    header = read_header(buf, pos)
    check_header(header, len(buf) - pos, max_batch_bytes)
    actual = compute_crc(buf, pos, header.size)
    if actual != header.crc:
        raise CorruptRecordError(
            f"record batch at offset {header.base_offset} has CRC {header.crc:#010x} "
            f"but its bytes give {actual:#010x}"
        )
    check_contents(header, dense)
    return header


def iter_batches(
    buf: bytes | bytearray | memoryview, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int, BatchHeader]]:
    """Yield (position, header) for each whole batch in buf[pos:end], without validation.

    Stops at the first incomplete batch or one whose length field is impossible.
    """
    end = len(buf) if end is None else end
    min_length = fmt.BATCH_HEADER_SIZE - fmt.LOG_OVERHEAD
    while end - pos >= fmt.BATCH_HEADER_SIZE:
        header = BatchHeader(*fmt.BATCH_HEADER.unpack_from(buf, pos))
        if header.batch_length < min_length or pos + header.size > end:
            return
        yield pos, header
        pos += header.size


def batch_span(buf: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(first batch's base offset, offset after the last whole batch) of `buf`, from the
    headers alone; None when it holds no whole batch."""
    first = last = None
    for _, header in iter_batches(buf):
        if first is None:
            first = header
        last = header
    return None if first is None or last is None else (first.base_offset, last.next_offset)


def split_batches(
    buf: bytes | bytearray | memoryview, max_batch_bytes: int | None = None
) -> list[BatchHeader]:
    """Validate that `buf` is a sequence of one or more whole, valid batches; return headers.

    Raises CorruptRecordError if any byte of `buf` is not part of a valid batch.
    """
    headers: list[BatchHeader] = []
    pos = 0
    total = len(buf)
    while pos < total:
        header = validate_batch(buf, pos, max_batch_bytes)
        headers.append(header)
        pos += header.size
    if not headers:
        raise CorruptRecordError("no record batch in an empty buffer")
    return headers


def set_base_offset(buf: bytearray | memoryview, pos: int, base_offset: int) -> None:
    """Patch the base offset of the batch at `pos` in place (not covered by the CRC)."""
    fmt.INT64.pack_into(buf, pos + fmt.BASE_OFFSET_OFFSET, base_offset)


def set_partition_leader_epoch(buf: bytearray | memoryview, pos: int, leader_epoch: int) -> None:
    """Stamp the leader epoch of the batch at `pos` in place (not covered by the CRC)."""
    fmt.INT32.pack_into(buf, pos + fmt.PARTITION_LEADER_EPOCH_OFFSET, leader_epoch)


def set_log_append_time(buf: bytearray | memoryview, pos: int, size: int, now_ms: int) -> None:
    """Turn the batch at `pos` into a LogAppendTime batch stamped `now_ms`; fix the CRC.

    Kafka does the same for topics with message.timestamp.type=LogAppendTime: the max
    timestamp and timestamp-type bit are covered by the CRC, so it is recomputed once.
    """
    attributes = fmt.INT16.unpack_from(buf, pos + fmt.ATTRIBUTES_OFFSET)[0]
    fmt.INT16.pack_into(buf, pos + fmt.ATTRIBUTES_OFFSET, attributes | fmt.TIMESTAMP_TYPE_MASK)
    fmt.INT64.pack_into(buf, pos + fmt.MAX_TIMESTAMP_OFFSET, now_ms)
    fmt.UINT32.pack_into(buf, pos + fmt.CRC_OFFSET, compute_crc(buf, pos, size))


def set_producer_state(
    buf: bytearray | memoryview,
    pos: int,
    size: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
) -> None:
    """Re-stamp the batch at `pos` (of `size` bytes) with a producer id, epoch and base
    sequence in place; fix the CRC (it covers them).

    What an idempotent producer does to its unsent batches after a sequence reset: the
    records stay as they are, only their place in the producer's sequence changes.
    """
    fmt.INT64.pack_into(buf, pos + fmt.PRODUCER_ID_OFFSET, producer_id)
    fmt.INT16.pack_into(buf, pos + fmt.PRODUCER_EPOCH_OFFSET, producer_epoch)
    fmt.INT32.pack_into(buf, pos + fmt.BASE_SEQUENCE_OFFSET, base_sequence)
    fmt.UINT32.pack_into(buf, pos + fmt.CRC_OFFSET, compute_crc(buf, pos, size))


# --- decoding ------------------------------------------------------------------------------


def decode_records(
    header: BatchHeader,
    records_data: bytes | bytearray | memoryview,
    record_type: type[tuple] = Record,  # type: ignore[type-arg]
    prefix: tuple[object, ...] = (),
    start: int = 0,
    end: int | None = None,
) -> list[Any]:
    """Decode `header.record_count` records from the uncompressed records section
    records_data[start:end] (end defaults to the end of the buffer).

    Each record is built as `record_type(*prefix, offset, timestamp, key, value, headers)`:
    a client passes its own NamedTuple and e.g. (topic, partition) so records are built
    once, without a second object per record. `record_type` must be a tuple subclass
    without instance fields. Raises CorruptRecordError if the bytes do not hold exactly that
    many well-formed records; its message names the record's index and byte position and
    what was wrong. The C decoder and the reference (`records_reference`) agree on both.
    """
    end = len(records_data) if end is None else end
    log_append_time = header.max_timestamp if header.timestamp_type else None
    return _decode_records(
        records_data,
        start,
        end,
        header.record_count,
        header.base_offset,
        header.base_timestamp,
        log_append_time,
        record_type,
        prefix,
    )


def decode_batch(
    buf: bytes | bytearray | memoryview,
    pos: int = 0,
    *,
    verify_crc: bool = True,
    max_decompressed_bytes: int = fmt.MAX_DECOMPRESSED_BYTES,
    record_type: type[tuple] = Record,  # type: ignore[type-arg]
    prefix: tuple[object, ...] = (),
) -> DecodedBatch:
    """Decode the batch at `pos`: header and every record. Validates the CRC by default.
    A batch thinned out by compaction is read as it is: records keep their offsets.

    Compressed records (any of Kafka's four codecs, in any form its clients write) are
    inflated first, to at most `max_decompressed_bytes` (bytes): more, or damaged
    compressed data, raises CorruptRecordError (`logstore.codec.compression`)."""
    if verify_crc:
        header = validate_batch(buf, pos, dense=False)
    else:
        header = read_header(buf, pos)
        check_header(header, len(buf) - pos)
        check_contents(header, dense=False)
    start, end = pos + fmt.RECORDS_OFFSET, pos + header.size
    if header.codec == fmt.CODEC_NONE:
        # decoded in place: the records section is not copied out first
        return DecodedBatch(header, decode_records(header, buf, record_type, prefix, start, end))
    # copied out: no view of `buf` (an mmap in dump-log) may outlive the call, not even in
    # the traceback of a CorruptRecordError
    payload = bytes(memoryview(buf)[start:end])
    data = compression.decompress(header.codec, payload, max_decompressed_bytes)
    return DecodedBatch(header, decode_records(header, data, record_type, prefix))


def decode_all(
    buf: bytes | bytearray | memoryview,
    *,
    verify_crc: bool = True,
    record_type: type[tuple] = Record,  # type: ignore[type-arg]
    prefix: tuple[object, ...] = (),
) -> list[Any]:
    """Decode every whole batch in `buf` (e.g. a fetch response) into one list of records.

    A partial batch at the end (a fetch cut at max_bytes) is ignored, as Kafka clients do.
    """
    records: list[Record] = []
    for pos, _ in iter_batches(buf):
        batch = decode_batch(
            buf, pos, verify_crc=verify_crc, record_type=record_type, prefix=prefix
        )
        records.extend(batch.records)
    return records


def batch_record_inputs(records: Iterable[Record]) -> list[RecordInput]:
    """Turn decoded records back into encoder input (for re-producing, e.g. DLQ replay)."""
    return [(r.key, r.value, r.headers, r.timestamp) for r in records]

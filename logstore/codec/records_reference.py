"""The records section of a RecordBatch v2, decoded as the format spec reads: the reference.

This is the format in code, field by field, with every check named. The C decoder
(`logstore.codec._record_decoder`) is the fast one; this module is what it must agree
with, and the decoder `logstore.codec.record_batch` falls back to when the C module is
not built or LOGSTORE_PURE_PYTHON is set. Both take the same arguments, return equal
records and raise CorruptRecordError with the same message for the same bytes
(tests/codec/test_record_decoder.py checks that with hypothesis).

The records section follows the 61-byte batch header (`logstore.codec.format`) and holds
`recordCount` records back to back (Kafka's RecordBatch v2 record layout):

    Record =>
      length: varint             bytes of the record after this field; >= 6
      attributes: int8           unused in v2: read past, not checked
      timestampDelta: varlong    ms after the batch's baseTimestamp
      offsetDelta: varint        offset after the batch's baseOffset
      keyLength: varint          -1 for a null key, else >= 0
      key: byte[keyLength]
      valueLength: varint        -1 for a null value, else >= 0
      value: byte[valueLength]
      header count: varint       >= 0
      Header =>                  repeated header count times
        headerKeyLength: varint  >= 0 (a header key is never null)
        headerKey: UTF-8 string
        headerValueLength: varint  -1 for a null value, else >= 0
        headerValue: byte[headerValueLength]

A varint is zigzag-encoded (protobuf sint64): 7 bits per byte, low bits first, the high
bit set on every byte but the last; at most 10 bytes, and a 10th byte above 1 would
carry more than 64 bits.

Invariants a decoded section satisfies, else CorruptRecordError:
- every field lies inside its record (its `length`), every record inside the section;
- a record's fields fill its `length` exactly, and the section holds exactly
  `recordCount` records with no byte after the last;
- a record's offset is baseOffset + offsetDelta and its timestamp (ms) baseTimestamp +
  timestampDelta, or the batch's maxTimestamp for a LogAppendTime batch.

A record that breaks one is reported by its index in the batch, the batch's base offset
and its byte position in the records section, then what was wrong.
"""

from __future__ import annotations

from typing import Any

from logstore.errors import CorruptRecordError

Header = tuple[str, bytes | None]

#: attributes, timestampDelta, offsetDelta, keyLength, valueLength, header count: one
#: byte each at the least
MIN_RECORD_LENGTH = 6
#: a varint carries 7 bits per byte: 10 bytes hold 64 bits
MAX_VARINT_BYTES = 10


def read_varint(data: bytes, pos: int, limit: int, field: str = "zigzag") -> tuple[int, int]:
    """The zigzag varint at data[pos], reading no byte at or past `limit`; returns
    (value, position after it). The value is a signed 64-bit integer."""
    if pos < limit and data[pos] < 0x80:  # one byte: most deltas and counts, short lengths
        return (data[pos] >> 1) ^ -(data[pos] & 1), pos + 1
    result = 0
    for index in range(MAX_VARINT_BYTES):
        if pos >= limit:
            raise CorruptRecordError(f"{field} varint is cut short")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            break
    if byte >= 0x80 or result >> 64:
        raise CorruptRecordError(f"{field} varint is longer than 10 bytes or overflows 64 bits")
    return (result >> 1) ^ -(result & 1), pos


def read_bytes(data: bytes, pos: int, limit: int, field: str) -> tuple[bytes | None, int]:
    """A `field` varint length, then that many bytes, inside data[pos:limit]; a length
    of -1 gives None (null)."""
    length, pos = read_varint(data, pos, limit, field)
    if length == -1:
        return None, pos
    if length < 0:
        raise CorruptRecordError(f"{field} {length} is negative but not -1 (null)")
    if length > limit - pos:
        raise CorruptRecordError(
            f"{field} {length} runs past the end of the record ({limit - pos} bytes left)"
        )
    return data[pos : pos + length], pos + length


def read_header(data: bytes, pos: int, limit: int, number: int) -> tuple[Header, int]:
    """Header `number` of a record: a non-null UTF-8 key, then a value that may be null."""
    key, pos = read_bytes(data, pos, limit, f"headerKeyLength of header {number}")
    if key is None:
        raise CorruptRecordError(f"header {number} has a null key")
    try:
        name = key.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptRecordError(f"header {number} key is not UTF-8") from None
    value, pos = read_bytes(data, pos, limit, f"headerValueLength of header {number}")
    return (name, value), pos


def read_headers(data: bytes, pos: int, limit: int) -> tuple[tuple[Header, ...], int]:
    """The header count, then that many headers, inside data[pos:limit]."""
    count, pos = read_varint(data, pos, limit, "header count")
    if count < 0:
        raise CorruptRecordError(f"header count {count} is negative")
    # a header takes two bytes at the least: a count above the bytes left cannot fit
    if count > limit - pos:
        raise CorruptRecordError(
            f"header count {count} does not fit in the rest of the record "
            f"({limit - pos} bytes left)"
        )
    headers: list[Header] = []
    for number in range(count):
        header, pos = read_header(data, pos, limit, number)
        headers.append(header)
    return tuple(headers), pos


#: a record's fields after its length: timestampDelta, offsetDelta, key, value, headers
RecordFields = tuple[int, int, bytes | None, bytes | None, tuple[Header, ...]]


def read_record(data: bytes, pos: int) -> tuple[RecordFields, int]:
    """The record at data[pos], which must lie inside `data`; returns its fields and the
    position after it."""
    length, pos = read_varint(data, pos, len(data), "length")
    if length < MIN_RECORD_LENGTH:
        raise CorruptRecordError(f"record length {length} is below the minimum {MIN_RECORD_LENGTH}")
    if length > len(data) - pos:
        raise CorruptRecordError(
            f"record length {length} runs past the end of the records section "
            f"({len(data) - pos} bytes left)"
        )
    end = pos + length
    pos += 1  # attributes: unused in v2
    timestamp_delta, pos = read_varint(data, pos, end, "timestampDelta")
    offset_delta, pos = read_varint(data, pos, end, "offsetDelta")
    key, pos = read_bytes(data, pos, end, "keyLength")
    value, pos = read_bytes(data, pos, end, "valueLength")
    headers, pos = read_headers(data, pos, end)
    if pos != end:
        raise CorruptRecordError(
            f"record length {length} disagrees with its fields: {end - pos} bytes are left over"
        )
    return (timestamp_delta, offset_delta, key, value, headers), end


def check_record_type(record_type: Any) -> None:
    """`record_type` must build like a plain tuple: a tuple subclass (a NamedTuple) that
    adds no instance fields, so tuple.__new__ makes a complete instance."""
    if not (isinstance(record_type, type) and issubclass(record_type, tuple)):
        raise TypeError("record_type must be a tuple subclass")
    if record_type.__basicsize__ != tuple.__basicsize__:
        raise TypeError("record_type must not add instance fields to tuple")


def decode_records(
    data: bytes | bytearray | memoryview,
    start: int,
    end: int,
    record_count: int,
    base_offset: int,
    base_timestamp: int,
    log_append_time: int | None,
    record_type: type[tuple],  # type: ignore[type-arg]
    prefix: tuple[object, ...],
) -> list[Any]:
    """Decode exactly `record_count` records from the records section data[start:end].

    Returns `record_type(*prefix, offset, timestamp, key, value, headers)` for each
    record, built as tuple.__new__ builds it. `log_append_time` (ms) is the batch's
    maxTimestamp for a LogAppendTime batch, else None. The same signature as the C
    decoder's `decode_records`.
    """
    if not 0 <= start <= end <= len(data):
        raise ValueError("start and end must satisfy 0 <= start <= end <= len(data)")
    check_record_type(record_type)
    if record_count < 0:
        raise CorruptRecordError(
            f"record batch at base offset {base_offset} has a negative record count {record_count}"
        )
    section = bytes(memoryview(data)[start:end])
    records: list[Any] = []
    pos = 0
    for index in range(record_count):
        if pos == len(section):
            raise CorruptRecordError(
                f"record batch at base offset {base_offset} ends after {index} of its "
                f"{record_count} records"
            )
        try:
            fields, next_pos = read_record(section, pos)
        except CorruptRecordError as exc:
            raise CorruptRecordError(
                f"record {index} of the batch at base offset {base_offset}, "
                f"at byte {pos} of its records: {exc}"
            ) from None
        timestamp_delta, offset_delta, key, value, headers = fields
        offset = base_offset + offset_delta
        timestamp = base_timestamp + timestamp_delta if log_append_time is None else log_append_time
        records.append(
            tuple.__new__(record_type, (*prefix, offset, timestamp, key, value, headers))
        )
        pos = next_pos
    if pos != len(section):
        raise CorruptRecordError(
            f"record batch at base offset {base_offset} has {len(section) - pos} bytes "
            f"after its {record_count} records"
        )
    return records

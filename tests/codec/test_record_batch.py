"""Tests for `logstore.codec.record_batch`: Kafka RecordBatch v2 encode, decode and validation.

kafka-python's record module serves as an independent implementation of the format: our
batches must decode with it, and its batches must decode with ours.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import crc32c
import pytest
import zstandard
from aiokafka.record.default_records import DefaultRecordBatch as AioDefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.util import encode_varint as kafka_encode_varint

from logstore.codec import compression
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import CorruptRecordError, RecordTooLargeError, UnsupportedCompressionError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
CODECS = (fmt.CODEC_NONE, fmt.CODEC_GZIP, fmt.CODEC_SNAPPY, fmt.CODEC_LZ4, fmt.CODEC_ZSTD)
#: what kafka-python encodes and decodes with the packages LogStore installs (its snappy and
#: lz4 need python-snappy and lz4); tests/codec/test_compression.py checks all four codecs
#: against aiokafka and librdkafka
KAFKA_PYTHON_CODECS = (fmt.CODEC_NONE, fmt.CODEC_GZIP, fmt.CODEC_ZSTD)

# --- strategies ----------------------------------------------------------------------------

keys = st.one_of(st.none(), st.just(b""), st.binary(max_size=40))
#: values with 1-, 2- and 3-byte length varints (64 and 8192 are the 2- and 3-byte thresholds)
values = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=80),
    st.binary(min_size=60, max_size=300),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(8190, 20_000), st.integers(0, 255)),
)
header_lists = st.one_of(
    st.none(),
    st.lists(st.tuples(st.text(max_size=12), st.none() | st.binary(max_size=20)), max_size=4),
)
#: base timestamps: realistic epoch millis, negative ones and large ones; all pairwise
#: differences stay inside int64, as Kafka requires of timestamp deltas
base_timestamps = st.one_of(
    st.integers(0, 2**41),
    st.integers(-(2**60), 2**60),
    st.sampled_from([-1, 0, 1, 65_535, 65_536, 2**60]),
)
timestamp_deltas = st.one_of(
    st.integers(-2, 2),
    st.integers(-70_000, 70_000),
    st.integers(-(2**60), 2**60),
)
#: (producer_id, producer_epoch, base_sequence): unset, or set to any legal value
producer_states = st.one_of(
    st.just((fmt.NO_PRODUCER_ID, fmt.NO_PRODUCER_EPOCH, fmt.NO_SEQUENCE)),
    st.tuples(st.integers(0, INT64_MAX), st.integers(0, 2**15 - 1), st.integers(0, INT32_MAX)),
)
codecs = st.sampled_from(CODECS)
kafka_python_codecs = st.sampled_from(KAFKA_PYTHON_CODECS)
base_offsets = st.one_of(st.just(0), st.integers(1, 2**62))


@st.composite
def record_lists(draw: st.DrawFn, max_size: int = 20) -> list[rb.RecordInput]:
    """A non-empty list of encoder inputs whose timestamps are all resolved."""
    base = draw(base_timestamps)
    count = draw(st.integers(1, max_size))
    return [
        (draw(keys), draw(values), draw(header_lists), base + draw(timestamp_deltas))
        for _ in range(count)
    ]


# --- helpers -------------------------------------------------------------------------------

SAMPLE_RECORDS: list[rb.RecordInput] = [
    (
        b"key-0",
        b"value-0",
        [("trace", b"abc"), ("\u00fcber-\u65e5\u672c", None)],
        1_700_000_000_000,
    ),
    (None, b"", None, 1_699_999_999_000),
    (b"", None, [], 1_700_000_005_000),
    (b"k" * 100, b"v" * 1000, [("empty", b"")], 1_700_000_000_001),
]


def sample_batch(codec: int = fmt.CODEC_NONE, **kwargs: int) -> bytes:
    return rb.encode_batch(SAMPLE_RECORDS, codec=codec, **kwargs)


def expected_records(records: Sequence[rb.RecordInput], base_offset: int) -> list[rb.Record]:
    return [
        rb.Record(base_offset + i, ts, key, value, tuple(headers or ()))  # type: ignore[arg-type]
        for i, (key, value, headers, ts) in enumerate(records)
    ]


def fix_crc(buf: bytearray, pos: int = 0) -> None:
    """Recompute the CRC of the batch at `pos` after its covered bytes were patched."""
    size = fmt.INT32.unpack_from(buf, pos + fmt.BATCH_LENGTH_OFFSET)[0] + fmt.LOG_OVERHEAD
    crc = crc32c.crc32c(bytes(buf[pos + fmt.CRC_COVERED_FROM : pos + size]))
    struct.pack_into(">I", buf, pos + fmt.CRC_OFFSET, crc)


def patched(data: bytes, offset: int, packer: struct.Struct, value: int, crc: bool) -> bytes:
    """A copy of `data` with one header field overwritten, CRC fixed if `crc`."""
    buf = bytearray(data)
    packer.pack_into(buf, offset, value)
    if crc:
        fix_crc(buf)
    return bytes(buf)


def with_records_section(
    section: bytes, record_count: int, codec: int = fmt.CODEC_NONE, base_offset: int = 0
) -> bytes:
    """A batch with a valid header and CRC around an arbitrary (stored) records section."""
    buf = bytearray(rb.encode_batch([(b"k", b"v", None, 1_000)], base_offset=base_offset))
    del buf[fmt.RECORDS_OFFSET :]
    buf += section
    fmt.INT32.pack_into(buf, fmt.BATCH_LENGTH_OFFSET, len(buf) - fmt.LOG_OVERHEAD)
    fmt.INT16.pack_into(buf, fmt.ATTRIBUTES_OFFSET, codec)
    fmt.INT32.pack_into(buf, fmt.LAST_OFFSET_DELTA_OFFSET, record_count - 1)
    fmt.INT32.pack_into(buf, fmt.RECORD_COUNT_OFFSET, record_count)
    fix_crc(buf)
    return bytes(buf)


def third_party_batch(data: bytes | bytearray) -> Any:
    """The batch as an independent reader sees it: kafka-python's where it has the codec,
    else aiokafka's."""
    if rb.read_header(data).codec in KAFKA_PYTHON_CODECS:
        return DefaultRecordBatch(bytearray(data))
    return AioDefaultRecordBatch(bytes(data))


def kafka_records(data: bytes) -> list[tuple[int, int, bytes | None, bytes | None, tuple]]:
    batch = third_party_batch(data)
    assert batch.validate_crc()
    return [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in batch]


def raw_record(body: bytes) -> bytes:
    """A record as stored: varint length, then the body."""
    return rb.encode_varint(len(body)) + body


# --- 1. kafka-python as an independent decoder and encoder ---------------------------------


@settings(max_examples=150, deadline=None)
@given(
    records=record_lists(),
    codec=kafka_python_codecs,
    producer=producer_states,
    base_offset=base_offsets,
    transactional=st.booleans(),
    leader_epoch=st.integers(-1, INT32_MAX),
)
def test_kafka_python_decodes_our_batches(
    records: list[rb.RecordInput],
    codec: int,
    producer: tuple[int, int, int],
    base_offset: int,
    transactional: bool,
    leader_epoch: int,
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    data = rb.encode_batch(
        records,
        base_offset=base_offset,
        codec=codec,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        partition_leader_epoch=leader_epoch,
        is_transactional=transactional,
    )
    batch = DefaultRecordBatch(bytearray(data))
    assert batch.validate_crc()
    assert batch.magic == 2
    assert batch.size_in_bytes == len(data)
    assert batch.base_offset == base_offset
    assert batch.leader_epoch == leader_epoch
    assert batch.last_offset_delta == len(records) - 1
    assert batch.records_count == len(records)
    assert batch.producer_id == producer_id
    assert batch.producer_epoch == producer_epoch
    assert batch.base_sequence == base_sequence
    assert batch.first_timestamp == records[0][3]
    assert batch.max_timestamp == max(r[3] for r in records)  # type: ignore[type-var]
    assert batch.compression_type == codec
    assert batch.is_transactional == transactional
    assert batch.timestamp_type == fmt.TIMESTAMP_TYPE_CREATE_TIME
    got = [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in batch]
    assert got == [tuple(r) for r in expected_records(records, base_offset)]


@settings(max_examples=150, deadline=None)
@given(records=record_lists(), codec=kafka_python_codecs, producer=producer_states)
def test_our_decoder_reads_kafka_python_batches(
    records: list[rb.RecordInput], codec: int, producer: tuple[int, int, int]
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        batch_size=10**7,
    )
    for offset_delta, (key, value, headers, timestamp) in enumerate(records):
        metadata = builder.append(offset_delta, timestamp, key, value, list(headers or ()))
        assert metadata is not None
    data = bytes(builder.build())
    theirs = DefaultRecordBatch(bytearray(data))

    header = rb.validate_batch(data)
    assert header == rb.read_header(data)
    assert header.size == len(data) == theirs.size_in_bytes
    assert header.base_offset == theirs.base_offset == 0
    assert header.partition_leader_epoch == theirs.leader_epoch
    assert header.magic == theirs.magic == 2
    assert header.crc == theirs.crc
    assert header.attributes == theirs.attributes
    assert header.codec == theirs.compression_type
    assert header.last_offset_delta == theirs.last_offset_delta == len(records) - 1
    assert header.last_offset == theirs.last_offset
    assert header.next_offset == theirs.next_offset
    assert header.base_timestamp == theirs.first_timestamp
    assert header.max_timestamp == theirs.max_timestamp
    assert header.producer_id == theirs.producer_id == producer_id
    assert header.producer_epoch == theirs.producer_epoch == producer_epoch
    assert header.base_sequence == theirs.base_sequence == base_sequence
    assert header.last_sequence == theirs.last_sequence
    assert header.record_count == theirs.records_count == len(records)
    assert header.timestamp_type == theirs.timestamp_type
    assert header.is_transactional is False

    decoded = rb.decode_batch(data)
    assert decoded.header == header
    assert decoded.records == expected_records(records, 0)


def test_large_value_beyond_varint_table_interoperates() -> None:
    """A record longer than the encoder's varint lookup table (65536) both ways."""
    records: list[rb.RecordInput] = [
        (b"big", bytes(range(256)) * 300, [("h", b"x" * 70_000)], 5),
        (None, b"small", None, 4),
    ]
    for codec in KAFKA_PYTHON_CODECS:
        data = rb.encode_batch(records, codec=codec, base_offset=7)
        assert kafka_records(data) == [tuple(r) for r in expected_records(records, 7)]
        builder = DefaultRecordBatchBuilder(2, codec, False, -1, -1, -1, 10**7)
        for i, (key, value, headers, ts) in enumerate(records):
            assert builder.append(i, ts, key, value, list(headers or ())) is not None
        assert rb.decode_batch(bytes(builder.build())).records == expected_records(records, 0)


# --- 2. round trip -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    records=record_lists(),
    codec=codecs,
    producer=producer_states,
    base_offset=base_offsets,
    leader_epoch=st.integers(-1, INT32_MAX),
    transactional=st.booleans(),
)
def test_encode_decode_round_trip(
    records: list[rb.RecordInput],
    codec: int,
    producer: tuple[int, int, int],
    base_offset: int,
    leader_epoch: int,
    transactional: bool,
) -> None:
    producer_id, producer_epoch, base_sequence = producer
    data = rb.encode_batch(
        records,
        base_offset=base_offset,
        codec=codec,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        partition_leader_epoch=leader_epoch,
        is_transactional=transactional,
    )
    decoded = rb.decode_batch(data)
    assert decoded.records == expected_records(records, base_offset)
    assert [r.offset for r in decoded.records] == list(
        range(base_offset, base_offset + len(records))
    )
    header = decoded.header
    assert header.base_offset == base_offset
    assert header.batch_length == len(data) - fmt.LOG_OVERHEAD
    assert header.partition_leader_epoch == leader_epoch
    assert header.magic == fmt.MAGIC_V2
    assert header.codec == codec
    assert header.is_transactional == transactional
    assert header.is_control is False
    assert header.timestamp_type == fmt.TIMESTAMP_TYPE_CREATE_TIME
    assert header.base_timestamp == records[0][3]
    assert header.max_timestamp == max(r[3] for r in records)  # type: ignore[type-var]
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == producer
    assert header.record_count == len(records)
    assert rb.decode_batch(data, verify_crc=False) == decoded
    # decoded records fed back to the encoder give the same bytes
    again = rb.encode_batch(
        rb.batch_record_inputs(decoded.records),
        base_offset=base_offset,
        codec=codec,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        base_sequence=base_sequence,
        partition_leader_epoch=leader_epoch,
        is_transactional=transactional,
    )
    assert again == data


@settings(max_examples=100, deadline=None)
@given(
    batches=st.lists(st.tuples(record_lists(max_size=5), codecs), min_size=1, max_size=4),
    tail=st.tuples(record_lists(max_size=5), codecs),
    cut=st.floats(0.0, 1.0, exclude_max=True),
)
def test_decode_all_ignores_a_partial_trailing_batch(
    batches: list[tuple[list[rb.RecordInput], int]],
    tail: tuple[list[rb.RecordInput], int],
    cut: float,
) -> None:
    buf = bytearray()
    expected: list[rb.Record] = []
    next_offset = 100
    for records, codec in batches:
        buf += rb.encode_batch(records, base_offset=next_offset, codec=codec)
        expected += expected_records(records, next_offset)
        next_offset += len(records)
    whole = bytes(buf)
    partial = rb.encode_batch(tail[0], base_offset=next_offset, codec=tail[1])
    buf += partial[: int(cut * len(partial))]
    assert rb.decode_all(bytes(buf)) == expected
    assert rb.decode_all(memoryview(buf)) == expected
    assert rb.decode_all(whole + partial) == expected + expected_records(tail[0], next_offset)


def test_decode_all_of_nothing_or_only_a_fragment_is_empty() -> None:
    data = sample_batch()
    assert rb.decode_all(b"") == []
    assert rb.decode_all(data[:60]) == []
    assert rb.decode_all(data[:-1]) == []


def test_missing_timestamps_take_now_ms() -> None:
    records: list[rb.RecordInput] = [(b"a", b"1", None, None), (b"b", b"2", None, 50)]
    decoded = rb.decode_batch(rb.encode_batch(records, now_ms=99))
    assert [r.timestamp for r in decoded.records] == [99, 50]
    assert decoded.header.base_timestamp == 99
    assert decoded.header.max_timestamp == 99


def test_encode_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        rb.encode_batch([])
    with pytest.raises(ValueError, match="now_ms"):
        rb.encode_batch([(b"k", b"v", None, None)])
    with pytest.raises(UnsupportedCompressionError, match="5"):
        rb.encode_batch([(b"k", b"v", None, 1)], codec=5)


# --- 3. header view ------------------------------------------------------------------------


def test_read_header_fields() -> None:
    data = rb.encode_batch(
        SAMPLE_RECORDS,
        base_offset=1_000,
        codec=fmt.CODEC_ZSTD,
        producer_id=42,
        producer_epoch=3,
        base_sequence=10,
        partition_leader_epoch=9,
        is_transactional=True,
    )
    header = rb.read_header(data)
    assert header.base_offset == 1_000
    assert header.batch_length == len(data) - 12
    assert header.size == len(data)
    assert header.partition_leader_epoch == 9
    assert header.magic == 2
    assert header.crc == crc32c.crc32c(data[21:])
    assert header.attributes == fmt.CODEC_ZSTD | fmt.TRANSACTIONAL_FLAG_MASK
    assert header.codec == fmt.CODEC_ZSTD
    assert header.is_transactional is True
    assert header.is_control is False
    assert header.timestamp_type == fmt.TIMESTAMP_TYPE_CREATE_TIME
    assert header.last_offset_delta == 3
    assert header.last_offset == 1_003
    assert header.next_offset == 1_004
    assert header.base_timestamp == 1_700_000_000_000
    assert header.max_timestamp == 1_700_000_005_000
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (42, 3, 10)
    assert header.last_sequence == 13
    assert header.record_count == 4
    # a header read at a position inside a larger buffer
    assert rb.read_header(b"\x00" * 5 + data, 5) == header


def test_read_header_needs_61_bytes() -> None:
    data = sample_batch()
    rb.read_header(data[:61])
    with pytest.raises(CorruptRecordError, match="61"):
        rb.read_header(data[:60])
    with pytest.raises(CorruptRecordError, match="61"):
        rb.read_header(data, len(data) - 60)


@pytest.mark.parametrize(
    ("base_sequence", "count", "last_sequence"),
    [
        (fmt.NO_SEQUENCE, 3, fmt.NO_SEQUENCE),
        (0, 1, 0),
        (5, 3, 7),
        (INT32_MAX - 2, 3, INT32_MAX),
        (INT32_MAX - 1, 3, 0),
        (INT32_MAX, 1, INT32_MAX),
        (INT32_MAX, 2, 0),
        (INT32_MAX, 5, 3),
    ],
)
def test_last_sequence_wraps_at_int32(base_sequence: int, count: int, last_sequence: int) -> None:
    records: list[rb.RecordInput] = [(None, b"v", None, 1)] * count
    data = rb.encode_batch(records, producer_id=1, producer_epoch=0, base_sequence=base_sequence)
    assert rb.read_header(data).last_sequence == last_sequence
    assert third_party_batch(data).last_sequence == last_sequence


@settings(max_examples=100)
@given(base_sequence=st.integers(0, INT32_MAX), count=st.integers(1, 6))
def test_last_sequence_agrees_with_kafka_python(base_sequence: int, count: int) -> None:
    records: list[rb.RecordInput] = [(None, None, None, 1)] * count
    data = rb.encode_batch(records, producer_id=7, producer_epoch=1, base_sequence=base_sequence)
    assert rb.read_header(data).last_sequence == third_party_batch(data).last_sequence


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.tuples(record_lists(max_size=4), codecs), min_size=1, max_size=5))
def test_iter_batches_positions(batches: list[tuple[list[rb.RecordInput], int]]) -> None:
    encoded = [rb.encode_batch(records, codec=codec) for records, codec in batches]
    buf = b"".join(encoded)
    starts = [sum(len(e) for e in encoded[:i]) for i in range(len(encoded))]
    found = list(rb.iter_batches(buf))
    assert [pos for pos, _ in found] == starts
    assert [header for _, header in found] == [rb.read_header(e) for e in encoded]
    # a trailing partial batch is not yielded
    assert [pos for pos, _ in rb.iter_batches(buf[:-1])] == starts[:-1]
    # start and end bounds
    assert [pos for pos, _ in rb.iter_batches(buf, starts[-1])] == [starts[-1]]
    assert [pos for pos, _ in rb.iter_batches(buf, 0, starts[-1])] == starts[:-1]


def test_iter_batches_stops_at_an_impossible_length() -> None:
    first, second, third = sample_batch(), sample_batch(fmt.CODEC_ZSTD), sample_batch()
    broken = patched(second, fmt.BATCH_LENGTH_OFFSET, fmt.INT32, 10, crc=False)
    assert [pos for pos, _ in rb.iter_batches(first + broken + third)] == [0]
    assert list(rb.iter_batches(b"")) == []
    assert list(rb.iter_batches(first[:60])) == []


# --- 4. in-place patches -------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(new_offset=st.integers(0, 2**62), codec=codecs, old_offset=base_offsets)
def test_set_base_offset_patches_only_the_offset(
    new_offset: int, codec: int, old_offset: int
) -> None:
    data = sample_batch(codec, base_offset=old_offset)
    buf = bytearray(data)
    rb.set_base_offset(buf, 0, new_offset)
    assert buf[:8] == struct.pack(">q", new_offset)
    assert buf[8:] == data[8:]
    header = rb.validate_batch(buf)
    assert header.base_offset == new_offset
    assert [r[0] for r in kafka_records(bytes(buf))] == list(
        range(new_offset, new_offset + len(SAMPLE_RECORDS))
    )
    assert rb.decode_batch(buf).records == expected_records(SAMPLE_RECORDS, new_offset)


def test_set_base_offset_inside_a_larger_buffer() -> None:
    first, second = sample_batch(), sample_batch(fmt.CODEC_ZSTD)
    buf = bytearray(first + second)
    rb.set_base_offset(memoryview(buf), len(first), 500)
    assert bytes(buf[: len(first)]) == first
    headers = rb.split_batches(buf)
    assert [h.base_offset for h in headers] == [0, 500]
    assert [r.offset for r in rb.decode_all(buf)] == [0, 1, 2, 3, 500, 501, 502, 503]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("transactional", [False, True])
@pytest.mark.parametrize("now_ms", [0, 1_800_000_000_000, 1_600_000_000_000])
def test_set_log_append_time(codec: int, transactional: bool, now_ms: int) -> None:
    prefix = sample_batch()
    data = rb.encode_batch(
        SAMPLE_RECORDS, codec=codec, base_offset=4, is_transactional=transactional
    )
    buf = bytearray(prefix + data)
    pos = len(prefix)
    rb.set_log_append_time(buf, pos, len(data), now_ms)
    assert bytes(buf[:pos]) == prefix
    header = rb.validate_batch(buf, pos)
    before = rb.read_header(data)
    assert header.attributes == before.attributes | fmt.TIMESTAMP_TYPE_MASK
    assert header.timestamp_type == fmt.TIMESTAMP_TYPE_LOG_APPEND_TIME
    assert header.codec == codec
    assert header.is_transactional == transactional
    assert header.max_timestamp == now_ms
    assert header._replace(attributes=0, max_timestamp=0, crc=0) == before._replace(
        attributes=0, max_timestamp=0, crc=0
    )
    # the records themselves are untouched
    assert buf[pos + fmt.RECORDS_OFFSET :] == data[fmt.RECORDS_OFFSET :]
    decoded = rb.decode_batch(buf, pos)
    assert [r.timestamp for r in decoded.records] == [now_ms] * len(SAMPLE_RECORDS)
    assert [r[2:] for r in decoded.records] == [r[2:] for r in expected_records(SAMPLE_RECORDS, 4)]
    theirs = third_party_batch(buf[pos:])
    assert theirs.validate_crc()
    assert theirs.timestamp_type == fmt.TIMESTAMP_TYPE_LOG_APPEND_TIME
    assert [r.timestamp for r in theirs] == [now_ms] * len(SAMPLE_RECORDS)


@settings(max_examples=150, deadline=None)
@given(
    records=record_lists(),
    codec=codecs,
    producer=producer_states,
    with_keys=st.booleans(),
    with_headers=st.booleans(),
)
def test_encode_values_is_encode_batch_with_one_timestamp(
    records: list[rb.RecordInput],
    codec: int,
    producer: tuple[int, int, int],
    with_keys: bool,
    with_headers: bool,
) -> None:
    """The producer's bulk path gives the same bytes as the general encoder."""
    timestamp = records[0][3]
    assert timestamp is not None
    inputs = [
        (k if with_keys else None, v, h if with_headers else None, timestamp)
        for k, v, h, _ in records
    ]
    pid, epoch, seq = producer
    state = {"producer_id": pid, "producer_epoch": epoch, "base_sequence": seq}
    data = rb.encode_values(
        [v for _, v, _, _ in inputs],
        timestamp,
        keys=[k for k, _, _, _ in inputs] if with_keys else None,
        headers=[h for _, _, h, _ in inputs] if with_headers else None,
        codec=codec,
        **state,
    )
    assert data == rb.encode_batch(inputs, codec=codec, **state)
    assert kafka_records(data) == [tuple(r) for r in expected_records(inputs, 0)]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    ("length", "count"),
    [(100, 3000), (0, 5), (63, 1), (64, 2), (8191, 3), (70_000, 2), (7, 1025)],
)
def test_same_length_values_take_the_table_path_and_match(
    codec: int, length: int, count: int
) -> None:
    """Null-key, header-less values of one length skip the per-record loop (offset deltas
    past the first 1024 included) and still give the general encoder's bytes."""
    values: list[bytes | None] = [bytes([i % 251]) * length for i in range(count)]
    data = rb.encode_values(
        values, 1_234, codec=codec, producer_id=7, producer_epoch=1, base_sequence=42
    )
    reference = rb.encode_batch(
        [(None, v, None, 1_234) for v in values],
        codec=codec,
        producer_id=7,
        producer_epoch=1,
        base_sequence=42,
    )
    assert data == reference
    assert [r[3] for r in kafka_records(data)] == values
    assert rb._same_length_records(values) is not None  # type: ignore[arg-type]
    assert rb._same_length_records([b"a", b"bb"]) is None


def test_encode_values_needs_a_record() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        rb.encode_values([], 0)


@given(
    codec=codecs,
    before=producer_states,
    after=st.tuples(
        st.integers(0, INT64_MAX), st.integers(0, 2**15 - 1), st.integers(0, INT32_MAX)
    ),
)
def test_set_producer_state_restamps_and_fixes_the_crc(
    codec: int, before: tuple[int, int, int], after: tuple[int, int, int]
) -> None:
    pid, epoch, seq = before
    data = sample_batch(codec, producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    prefix = sample_batch()
    buf = bytearray(prefix + data)
    rb.set_producer_state(buf, len(prefix), len(data), *after)
    assert bytes(buf[: len(prefix)]) == prefix
    header = rb.validate_batch(buf, len(prefix))
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == after
    untouched = rb.read_header(data)
    fields = {"producer_id": 0, "producer_epoch": 0, "base_sequence": 0, "crc": 0}
    assert header._replace(**fields) == untouched._replace(**fields)
    assert buf[len(prefix) + fmt.RECORDS_OFFSET :] == data[fmt.RECORDS_OFFSET :]
    theirs = third_party_batch(buf[len(prefix) :])
    assert theirs.validate_crc()
    assert (theirs.producer_id, theirs.producer_epoch, theirs.base_sequence) == after


# --- 5. validation errors ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(codec=codecs, mask=st.integers(1, 255), data=st.data())
def test_flipped_byte_in_records_section_fails_crc(
    codec: int, mask: int, data: st.DataObject
) -> None:
    batch = sample_batch(codec, base_offset=3)
    position = data.draw(st.integers(fmt.RECORDS_OFFSET, len(batch) - 1), label="position")
    buf = bytearray(batch)
    buf[position] ^= mask
    with pytest.raises(CorruptRecordError, match="CRC"):
        rb.validate_batch(buf)
    with pytest.raises(CorruptRecordError, match="CRC"):
        rb.decode_batch(buf)
    with pytest.raises(CorruptRecordError, match="CRC"):
        rb.split_batches(bytes(buf))
    assert third_party_batch(buf).validate_crc() is False


@settings(max_examples=200, deadline=None)
@given(
    codec=codecs,
    position=st.integers(fmt.CRC_COVERED_FROM, fmt.RECORDS_OFFSET - 1),
    mask=st.integers(1, 255),
)
def test_flipped_byte_in_crc_covered_header_fails_crc(codec: int, position: int, mask: int) -> None:
    """Header bytes 21..60 are under the CRC: corrupting them is a CRC failure, as in Kafka."""
    buf = bytearray(sample_batch(codec, base_offset=3))
    buf[position] ^= mask
    with pytest.raises(CorruptRecordError, match="CRC"):
        rb.validate_batch(buf)


@pytest.mark.parametrize(
    ("position", "mask"),
    [
        (fmt.ATTRIBUTES_OFFSET, 0x80),  # high byte of attributes
        (fmt.ATTRIBUTES_OFFSET + 1, 0x08),  # timestamp type bit
        (fmt.ATTRIBUTES_OFFSET + 1, 0x01),  # codec none -> gzip
        (fmt.ATTRIBUTES_OFFSET + 1, 0x03),  # codec none -> lz4
        (fmt.LAST_OFFSET_DELTA_OFFSET + 3, 0x01),
        (fmt.BASE_TIMESTAMP_OFFSET + 7, 0xFF),
        (fmt.MAX_TIMESTAMP_OFFSET, 0x40),
        (fmt.PRODUCER_ID_OFFSET + 4, 0x10),
        (fmt.PRODUCER_EPOCH_OFFSET, 0x01),
        (fmt.BASE_SEQUENCE_OFFSET + 3, 0x02),
        (fmt.RECORD_COUNT_OFFSET + 3, 0x01),
    ],
)
def test_corrupted_header_field_is_reported_as_crc_failure(position: int, mask: int) -> None:
    buf = bytearray(sample_batch())
    buf[position] ^= mask
    with pytest.raises(CorruptRecordError, match="CRC"):
        rb.validate_batch(buf)


@pytest.mark.parametrize("magic", [0, 1, 3, -1, 127])
def test_wrong_magic(magic: int) -> None:
    data = patched(sample_batch(), fmt.MAGIC_OFFSET, struct.Struct(">b"), magic, crc=False)
    with pytest.raises(CorruptRecordError, match="magic"):
        rb.validate_batch(data)
    with pytest.raises(CorruptRecordError, match="magic"):
        rb.decode_batch(data, verify_crc=False)


@pytest.mark.parametrize("batch_length", [0, -1, 1, 48, -(2**31)])
def test_batch_length_below_minimum(batch_length: int) -> None:
    data = patched(sample_batch(), fmt.BATCH_LENGTH_OFFSET, fmt.INT32, batch_length, crc=False)
    with pytest.raises(CorruptRecordError, match="minimum"):
        rb.validate_batch(data)
    with pytest.raises(CorruptRecordError, match="minimum"):
        rb.split_batches(data)


def test_batch_length_beyond_the_buffer() -> None:
    data = sample_batch()
    longer = patched(data, fmt.BATCH_LENGTH_OFFSET, fmt.INT32, len(data), crc=False)
    with pytest.raises(CorruptRecordError, match="present"):
        rb.validate_batch(longer)
    with pytest.raises(CorruptRecordError, match="present"):
        rb.validate_batch(b"\x00" * 5 + data[:-1], 5)


@settings(max_examples=150, deadline=None)
@given(codec=codecs, data=st.data())
def test_truncated_batch_is_rejected(codec: int, data: st.DataObject) -> None:
    batch = sample_batch(codec)
    cut = data.draw(st.integers(0, len(batch) - 1), label="cut")
    truncated = batch[:cut]
    if cut < fmt.BATCH_HEADER_SIZE:
        with pytest.raises(CorruptRecordError, match="61"):
            rb.read_header(truncated)
    else:
        assert rb.read_header(truncated) == rb.read_header(batch)
    with pytest.raises(CorruptRecordError):
        rb.validate_batch(truncated)
    with pytest.raises(CorruptRecordError):
        rb.decode_batch(truncated)
    if cut:
        with pytest.raises(CorruptRecordError):
            rb.split_batches(batch + truncated)


@pytest.mark.parametrize(
    ("record_count", "last_offset_delta"),
    [(0, 3), (0, -1), (-1, 3), (-1, -2), (5, 3), (3, 3), (4, 2), (4, 4), (4, -1)],
)
def test_record_count_disagrees_with_last_offset_delta(
    record_count: int, last_offset_delta: int
) -> None:
    """A produced batch must be dense. A stored one may be sparser (compaction), but never
    claim more records than offsets, and its records must fill it exactly."""
    data = sample_batch()  # 4 records: recordCount 4, lastOffsetDelta 3
    data = patched(data, fmt.RECORD_COUNT_OFFSET, fmt.INT32, record_count, crc=False)
    data = patched(data, fmt.LAST_OFFSET_DELTA_OFFSET, fmt.INT32, last_offset_delta, crc=True)
    with pytest.raises(CorruptRecordError, match="recordCount"):
        rb.validate_batch(data)
    if last_offset_delta >= 0 and 0 <= record_count <= last_offset_delta + 1:
        # a plausible sparse header: the 4 records present must be exactly the ones counted
        if record_count == 4:
            assert [r.offset for r in rb.decode_batch(data).records] == [0, 1, 2, 3]
        else:
            with pytest.raises(CorruptRecordError, match=f"after its {record_count} records"):
                rb.decode_batch(data, verify_crc=False)
    else:
        with pytest.raises(CorruptRecordError, match="lastOffsetDelta"):
            rb.decode_batch(data, verify_crc=False)


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_codec_kafka_does_not_define_is_unsupported(codec: int) -> None:
    data = patched(sample_batch(), fmt.ATTRIBUTES_OFFSET, fmt.INT16, codec, crc=True)
    with pytest.raises(UnsupportedCompressionError, match=str(codec)) as info:
        rb.validate_batch(data)
    assert "gzip (1), snappy (2), lz4 (3) and zstd (4)" in str(info.value)
    with pytest.raises(UnsupportedCompressionError, match=str(codec)):
        rb.decode_batch(data)
    with pytest.raises(UnsupportedCompressionError, match=str(codec)):
        rb.split_batches(data)


@pytest.mark.parametrize("codec", CODECS[1:])
def test_kafkas_codecs_pass_validation_without_being_inflated(codec: int) -> None:
    """The broker's checks (header and CRC) accept every Kafka codec and never look
    inside: damaged compressed records under a valid CRC pass them; decoding refuses."""
    data = with_records_section(b"not compressed at all", 1, codec)
    assert rb.validate_batch(data).codec == codec
    assert rb.split_batches(data) == [rb.read_header(data)]
    with pytest.raises(CorruptRecordError, match=f"{fmt.CODEC_NAMES[codec]}-compressed"):
        rb.decode_batch(data)


def test_gzip_batch_from_kafka_python_builder_decodes() -> None:
    builder = DefaultRecordBatchBuilder(2, fmt.CODEC_GZIP, False, -1, -1, -1, 10**7)
    builder.append(0, 1, b"k", b"v" * 500, [])
    data = bytes(builder.build())
    assert rb.validate_batch(data).codec == fmt.CODEC_GZIP
    assert rb.decode_batch(data).records == [rb.Record(0, 1, b"k", b"v" * 500, ())]


@pytest.mark.parametrize("codec", CODECS)
def test_max_batch_bytes(codec: int) -> None:
    data = sample_batch(codec)
    assert rb.validate_batch(data, max_batch_bytes=len(data)).size == len(data)
    with pytest.raises(RecordTooLargeError, match=r"max\.message\.bytes"):
        rb.validate_batch(data, max_batch_bytes=len(data) - 1)
    with pytest.raises(RecordTooLargeError, match=str(len(data))):
        rb.split_batches(data + data, max_batch_bytes=100)


def test_split_batches() -> None:
    first, second = sample_batch(), sample_batch(fmt.CODEC_ZSTD, base_offset=4)
    headers = rb.split_batches(first + second)
    assert headers == [rb.read_header(first), rb.read_header(second)]
    with pytest.raises(CorruptRecordError, match="empty"):
        rb.split_batches(b"")
    with pytest.raises(CorruptRecordError, match="61"):
        rb.split_batches(first + b"junk")
    with pytest.raises(CorruptRecordError, match="minimum"):
        rb.split_batches(first + bytes(100))
    with pytest.raises(CorruptRecordError):
        rb.split_batches(first + second[:-1])


# --- 6. malformed records under a valid CRC ------------------------------------------------

VALID_SECTION = rb.encode_records(
    [
        (b"key", b"v" * 200, [("h", b"x"), ("\u00e9t\u00e9", None)], 10),
        (None, b"", None, -5),
        (b"", None, [("a", b"")], 10**6),
    ],
    10,
)


def decode_or_corrupt(data: bytes, record_count: int) -> None:
    """decode_batch either succeeds with `record_count` records or raises CorruptRecordError."""
    try:
        decoded = rb.decode_batch(data)
    except CorruptRecordError:
        return
    assert len(decoded.records) == record_count


@settings(max_examples=200, deadline=None)
@given(section=st.binary(max_size=300), record_count=st.integers(1, 50))
def test_random_records_section_decodes_or_raises_corrupt(
    section: bytes, record_count: int
) -> None:
    decode_or_corrupt(with_records_section(section, record_count), record_count)


@settings(max_examples=200, deadline=None)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(VALID_SECTION) - 1), st.integers(1, 255)), max_size=4
    ),
    keep=st.integers(0, len(VALID_SECTION)),
    extra=st.binary(max_size=8),
    record_count=st.integers(1, 5),
    codec=codecs,
)
def test_mutated_records_section_decodes_or_raises_corrupt(
    flips: list[tuple[int, int]], keep: int, extra: bytes, record_count: int, codec: int
) -> None:
    section = bytearray(VALID_SECTION)
    for position, mask in flips:
        section[position] ^= mask
    raw = bytes(section[:keep]) + extra
    stored = compression.compress(codec, raw)
    decode_or_corrupt(with_records_section(stored, record_count, codec), record_count)


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(max_size=200), record_count=st.integers(1, 50))
def test_garbage_zstd_payload_decodes_or_raises_corrupt(payload: bytes, record_count: int) -> None:
    frame = zstandard.ZstdCompressor().compress(VALID_SECTION)
    for stored in (payload, frame[: len(payload) % len(frame)], frame + payload):
        data = with_records_section(stored, record_count, fmt.CODEC_ZSTD)
        decode_or_corrupt(data, record_count)


BODY_OK = b"\x00\x00\x00" + b"\x02k" + b"\x02v" + b"\x00"  # attrs ts od key value headers


@pytest.mark.parametrize(
    ("section", "record_count", "message"),
    [
        pytest.param(b"", 1, "ends after 0 of its 1 records", id="empty section"),
        pytest.param(
            raw_record(BODY_OK), 2, "ends after 1 of its 2 records", id="fewer records than count"
        ),
        pytest.param(raw_record(BODY_OK) + b"\x00", 1, "after its", id="trailing byte"),
        pytest.param(b"\x80\x80", 1, "length varint is cut short", id="unterminated length varint"),
        pytest.param(rb.encode_varint(-1) + BODY_OK, 1, "record length", id="negative length"),
        pytest.param(rb.encode_varint(5) + BODY_OK, 1, "record length", id="length below 6"),
        pytest.param(rb.encode_varint(100) + BODY_OK, 1, "record length", id="length past end"),
        pytest.param(
            raw_record(b"\x00" + b"\x80" * 10 + b"\x00" * 8),
            1,
            "timestampDelta varint is longer than 10 bytes",
            id="11-byte timestamp delta",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00" + rb.encode_varint(-2) + b"\x02v\x00"),
            1,
            "keyLength -2 is negative but not -1",
            id="key length -2",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00" + rb.encode_varint(1000) + b"\x02v\x00"),
            1,
            "keyLength 1000 runs past the end of the record",
            id="key longer than record",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00\x02k" + rb.encode_varint(1000) + b"v\x00"),
            1,
            "valueLength 1000 runs past the end of the record",
            id="value longer than record",
        ),
        pytest.param(
            rb.encode_varint(6) + b"\x00\x00\x00\x06abc\x00\x00" + b"\x00" * 3,
            1,
            "keyLength 3 runs past the end of the record",
            id="fields past record length",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00\x02k\x02v" + rb.encode_varint(50) + b"\x00"),
            1,
            "header count 50 does not fit",
            id="impossible header count",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00\x02k\x02v\x02" + rb.encode_varint(-1) + b"\x00"),
            1,
            "header 0 has a null key",
            id="null header key",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00\x02k\x02v\x02\x02\xff\x00"),
            1,
            "header 0 key is not UTF-8",
            id="header key not utf-8",
        ),
        pytest.param(
            raw_record(b"\x00\x00\x00\x02k\x02v\x00\x00"),
            1,
            "disagrees",
            id="record length longer than its fields",
        ),
    ],
)
@pytest.mark.parametrize("codec", CODECS)
def test_malformed_record_raises_corrupt(
    section: bytes, record_count: int, message: str, codec: int
) -> None:
    stored = compression.compress(codec, section)
    data = with_records_section(stored, record_count, codec)
    rb.validate_batch(data)  # the broker's checks pass: the damage is inside the records
    with pytest.raises(CorruptRecordError, match=message):
        rb.decode_batch(data)


def test_well_formed_hand_built_section_decodes() -> None:
    """The hand-built record the malformed cases start from is itself valid."""
    data = with_records_section(raw_record(BODY_OK), 1, base_offset=9)
    assert rb.decode_batch(data).records == [rb.Record(9, 1_000, b"k", b"v", ())]


def test_overflowing_timestamp_delta_is_rejected_or_fits_int64() -> None:
    """A 10-byte varint carrying more than 64 bits must not become a timestamp beyond int64."""
    overlong = b"\xff" * 9 + b"\x7f"
    section = raw_record(b"\x00" + overlong + b"\x00\x02k\x02v\x00")
    data = with_records_section(section, 1)
    try:
        records = rb.decode_batch(data).records
    except CorruptRecordError:
        return
    assert INT64_MIN <= records[0].timestamp <= INT64_MAX


# --- 7. compression bomb guard -------------------------------------------------------------


def test_zstd_bomb_guard() -> None:
    records: list[rb.RecordInput] = [(None, bytes(500), None, 1)] * 10
    data = rb.encode_batch(records, codec=fmt.CODEC_ZSTD)
    inflated = len(rb.encode_records(records, 1))
    assert inflated > 5_000 and len(data) < 1_000
    with pytest.raises(CorruptRecordError, match="bomb"):
        rb.decode_batch(data, max_decompressed_bytes=1_000)
    with pytest.raises(CorruptRecordError, match="bomb"):
        rb.decode_batch(data, max_decompressed_bytes=inflated - 1)
    assert rb.decode_batch(data, max_decompressed_bytes=inflated).records == expected_records(
        records, 0
    )
    assert len(rb.decode_batch(data).records) == 10


def test_bomb_guard_counts_all_frames() -> None:
    records: list[rb.RecordInput] = [(None, bytes(500), None, 1)] * 10
    section = rb.encode_records(records, 1)
    half = len(section) // 2
    compressor = zstandard.ZstdCompressor()
    stored = compressor.compress(section[:half]) + compressor.compress(section[half:])
    data = with_records_section(stored, 10, fmt.CODEC_ZSTD)
    assert [r.value for r in rb.decode_batch(data).records] == [bytes(500)] * 10
    with pytest.raises(CorruptRecordError, match="bomb"):
        rb.decode_batch(data, max_decompressed_bytes=half + 10)


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(b"definitely not zstd", id="garbage"),
        pytest.param(b"\x28\xb5\x2f\xfd" + b"\xff" * 20, id="magic then garbage"),
        pytest.param(zstandard.ZstdCompressor().compress(VALID_SECTION)[:-3], id="truncated"),
        pytest.param(b"", id="empty"),
    ],
)
def test_garbage_zstd_payload_raises_corrupt(stored: bytes) -> None:
    data = with_records_section(stored, 3, fmt.CODEC_ZSTD)
    with pytest.raises(CorruptRecordError):
        rb.decode_batch(data)


def test_garbage_zstd_names_zstd() -> None:
    data = with_records_section(b"definitely not zstd", 3, fmt.CODEC_ZSTD)
    with pytest.raises(CorruptRecordError, match="zstd"):
        rb.decode_batch(data)


# --- 8. varints ----------------------------------------------------------------------------


def kafka_varint(value: int) -> bytes:
    out = bytearray()
    kafka_encode_varint(value, out.append)
    return bytes(out)


VARINT_EDGES = [
    0,
    -1,
    1,
    -2,
    63,
    64,
    -64,
    -65,
    8191,
    8192,
    65_535,
    65_536,
    65_537,
    2**31 - 1,
    -(2**31),
    INT64_MIN,
    INT64_MAX,
    INT64_MIN + 1,
    INT64_MAX - 1,
]


@pytest.mark.parametrize("value", VARINT_EDGES)
def test_varint_edges(value: int) -> None:
    encoded = rb.encode_varint(value)
    assert encoded == kafka_varint(value)
    assert rb.decode_varint(encoded, 0) == (value, len(encoded))
    assert rb.decode_varint(b"\x01\x02" + encoded + b"\x7f", 2) == (value, 2 + len(encoded))


def test_varint_sizes() -> None:
    assert rb.encode_varint(0) == b"\x00"
    assert rb.encode_varint(-1) == b"\x01"
    assert rb.encode_varint(1) == b"\x02"
    assert rb.encode_varint(-64) == b"\x7f"
    assert len(rb.encode_varint(64)) == 2
    assert len(rb.encode_varint(INT64_MAX)) == 10
    assert len(rb.encode_varint(INT64_MIN)) == 10


@settings(max_examples=200)
@given(value=st.integers(INT64_MIN, INT64_MAX))
def test_varint_round_trip(value: int) -> None:
    encoded = rb.encode_varint(value)
    assert encoded == kafka_varint(value)
    assert rb.decode_varint(encoded, 0) == (value, len(encoded))


@settings(max_examples=100)
@given(value=st.integers(INT64_MIN, INT64_MAX), data=st.data())
def test_truncated_varint_raises_corrupt(value: int, data: st.DataObject) -> None:
    encoded = rb.encode_varint(value)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(CorruptRecordError, match="varint"):
        rb.decode_varint(encoded[:cut], 0)


def test_overlong_varint_raises_corrupt() -> None:
    with pytest.raises(CorruptRecordError, match="10 bytes"):
        rb.decode_varint(b"\x80" * 10 + b"\x00", 0)
    with pytest.raises(CorruptRecordError, match="10 bytes"):
        rb.decode_varint(b"\xff" * 11, 0)
    with pytest.raises(CorruptRecordError, match="varint"):
        rb.decode_varint(b"", 0)
    with pytest.raises(CorruptRecordError, match="varint"):
        rb.decode_varint(b"\x00", 1)
    # ten bytes is the longest legal form
    assert rb.decode_varint(b"\x80" * 9 + b"\x00", 0) == (0, 10)


@settings(max_examples=100)
@given(body=st.binary(min_size=9, max_size=9), last=st.integers(0, 0x7F))
def test_ten_byte_varint_stays_in_int64(body: bytes, last: int) -> None:
    """Any 10-byte varint decodes to an int64 (Kafka wraps) or is rejected as corrupt."""
    encoded = bytes(b | 0x80 for b in body) + bytes([last])
    try:
        value, end = rb.decode_varint(encoded, 0)
    except CorruptRecordError:
        return
    assert end == 10
    assert INT64_MIN <= value <= INT64_MAX


def test_encode_varint_agrees_with_the_definition_on_and_off_the_table() -> None:
    """The precomputed fast path and the computed one give the same bytes, across the
    table's end (and the one- to two- to three-byte boundaries)."""
    for value in range(-1, 70_000):
        assert rb.encode_varint(value) == rb._encode_zigzag_varint(value)
    for value in (-(2**63), -70_000, 2**63 - 1):
        assert rb.decode_varint(rb.encode_varint(value), 0) == (value, len(rb.encode_varint(value)))

"""Tests for `logstore.codec._record_decoder`, the C record decoder, against the Python one.

The rule: for any bytes, header and record type, the C decoder returns records equal to
the Python decoder's, or both raise CorruptRecordError. The bytes come from the network,
so the cases include random and mutated records sections, not only well-formed ones.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NamedTuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import CorruptRecordError
from logstore.types import ConsumerRecord

c_decode = rb._c_decode_records
needs_c = pytest.mark.skipif(c_decode is None, reason="logstore.codec._record_decoder is not built")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

keys = st.one_of(st.none(), st.binary(max_size=20), st.binary(min_size=60, max_size=200))
values = st.one_of(st.none(), st.binary(max_size=80), st.binary(min_size=8190, max_size=8400))
header_lists = st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=12)), max_size=3
)
timestamps = st.integers(-(2**61), 2**61)


def _header(
    record_count: int, base_offset: int = 0, base_timestamp: int = 0, log_append_time: int = -1
) -> rb.BatchHeader:
    attributes = fmt.TIMESTAMP_TYPE_MASK if log_append_time >= 0 else 0
    return rb.BatchHeader(
        base_offset, 0, 0, 2, 0, attributes, record_count - 1, base_timestamp,
        max(log_append_time, base_timestamp), -1, -1, -1, record_count,
    )  # fmt: skip


def _c(header: rb.BatchHeader, data: bytes, record_type: Any = rb.Record, prefix: Any = ()) -> Any:
    """The C decoder's records, or the exception type it raised."""
    assert c_decode is not None
    log_append_time = header.max_timestamp if header.timestamp_type else None
    try:
        return c_decode(
            data, 0, len(data), header.record_count, header.base_offset,
            header.base_timestamp, log_append_time, record_type, prefix,
        )  # fmt: skip
    except CorruptRecordError:
        return CorruptRecordError


def _py(header: rb.BatchHeader, data: bytes, record_type: Any = rb.Record, prefix: Any = ()) -> Any:
    """The Python decoder's records, or the exception type it raised."""
    try:
        return rb._decode_records_py(header, data, record_type, prefix)
    except (CorruptRecordError, IndexError):
        return CorruptRecordError


def _records_section(records: list[rb.RecordInput], base_timestamp: int) -> bytes:
    return rb.encode_records(records, base_timestamp)


record_inputs = st.lists(st.tuples(keys, values, header_lists, timestamps), min_size=1, max_size=12)


@needs_c
@settings(max_examples=300, deadline=None)
@given(records=record_inputs, base_offset=st.integers(0, 2**62))
def test_well_formed_records_decode_alike(records: list[Any], base_offset: int) -> None:
    base_timestamp = records[0][3]
    data = _records_section(records, base_timestamp)
    header = _header(len(records), base_offset, base_timestamp)
    decoded = _c(header, data)
    assert decoded == _py(header, data)
    assert [(r.key, r.value, r.headers, r.timestamp) for r in decoded] == [
        (k, v, tuple(h), t) for k, v, h, t in records
    ]
    assert [r.offset for r in decoded] == list(range(base_offset, base_offset + len(records)))


@needs_c
@settings(max_examples=400, deadline=None)
@given(
    records=record_inputs,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 40),
    count_change=st.sampled_from([0, 0, 0, -1, 1]),
)
def test_mutated_records_decode_alike_or_both_fail(
    records: list[Any], flips: list[tuple[int, int]], cut: int, count_change: int
) -> None:
    data = bytearray(_records_section(records, 0))
    for position, byte in flips:
        data[position % len(data)] = byte
    data = data[: max(0, len(data) - cut)] if cut < 8 else data
    record_count = len(records) + count_change
    assume(record_count >= 1)
    header = _header(record_count)
    assert _c(header, bytes(data)) == _py(header, bytes(data))


@needs_c
@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), record_count=st.integers(1, 30))
def test_random_bytes_decode_alike_or_both_fail(data: bytes, record_count: int) -> None:
    header = _header(record_count, base_offset=7, base_timestamp=1_700_000_000_000)
    assert _c(header, data) == _py(header, data)


def _varint(value: int) -> bytes:
    return rb._encode_zigzag_varint(value)


def _raw_record(body: bytes) -> bytes:
    return _varint(len(body)) + body


@needs_c
@pytest.mark.parametrize(
    "body",
    [
        # attributes, timestamp delta, offset delta, key, value, header count
        b"\x00" + _varint(INT64_MAX) + _varint(0) + b"\x01\x01\x00",  # ts overflows int64
        b"\x00\x00" + _varint(INT64_MAX) + b"\x01\x01\x00",  # offset overflows int64
        b"\x00\x00\x00\x01\x01" + b"\x80\x00",  # header count 0 as a two-byte varint
        b"\x00\x00\x00\x01\x01\x02" + _varint(1) + b"\xff" + b"\x01",  # header key not UTF-8
        b"\x00\x00\x00\x01\x01\x02" + b"\x01\x01",  # header with a null key
        b"\x00\x00\x00\x03\x01\x00",  # key length -2
        b"\x00" + b"\xff" * 9 + b"\x02" + b"\x00\x01\x01\x00",  # 10th varint byte > 1
        b"\x00" + b"\xff" * 9 + b"\x01" + b"\x00\x01\x01\x00",  # longest legal varint
        b"\x00\x00\x00\x01\x01\x00\x00",  # a byte after the headers
        b"\x00\x00\x00\x01\x01",  # no header count
    ],
)
def test_edge_records_decode_alike(body: bytes) -> None:
    data = _raw_record(body)
    for header in (_header(1, INT64_MAX, INT64_MAX), _header(1, 0, INT64_MIN), _header(1)):
        assert _c(header, data) == _py(header, data)


@needs_c
def test_log_append_time_stamps_every_record() -> None:
    data = _records_section([(b"k", b"v", None, 5), (None, b"w", None, 9)], 5)
    header = _header(2, base_offset=100, base_timestamp=5, log_append_time=1234)
    decoded = _c(header, data)
    assert decoded == _py(header, data)
    assert [r.timestamp for r in decoded] == [1234, 1234]


@needs_c
def test_records_are_the_given_named_tuple_with_the_prefix() -> None:
    data = _records_section([(b"k", b"v", [("h", b"x")], 5)], 5)
    (record,) = _c(_header(1, 42, 5), data, ConsumerRecord, ("orders", 3))
    assert type(record) is ConsumerRecord
    assert record == ConsumerRecord("orders", 3, 42, 5, b"k", b"v", (("h", b"x"),))
    assert record.topic == "orders" and record.headers[0] == ("h", b"x")


@needs_c
def test_decodes_a_slice_of_a_larger_buffer_in_place() -> None:
    data = _records_section([(b"k", b"v", None, 5)], 5)
    buf = memoryview(bytearray(b"junk" + data + b"tail"))
    assert c_decode is not None
    (record,) = c_decode(buf, 4, 4 + len(data), 1, 0, 5, None, rb.Record, ())
    assert (record.key, record.value) == (b"k", b"v")
    with pytest.raises(ValueError, match="start and end"):
        c_decode(buf, 4, len(buf) + 1, 1, 0, 5, None, rb.Record, ())


@needs_c
def test_refuses_a_record_type_that_is_not_a_plain_tuple_subclass() -> None:
    class WithDict(tuple):  # type: ignore[type-arg]  # instances carry a __dict__
        pass

    class Plain(NamedTuple):
        a: int

    data = _records_section([(b"k", b"v", None, 5)], 5)
    assert c_decode is not None
    for bad in (list, WithDict, object()):
        with pytest.raises(TypeError):
            c_decode(data, 0, len(data), 1, 0, 5, None, bad, ())
    assert c_decode(data, 0, len(data), 1, 0, 5, None, Plain, ("t", 0))[0][:2] == ("t", 0)


@needs_c
def test_decoded_records_hold_no_extra_references() -> None:
    data = _records_section([(b"k", b"v" * 100, [("h", b"x")], 5)] * 50, 5)
    assert c_decode is not None
    topic = "orders"
    prefix = (topic, 0)

    def references() -> int:  # plain locals: assert rewriting would hold extra ones
        count = sys.getrefcount(topic)
        return count

    before = references()
    records = c_decode(data, 0, len(data), 50, 0, 5, None, ConsumerRecord, prefix)
    with_records = references()
    del records
    after = references()
    for _ in range(3):  # a failure part-way releases what was built
        with pytest.raises(CorruptRecordError):
            c_decode(data[:-3], 0, len(data) - 3, 50, 0, 5, None, ConsumerRecord, prefix)
    after_failures = references()
    assert (with_records, after, after_failures) == (before + 50, before, before)


def test_the_c_decoder_is_built() -> None:
    """The consumer's speed depends on it; LOGSTORE_PURE_PYTHON=1 opts out on purpose."""
    if os.environ.get("LOGSTORE_PURE_PYTHON"):
        pytest.skip("LOGSTORE_PURE_PYTHON is set: the Python decoder is in use")
    assert c_decode is not None, (
        "logstore.codec._record_decoder is not built: reinstall with a C compiler present "
        "(pip install -e .), or set LOGSTORE_PURE_PYTHON=1 to use the Python decoder"
    )


def test_decode_batch_gives_the_same_records_with_either_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [(b"k%d" % i, b"v" * i, [("h", None)], 10 + i) for i in range(20)]
    buf = b"".join(
        rb.encode_batch(records, base_offset=base, codec=codec)
        for base, codec in ((0, fmt.CODEC_NONE), (20, fmt.CODEC_ZSTD))
    )
    with_default = rb.decode_all(buf, record_type=ConsumerRecord, prefix=("t", 1))
    monkeypatch.setattr(rb, "_c_decode_records", None)
    assert rb.decode_all(buf, record_type=ConsumerRecord, prefix=("t", 1)) == with_default
    assert [r.offset for r in with_default] == list(range(40))

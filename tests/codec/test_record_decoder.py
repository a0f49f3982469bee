"""The C record decoder (`logstore.codec._record_decoder`) against the reference
(`logstore.codec.records_reference`), the format spec in code.

The rule: for any bytes, header and record type, both return equal records, or both raise
CorruptRecordError with the same message, word for word. The bytes come from the network,
so the cases include random and mutated records sections, not only well-formed ones, and
sections that sit inside a larger buffer (the messages count bytes from the section's start).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec import records_reference
from logstore.errors import CorruptRecordError
from logstore.types import ConsumerRecord

Decoder = Callable[..., list[Any]]

c_decode: Decoder | None
try:  # imported directly: the differential tests run under LOGSTORE_PURE_PYTHON=1 too
    from logstore.codec._record_decoder import decode_records as c_decode
except ImportError:
    c_decode = None
ref_decode: Decoder = records_reference.decode_records
needs_c = pytest.mark.skipif(c_decode is None, reason="logstore.codec._record_decoder is not built")
PURE_PYTHON = bool(os.environ.get("LOGSTORE_PURE_PYTHON"))

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

keys = st.one_of(st.none(), st.binary(max_size=20), st.binary(min_size=60, max_size=200))
values = st.one_of(st.none(), st.binary(max_size=80), st.binary(min_size=8190, max_size=8400))
header_lists = st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=12)), max_size=3
)
timestamps = st.integers(-(2**61), 2**61)
record_inputs = st.lists(st.tuples(keys, values, header_lists, timestamps), min_size=1, max_size=12)
#: bytes around the section in its buffer: the decoders must read only data[start:end]
padding = st.binary(max_size=6)


class Batch(NamedTuple):
    """What a decoder is told about a batch besides its bytes."""

    record_count: int
    base_offset: int = 0
    base_timestamp: int = 0
    log_append_time: int | None = None


def outcome(
    decode: Decoder,
    batch: Batch,
    data: bytes,
    record_type: Any = rb.Record,
    prefix: tuple[object, ...] = (),
    pad: tuple[bytes, bytes] = (b"", b""),
) -> Any:
    """The records `decode` returns for data (set inside pad[0] + data + pad[1]), or the
    (type, message) of the CorruptRecordError it raises. Any other exception fails."""
    buf = pad[0] + data + pad[1]
    start, end = len(pad[0]), len(pad[0]) + len(data)
    try:
        return decode(buf, start, end, *batch, record_type, prefix)
    except CorruptRecordError as exc:
        return type(exc), str(exc)


def assert_agree(batch: Batch, data: bytes, pad: tuple[bytes, bytes] = (b"", b"")) -> Any:
    """Both decoders give the same records or the same error; returns the reference's."""
    assert c_decode is not None
    expected = outcome(ref_decode, batch, data, pad=pad)
    assert outcome(c_decode, batch, data, pad=pad) == expected
    return expected


@needs_c
@settings(max_examples=300, deadline=None)
@given(records=record_inputs, base_offset=st.integers(0, 2**62), before=padding, after=padding)
def test_well_formed_records_decode_alike(
    records: list[Any], base_offset: int, before: bytes, after: bytes
) -> None:
    base_timestamp = records[0][3]
    data = rb.encode_records(records, base_timestamp)
    decoded = assert_agree(Batch(len(records), base_offset, base_timestamp), data, (before, after))
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
    before=padding,
)
def test_mutated_records_decode_alike_or_fail_alike(
    records: list[Any], flips: list[tuple[int, int]], cut: int, count_change: int, before: bytes
) -> None:
    data = bytearray(rb.encode_records(records, 0))
    for position, byte in flips:
        data[position % len(data)] = byte
    data = data[: max(0, len(data) - cut)] if cut < 8 else data
    record_count = len(records) + count_change
    assume(record_count >= 1)
    assert_agree(Batch(record_count, base_offset=12), bytes(data), (before, b"\x00"))


@needs_c
@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), record_count=st.integers(0, 30), before=padding)
def test_random_bytes_decode_alike_or_fail_alike(
    data: bytes, record_count: int, before: bytes
) -> None:
    batch = Batch(record_count, base_offset=7, base_timestamp=1_700_000_000_000)
    assert_agree(batch, data, (before, b""))


def _varint(value: int) -> bytes:
    return rb._encode_zigzag_varint(value)


def _raw_record(body: bytes) -> bytes:
    return _varint(len(body)) + body


OK = _raw_record(b"\x00\x00\x00\x02k\x02v\x00")  # attrs ts od key value headers: a valid record
AT_0 = "record 0 of the batch at base offset 5, at byte 0 of its records: "
AT_1 = f"record 1 of the batch at base offset 5, at byte {len(OK)} of its records: "

#: (records section, record count, the message both decoders give, word for word)
MESSAGES = [
    (b"", 1, "record batch at base offset 5 ends after 0 of its 1 records"),
    (OK, 2, "record batch at base offset 5 ends after 1 of its 2 records"),
    (OK + b"\x00\x00", 1, "record batch at base offset 5 has 2 bytes after its 1 records"),
    (b"", -1, "record batch at base offset 5 has a negative record count -1"),
    (b"\x80\x80", 1, AT_0 + "length varint is cut short"),
    (OK + b"\x80", 2, AT_1 + "length varint is cut short"),
    (_varint(-1) + b"\x00" * 6, 1, AT_0 + "record length -1 is below the minimum 6"),
    (
        _varint(100) + b"\x00" * 6,
        1,
        AT_0 + "record length 100 runs past the end of the records section (6 bytes left)",
    ),
    (
        _raw_record(b"\x00" + b"\x80" * 10 + b"\x00" * 8),
        1,
        AT_0 + "timestampDelta varint is longer than 10 bytes or overflows 64 bits",
    ),
    (
        _raw_record(b"\x00" + b"\xff" * 9 + b"\x02" + b"\x00\x01\x01\x00"),
        1,
        AT_0 + "timestampDelta varint is longer than 10 bytes or overflows 64 bits",
    ),
    (
        _raw_record(b"\x00\x00" + b"\x80" * 4),
        1,
        AT_0 + "offsetDelta varint is cut short",
    ),
    (
        _raw_record(b"\x00\x00\x00" + _varint(-2) + b"\x02v\x00"),
        1,
        AT_0 + "keyLength -2 is negative but not -1 (null)",
    ),
    (
        _raw_record(b"\x00\x00\x00" + _varint(1000) + b"\x02v\x00"),
        1,
        AT_0 + "keyLength 1000 runs past the end of the record (3 bytes left)",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k" + _varint(1000) + b"v\x00"),
        1,
        AT_0 + "valueLength 1000 runs past the end of the record (2 bytes left)",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v"),
        1,
        AT_0 + "header count varint is cut short",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v" + _varint(-3)),
        1,
        AT_0 + "header count -3 is negative",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v" + _varint(50) + b"\x00"),
        1,
        AT_0 + "header count 50 does not fit in the rest of the record (1 bytes left)",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v\x02" + _varint(-1) + b"\x00"),
        1,
        AT_0 + "header 0 has a null key",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v\x04\x02h\x00\x02\xff\x00"),
        1,
        AT_0 + "header 1 key is not UTF-8",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v\x02\x02h\x80"),
        1,
        AT_0 + "headerValueLength of header 0 varint is cut short",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v\x02\x02h" + _varint(-5)),
        1,
        AT_0 + "headerValueLength of header 0 -5 is negative but not -1 (null)",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v\x02" + _varint(9) + b"h"),
        1,
        AT_0 + "headerKeyLength of header 0 9 runs past the end of the record (1 bytes left)",
    ),
    (
        _raw_record(b"\x00\x00\x00\x02k\x02v\x00\x00\x00"),
        1,
        AT_0 + "record length 10 disagrees with its fields: 2 bytes are left over",
    ),
]


@pytest.mark.parametrize(("section", "record_count", "message"), MESSAGES)
def test_each_problem_has_one_message_naming_record_and_field(
    section: bytes, record_count: int, message: str
) -> None:
    """The wording users see, pinned: the record's index and byte, then what was wrong."""
    batch = Batch(record_count, base_offset=5)
    assert outcome(ref_decode, batch, section, pad=(b"junk", b"")) == (CorruptRecordError, message)
    if c_decode is not None:
        assert outcome(c_decode, batch, section, pad=(b"junk", b"")) == (
            CorruptRecordError,
            message,
        )


@needs_c
@pytest.mark.parametrize(
    "body",
    [
        # attributes, timestamp delta, offset delta, key, value, header count
        b"\x00" + _varint(INT64_MAX) + _varint(0) + b"\x01\x01\x00",  # ts overflows int64
        b"\x00\x00" + _varint(INT64_MAX) + b"\x01\x01\x00",  # offset overflows int64
        b"\x00\x00\x00\x01\x01" + b"\x80\x00",  # header count 0 as a two-byte varint
        b"\x00" + b"\xff" * 9 + b"\x01" + b"\x00\x01\x01\x00",  # longest legal varint
        b"\x00\x00\x00\x01\x01\x02\x02h\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # value -2**63
    ],
)
def test_edge_records_decode_alike(body: bytes) -> None:
    data = _raw_record(body)
    for batch in (Batch(1, INT64_MAX, INT64_MAX), Batch(1, 0, INT64_MIN), Batch(1)):
        assert_agree(batch, data)


@needs_c
def test_log_append_time_stamps_every_record() -> None:
    data = rb.encode_records([(b"k", b"v", None, 5), (None, b"w", None, 9)], 5)
    decoded = assert_agree(Batch(2, base_offset=100, base_timestamp=5, log_append_time=1234), data)
    assert [r.timestamp for r in decoded] == [1234, 1234]


@pytest.mark.parametrize("decode", [ref_decode, c_decode], ids=["reference", "c"])
def test_records_are_the_given_named_tuple_with_the_prefix(decode: Decoder | None) -> None:
    if decode is None:
        pytest.skip("logstore.codec._record_decoder is not built")
    data = rb.encode_records([(b"k", b"v", [("h", b"x")], 5)], 5)
    (record,) = outcome(decode, Batch(1, 42, 5), data, ConsumerRecord, ("orders", 3))
    assert type(record) is ConsumerRecord
    assert record == ConsumerRecord("orders", 3, 42, 5, b"k", b"v", (("h", b"x"),))
    assert record.topic == "orders" and record.headers[0] == ("h", b"x")


@pytest.mark.parametrize("decode", [ref_decode, c_decode], ids=["reference", "c"])
def test_decodes_a_slice_of_a_larger_buffer_in_place(decode: Decoder | None) -> None:
    if decode is None:
        pytest.skip("logstore.codec._record_decoder is not built")
    data = rb.encode_records([(b"k", b"v", None, 5)], 5)
    buf = memoryview(bytearray(b"junk" + data + b"tail"))
    (record,) = decode(buf, 4, 4 + len(data), 1, 0, 5, None, rb.Record, ())
    assert (record.key, record.value) == (b"k", b"v")
    for start, end in ((4, len(buf) + 1), (-1, 4), (5, 4)):
        with pytest.raises(ValueError, match="start and end"):
            decode(buf, start, end, 1, 0, 5, None, rb.Record, ())


@needs_c
def test_refuses_a_record_type_that_is_not_a_plain_tuple_subclass() -> None:
    class WithDict(tuple):  # type: ignore[type-arg]  # instances carry a __dict__
        pass

    class Plain(NamedTuple):
        a: int

    data = rb.encode_records([(b"k", b"v", None, 5)], 5)
    assert c_decode is not None
    for bad in (list, WithDict, object()):
        messages = []
        for decode in (c_decode, ref_decode):
            with pytest.raises(TypeError) as info:
                decode(data, 0, len(data), 1, 0, 5, None, bad, ())
            messages.append(str(info.value))
        assert messages[0] == messages[1]
    for decode in (c_decode, ref_decode):
        assert decode(data, 0, len(data), 1, 0, 5, None, Plain, ("t", 0))[0][:2] == ("t", 0)


@needs_c
def test_decoded_records_hold_no_extra_references() -> None:
    data = rb.encode_records([(b"k", b"v" * 100, [("h", b"x")], 5)] * 50, 5)
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


#: the start of a record whose key and value are objects of their own (one-byte bytes are
#: shared singletons: a leaked one would go unseen)
_KEYED = b"\x00\x00\x00" + _varint(7) + b"key-123" + _varint(9) + b"value-456"
_HEADER_0 = _varint(2) + b"hk" + _varint(6) + b"hv-789"
#: records that fail after the decoder built some of their parts
FAILING_LATE = [
    _raw_record(b"\x00\x00\x00" + _varint(7) + b"key-123" + _varint(1000) + b"v\x00"),
    _raw_record(_KEYED + _varint(50) + b"\x00"),
    _raw_record(_KEYED + _varint(2) + _HEADER_0 + _varint(2) + b"\xff\xfe" + b"\x01"),
    _raw_record(_KEYED + _varint(1) + _varint(2) + b"hk" + b"\x80"),
    _raw_record(_KEYED + _varint(1) + _HEADER_0 + b"\x00\x00"),
]


@needs_c
@pytest.mark.parametrize("section", FAILING_LATE)
def test_records_failing_late_fail_alike(section: bytes) -> None:
    expected = assert_agree(Batch(1, base_offset=3), section, (b"pad", b""))
    assert expected[0] is CorruptRecordError and expected[1].startswith("record 0 of the batch")


@needs_c
def test_every_error_path_releases_what_it_built() -> None:
    """A thousand failures of each kind, part-way through records and headers, leave no
    objects behind (tracemalloc sees the C decoder's allocations: it uses Python's)."""
    assert c_decode is not None
    good = rb.encode_records([(b"k" * 40, b"v" * 300, [("h", b"x" * 50)], 5)] * 20, 5)
    failing = [(good + section, 20 + count) for section, count, _ in MESSAGES if count >= 1]
    failing += [(good + section, 21) for section in FAILING_LATE]
    failing += [(good[:-3], 20), (good + b"\x00", 20)]

    def fail_all(rounds: int) -> int:
        failures = 0  # try/except, not pytest.raises: its ExceptionInfo would be traced too
        for _ in range(rounds):
            for section, count in failing:
                try:
                    c_decode(section, 0, len(section), count, 0, 5, None, ConsumerRecord, ("t", 0))
                except CorruptRecordError:
                    failures += 1
        return failures

    assert fail_all(20) == 20 * len(failing)  # warm up: caches and free lists settle first
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        failures = fail_all(1000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert failures == 1000 * len(failing)
    # each failure drops ~8 KB of records built before the bad one: a leak of even one
    # key per failure would hold over a megabyte
    assert grown < 8_192, f"{grown} bytes still held after {1000 * len(failing)} failures"


def test_the_c_decoder_is_built() -> None:
    """The consumer's speed depends on the C decoder, so it is the one in use; with
    LOGSTORE_PURE_PYTHON=1 (an opt-out on purpose) the reference really is the one decoding."""
    if PURE_PYTHON:
        assert rb._c_decode_records is None
        assert rb._decode_records is records_reference.decode_records
        return
    assert c_decode is not None, (
        "logstore.codec._record_decoder is not built: reinstall with a C compiler present "
        "(pip install -e .), or set LOGSTORE_PURE_PYTHON=1 to use the reference decoder"
    )
    assert rb._decode_records is c_decode


@pytest.mark.parametrize("pure", ["", "1"])
def test_the_variable_picks_the_decoder_at_import(pure: str) -> None:
    """In a fresh interpreter: LOGSTORE_PURE_PYTHON=1 gives the reference, unset the C one
    (when built), whatever this process was started with."""
    probe = (
        "from logstore.codec import record_batch as rb, records_reference as ref;"
        "print(rb._decode_records is ref.decode_records)"
    )
    env = {k: v for k, v in os.environ.items() if k != "LOGSTORE_PURE_PYTHON"}
    if pure:
        env["LOGSTORE_PURE_PYTHON"] = pure
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    uses_reference = pure == "1" or c_decode is None
    assert result.stdout.strip() == str(uses_reference)


@pytest.mark.parametrize("decode", [ref_decode, c_decode], ids=["reference", "c"])
def test_decode_batch_gives_the_same_records_with_either_decoder(
    decode: Decoder | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if decode is None:
        pytest.skip("logstore.codec._record_decoder is not built")
    records = [(b"k%d" % i, b"v" * i, [("h", None)], 10 + i) for i in range(20)]
    codecs = sorted(fmt.CODEC_NAMES)  # none and Kafka's four: inflated sections decode alike
    buf = b"".join(
        rb.encode_batch(records, base_offset=20 * n, codec=codec) for n, codec in enumerate(codecs)
    )
    monkeypatch.setattr(rb, "_decode_records", decode)
    decoded = rb.decode_all(buf, record_type=ConsumerRecord, prefix=("t", 1))
    assert decoded == [
        ConsumerRecord("t", 1, offset, 10 + i, b"k%d" % i, b"v" * i, (("h", None),))
        for offset, i in zip(range(100), list(range(20)) * 5, strict=True)
    ]

"""Hostile input against a real broker: every RPC with random field values, every RPC
with random bytes instead of a message, and Produce with broken record batches.

The rule: a clear status (INVALID_ARGUMENT, NOT_FOUND, ...) or success, never INTERNAL or
UNKNOWN, never a crash or a hang; afterwards the broker still serves and its logs read
back valid. Short runs in CI; LOGSTORE_LONG_TESTS=1 runs thousands of cases.
"""

from __future__ import annotations

import contextlib
import struct
from collections import Counter
from collections.abc import Iterator

import crc32c
import grpc
import pytest
from google.protobuf import descriptor as pd
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.codec import compression
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import CorruptRecordError
from logstore.v1 import logstore_pb2 as pb
from tests.faults.conftest import LONG
from tests.faults.support import (
    FORBIDDEN_CODES,
    connect,
    create_topic,
    fetch_once,
    offsets,
    produce,
    read_log,
    rss_kib,
)
from tests.server.conftest import BrokerProcess

SERVICE = pb.DESCRIPTOR.services_by_name["LogStore"]
METHODS = [m for m in SERVICE.methods]
PROTECTED = "keep-fz"  # never named by the generators: it must read back intact at the end
TOPIC = "fz"
BATCH_TOPIC = "fz-batches"  # never named by the generators either
#: where batches with a valid CRC around garbage records go (see test_broken_record_batches)
OPAQUE_TOPIC = "fz-opaque"
#: kinds whose CRC is valid but whose records section is garbage
OPAQUE_KINDS = frozenset(
    {"negative-varint", "garbage-records", "lying-lengths", "codec", "damaged-compressed"}
)
KAFKA_CODECS = [fmt.CODEC_GZIP, fmt.CODEC_SNAPPY, fmt.CODEC_LZ4, fmt.CODEC_ZSTD]
EXAMPLES = 2000 if LONG else 60
CALL_TIMEOUT_S = 10.0
#: cases run per test, reported in the summary
CASES: Counter[str] = Counter()

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def fuzz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    broker = BrokerProcess(tmp_path_factory.mktemp("fuzz") / "data")
    broker.start()
    with connect(broker.address) as stub:
        create_topic(stub, PROTECTED, 1)
        create_topic(stub, TOPIC, 2)
        create_topic(stub, BATCH_TOPIC, 1)
        create_topic(stub, OPAQUE_TOPIC, 1)
        for i in range(10):
            produce(stub, PROTECTED, rb.encode_batch([(None, b"p-%d" % i, None, 1000)]))
    try:
        yield broker
        # the end of the module: still alive, still serving, logs intact
        assert broker.proc is not None and broker.proc.poll() is None
        with connect(broker.address) as stub:
            assert [r.value for r in read_log(stub, PROTECTED)] == [b"p-%d" % i for i in range(10)]
            read_log(stub, BATCH_TOPIC)  # CRC of every batch, and every record decodes
            _check_opaque(stub)
        assert broker.stop() == 0
        print(f"\nhostile input cases run: {dict(CASES)}")
    finally:
        broker.close()


@pytest.fixture(scope="module")
def channel(fuzz_broker: BrokerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_broker.address) as ch:
        yield ch


# --- random messages from the descriptors ----------------------------------------------------

NAMES = st.sampled_from(
    [TOPIC, "", ".", "..", "../x", "a/b", "x" * 250, "__consumer_offsets", "nope", "g", "ü", "\0"]
) | st.text(max_size=20)
INTS = st.sampled_from([0, 1, -1, -2, 2, 3, 2**31 - 1, -(2**31), 10_000, 10_001]) | st.integers(
    -(2**31), 2**31 - 1
)
INT64S = INTS | st.sampled_from([2**63 - 1, -(2**63)])
SCALARS: dict[int, st.SearchStrategy[object]] = {
    pd.FieldDescriptor.TYPE_STRING: NAMES,
    pd.FieldDescriptor.TYPE_BYTES: st.binary(max_size=200),
    pd.FieldDescriptor.TYPE_BOOL: st.booleans(),
    pd.FieldDescriptor.TYPE_INT32: INTS,
    pd.FieldDescriptor.TYPE_SINT32: INTS,
    pd.FieldDescriptor.TYPE_INT64: INT64S,
    pd.FieldDescriptor.TYPE_SINT64: INT64S,
    pd.FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    pd.FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    pd.FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True),
    pd.FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
}
#: partition counts: small valid ones and invalid extremes (creating thousands of
#: partitions is slow, not wrong, and would only make the run long)
PARTITION_COUNTS = st.sampled_from([-(2**31), -1, 0, 1, 2, 3, 64, 10_001, 2**31 - 1])
CONFIG_KEYS = st.sampled_from(
    ["segment.bytes", "retention.ms", "max.message.bytes", "cleanup.policy", "flush.ms", "x/../y"]
) | st.text(max_size=12)


@st.composite
def messages(draw: st.DrawFn, descriptor: pd.Descriptor, depth: int = 0) -> object:
    msg = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, value in draw(
                st.dictionaries(CONFIG_KEYS, SCALARS[value_field.type], max_size=3)
            ).items():
                getattr(msg, field.name)[key] = value
        elif field.message_type is not None:
            if depth >= 3:
                continue
            count = draw(st.integers(0, 2)) if _repeated(field) else 1
            for _ in range(count):
                sub = draw(messages(field.message_type, depth + 1))
                if _repeated(field):
                    getattr(msg, field.name).add().CopyFrom(sub)
                else:
                    getattr(msg, field.name).CopyFrom(sub)
        elif field.enum_type is not None:
            setattr(
                msg, field.name, draw(st.sampled_from([v.number for v in field.enum_type.values]))
            )
        elif _repeated(field):
            getattr(msg, field.name).extend(draw(st.lists(SCALARS[field.type], max_size=3)))
        elif field.name in ("partitions", "total_count"):
            setattr(msg, field.name, draw(PARTITION_COUNTS))
        else:
            setattr(msg, field.name, draw(SCALARS[field.type]))
    # bounded: no long poll, no huge topics
    if hasattr(msg, "max_wait_ms"):
        msg.max_wait_ms = min(max(msg.max_wait_ms, 0), 50)  # type: ignore[attr-defined]
    return msg


def _repeated(field: pd.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _path(method: pd.MethodDescriptor) -> str:
    return f"/{SERVICE.full_name}/{method.name}"


def _call(channel: grpc.Channel, method: pd.MethodDescriptor, request: bytes) -> grpc.StatusCode:
    """Send serialized `request` bytes; return the status code."""
    identity = (lambda b: b, lambda b: b)
    # raw bytes may ask for a long poll of up to 30 s (the broker's cap): not a hang
    timeout = 35.0 if method.name == "Fetch" else CALL_TIMEOUT_S
    try:
        if method.server_streaming or method.client_streaming:
            call = channel.stream_stream(_path(method), *identity)
            for _ in call(iter([request]), timeout=timeout):
                pass
        else:
            channel.unary_unary(_path(method), *identity)(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def _check(code: grpc.StatusCode, what: str) -> None:
    assert code not in FORBIDDEN_CODES, f"{what}: {code}"
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{what}: hung"


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
def test_random_field_values(channel: grpc.Channel, method: pd.MethodDescriptor) -> None:
    @FUZZ_SETTINGS
    @given(request=messages(method.input_type))
    def run(request: object) -> None:
        CASES[f"fields:{method.name}"] += 1
        _check(_call(channel, method, request.SerializeToString()), f"{method.name}({request})")  # type: ignore[attr-defined]

    run()


_RAW_CASES = [
    pytest.param(
        m,
        id=m.name,
    )
    for m in METHODS
]


@pytest.mark.parametrize("method", _RAW_CASES)
def test_random_bytes_instead_of_a_message(
    channel: grpc.Channel, method: pd.MethodDescriptor
) -> None:
    @FUZZ_SETTINGS
    @given(data=st.binary(max_size=300))
    def run(data: bytes) -> None:
        CASES[f"bytes:{method.name}"] += 1
        _check(_call(channel, method, data), f"{method.name}(raw {data!r})")

    run()


# --- broken record batches in Produce --------------------------------------------------------


def _valid_batch(values: list[bytes], codec: int = fmt.CODEC_NONE) -> bytes:
    return rb.encode_batch([(b"k", v, None, 1_000) for v in values], codec=codec)


def _fix_crc(batch: bytearray) -> bytes:
    crc = crc32c.crc32c(bytes(batch[fmt.CRC_COVERED_FROM :]))
    struct.pack_into(">I", batch, fmt.CRC_OFFSET, crc)
    return bytes(batch)


def _with_records(records: bytes, count: int, codec: int = fmt.CODEC_NONE) -> bytes:
    """A batch with a well-formed header and a VALID CRC around arbitrary record bytes."""
    batch = bytearray(_valid_batch([b"x"] * count))
    del batch[fmt.RECORDS_OFFSET :]
    batch += records
    struct.pack_into(">i", batch, fmt.BATCH_LENGTH_OFFSET, len(batch) - fmt.LOG_OVERHEAD)
    attributes = struct.unpack_from(">h", batch, fmt.ATTRIBUTES_OFFSET)[0]
    struct.pack_into(">h", batch, fmt.ATTRIBUTES_OFFSET, (attributes & ~7) | codec)
    return _fix_crc(batch)


@st.composite
def broken_batches(draw: st.DrawFn) -> tuple[str, bytes]:
    values = draw(st.lists(st.binary(max_size=50), min_size=1, max_size=5))
    batch = bytearray(_valid_batch(values))
    kind = draw(
        st.sampled_from(
            [
                "flip",
                "magic",
                "length",
                "count",
                "truncate",
                "random",
                "codec",
                "negative-varint",
                "garbage-records",
                "lying-lengths",
                "damaged-compressed",
                "trailing",
                "empty",
            ]
        )
    )
    if kind == "flip":
        pos = draw(st.integers(fmt.CRC_OFFSET, len(batch) - 1))
        batch[pos] ^= draw(st.integers(1, 255))
    elif kind == "magic":
        batch[fmt.MAGIC_OFFSET] = draw(st.sampled_from([0, 1, 3, 255]))
    elif kind == "length":
        struct.pack_into(">i", batch, fmt.BATCH_LENGTH_OFFSET, draw(INTS))
    elif kind == "count":
        struct.pack_into(">i", batch, fmt.RECORD_COUNT_OFFSET, draw(INTS))
        batch = bytearray(_fix_crc(batch))
    elif kind == "truncate":
        batch = batch[: draw(st.integers(0, len(batch) - 1))]
    elif kind == "random":
        batch = bytearray(draw(st.binary(max_size=200)))
    elif kind == "codec":
        attributes = struct.unpack_from(">h", batch, fmt.ATTRIBUTES_OFFSET)[0]
        codec = draw(st.integers(1, 7))
        struct.pack_into(">h", batch, fmt.ATTRIBUTES_OFFSET, (attributes & ~7) | codec)
        batch = bytearray(_fix_crc(batch))
    elif kind == "negative-varint":
        # record length -5, then bytes: a valid CRC around an impossible record
        batch = bytearray(_with_records(b"\x09" + b"\x00" * 10, 1))
    elif kind == "garbage-records":
        batch = bytearray(_with_records(draw(st.binary(max_size=100)), draw(st.integers(1, 5))))
    elif kind == "lying-lengths":
        # a record whose key length claims far more bytes than the record holds
        batch = bytearray(
            _with_records(
                rb.encode_varint(10) + b"\x00\x00\x00" + rb.encode_varint(10**6) + b"abcdef", 1
            )
        )
    elif kind == "damaged-compressed":
        codec = draw(st.sampled_from(KAFKA_CODECS))
        section = bytearray(
            compression.compress(
                codec, rb.encode_records([(b"k", v, None, 1_000) for v in values], 1_000)
            )
        )
        for _ in range(draw(st.integers(1, 3))):
            section[draw(st.integers(0, len(section) - 1))] ^= draw(st.integers(1, 255))
        batch = bytearray(_with_records(bytes(section), len(values), codec))
    elif kind == "trailing":
        batch += draw(st.binary(min_size=1, max_size=70))
    else:
        batch = bytearray()
    return kind, bytes(batch)


def _produce_status(channel: grpc.Channel, topic: str, data: bytes) -> tuple[grpc.StatusCode, int]:
    """(RPC status, partition error code) of a unary Produce."""
    stub_call = channel.unary_unary(
        _path(SERVICE.methods_by_name["Produce"]),
        request_serializer=pb.ProduceRequest.SerializeToString,
        response_deserializer=pb.ProduceResponse.FromString,
    )
    request = pb.ProduceRequest(
        acks=-1,
        topics=[
            pb.ProduceTopicData(
                topic=topic, partitions=[pb.ProducePartitionData(partition=0, records=data)]
            )
        ],
    )
    try:
        response = stub_call(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code(), 0  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, response.topics[0].partitions[0].error.code


@FUZZ_SETTINGS
@given(case=broken_batches())
def test_broken_record_batches(channel: grpc.Channel, case: tuple[str, bytes]) -> None:
    """Header and CRC damage is always refused. A batch whose CRC is valid around garbage
    records is a decision: the broker validates header and CRC only (records are not
    parsed on the hot path: walking record lengths costs ~90x the CRC pass on a 1 MiB
    batch of small records), so it may store such a batch as the producer framed it; the
    batch then reads back byte for byte and a consumer's decoder rejects it with
    CorruptRecordError naming the offset."""
    kind, data = case
    CASES[f"batch:{kind}"] += 1
    topic = OPAQUE_TOPIC if kind in OPAQUE_KINDS else BATCH_TOPIC
    code, partition_code = _produce_status(channel, topic, data)
    _check(code, f"{kind}: {data!r}")
    if code != grpc.StatusCode.OK or partition_code != 0:
        assert code == grpc.StatusCode.OK or code == grpc.StatusCode.INVALID_ARGUMENT, code
        assert partition_code in (0, grpc.StatusCode.INVALID_ARGUMENT.value[0]), partition_code
        return
    if kind not in OPAQUE_KINDS:
        rb.decode_all(data)  # accepted: it must be a batch a consumer can decode


def _check_opaque(stub: object) -> None:
    """Every batch stored in OPAQUE_TOPIC passes its CRC (read_log checks that) and either
    decodes or fails with CorruptRecordError, never another exception."""
    start, end = offsets(stub, OPAQUE_TOPIC)  # type: ignore[arg-type]
    offset = start
    for _ in range(end - start + 1):
        if offset >= end:
            break
        data = fetch_once(stub, OPAQUE_TOPIC, 0, offset).records  # type: ignore[arg-type]
        for pos, header in rb.iter_batches(data):
            rb.validate_batch(data, pos)
            with contextlib.suppress(CorruptRecordError):
                rb.decode_batch(data, pos)
            offset = header.next_offset
    assert offset == end


def _bomb(codec: int) -> bytes:
    """A records section of a few hundred KiB at most that inflates past the 64 MiB cap."""
    if codec == fmt.CODEC_SNAPPY:
        # snappy inflates at most about 21x, so under max.message.bytes it cannot pass the
        # cap by inflating; it can claim to, in the length every raw block starts with
        return bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + b"\x00" * 64
    return compression.compress(codec, bytes(80 * 1024 * 1024))


@pytest.mark.parametrize("codec", KAFKA_CODECS, ids=[fmt.CODEC_NAMES[c] for c in KAFKA_CODECS])
def test_compression_bomb_is_stored_not_inflated(fuzz_broker: BrokerProcess, codec: int) -> None:
    """The broker never decompresses produced batches (header + CRC only), so a batch that
    inflates past 64 MiB costs it nothing; the client's decoder refuses to inflate it past
    its cap."""
    batch = _with_records(_bomb(codec), 1, codec=codec)
    assert len(batch) < 512 * 1024
    topic = f"bomb-{fmt.CODEC_NAMES[codec]}"
    with connect(fuzz_broker.address) as stub:
        create_topic(stub, topic)
        rss_before = rss_kib(fuzz_broker.proc.pid)
        result = produce(stub, topic, batch)
        assert result.error.code == 0
        fetched = stub.Fetch(
            pb.FetchRequest(
                topics=[
                    pb.FetchTopic(
                        topic=topic, partitions=[pb.FetchPartition(partition=0, fetch_offset=0)]
                    )
                ]
            ),
            timeout=CALL_TIMEOUT_S,
        )
        assert fetched.topics[0].partitions[0].records == batch
        assert rss_kib(fuzz_broker.proc.pid) - rss_before < 64 * 1024
    with pytest.raises(rb.CorruptRecordError, match="compression bomb"):
        rb.decode_all(batch)
    CASES[f"bomb:{fmt.CODEC_NAMES[codec]}"] += 1

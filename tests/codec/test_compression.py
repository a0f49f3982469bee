"""Tests for `logstore.codec.compression`: Kafka's four codecs against real clients.

Peers (tests/codec/kafka_peers.py): librdkafka for all four codecs in both directions (its
own C codecs, through confluent-kafka's mock cluster), aiokafka for all four in both
directions, kafka-python for gzip and zstd in both directions.
"""

from __future__ import annotations

import gzip
import io
import random
import struct
import zlib

import aiokafka.codec
import cramjam
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.codec import compression
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import CorruptRecordError, UnsupportedCompressionError
from tests.codec import kafka_peers as peers

CODECS = (fmt.CODEC_GZIP, fmt.CODEC_SNAPPY, fmt.CODEC_LZ4, fmt.CODEC_ZSTD)
CODEC_IDS = [fmt.CODEC_NAMES[c] for c in CODECS]
TS = 1_700_000_000_000
MIB = 1024 * 1024

# --- strategies ----------------------------------------------------------------------------

keys = st.one_of(st.none(), st.binary(max_size=30))
values = st.one_of(
    st.none(),
    st.binary(max_size=200),
    # runs long enough to cross snappy's 32 KiB and lz4's 64 KiB blocks
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=40), st.integers(1, 4_000)),
)
header_lists = st.lists(
    st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)), max_size=3
)
#: in every generated batch: something each codec shrinks, so the third-party builders
#: (which send a batch uncompressed when compression does not help) do compress
COMPRESSIBLE: rb.RecordInput = (b"compressible", b"abc" * 400, [("h", b"v")], TS)


@st.composite
def record_lists(draw: st.DrawFn) -> list[rb.RecordInput]:
    """1-21 records with resolved timestamps, one of them `COMPRESSIBLE`."""
    records: list[rb.RecordInput] = [
        (draw(keys), draw(values), draw(header_lists), TS + draw(st.integers(-5_000, 5_000)))
        for _ in range(draw(st.integers(0, 20)))
    ]
    records.insert(draw(st.integers(0, len(records))), COMPRESSIBLE)
    return records


payloads = st.one_of(
    st.binary(max_size=500),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=60), st.integers(1, 6_000)),
    st.builds(
        lambda seed, n: random.Random(seed).randbytes(n), st.integers(), st.integers(0, 150_000)
    ),
)


def section(size: int, seed: int = 1) -> bytes:
    """`size` bytes that compress about as well as text records do."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 8)).hex().encode() for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def xxh32(data: bytes, seed: int = 0) -> int:
    """XXH32, for LZ4 frame header checksums in hand-built frames (spec, not speed)."""
    p1, p2, p3, p4, p5 = 2654435761, 2246822519, 3266489917, 668265263, 374761393
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    def lane(acc: int, word: int) -> int:
        return (rotl((acc + word * p2) & mask, 13) * p1) & mask

    pos, n = 0, len(data)
    if n >= 16:
        v = [(seed + p1 + p2) & mask, (seed + p2) & mask, seed, (seed - p1) & mask]
        while pos + 16 <= n:
            words = struct.unpack_from("<4I", data, pos)
            v = [lane(a, w) for a, w in zip(v, words, strict=True)]
            pos += 16
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & mask
    else:
        h = (seed + p5) & mask
    h = (h + n) & mask
    while pos + 4 <= n:
        h = (rotl((h + struct.unpack_from("<I", data, pos)[0] * p3) & mask, 17) * p4) & mask
        pos += 4
    while pos < n:
        h = (rotl((h + data[pos] * p5) & mask, 11) * p1) & mask
        pos += 1
    h = ((h ^ (h >> 15)) * p2) & mask
    h = ((h ^ (h >> 13)) * p3) & mask
    return h ^ (h >> 16)


def lz4_frame(flg: int, blocks: list[bytes], content_size: int | None = None) -> bytes:
    """A hand-built LZ4 frame (BD 64 KiB) around raw lz4 blocks, with a correct header
    checksum; `content_size` sets the content-size field and flag."""
    descriptor = bytes([flg | (0x08 if content_size is not None else 0), 0x40])
    if content_size is not None:
        descriptor += struct.pack("<Q", content_size)
    out = b"\x04\x22\x4d\x18" + descriptor + bytes([(xxh32(descriptor) >> 8) & 0xFF])
    for block in blocks:
        out += struct.pack("<I", len(block)) + block
    return out + b"\x00\x00\x00\x00"


def lz4_block(data: bytes) -> bytes:
    return bytes(cramjam.lz4.compress_block(data, store_size=False))


# --- 1. round trips ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(data=payloads)
@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_round_trip_and_exact_cap(codec: int, data: bytes) -> None:
    """Whatever goes in comes out; a cap of exactly its length passes, one byte less is a
    compression bomb."""
    stored = compression.compress(codec, data)
    assert bytes(compression.decompress(codec, stored, len(data))) == data
    if data:
        with pytest.raises(CorruptRecordError, match=f"{fmt.CODEC_NAMES[codec]}.*bomb guard"):
            compression.decompress(codec, stored, len(data) - 1)


@settings(max_examples=40, deadline=None)
@given(records=record_lists())
@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_our_batches_decode_with_ours_and_third_party_readers(
    codec: int, records: list[rb.RecordInput]
) -> None:
    data = rb.encode_batch(records, codec=codec)
    assert rb.read_header(data).codec == codec
    expected = peers.peer_records(records)
    assert peers.our_records(data) == expected
    assert peers.aiokafka_read(data) == expected
    if codec in peers.KAFKA_PYTHON_CODECS:
        assert peers.kafka_python_read(data) == expected


@settings(max_examples=40, deadline=None)
@given(records=record_lists())
@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_third_party_built_batches_decode(codec: int, records: list[rb.RecordInput]) -> None:
    builders = [peers.aiokafka_batch]
    if codec in peers.KAFKA_PYTHON_CODECS:
        builders.append(peers.kafka_python_batch)
    for build in builders:
        data = build(codec, records)
        assert rb.validate_batch(data).codec == codec, build
        assert peers.our_records(data) == peers.peer_records(records), build


# --- 2. librdkafka -------------------------------------------------------------------------

#: null keys and values, null and empty header values, and values long enough for
#: several snappy and lz4 blocks
LIBRDKAFKA_RECORDS: list[rb.RecordInput] = [
    (
        None if i % 7 == 0 else b"key-%d" % i,
        None if i % 11 == 0 else (b"value %d " % i) * (1 + i % 40),
        [("trace", b"t-%d" % i), ("null", None), ("empty", b"")] if i % 3 else [],
        TS + i,
    )
    for i in range(300)
] + [
    (b"big", section(300_000), [], TS + 300),
    (b"noise", random.Random(7).randbytes(70_000), [], TS),
]


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_librdkafka_batches_decode(codec: int) -> None:
    data = peers.librdkafka_produce(fmt.CODEC_NAMES[codec], LIBRDKAFKA_RECORDS)
    codecs = {header.codec for _, header in rb.iter_batches(data)}
    # librdkafka sends a batch uncompressed when compressing would not shrink it: the
    # random "noise" record, when timing puts it in a batch of its own.
    assert codec in codecs and codecs <= {codec, fmt.CODEC_NONE}
    assert peers.our_records(data) == peers.peer_records(LIBRDKAFKA_RECORDS)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_librdkafka_reads_our_batches(codec: int) -> None:
    ours = rb.encode_batch(LIBRDKAFKA_RECORDS, codec=codec)
    consumed, stored = peers.librdkafka_consume(ours)
    # the mock broker kept our bytes; like any broker it stamps the base offset and the
    # partition leader epoch, which come before the magic byte
    assert stored[fmt.MAGIC_OFFSET :] == ours[fmt.MAGIC_OFFSET :]
    assert consumed == peers.peer_records(LIBRDKAFKA_RECORDS)


def _payloads(data: bytes) -> list[bytes]:
    return [data[pos + fmt.RECORDS_OFFSET : pos + h.size] for pos, h in rb.iter_batches(data)]


def test_librdkafka_sends_raw_snappy_and_our_lz4_frame_header() -> None:
    """What the decoder must accept and the encoder match, as librdkafka 2.x does it."""
    records = LIBRDKAFKA_RECORDS[:50]
    # Usually one batch; on a loaded machine librdkafka may send the records as several.
    snappy = _payloads(peers.librdkafka_produce("snappy", records))
    assert snappy and not any(p.startswith(b"\x82SNAPPY\x00") for p in snappy)  # raw blocks
    lz4 = _payloads(peers.librdkafka_produce("lz4", records))
    header = compression.compress(fmt.CODEC_LZ4, b"x")[:7]
    assert lz4 and header == b"\x04\x22\x4d\x18\x60\x40\x82"
    assert all(p[:7] == header for p in lz4)


# --- 3. the forms we write -----------------------------------------------------------------


def test_gzip_written_is_one_gzip_member() -> None:
    data = section(200_000)
    stored = compression.compress(fmt.CODEC_GZIP, data)
    assert stored[:3] == b"\x1f\x8b\x08"
    assert gzip.decompress(stored) == data
    assert aiokafka.codec.gzip_decode(stored) == data


def test_snappy_written_is_xerial_framed_in_32k_blocks() -> None:
    data = section(200_000)
    stored = compression.compress(fmt.CODEC_SNAPPY, data)
    assert stored[:16] == b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    pos, inflated = 16, []
    while pos < len(stored):
        (length,) = struct.unpack_from(">i", stored, pos)
        block = stored[pos + 4 : pos + 4 + length]
        inflated.append(bytes(cramjam.snappy.decompress_raw(block)))
        pos += 4 + length
    assert pos == len(stored)
    assert [len(b) for b in inflated] == [32 * 1024] * 6 + [200_000 - 6 * 32 * 1024]
    assert b"".join(inflated) == data
    assert aiokafka.codec.snappy_decode(stored) == data


def test_lz4_written_is_kafkas_frame_with_stored_blocks_for_noise() -> None:
    text, noise = section(100_000), random.Random(3).randbytes(70_000)
    stored = compression.compress(fmt.CODEC_LZ4, text + noise)
    assert stored[:7] == b"\x04\x22\x4d\x18\x60\x40\x82" and stored[-4:] == b"\x00" * 4
    words, pos = [], 7
    while (word := struct.unpack_from("<I", stored, pos)[0]) != 0:
        words.append(word)
        pos += 4 + (word & 0x7FFFFFFF)
    assert pos + 4 == len(stored)
    sizes = [w & 0x7FFFFFFF for w in words]
    assert all(size <= 64 * 1024 for size in sizes)
    assert words[-1] & 0x80000000  # the noise's last block did not shrink: stored as is
    assert not words[0] & 0x80000000
    assert bytes(cramjam.lz4.decompress(stored)) == text + noise
    assert aiokafka.codec.lz4_decode(stored) == text + noise


def test_zstd_written_is_one_frame() -> None:
    data = section(200_000)
    stored = compression.compress(fmt.CODEC_ZSTD, data)
    assert stored[:4] == b"\x28\xb5\x2f\xfd"
    assert zstandard.ZstdDecompressor().decompress(stored) == data


# --- 4. the forms we read ------------------------------------------------------------------

TEXT = section(150_000, seed=5)


def _xerial(data: bytes, header: bytes) -> bytes:
    blocks = [
        bytes(cramjam.snappy.compress_raw(data[i : i + 20_000]))
        for i in range(0, len(data), 20_000)
    ]
    return header + b"".join(struct.pack(">i", len(b)) + b for b in blocks)


def _gzip_member(data: bytes, **kwargs: object) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", **kwargs) as gz:  # type: ignore[arg-type]
        gz.write(data)
    return out.getvalue()


def _lz4_with_content_checksum(data: bytes) -> bytes:
    compressor = cramjam.lz4.Compressor(content_checksum=True, block_linked=False)
    compressor.compress(data)
    return bytes(compressor.finish())


def _skippable_zstd_frame(payload: bytes) -> bytes:
    return struct.pack("<II", 0x184D2A53, len(payload)) + payload


READABLE = [
    pytest.param(
        fmt.CODEC_GZIP,
        _gzip_member(TEXT[:70_000]) + _gzip_member(TEXT[70_000:]),
        id="gzip two members",
    ),
    pytest.param(
        fmt.CODEC_GZIP, _gzip_member(TEXT, filename="records", mtime=7), id="gzip named member"
    ),
    pytest.param(fmt.CODEC_SNAPPY, bytes(cramjam.snappy.compress_raw(TEXT)), id="snappy raw block"),
    pytest.param(
        fmt.CODEC_SNAPPY,
        _xerial(TEXT, b"\x82SNAPPY\x00" + struct.pack("<ii", 1, 1)),
        id="snappy xerial with little-endian version fields",
    ),
    pytest.param(fmt.CODEC_LZ4, aiokafka.codec.lz4_encode(TEXT), id="lz4 block checksums"),
    pytest.param(fmt.CODEC_LZ4, _lz4_with_content_checksum(TEXT), id="lz4 content checksum"),
    pytest.param(
        fmt.CODEC_LZ4,
        lz4_frame(0x60, [lz4_block(TEXT[:65_536]), lz4_block(TEXT[65_536:131_072])])
        + lz4_frame(0x60, [lz4_block(TEXT[131_072:])]),
        id="lz4 two frames",
    ),
    pytest.param(
        fmt.CODEC_ZSTD,
        _skippable_zstd_frame(b"meta") + zstandard.ZstdCompressor().compress(TEXT),
        id="zstd skippable frame first",
    ),
    pytest.param(
        fmt.CODEC_ZSTD,
        zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(TEXT),
        id="zstd checksum, no content size",
    ),
]


@pytest.mark.parametrize(("codec", "stored"), READABLE)
def test_reads_every_form_kafka_clients_send(codec: int, stored: bytes) -> None:
    assert bytes(compression.decompress(codec, stored, len(TEXT))) == TEXT


def test_lz4_content_size_is_read() -> None:
    data = TEXT[:50_000]
    stored = lz4_frame(0x60, [lz4_block(data)], content_size=len(data))
    assert bytes(compression.decompress(fmt.CODEC_LZ4, stored, len(data))) == data
    lying = lz4_frame(0x60, [lz4_block(data)], content_size=len(data) + 1)
    with pytest.raises(CorruptRecordError, match="lz4"):
        compression.decompress(fmt.CODEC_LZ4, lying, fmt.MAX_DECOMPRESSED_BYTES)


def test_xxh32_matches_the_spec_and_kafkas_lz4_header() -> None:
    assert xxh32(b"") == 0x02CC5D05
    for data in (b"abc", b"a" * 40, TEXT[:1_000]):  # 40 and more take the four-lane path
        # the lz4 library's own xxh32: the content checksum ending a frame
        frame = _lz4_with_content_checksum(data)
        assert xxh32(data) == struct.unpack("<I", frame[-4:])[0]
    # the header checksum of FLG 0x60, BD 0x40: the byte librdkafka and Java write
    assert (xxh32(b"\x60\x40") >> 8) & 0xFF == 0x82


def test_empty_xerial_stream_is_an_empty_section() -> None:
    header = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    assert bytes(compression.decompress(fmt.CODEC_SNAPPY, header, 10)) == b""


# --- 5. forms refused, each naming its codec -------------------------------------------------

_GOOD = {codec: compression.compress(codec, TEXT) for codec in CODECS}
_LZ4_HEADER = b"\x04\x22\x4d\x18\x60\x40\x82"

REFUSED = [
    pytest.param(fmt.CODEC_GZIP, b"", "cut short", id="gzip empty"),
    pytest.param(fmt.CODEC_GZIP, _GOOD[fmt.CODEC_GZIP][:-9], "cut short", id="gzip truncated"),
    pytest.param(
        fmt.CODEC_GZIP, _GOOD[fmt.CODEC_GZIP] + b"junk", "header", id="gzip trailing junk"
    ),
    pytest.param(fmt.CODEC_GZIP, zlib.compress(TEXT), "header", id="gzip zlib stream"),
    pytest.param(fmt.CODEC_SNAPPY, b"", "snappy", id="snappy empty"),
    pytest.param(fmt.CODEC_SNAPPY, b"\xff" * 12, "snappy", id="snappy bad length varint"),
    pytest.param(
        fmt.CODEC_SNAPPY, _GOOD[fmt.CODEC_SNAPPY][:-1], "runs past", id="snappy xerial truncated"
    ),
    pytest.param(
        fmt.CODEC_SNAPPY,
        _GOOD[fmt.CODEC_SNAPPY][:12],
        "header is cut short",
        id="snappy xerial header cut",
    ),
    pytest.param(
        fmt.CODEC_SNAPPY,
        _GOOD[fmt.CODEC_SNAPPY][:16] + struct.pack(">i", -5) + b"x" * 10,
        "runs past",
        id="snappy xerial negative length",
    ),
    pytest.param(
        fmt.CODEC_SNAPPY,
        bytes(cramjam.snappy.compress_raw(TEXT))[:-3],
        "snappy",
        id="snappy raw truncated",
    ),
    pytest.param(fmt.CODEC_LZ4, b"", "cut short", id="lz4 empty"),
    pytest.param(fmt.CODEC_LZ4, b"\x00" * 20, "magic", id="lz4 no magic"),
    pytest.param(fmt.CODEC_LZ4, _GOOD[fmt.CODEC_LZ4][:-4], "cut short", id="lz4 no end mark"),
    pytest.param(
        fmt.CODEC_LZ4, _GOOD[fmt.CODEC_LZ4] + b"\x01", "cut short", id="lz4 trailing byte"
    ),
    pytest.param(
        fmt.CODEC_LZ4, bytes(cramjam.lz4.compress(TEXT)), "dependent", id="lz4 dependent blocks"
    ),
    pytest.param(fmt.CODEC_LZ4, lz4_frame(0xA0, [lz4_block(b"abc")]), "v1", id="lz4 version 2"),
    pytest.param(fmt.CODEC_LZ4, lz4_frame(0x61, [lz4_block(b"abc")]), "v1", id="lz4 dictionary id"),
    pytest.param(
        fmt.CODEC_LZ4,
        _LZ4_HEADER[:6] + b"\x00" + _GOOD[fmt.CODEC_LZ4][7:],
        "lz4",
        id="lz4 wrong header checksum",
    ),
    pytest.param(
        fmt.CODEC_LZ4,
        _LZ4_HEADER + struct.pack("<I", 70_000) + b"\x00" * 70_000 + b"\x00" * 4,
        "exceeds",
        id="lz4 block above the frame's maximum",
    ),
    pytest.param(
        fmt.CODEC_LZ4,
        lz4_frame(0x60, [lz4_block(TEXT[:200])])[:-4]
        + struct.pack("<I", 5)
        + b"\xff" * 5
        + b"\x00" * 4,
        "lz4",
        id="lz4 damaged block",
    ),
    pytest.param(fmt.CODEC_ZSTD, b"", "cut short", id="zstd empty"),
    pytest.param(fmt.CODEC_ZSTD, _GOOD[fmt.CODEC_ZSTD][:-1], "zstd", id="zstd truncated by a byte"),
    pytest.param(
        fmt.CODEC_ZSTD, _GOOD[fmt.CODEC_ZSTD][:9], "cut short", id="zstd frame header only"
    ),
    pytest.param(fmt.CODEC_ZSTD, _GOOD[fmt.CODEC_ZSTD] + b"junk", "zstd", id="zstd trailing junk"),
    pytest.param(fmt.CODEC_ZSTD, b"definitely not zstd", "magic", id="zstd no magic"),
]


@pytest.mark.parametrize(("codec", "stored", "message"), REFUSED)
def test_damaged_data_raises_corrupt_naming_the_codec(
    codec: int, stored: bytes, message: str
) -> None:
    name = fmt.CODEC_NAMES[codec]
    with pytest.raises(CorruptRecordError, match=f"{name}-compressed") as info:
        compression.decompress(codec, stored, fmt.MAX_DECOMPRESSED_BYTES)
    assert message in str(info.value)


@settings(max_examples=150, deadline=None)
@given(garbage=st.binary(max_size=400), cap=st.sampled_from([0, 100, MIB]))
@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_garbage_inflates_within_the_cap_or_raises_corrupt(
    codec: int, garbage: bytes, cap: int
) -> None:
    try:
        out = compression.decompress(codec, garbage, cap)
    except CorruptRecordError as exc:
        assert f"{fmt.CODEC_NAMES[codec]}-compressed" in str(exc)
        return
    assert len(out) <= cap


@settings(max_examples=150, deadline=None)
@given(
    flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), max_size=4),
    keep=st.floats(0, 1),
    extra=st.binary(max_size=8),
)
@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_damaged_payload_inflates_within_the_cap_or_raises_corrupt(
    codec: int, flips: list[tuple[int, int]], keep: float, extra: bytes
) -> None:
    stored = bytearray(compression.compress(codec, TEXT[:20_000]))
    for position, mask in flips:
        stored[position % len(stored)] ^= mask
    damaged = bytes(stored[: int(len(stored) * keep)]) + extra
    try:
        out = compression.decompress(codec, damaged, 30_000)
    except CorruptRecordError as exc:
        assert f"{fmt.CODEC_NAMES[codec]}-compressed" in str(exc)
        return
    assert len(out) <= 30_000


# --- 6. the compression bomb guard ---------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_bomb_past_the_default_cap_is_refused(codec: int) -> None:
    """Zeros just past 64 MiB: a few hundred KiB compressed for most codecs."""
    zeros = bytes(fmt.MAX_DECOMPRESSED_BYTES + MIB)
    stored = compression.compress(codec, zeros)
    del zeros
    with pytest.raises(CorruptRecordError, match="compression bomb guard"):
        compression.decompress(codec, stored, fmt.MAX_DECOMPRESSED_BYTES)


def test_snappy_states_its_size_so_a_lie_costs_nothing() -> None:
    """A raw block, or xerial blocks together, claiming more than the cap are refused
    from their length headers, before any memory is set aside for them."""
    claim = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F])  # varint 2**32 - 1
    with pytest.raises(CorruptRecordError, match="bomb guard"):
        compression.decompress(fmt.CODEC_SNAPPY, claim + b"\x00" * 8, fmt.MAX_DECOMPRESSED_BYTES)
    stored = compression.compress(fmt.CODEC_SNAPPY, TEXT)  # 5 blocks, 150,000 bytes
    with pytest.raises(CorruptRecordError, match="bomb guard"):
        compression.decompress(fmt.CODEC_SNAPPY, stored, len(TEXT) - 1)


@pytest.mark.parametrize(
    "cap",
    [
        pytest.param(len(TEXT), id="bound over the cap: blocks counted first"),
        pytest.param(3 * 64 * 1024, id="bound within the cap: inflated at once"),
    ],
)
def test_lz4_cap_is_exact_whichever_path(cap: int) -> None:
    """150,000 bytes in three 64 KiB blocks bound the output at 196,608 bytes."""
    stored = compression.compress(fmt.CODEC_LZ4, TEXT)
    assert bytes(compression.decompress(fmt.CODEC_LZ4, stored, cap)) == TEXT
    with pytest.raises(CorruptRecordError, match=r"lz4.*bomb guard"):
        compression.decompress(fmt.CODEC_LZ4, stored, len(TEXT) - 1)


def test_gzip_cap_counts_every_member() -> None:
    stored = _gzip_member(TEXT[:100_000]) + _gzip_member(TEXT[100_000:])
    assert compression.decompress(fmt.CODEC_GZIP, stored, len(TEXT)) == TEXT
    with pytest.raises(CorruptRecordError, match=r"gzip.*bomb guard"):
        compression.decompress(fmt.CODEC_GZIP, stored, 120_000)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_decode_batch_applies_the_cap(codec: int) -> None:
    records: list[rb.RecordInput] = [(None, bytes(500), None, TS)] * 10
    data = rb.encode_batch(records, codec=codec)
    inflated = len(rb.encode_records(records, TS))
    assert len(rb.decode_batch(data, max_decompressed_bytes=inflated).records) == 10
    with pytest.raises(CorruptRecordError, match="bomb"):
        rb.decode_batch(data, max_decompressed_bytes=inflated - 1)


# --- 7. codecs Kafka does not define ------------------------------------------------------


@pytest.mark.parametrize("codec", [5, 6, 7])
def test_undefined_codecs_are_unsupported(codec: int) -> None:
    with pytest.raises(UnsupportedCompressionError, match=str(codec)):
        compression.compress(codec, b"x")
    with pytest.raises(UnsupportedCompressionError, match=str(codec)):
        compression.decompress(codec, b"x", 10)


def test_none_is_the_data_itself() -> None:
    assert compression.compress(fmt.CODEC_NONE, b"abc") == b"abc"
    assert compression.decompress(fmt.CODEC_NONE, memoryview(b"abc"), 10) == b"abc"

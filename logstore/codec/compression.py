"""Kafka's record batch codecs: gzip (1), snappy (2), lz4 (3) and zstd (4).

A compressed batch holds its whole records section compressed once, in the form its
producer's client writes. This module reads every form Kafka's clients send and writes
the form every one of them reads:

- gzip: read, a gzip stream (RFC 1952), one member or several in a row; written, one
  member at level 6 (Kafka's and librdkafka's default).
- snappy: read, snappy-java's block stream (the Java client, kafka-python, aiokafka:
  magic b"\\x82SNAPPY\\x00", version and compat int32s, then blocks of a big-endian int32
  length and raw snappy) or one raw snappy block (librdkafka); written, snappy-java's
  stream in 32 KiB blocks, snappy-java's default and so the Java client's.
- lz4: read, LZ4 frames as KIP-57 defines them (independent blocks; content size, block
  and content checksums optional); written, one frame laid out as the Java client and
  librdkafka write it (64 KiB blocks, no checksums but the header's, fast compressor).
- zstd: read, zstd frames (skippable ones allowed); written, one frame at level 3.

Invariants of `decompress`:
- it never returns more than `max_bytes` bytes, and learns that a payload would inflate
  beyond them having inflated at most `max_bytes` and one block more: such a payload
  raises CorruptRecordError saying "compression bomb guard";
- damaged or truncated compressed data raises CorruptRecordError naming the codec, never
  another exception type. The batch's CRC-32C has vouched for the bytes by then: this is
  about producers that compress wrongly, by mistake or on purpose.

On produce the broker stores compressed batches as they came, without calling this,
except on compacted topics, whose records it decodes to refuse keyless ones.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Final

import cramjam
import zstandard

from logstore.codec import format as fmt
from logstore.errors import CorruptRecordError, UnsupportedCompressionError

#: a records section as compressed or inflated: any contiguous buffer of bytes
Buffer = bytes | bytearray | memoryview

#: zlib's window bits for a gzip stream (16 + the 32 KiB window): a gzip header and
#: trailer around the deflate data
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
#: Kafka's default gzip level (java.util.zip.Deflater's default), librdkafka's too
_GZIP_LEVEL: Final = 6
#: Kafka's default zstd level
_ZSTD_LEVEL: Final = 3

#: snappy-java's stream header: marker byte, "SNAPPY", NUL, then version and compat
_XERIAL_MAGIC: Final = b"\x82SNAPPY\x00"
_XERIAL_HEADER: Final = _XERIAL_MAGIC + struct.pack(">ii", 1, 1)
#: uncompressed bytes per xerial block: snappy-java's default, which Kafka keeps
_XERIAL_BLOCK_BYTES: Final = 32 * 1024
_XERIAL_LENGTH: Final = struct.Struct(">i")

_LZ4_MAGIC: Final = b"\x04\x22\x4d\x18"
#: FLG 0x60 (version 1, independent blocks, no checksums, no content size) and BD 0x40
#: (64 KiB blocks), then the header checksum: (xxh32(FLG, BD) >> 8) & 0xFF, constant for
#: this descriptor; byte for byte the header of the Java client and of librdkafka
_LZ4_FRAME_HEADER: Final = _LZ4_MAGIC + b"\x60\x40\x82"
_LZ4_BLOCK_BYTES: Final = 64 * 1024
#: LZ4 block size words and zstd magics are little-endian
_UINT32_LE: Final = struct.Struct("<I")
#: high bit of a block's size word: the block is stored, not compressed
_LZ4_STORED: Final = 0x80000000
_LZ4_END_MARK: Final = b"\x00\x00\x00\x00"
# frame descriptor bits (FLG), as in the LZ4 frame format spec
_LZ4_VERSION_1: Final = 0x40
_LZ4_INDEPENDENT: Final = 0x20
_LZ4_BLOCK_CHECKSUM: Final = 0x10
_LZ4_CONTENT_SIZE: Final = 0x08
_LZ4_CONTENT_CHECKSUM: Final = 0x04
#: FLG's reserved bit and dictionary-id bit, which Kafka's reader refuses
_LZ4_FLG_UNSUPPORTED: Final = 0x03

# zstd frames (RFC 8878), read as little-endian uint32 magics
_ZSTD_MAGIC: Final = 0xFD2FB528
_ZSTD_SKIPPABLE_MAGIC: Final = 0x184D2A50
_ZSTD_SKIPPABLE_MASK: Final = 0xFFFFFFF0
_ZSTD_RLE_BLOCK: Final = 1
_ZSTD_CONTENT_CHECKSUM: Final = 0x04


def _name(codec: int) -> str:
    return fmt.CODEC_NAMES.get(codec, str(codec))


def _corrupt(codec: int, detail: object) -> CorruptRecordError:
    return CorruptRecordError(f"{_name(codec)}-compressed records do not decompress: {detail}")


def _bomb(codec: int, max_bytes: int) -> CorruptRecordError:
    return CorruptRecordError(
        f"{_name(codec)}-compressed records inflate beyond {max_bytes} bytes "
        "(compression bomb guard)"
    )


# --- compression ---------------------------------------------------------------------------


def _gzip(data: Buffer) -> bytes:
    return zlib.compress(data, _GZIP_LEVEL, wbits=_GZIP_WBITS)


def _snappy_xerial(data: Buffer) -> bytes:
    """snappy-java's block stream: what the Java client writes and every client reads
    (librdkafka, kafka-python, aiokafka, kafkajs and Java itself)."""
    view = memoryview(data)
    parts = [_XERIAL_HEADER]
    for start in range(0, len(view), _XERIAL_BLOCK_BYTES):
        block = cramjam.snappy.compress_raw(view[start : start + _XERIAL_BLOCK_BYTES])
        parts.append(_XERIAL_LENGTH.pack(len(block)))
        parts.append(bytes(block))
    return b"".join(parts)


def _lz4_frame(data: Buffer) -> bytes:
    """One LZ4 frame laid out as Kafka's Java client writes it (`_LZ4_FRAME_HEADER`): a
    block that does not shrink is stored as it is."""
    view = memoryview(data)
    parts = [_LZ4_FRAME_HEADER]
    for start in range(0, len(view), _LZ4_BLOCK_BYTES):
        chunk = view[start : start + _LZ4_BLOCK_BYTES]
        block = cramjam.lz4.compress_block(chunk, store_size=False)
        if len(block) < len(chunk):
            parts.append(_UINT32_LE.pack(len(block)))
            parts.append(bytes(block))
        else:
            parts.append(_UINT32_LE.pack(len(chunk) | _LZ4_STORED))
            parts.append(bytes(chunk))
    parts.append(_LZ4_END_MARK)
    return b"".join(parts)


def _zstd(data: Buffer) -> bytes:
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)


_COMPRESSORS: Final[dict[int, Callable[[Buffer], bytes]]] = {
    fmt.CODEC_GZIP: _gzip,
    fmt.CODEC_SNAPPY: _snappy_xerial,
    fmt.CODEC_LZ4: _lz4_frame,
    fmt.CODEC_ZSTD: _zstd,
}


def compress(codec: int, data: Buffer) -> bytes:
    """`data` (a records section) compressed with `codec`; unchanged for none.

    Raises UnsupportedCompressionError for a codec Kafka does not define (5-7)."""
    if codec == fmt.CODEC_NONE:
        return bytes(data)
    compressor = _COMPRESSORS.get(codec)
    if compressor is None:
        raise UnsupportedCompressionError(
            f"compression codec {_name(codec)} is not supported: "
            "use none, gzip, snappy, lz4 or zstd"
        )
    return compressor(data)


# --- decompression -------------------------------------------------------------------------


def _gunzip(data: Buffer, max_bytes: int) -> bytes:
    """Every gzip member in `data`, inflated, at most `max_bytes` in all."""
    out: list[bytes] = []
    total = 0
    rest: Buffer = data
    while True:
        inflater = zlib.decompressobj(_GZIP_WBITS)
        try:
            # at most one byte past the cap: if it comes, the batch inflates beyond it
            chunk = inflater.decompress(rest, max_bytes + 1 - total)
        except zlib.error as exc:
            raise _corrupt(fmt.CODEC_GZIP, exc) from exc
        total += len(chunk)
        if total > max_bytes:
            raise _bomb(fmt.CODEC_GZIP, max_bytes)
        out.append(chunk)
        if not inflater.eof:
            raise _corrupt(fmt.CODEC_GZIP, "the stream is cut short")
        rest = inflater.unused_data
        if not rest:  # a member's trailer ended the data exactly
            return out[0] if len(out) == 1 else b"".join(out)


def _xerial_blocks(view: memoryview) -> list[memoryview]:
    """The raw snappy blocks of a snappy-java stream (`view` starts with its magic).

    The version and compat fields are not checked: some producers write them
    little-endian, and Kafka's readers ignore them too."""
    if len(view) < len(_XERIAL_HEADER):
        raise _corrupt(fmt.CODEC_SNAPPY, "the xerial stream header is cut short")
    blocks = []
    pos = len(_XERIAL_HEADER)
    while pos < len(view):
        if len(view) - pos < _XERIAL_LENGTH.size:
            raise _corrupt(fmt.CODEC_SNAPPY, f"xerial block length at byte {pos} is cut short")
        (length,) = _XERIAL_LENGTH.unpack_from(view, pos)
        pos += _XERIAL_LENGTH.size
        if length < 0 or length > len(view) - pos:
            raise _corrupt(
                fmt.CODEC_SNAPPY,
                f"xerial block of {length} bytes at byte {pos} runs past the end of the data",
            )
        blocks.append(view[pos : pos + length])
        pos += length
    return blocks


def _unsnappy(data: Buffer, max_bytes: int) -> bytes | bytearray:
    """A snappy-java stream or one raw snappy block, inflated. Every raw block states its
    inflated length first, so the cap is checked before anything is inflated."""
    view = memoryview(data)
    blocks = _xerial_blocks(view) if view[: len(_XERIAL_MAGIC)] == _XERIAL_MAGIC else [view]
    try:
        sizes = [cramjam.snappy.decompress_raw_len(block) for block in blocks]
    except cramjam.DecompressionError as exc:
        raise _corrupt(fmt.CODEC_SNAPPY, exc) from exc
    total = sum(sizes)
    if total > max_bytes:
        raise _bomb(fmt.CODEC_SNAPPY, max_bytes)
    out = bytearray(total)
    target = memoryview(out)
    pos = 0
    for block, size in zip(blocks, sizes, strict=True):
        try:
            written = cramjam.snappy.decompress_raw_into(block, target[pos : pos + size])
        except cramjam.DecompressionError as exc:
            raise _corrupt(fmt.CODEC_SNAPPY, exc) from exc
        if written != size:
            raise _corrupt(
                fmt.CODEC_SNAPPY, f"a block states {size} bytes but inflates to {written}"
            )
        pos += size
    return out


class _Lz4Block:
    """One data block of an LZ4 frame: its bytes, whether they are stored as they are,
    and the frame's block maximum (bytes), which its inflated size never exceeds."""

    __slots__ = ("data", "max_size", "stored")

    def __init__(self, data: memoryview, stored: bool, max_size: int) -> None:
        self.data = data
        self.stored = stored
        self.max_size = max_size

    @property
    def inflated_bound(self) -> int:
        return len(self.data) if self.stored else self.max_size


def _lz4_descriptor(view: memoryview, pos: int) -> tuple[int, int, int]:
    """Check the frame header at `pos`; return (FLG, block maximum, header length).

    Refuses what Kafka's reader refuses: another version, dependent blocks, a dictionary
    id, reserved bits set, a block maximum code outside 4-7."""
    if len(view) - pos < 7:
        raise _corrupt(fmt.CODEC_LZ4, f"frame header at byte {pos} is cut short")
    if view[pos : pos + 4] != _LZ4_MAGIC:
        raise _corrupt(fmt.CODEC_LZ4, f"no LZ4 frame magic at byte {pos}")
    flg, bd = view[pos + 4], view[pos + 5]
    if flg & 0xC0 != _LZ4_VERSION_1 or flg & _LZ4_FLG_UNSUPPORTED or bd & 0x8F:
        raise _corrupt(
            fmt.CODEC_LZ4, f"frame descriptor FLG {flg:#04x} BD {bd:#04x} is not LZ4 frame v1"
        )
    if not flg & _LZ4_INDEPENDENT:
        raise _corrupt(fmt.CODEC_LZ4, "dependent blocks: Kafka requires independent ones")
    code = (bd >> 4) & 0x07
    if code < 4:
        raise _corrupt(fmt.CODEC_LZ4, f"block maximum size code {code} is not 4-7")
    header_length = 7 + (8 if flg & _LZ4_CONTENT_SIZE else 0)
    if len(view) - pos < header_length:
        raise _corrupt(fmt.CODEC_LZ4, f"frame header at byte {pos} is cut short")
    return flg, 1 << (2 * code + 8), header_length


def _lz4_blocks(view: memoryview) -> list[_Lz4Block]:
    """The data blocks of the LZ4 frames in `view` (one or more in a row), found by
    walking the frame structure alone; checksums are left to the frame decoder."""
    blocks = []
    pos = 0
    while True:
        flg, max_size, header_length = _lz4_descriptor(view, pos)
        pos += header_length
        block_checksum = 4 if flg & _LZ4_BLOCK_CHECKSUM else 0
        while True:
            if len(view) - pos < _UINT32_LE.size:
                raise _corrupt(fmt.CODEC_LZ4, f"block size at byte {pos} is cut short")
            (word,) = _UINT32_LE.unpack_from(view, pos)
            pos += _UINT32_LE.size
            if word == 0:  # the end mark
                break
            size = word & ~_LZ4_STORED
            if size > max_size or len(view) - pos < size + block_checksum:
                raise _corrupt(
                    fmt.CODEC_LZ4,
                    f"block of {size} bytes at byte {pos} exceeds the frame's {max_size} "
                    "or runs past the end of the data",
                )
            blocks.append(_Lz4Block(view[pos : pos + size], bool(word & _LZ4_STORED), max_size))
            pos += size + block_checksum
        pos += 4 if flg & _LZ4_CONTENT_CHECKSUM else 0
        if pos >= len(view):
            if pos > len(view):
                raise _corrupt(fmt.CODEC_LZ4, "content checksum is cut short")
            return blocks


def _lz4_check_inflated_size(blocks: list[_Lz4Block], max_bytes: int) -> None:
    """Inflate `blocks` one at a time, keeping none of it, until they are found to fit in
    `max_bytes` or not: the exact check where the blocks' bound alone exceeds the cap."""
    scratch = bytearray(max(block.max_size for block in blocks))
    total = 0
    for block in blocks:
        if block.stored:
            total += len(block.data)
        else:
            try:
                total += cramjam.lz4.decompress_block_into(
                    block.data, scratch, output_len=block.max_size
                )
            except cramjam.DecompressionError as exc:
                raise _corrupt(fmt.CODEC_LZ4, exc) from exc
        if total > max_bytes:
            raise _bomb(fmt.CODEC_LZ4, max_bytes)


def _unlz4(data: Buffer, max_bytes: int) -> bytes:
    """LZ4 frames, inflated. A block inflates to at most its frame's block maximum, so
    the frame walk bounds the output before anything is inflated; only a bound beyond
    the cap costs a block-by-block count first."""
    view = memoryview(data)
    blocks = _lz4_blocks(view)
    if sum(block.inflated_bound for block in blocks) > max_bytes:
        _lz4_check_inflated_size(blocks, max_bytes)
    try:
        return bytes(cramjam.lz4.decompress(view))
    except cramjam.DecompressionError as exc:
        raise _corrupt(fmt.CODEC_LZ4, exc) from exc


def _zstd_frame_header_length(descriptor: int) -> int:
    """Bytes of a zstd frame header after the magic, from its descriptor byte (RFC 8878
    3.1.1.1): the descriptor, window descriptor, dictionary id and content size."""
    single_segment = descriptor & 0x20
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    return 1 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 0x03] + content_size_bytes


def _zstd_check_frames(view: memoryview) -> None:
    """Check that `view` is whole zstd frames (skippable ones allowed) and nothing else, by
    walking frame and block headers alone: zstandard's stream reader returns what it has
    inflated so far, without an error, when the data stops inside a frame."""
    pos = 0
    while True:
        if len(view) - pos < 8:
            raise _corrupt(fmt.CODEC_ZSTD, f"frame at byte {pos} is cut short")
        (magic,) = _UINT32_LE.unpack_from(view, pos)
        if magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_MAGIC:
            pos += 8 + _UINT32_LE.unpack_from(view, pos + 4)[0]
        elif magic == _ZSTD_MAGIC:
            pos = _zstd_skip_frame(view, pos)
        else:
            raise _corrupt(fmt.CODEC_ZSTD, f"no zstd frame magic at byte {pos}")
        if pos >= len(view):
            break
    if pos != len(view):
        raise _corrupt(fmt.CODEC_ZSTD, "the last frame runs past the end of the data")


def _zstd_skip_frame(view: memoryview, pos: int) -> int:
    """The position after the zstd frame at `pos`, from its frame and block headers."""
    descriptor = view[pos + 4]
    pos += 4 + _zstd_frame_header_length(descriptor)
    last = False
    while not last:
        if len(view) - pos < 3:
            raise _corrupt(fmt.CODEC_ZSTD, f"block header at byte {pos} is cut short")
        block = view[pos] | view[pos + 1] << 8 | view[pos + 2] << 16
        last, kind, size = bool(block & 1), (block >> 1) & 0x03, block >> 3
        pos += 3 + (1 if kind == _ZSTD_RLE_BLOCK else size)
    return pos + (4 if descriptor & _ZSTD_CONTENT_CHECKSUM else 0)


def _unzstd(data: Buffer, max_bytes: int) -> bytes:
    """Every zstd frame in `data`, inflated, at most `max_bytes` in all."""
    _zstd_check_frames(memoryview(data))
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        # one byte past the cap: if it arrives the batch inflates beyond it
        out = reader.read(max_bytes + 1)
    except zstandard.ZstdError as exc:
        raise _corrupt(fmt.CODEC_ZSTD, exc) from exc
    if len(out) > max_bytes:
        raise _bomb(fmt.CODEC_ZSTD, max_bytes)
    return out


_DECOMPRESSORS: Final[dict[int, Callable[[Buffer, int], bytes | bytearray]]] = {
    fmt.CODEC_GZIP: _gunzip,
    fmt.CODEC_SNAPPY: _unsnappy,
    fmt.CODEC_LZ4: _unlz4,
    fmt.CODEC_ZSTD: _unzstd,
}


def decompress(codec: int, data: Buffer, max_bytes: int) -> bytes | bytearray:
    """The records section `data` holds compressed with `codec`, at most `max_bytes`
    (bytes) long; `data` itself for none.

    Raises CorruptRecordError for damaged data or one that inflates beyond `max_bytes`,
    UnsupportedCompressionError for a codec Kafka does not define (5-7)."""
    if codec == fmt.CODEC_NONE:
        return data if isinstance(data, bytes | bytearray) else bytes(data)
    decompressor = _DECOMPRESSORS.get(codec)
    if decompressor is None:
        raise UnsupportedCompressionError(f"compression codec {_name(codec)} is not supported")
    return decompressor(data, max_bytes)

"""The Kafka framing: whole frames only, in order, however the bytes are cut; bad sizes
refused before anything of the frame is buffered."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.server.kafka.frames import MIN_REQUEST_BYTES, FrameBuffer, FrameError, frame

payloads = st.lists(st.binary(min_size=MIN_REQUEST_BYTES, max_size=300), max_size=8)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(payloads, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_frames_come_out_whole_and_in_order_however_the_stream_is_cut(
    frames: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(p) for p in frames)
    buffer = FrameBuffer(max_frame_bytes=1024)
    out: list[bytes] = []
    for chunk in _chunks(stream, cuts):
        buffer.feed(chunk)
        while (got := buffer.next_frame()) is not None:
            out.append(got)
    assert out == frames
    assert buffer.buffered == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    buffer = FrameBuffer(max_frame_bytes=1024)
    data = frame(b"x" * 20)
    buffer.feed(data[:3])
    assert buffer.next_frame() is None
    buffer.feed(data[3:10])
    assert buffer.next_frame() is None
    buffer.feed(data[10:])
    assert buffer.next_frame() == b"x" * 20


@pytest.mark.parametrize("size", [-1, 0, MIN_REQUEST_BYTES - 1, 1025, 2**31 - 1])
def test_a_size_out_of_bounds_is_refused_before_buffering_the_frame(size: int) -> None:
    buffer = FrameBuffer(max_frame_bytes=1024)
    buffer.feed(struct.pack(">i", size))
    with pytest.raises(FrameError, match=str(size)):
        buffer.next_frame()


def test_the_largest_allowed_frame_passes() -> None:
    buffer = FrameBuffer(max_frame_bytes=1024)
    buffer.feed(frame(b"y" * 1024))
    assert buffer.next_frame() == b"y" * 1024


def test_the_head_of_a_frame_shows_before_the_rest_arrives_and_takes_nothing() -> None:
    buffer = FrameBuffer(max_frame_bytes=1024)
    data = frame(b"\x00\x03" + b"z" * 20)
    buffer.feed(data[:5])
    assert buffer.head(2) is None  # one byte of the frame so far
    buffer.feed(data[5:6])
    assert buffer.head(2) == b"\x00\x03"
    assert buffer.next_frame() is None  # still partial
    buffer.feed(data[6:])
    assert buffer.head(2) == b"\x00\x03"
    assert buffer.next_frame() == data[4:]
    assert buffer.head(2) is None


def test_the_head_of_a_frame_checks_its_size_first() -> None:
    buffer = FrameBuffer(max_frame_bytes=1024)
    buffer.feed(struct.pack(">i", 4096) + b"\x00\x03")
    with pytest.raises(FrameError, match="4096"):
        buffer.head(2)

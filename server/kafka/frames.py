"""Size-prefixed frames out of a byte stream (Kafka's framing), with no I/O.

Wire: every request and response is ``int32 size`` then ``size`` bytes. Invariants:
- `FrameBuffer.next_frame` returns whole frames only, in arrival order, each exactly the
  `size` bytes after its prefix; a partial frame stays buffered until the rest arrives.
- A size below `MIN_REQUEST_BYTES` (too small for a request header) or above the buffer's
  limit raises `FrameError` before any of the frame is buffered beyond its prefix: a
  hostile size never makes the broker allocate it.
"""

from __future__ import annotations

import struct
from typing import Final

_SIZE: Final = struct.Struct(">i")
#: api_key (2) + api_version (2) + correlation_id (4) + client_id length (2) (bytes)
MIN_REQUEST_BYTES: Final = 10


class FrameError(Exception):
    """The stream cannot be framed any further: the connection must close."""


class FrameBuffer:
    """Bytes received on one connection, cut into frames of at most `max_frame_bytes`."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        #: the size of the frame being received, once its prefix is in (else None)
        self._want: int | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf)

    def head(self, n: int) -> bytes | None:
        """The first `n` bytes of the frame being received, once they have arrived (None
        before): a frame's API key can be judged before the rest of it is buffered. Its
        size prefix is checked first, as by `next_frame`. `n` is at most
        `MIN_REQUEST_BYTES`, so the bytes are all the frame's."""
        assert n <= MIN_REQUEST_BYTES
        if not self._start_frame() or len(self._buf) < n:
            return None
        return bytes(self._buf[:n])

    def next_frame(self) -> bytes | None:
        """The next whole frame (without its size prefix), or None until one has arrived."""
        if not self._start_frame():
            return None
        assert self._want is not None
        if len(self._buf) < self._want:
            return None
        frame = bytes(self._buf[: self._want])
        del self._buf[: self._want]
        self._want = None
        return frame

    def _start_frame(self) -> bool:
        """Whether a frame is being received: its size prefix read (now or before) and
        checked. Raises FrameError for a size out of bounds."""
        if self._want is not None:
            return True
        if len(self._buf) < _SIZE.size:
            return False
        (size,) = _SIZE.unpack_from(self._buf)
        if size < MIN_REQUEST_BYTES:
            raise FrameError(f"frame size {size} is too small for a request header")
        if size > self.max_frame_bytes:
            raise FrameError(f"frame size {size} exceeds the limit of {self.max_frame_bytes} bytes")
        del self._buf[: _SIZE.size]
        self._want = size
        return True


def frame(payload: bytes | bytearray) -> bytes:
    """`payload` with its size prefix."""
    return _SIZE.pack(len(payload)) + bytes(payload)

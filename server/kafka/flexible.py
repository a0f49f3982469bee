"""Requests at flexible versions (KIP-482), decoded by a bounded reader of our own.

kafka-python's compiled decoder reads an unsigned varint with no length cap: a run of 0xff
bytes builds an ever larger int, in time quadratic in the run's length (a 512 KiB frame
costs tens of seconds of CPU, and a connection that has not authenticated may send one).
So no flexible frame reaches that decoder: every served flexible (API, version) has a
decoder in `BOUNDED_DECODERS`, and `connection` refuses to import while one is missing.

Invariants of `Reader`, which every decoder here reads through:
- An unsigned varint is at most 5 bytes and at most 2**32 - 1, as Kafka's
  `ByteUtils.readUnsignedVarint`; a longer one is refused at its 6th byte, so reading one
  costs constant time whatever follows.
- Every length (a string's, a tagged field's) is checked against the bytes left in the
  frame before anything is sliced: nothing past the frame is read and nothing larger than
  the frame is allocated.
- A tagged-field section holds at most `MAX_TAGGED_FIELDS` fields, so decoding a frame
  costs time in proportion to its strings' bytes, copied in C, not to a count it names.
- Strings are strict UTF-8; a non-nullable string sent as null is malformed (as Kafka's
  generated readers say: "non-nullable field ... was serialized as null").
Any fault raises `MalformedRequest`; the connection closes on it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from kafka.protocol.metadata import ApiVersionsRequest

#: the longest unsigned varint a 32-bit value takes (bytes)
MAX_VARINT_BYTES: Final = 5
#: the most tagged fields one structure may carry. Kafka's parser takes any number, but its
#: schemas define a handful per structure and clients send only those; without a cap a
#: 512 KiB frame of empty tagged fields costs close to a second of CPU to skip, before
#: authentication
MAX_TAGGED_FIELDS: Final = 64
_MAX_UINT32: Final = 2**32 - 1
_INT16: Final = struct.Struct(">h")
_INT32: Final = struct.Struct(">i")


class MalformedRequest(ValueError):
    """The frame does not hold a well-formed request of its (API, version)."""


class Reader:
    """Reads Kafka's primitive types from one request frame, front to back, never past its
    end (see the module's invariants)."""

    def __init__(self, frame: bytes) -> None:
        self._data = frame
        self._pos = 0

    def int16(self) -> int:
        return int(_INT16.unpack(self.take(_INT16.size))[0])

    def int32(self) -> int:
        return int(_INT32.unpack(self.take(_INT32.size))[0])

    def take(self, n: int) -> bytes:
        """The next `n` bytes, which must all lie inside the frame."""
        if n > len(self._data) - self._pos:
            raise MalformedRequest(
                f"a field of {n} bytes at byte {self._pos} runs past the frame's end "
                f"({len(self._data)} bytes)"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def unsigned_varint(self) -> int:
        """Kafka's unsigned varint: 7 bits a byte, least significant first, at most 5 bytes."""
        value = 0
        for i in range(MAX_VARINT_BYTES):
            (byte,) = self.take(1)
            value |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                if value > _MAX_UINT32:
                    raise MalformedRequest(f"a varint of {value} exceeds 32 bits")
                return value
        raise MalformedRequest(f"a varint is longer than {MAX_VARINT_BYTES} bytes")

    def nullable_string(self) -> str | None:
        """An int16-length string; length -1 is null (the request header's client id)."""
        length = self.int16()
        if length == -1:
            return None
        if length < 0:
            raise MalformedRequest(f"a string of length {length}")
        return _utf8(self.take(length))

    def compact_string(self) -> str:
        """A non-nullable compact string: unsigned varint length + 1, then the bytes."""
        length_plus_one = self.unsigned_varint()
        if length_plus_one == 0:
            raise MalformedRequest("a non-nullable string was sent as null")
        return _utf8(self.take(length_plus_one - 1))

    def skip_tagged_fields(self) -> None:
        """A tagged-field section: a count, then (tag, size, bytes) each. None of the
        structures decoded here defines a tagged field, so every one is unknown and, as
        Kafka does with unknown tags, skipped. At most `MAX_TAGGED_FIELDS` per section."""
        count = self.unsigned_varint()
        if count > MAX_TAGGED_FIELDS:
            raise MalformedRequest(
                f"{count} tagged fields in one structure (at most {MAX_TAGGED_FIELDS})"
            )
        for _ in range(count):
            self.unsigned_varint()  # the tag
            self.take(self.unsigned_varint())

    def end(self) -> None:
        """The request must end exactly at the frame's end."""
        if self._pos != len(self._data):
            raise MalformedRequest(
                f"the request's fields end at byte {self._pos} of a {len(self._data)}-byte frame"
            )


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"a string is not UTF-8: {exc}") from None


def _request_header_v2(reader: Reader, request: Any) -> None:
    """Request header v2 (flexible requests): api key, api version, correlation id, the
    client id (int16 length, nullable: not compact, KIP-482), tagged fields. Attaches it to
    `request`, as the library's decoder does."""
    reader.int16()  # api key and version: the connection read them to pick this decoder
    reader.int16()
    correlation_id = reader.int32()
    client_id = reader.nullable_string()
    reader.skip_tagged_fields()
    request.with_header(correlation_id=correlation_id, client_id=client_id)


def api_versions_v3(frame: bytes) -> Any:
    """ApiVersions v3 (KIP-511): header v2, then the client's software name and version
    (compact strings) and tagged fields. librdkafka and kafka-python send it first on every
    connection, before SASL."""
    reader = Reader(frame)
    request = ApiVersionsRequest(version=3)
    _request_header_v2(reader, request)
    request.client_software_name = reader.compact_string()
    request.client_software_version = reader.compact_string()
    reader.skip_tagged_fields()
    reader.end()
    return request


#: (API key, version) -> its bounded decoder: every flexible version the listener serves
BOUNDED_DECODERS: Final[dict[tuple[int, int], Callable[[bytes], Any]]] = {
    (ApiVersionsRequest.API_KEY, 3): api_versions_v3,
}

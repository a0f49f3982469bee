"""The replication stream's wire format: replica fetches over one plain TCP connection.

A follower fetches a leader's records many times a second, and gRPC's Python stack costs
about 3 CPU seconds per GB on each side of a message (measured on loopback with 256 KiB
messages), against about 0.3 for a socket. So on a plaintext cluster followers fetch over
this stream instead, and the records cross it as raw bytes, never inside a protobuf
message. The requests and the rest of each answer stay the protobuf messages of the gRPC
`ReplicaFetch` (`ReplicaFetchRequest`, `FetchResponse`), so the two paths cannot drift.

Format (all integers big-endian):

- handshake, once, each way: MAGIC (4 bytes) and VERSION (u16); the server answers the
  client's handshake with its own, or closes the connection if it does not speak it;
- request: u32 length, then a serialized `ReplicaFetchRequest` of that length;
- answer: u8 status, u32 length, then
  - STATUS_OK: a serialized `FetchResponse` whose `records` fields are all empty, then for
    each partition result in the order of that message: u32 length and that many bytes of
    record batches (what `records` would have held);
  - STATUS_ERROR: a UTF-8 "ErrorKind: message" of that length (the request as a whole
    failed, like a gRPC status; per-partition errors travel inside the `FetchResponse`).

One request is outstanding per connection at a time. A request longer than
MAX_REQUEST_BYTES, or an answer part longer than MAX_FRAME_BYTES, is refused as
malformed, so a corrupt or hostile peer cannot make the reader allocate without bound.
Pure: no sockets; `server/cluster/replication_stream.py` is the shell.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from logstore.errors import LogStoreError
from logstore.v1 import logstore_pb2 as pb

MAGIC = b"LSRF"
VERSION = 1
HANDSHAKE = MAGIC + struct.pack(">H", VERSION)

STATUS_OK = 0
STATUS_ERROR = 1

#: the largest answer header or records length accepted (bytes)
MAX_FRAME_BYTES = 512 * 1024 * 1024
#: the largest request accepted (bytes): a fetch names partitions and offsets, about 20
#: bytes each, so this is room for a few hundred thousand partitions
MAX_REQUEST_BYTES = 8 * 1024 * 1024

_U32 = struct.Struct(">I")
_ANSWER_HEAD = struct.Struct(">BI")
U32_SIZE = _U32.size
ANSWER_HEAD_SIZE = _ANSWER_HEAD.size


class ReplicationWireError(LogStoreError):
    """The peer sent something that is not this format (or a newer version of it)."""


def check_handshake(data: bytes) -> None:
    """Raise ReplicationWireError unless `data` is our handshake."""
    if data != HANDSHAKE:
        raise ReplicationWireError(
            f"not a LogStore replication stream (handshake {data[:6]!r}, want {HANDSHAKE!r})"
        )


def encode_request(request: pb.ReplicaFetchRequest) -> bytes:
    body = request.SerializeToString()
    return _U32.pack(len(body)) + body


def decode_length(data: bytes | memoryview, what: str, limit: int = MAX_FRAME_BYTES) -> int:
    """A u32 length prefix, checked against `limit` (bytes)."""
    (length,) = _U32.unpack(data)
    if length > limit:
        raise ReplicationWireError(f"{what} of {length} bytes is over {limit}")
    return length


def decode_request(body: bytes) -> pb.ReplicaFetchRequest:
    request = pb.ReplicaFetchRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError
        raise ReplicationWireError(f"malformed replica fetch request: {exc}") from None
    return request


def _results(response: pb.FetchResponse) -> Iterator[pb.FetchPartitionResult]:
    for topic in response.topics:
        yield from topic.partitions


def encode_answer(response: pb.FetchResponse) -> list[bytes]:
    """The answer carrying `response`, as pieces to send in order. Takes the records out
    of `response` (its `records` fields are empty afterwards)."""
    records = []
    for result in _results(response):
        records.append(result.records)
        result.records = b""
    header = response.SerializeToString()
    pieces = [_ANSWER_HEAD.pack(STATUS_OK, len(header)), header]
    for data in records:
        pieces.append(_U32.pack(len(data)))
        if data:
            pieces.append(data)
    return pieces


def encode_error(exc: BaseException) -> bytes:
    message = f"{type(exc).__name__}: {exc}".encode()
    return _ANSWER_HEAD.pack(STATUS_ERROR, len(message)) + message


def decode_answer_head(data: bytes | memoryview) -> tuple[int, int]:
    """(status, length) of an answer."""
    status, length = _ANSWER_HEAD.unpack(data)
    if status not in (STATUS_OK, STATUS_ERROR):
        raise ReplicationWireError(f"unknown answer status {status}")
    if length > MAX_FRAME_BYTES:
        raise ReplicationWireError(f"answer of {length} bytes is over {MAX_FRAME_BYTES}")
    return status, length


def decode_answer_header(body: bytes) -> tuple[pb.FetchResponse, list[pb.FetchPartitionResult]]:
    """The `FetchResponse` of an OK answer and its partition results, in the order their
    records follow."""
    response = pb.FetchResponse()
    try:
        response.ParseFromString(body)
    except Exception as exc:  # protobuf's DecodeError
        raise ReplicationWireError(f"malformed fetch answer: {exc}") from None
    return response, list(_results(response))

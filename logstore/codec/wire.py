"""Messages that carry record batches, in protobuf wire format, encoded and decoded by hand.

FetchResponse (for FetchStream) and ProduceRequest (for ProduceStream).

Through the generated classes a fetched batch is copied four times beyond the network:
into the broker's message, out of it by serialization, into the client's message by
parsing and out of it again by reading `records`. Here the broker joins its framing around
the bytes it read from the segment (one copy) and the client takes `records` as views of
the received message (no copy). The bytes are exactly a `logstore.v1.FetchResponse`: any
protobuf parser reads them, and `decode_response` reads any encoding of that message.
A producer likewise joins a ProduceRequest around its batches once, where building it from
nested messages copied every batch three times (each constructor deep-copies) before the
serialization copied it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

from logstore.v1 import logstore_pb2 as pb

_UINT64 = (1 << 64) - 1
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5
#: the Error field of a successful answer
NO_ERROR = pb.Error()
#: ListOffsets timestamps that ask for the log start and the log end offset (Kafka's -2, -1)
EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1
_P = TypeVar("_P")
#: protobuf field numbers are 1 .. 2**29 - 1
_FIELD_NUMBER_LIMIT = 1 << 29


class PartitionAnswer(NamedTuple):
    """One `FetchPartitionResult`; `records` is bytes (encoding) or a view (decoded)."""

    partition: int
    error: pb.Error
    high_watermark: int
    log_start_offset: int
    records: bytes | memoryview


#: a FetchResponse: (topic, its partitions' answers) per topic
TopicAnswers = list[tuple[str, list[PartitionAnswer]]]


def _uvarint(value: int) -> bytes:
    """Protobuf varint of `value` (negative int32/int64 as their 64-bit two's complement)."""
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _partition_head(answer: PartitionAnswer) -> bytes:
    """Every field of a FetchPartitionResult but the records' bytes (which follow it)."""
    parts = [b"\x08", _uvarint(answer.partition)]
    if answer.error.code:
        error = answer.error.SerializeToString()
        parts += [b"\x12", _uvarint(len(error)), error]
    parts += [b"\x18", _uvarint(answer.high_watermark), b"\x20", _uvarint(answer.log_start_offset)]
    parts += [b"\x2a", _uvarint(len(answer.records))]
    return b"".join(parts)


def encode_response(topics: TopicAnswers) -> bytes:
    """The FetchResponse holding `topics`, copying each partition's records once."""
    chunks: list[bytes | memoryview] = []
    for topic, answers in topics:
        name = topic.encode()
        body: list[bytes | memoryview] = [b"\x0a", _uvarint(len(name)), name]
        for answer in answers:
            head = _partition_head(answer)
            body += [b"\x12", _uvarint(len(head) + len(answer.records)), head, answer.records]
        size = sum(len(b) for b in body)
        chunks += [b"\x0a", _uvarint(size), *body]
    return b"".join(chunks)


class _Reader:
    """Walks the fields of one message in `view[pos:end]`."""

    __slots__ = ("end", "pos", "view")

    def __init__(self, view: memoryview, pos: int, end: int) -> None:
        self.view, self.pos, self.end = view, pos, end

    def varint(self) -> int:
        view, pos, shift, value = self.view, self.pos, 0, 0
        while True:
            if pos >= self.end or shift > 63:
                raise ValueError("malformed FetchResponse: bad varint")
            byte = view[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7

    def field(self) -> tuple[int, int, int | tuple[int, int]]:
        """(field number, wire type, value): a varint, or (start, end) of a LEN field."""
        key = self.varint()
        number, wire = key >> 3, key & 7
        if not 0 < number < _FIELD_NUMBER_LIMIT:
            raise ValueError(f"malformed message: field number {number}")
        if wire == _WIRE_VARINT:
            return number, wire, self.varint()
        if wire == _WIRE_LEN:
            size = self.varint()
            start = self.pos
            self.pos += size
            if self.pos > self.end:
                raise ValueError("malformed FetchResponse: field runs past its message")
            return number, wire, (start, self.pos)
        if wire in (_WIRE_I64, _WIRE_I32):
            self.pos += 8 if wire == _WIRE_I64 else 4
            if self.pos > self.end:
                raise ValueError("malformed message: fixed-width field runs past its message")
            return number, wire, 0
        raise ValueError(f"malformed FetchResponse: wire type {wire}")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _decode_partition(view: memoryview, start: int, end: int) -> PartitionAnswer:
    reader = _Reader(view, start, end)
    partition, hwm, log_start = 0, 0, 0
    error = NO_ERROR
    records: memoryview = view[0:0]
    while reader.pos < end:
        number, wire, value = reader.field()
        if wire == _WIRE_LEN:
            assert isinstance(value, tuple)
            if number == 2:
                error = pb.Error.FromString(bytes(view[value[0] : value[1]]))
            elif number == 5:
                records = view[value[0] : value[1]]
        elif wire == _WIRE_VARINT:
            assert isinstance(value, int)
            if number == 1:
                partition = _int32(value)
            elif number == 3:
                hwm = _signed(value)
            elif number == 4:
                log_start = _signed(value)
    return PartitionAnswer(partition, error, hwm, log_start, records)


def _decode_topic(
    view: memoryview, start: int, end: int, decode_partition: Callable[[memoryview, int, int], _P]
) -> tuple[str, list[_P]]:
    """A per-topic message: its name (field 1) and its partitions (field 2), each read by
    `decode_partition` (FetchTopicResult and ProduceTopicData share this shape)."""
    reader = _Reader(view, start, end)
    topic = ""
    partitions: list[_P] = []
    while reader.pos < end:
        number, wire, value = reader.field()
        if wire != _WIRE_LEN:
            continue
        assert isinstance(value, tuple)
        if number == 1:
            topic = bytes(view[value[0] : value[1]]).decode()
        elif number == 2:
            partitions.append(decode_partition(view, *value))
    return topic, partitions


def decode_response(data: bytes) -> TopicAnswers:
    """The topics of a FetchResponse; records are views of `data` (which they keep alive)."""
    view = memoryview(data)
    reader = _Reader(view, 0, len(view))
    topics: TopicAnswers = []
    while reader.pos < len(view):
        number, wire, value = reader.field()
        if number == 1 and wire == _WIRE_LEN:
            assert isinstance(value, tuple)
            topics.append(_decode_topic(view, *value, _decode_partition))
    return topics


def encode_produce_request(
    acks: int, correlation_id: int, topics: dict[str, list[tuple[int, bytes]]]
) -> bytes:
    """The ProduceRequest sending (partition, batches) per topic, copying each batch once."""
    chunks: list[bytes] = [b"\x08", _uvarint(acks)]
    for topic, partitions in topics.items():
        name = topic.encode()
        body: list[bytes] = [b"\x0a", _uvarint(len(name)), name]
        for partition, records in partitions:
            head = b"".join((b"\x08", _uvarint(partition), b"\x12", _uvarint(len(records))))
            body += [b"\x12", _uvarint(len(head) + len(records)), head, records]
        chunks += [b"\x12", _uvarint(sum(len(b) for b in body)), *body]
    chunks += [b"\x18", _uvarint(correlation_id)]
    return b"".join(chunks)


class ProducePartitionView(NamedTuple):
    """A ProducePartitionData whose `records` is a view of the received request."""

    partition: int
    records: memoryview


class ProduceTopicView(NamedTuple):
    topic: str
    partitions: list[ProducePartitionView]


class ProduceRequestView(NamedTuple):
    """A ProduceRequest as `decode_produce_request` reads it: the fields the broker uses,
    with the batches left in place."""

    acks: int
    topics: list[ProduceTopicView]
    correlation_id: int


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


def _decode_produce_partition(view: memoryview, start: int, end: int) -> ProducePartitionView:
    reader = _Reader(view, start, end)
    partition, records = 0, view[0:0]
    while reader.pos < end:
        number, wire, value = reader.field()
        if number == 1 and wire == _WIRE_VARINT:
            assert isinstance(value, int)
            partition = _int32(value)
        elif number == 2 and wire == _WIRE_LEN:
            assert isinstance(value, tuple)
            records = view[value[0] : value[1]]
    return ProducePartitionView(partition, records)


def _decode_produce_topic(view: memoryview, start: int, end: int) -> ProduceTopicView:
    return ProduceTopicView(*_decode_topic(view, start, end, _decode_produce_partition))


def decode_produce_request(data: bytes) -> ProduceRequestView:
    """A ProduceRequest whose batches are views of `data`; ValueError if malformed."""
    view = memoryview(data)
    reader = _Reader(view, 0, len(view))
    acks, correlation_id, topics = 0, 0, []
    while reader.pos < len(view):
        number, wire, value = reader.field()
        if number == 2 and wire == _WIRE_LEN:
            assert isinstance(value, tuple)
            topics.append(_decode_produce_topic(view, *value))
        elif number == 1 and wire == _WIRE_VARINT:
            assert isinstance(value, int)
            acks = _int32(value)
        elif number == 3 and wire == _WIRE_VARINT:
            assert isinstance(value, int)
            correlation_id = value
    return ProduceRequestView(acks, topics, correlation_id)


def passthrough(data: bytes) -> bytes:
    """The gRPC (de)serializer for messages that are already protobuf bytes."""
    return data

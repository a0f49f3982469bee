"""The connection state machine: its request size limit and API restriction, which the
shell applies until a client authenticates (a frame over the limit, or of an API not yet
allowed, closes the connection before it is buffered or decoded); the rule that a request
ends exactly at its frame's end; and the bounded decoding of flexible versions, whose
varints the library would read without a bound."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.protocol.admin import ListGroupsRequest
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.producer import ProduceRequest

from logstore.codec import record_batch as rb
from logstore.server.kafka.apis import API_BY_KEY, APIS, Api
from logstore.server.kafka.connection import (
    Close,
    KafkaConnection,
    Request,
    decode_request,
    unbounded_flexible_versions,
)
from logstore.server.kafka.flexible import BOUNDED_DECODERS, MAX_TAGGED_FIELDS
from logstore.server.kafka.frames import frame

#: what a connection that has not authenticated may ask (the router's list)
SASL_APIS = frozenset({18, 17, 36})
#: the largest request of a connection that has not authenticated (bytes)
UNAUTHENTICATED_LIMIT = 512 * 1024
#: how long refusing a hostile frame may take: decoding one that the library would read
#: takes seconds to minutes, refusing it microseconds (s)
FAST_S = 0.5


def _frame(request: object, correlation_id: int = 1, client_id: str | None = "test") -> bytes:
    request.with_header(correlation_id=correlation_id, client_id=client_id)  # type: ignore[attr-defined]
    return bytes(request.encode(header=True, framed=True))  # type: ignore[attr-defined]


def _big_metadata(topics: int) -> bytes:
    names = [MetadataRequest.MetadataRequestTopic(name=f"topic-{i:05d}") for i in range(topics)]
    return _frame(MetadataRequest(version=1, topics=names))


def _event(data: bytes, max_request_bytes: int = 64 * 1024 * 1024) -> object:
    connection = KafkaConnection(max_request_bytes)
    connection.receive_data(data)
    return connection.next_event()


def _api_versions_v3(name: str = "librdkafka", version: str = "2.15.0") -> ApiVersionsRequest:
    return ApiVersionsRequest(version=3, client_software_name=name, client_software_version=version)


def _header_v2(correlation_id: int = 1, client_id: bytes = b"x") -> bytes:
    """ApiVersions v3's request header (v2), without its tagged fields."""
    return struct.pack(">hhih", 18, 3, correlation_id, len(client_id)) + client_id


# --- the request size limit ----------------------------------------------------------------


def test_a_lowered_limit_closes_on_the_next_larger_frame() -> None:
    big = _big_metadata(200)
    connection = KafkaConnection(max_request_bytes=64 * 1024)
    connection.limit_request_bytes(1024)
    connection.receive_data(_frame(ApiVersionsRequest(version=0)))
    assert isinstance(connection.next_event(), Request)
    connection.receive_data(big[:4])  # the size prefix alone decides
    event = connection.next_event()
    assert isinstance(event, Close)
    assert event.reason == f"frame size {len(big) - 4} exceeds the limit of 1024 bytes"
    connection.receive_data(big[4:])
    assert connection.next_event() == event  # closed for good


def test_raising_the_limit_again_admits_larger_frames() -> None:
    big = _big_metadata(200)
    connection = KafkaConnection(max_request_bytes=64 * 1024)
    connection.limit_request_bytes(1024)
    connection.limit_request_bytes(64 * 1024)
    connection.receive_data(big)
    event = connection.next_event()
    assert isinstance(event, Request)
    assert len(event.body.topics) == 200


# --- the API restriction before authentication ----------------------------------------------


def test_a_restricted_api_closes_from_its_key_before_the_frame_is_in() -> None:
    """An unauthenticated 512 KiB Metadata frame: refused from its first two bytes, so
    the rest is never buffered and nothing of it decoded."""
    names = (UNAUTHENTICATED_LIMIT - 64) // 2
    payload = struct.pack(">hhih", 3, 4, 9, 1) + b"x" + struct.pack(">i", names)
    payload += struct.pack(">h", 0) * names + b"\x00"
    assert len(payload) <= UNAUTHENTICATED_LIMIT
    data = frame(payload)
    connection = KafkaConnection(64 * 1024 * 1024)
    connection.limit_request_bytes(UNAUTHENTICATED_LIMIT)
    connection.restrict_apis(SASL_APIS, "before SASL authentication completed")
    connection.receive_data(data[:5])
    assert connection.next_event() is None  # one byte of the API key: not yet known
    connection.receive_data(data[5:6])
    event = connection.next_event()
    assert event == Close("MetadataRequest (API key 3) before SASL authentication completed")
    connection.receive_data(data[6:])
    assert connection.next_event() == event  # nothing more is looked at


def test_the_restriction_lets_sasl_apis_through_and_lifts() -> None:
    connection = KafkaConnection(64 * 1024)
    connection.restrict_apis(SASL_APIS, "before SASL authentication completed")
    connection.receive_data(_frame(ApiVersionsRequest(version=0)))
    assert isinstance(connection.next_event(), Request)
    connection.restrict_apis(None)  # authenticated
    connection.receive_data(_big_metadata(3))
    event = connection.next_event()
    assert isinstance(event, Request) and event.api.key == 3


def test_an_unknown_api_key_is_refused_by_the_restriction_too() -> None:
    connection = KafkaConnection(64 * 1024)
    connection.restrict_apis(SASL_APIS, "before SASL authentication completed")
    connection.receive_data(struct.pack(">ihh", 1000, 999, 0))
    assert connection.next_event() == Close("API key 999 before SASL authentication completed")


def test_receiving_is_true_only_between_a_frames_first_and_last_byte() -> None:
    data = _frame(ApiVersionsRequest(version=0))
    connection = KafkaConnection(64 * 1024)
    assert not connection.receiving
    connection.receive_data(data[:3])
    assert connection.next_event() is None and connection.receiving
    connection.receive_data(data[3:])
    assert isinstance(connection.next_event(), Request)
    assert connection.next_event() is None and not connection.receiving


# --- a request ends exactly at its frame's end ----------------------------------------------


def _produce_frame() -> bytes:
    batch = rb.encode_batch([(b"k", b"v", (), 1_700_000_000_000)])
    topic = ProduceRequest.TopicProduceData
    partition = topic.PartitionProduceData(index=0, records=batch)
    request = ProduceRequest(
        version=7,
        transactional_id=None,
        acks=1,
        timeout_ms=5000,
        topic_data=[topic(name="t", partition_data=[partition])],
    )
    return _frame(request)


def test_a_whole_produce_request_decodes() -> None:
    event = _event(_produce_frame())
    assert isinstance(event, Request) and event.api.key == 0


def test_trailing_bytes_after_a_request_close_the_connection() -> None:
    payload = _produce_frame()[4:]
    event = _event(frame(payload + b"xyz"))
    assert isinstance(event, Close)
    assert f"end at byte {len(payload)} of a {len(payload) + 3}-byte frame" in event.reason


def test_a_byte_field_cut_short_closes_the_connection() -> None:
    """The records field is the request's last: a frame cut inside it holds a complete
    header and a batch shorter than its length says (which the library would slice)."""
    payload = _produce_frame()[4:]
    event = _event(frame(payload[:-5]))
    assert isinstance(event, Close)
    assert "malformed ProduceRequest v7" in event.reason


def test_trailing_bytes_after_a_flexible_request_close_the_connection() -> None:
    payload = _frame(_api_versions_v3())[4:]
    event = _event(frame(payload + b"\x00"))
    assert isinstance(event, Close)
    assert f"end at byte {len(payload)} of a {len(payload) + 1}-byte frame" in event.reason


# --- flexible versions: bounded decoding ------------------------------------------------


def test_a_long_varint_is_refused_at_once() -> None:
    """ApiVersions v3 whose client software name's length is a 512 KiB varint of 0xff
    bytes: the library's decoder spends tens of seconds building the number."""
    payload = _header_v2() + b"\x00" + b"\xff" * (UNAUTHENTICATED_LIMIT - 32) + b"\x01"
    data = frame(payload)
    started = time.perf_counter()
    event = _event(data, max_request_bytes=UNAUTHENTICATED_LIMIT)
    elapsed_s = time.perf_counter() - started
    assert isinstance(event, Close)
    assert "varint is longer than 5 bytes" in event.reason
    assert elapsed_s < FAST_S


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        (b"\x00\xff\xff\xff\xff\x7f", "exceeds 32 bits"),
        (b"\x00\x00\x02y\x00", "non-nullable string was sent as null"),
        (b"\x00\x05ab", "runs past the frame's end"),  # a name of 4 bytes, 2 sent
        (b"\x00\x02\xff\x02y\x00", "not UTF-8"),
        (b"\x03\x01", "runs past the frame's end"),  # 3 tagged fields, then nothing
        (b"\x01\x05\x7fab\x02x\x02y\x00", "runs past the frame's end"),  # a 127-byte tag
        (b"\x00\x02x\x02y", "runs past the frame's end"),  # no tagged-field count
    ],
)
def test_malformed_flexible_requests_close_the_connection(tail: bytes, words: str) -> None:
    event = _event(frame(_header_v2() + tail))
    assert isinstance(event, Close)
    assert words in event.reason


def test_a_frame_of_empty_tagged_fields_is_refused_at_once() -> None:
    """262,000 empty tagged fields in 512 KiB, which skipping one by one would take close to
    a second of CPU for, before authentication."""
    count = (UNAUTHENTICATED_LIMIT - 64) // 2
    payload = _header_v2() + _tagged([(0, b"")] * count) + b"\x02x\x02y\x00"
    started = time.perf_counter()
    event = _event(frame(payload), max_request_bytes=UNAUTHENTICATED_LIMIT)
    elapsed_s = time.perf_counter() - started
    assert event == Close(
        "malformed ApiVersionsRequest v3: MalformedRequest: "
        f"{count} tagged fields in one structure (at most {MAX_TAGGED_FIELDS})"
    )
    assert elapsed_s < 0.1


def test_a_five_byte_varint_is_read_as_kafka_reads_it() -> None:
    """Kafka accepts a varint padded with continuation bytes, up to 5 bytes."""
    padded_one = b"\x82\x80\x80\x80\x00"  # 2, in five bytes: a one-byte name
    event = _event(frame(_header_v2() + b"\x00" + padded_one + b"x" + b"\x02y\x00"))
    assert isinstance(event, Request)
    assert (event.body.client_software_name, event.body.client_software_version) == ("x", "y")


def _tagged(fields: list[tuple[int, bytes]]) -> bytes:
    def uvarint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes([*out, n])

    return uvarint(len(fields)) + b"".join(uvarint(t) + uvarint(len(d)) + d for t, d in fields)


names = st.text(max_size=40)
tags = st.lists(st.tuples(st.integers(0, 2**31), st.binary(max_size=200)), max_size=6)


@given(
    client_id=st.none() | names,
    name=names,
    version=names,
    correlation_id=st.integers(-(2**31), 2**31 - 1),
    header_tags=tags,
    body_tags=tags,
)
def test_the_bounded_decoder_reads_what_the_librarys_reads(
    client_id: str | None,
    name: str,
    version: str,
    correlation_id: int,
    header_tags: list[tuple[int, bytes]],
    body_tags: list[tuple[int, bytes]],
) -> None:
    """Well-formed ApiVersions v3 frames (tagged fields included, which nothing defines
    here): the same request, header and client id as the library's decoder gives."""
    request = _api_versions_v3(name, version)
    untagged = _frame(request, correlation_id, client_id)[4:]
    header_len = 10 + (len(client_id.encode()) if client_id is not None else 0)
    assert untagged[header_len] == 0 and untagged[-1] == 0  # the empty tag sections
    payload = (
        untagged[:header_len]
        + _tagged(header_tags)
        + untagged[header_len + 1 : -1]
        + _tagged(body_tags)
    )
    ours = _event(frame(payload))
    assert isinstance(ours, Request)
    api = API_BY_KEY[18]
    theirs = api.request.decode(payload, version=3, header=True)
    assert ours.body == theirs and ours.body.header == theirs.header
    assert ours.client_id == client_id and ours.correlation_id == correlation_id
    assert (ours.body.client_software_name, ours.body.client_software_version) == (name, version)


def test_every_served_flexible_version_has_a_bounded_decoder() -> None:
    assert unbounded_flexible_versions(APIS) == []
    served_flexible = {
        (api.key, v)
        for api in APIS
        for v in range(api.min_version, api.max_version + 1)
        if api.request.flexible_version_q(v)
    }
    assert served_flexible == set(BOUNDED_DECODERS) == {(18, 3)}


def test_a_flexible_version_without_a_bounded_decoder_is_named() -> None:
    """What makes the import of `connection` fail if someone advertises one."""
    key, name = ListGroupsRequest.API_KEY, ListGroupsRequest.name
    list_groups = Api(key, name, ListGroupsRequest, None, 0, 3)  # v3 is flexible
    assert unbounded_flexible_versions([list_groups]) == ["ListGroupsRequest v3"]


def test_decode_request_never_hands_a_flexible_frame_to_the_library() -> None:
    payload = _header_v2() + b"\x00" + b"\xff" * 100_000 + b"\x01"
    with pytest.raises(ValueError, match="varint is longer than 5 bytes"):
        decode_request(API_BY_KEY[18], 3, payload)

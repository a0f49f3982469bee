"""The connection state machine's request size limit, which the shell lowers until a client
authenticates: a frame over the limit closes the connection before it is buffered."""

from __future__ import annotations

from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest

from logstore.server.kafka.connection import Close, KafkaConnection, Request


def _frame(request: object, correlation_id: int = 1) -> bytes:
    request.with_header(correlation_id=correlation_id, client_id="test")  # type: ignore[attr-defined]
    return bytes(request.encode(header=True, framed=True))  # type: ignore[attr-defined]


def _big_metadata(topics: int) -> bytes:
    names = [MetadataRequest.MetadataRequestTopic(name=f"topic-{i:05d}") for i in range(topics)]
    return _frame(MetadataRequest(version=1, topics=names))


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

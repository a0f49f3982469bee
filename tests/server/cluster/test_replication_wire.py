"""The replication stream's format: what is encoded decodes to the same messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.server.cluster import replication_wire as wire
from logstore.v1 import logstore_pb2 as pb

_partition = st.builds(
    lambda p, hw, records, code: pb.FetchPartitionResult(
        partition=p,
        high_watermark=hw,
        records=records,
        error=pb.Error(code=code, message="e" if code else ""),
    ),
    st.integers(0, 10_000),
    st.integers(0, 2**62),
    st.binary(max_size=2048),
    st.sampled_from([0, 0, 3]),
)
_response = st.builds(
    lambda topics: pb.FetchResponse(
        topics=[pb.FetchTopicResult(topic=name, partitions=parts) for name, parts in topics]
    ),
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.lists(_partition, max_size=5)), max_size=4
    ),
)


def _decode(pieces: list[bytes]) -> pb.FetchResponse:
    data = memoryview(b"".join(pieces))
    status, length = wire.decode_answer_head(data[: wire.ANSWER_HEAD_SIZE])
    assert status == wire.STATUS_OK
    at = wire.ANSWER_HEAD_SIZE
    response, results = wire.decode_answer_header(bytes(data[at : at + length]))
    at += length
    for result in results:
        size = wire.decode_length(data[at : at + wire.U32_SIZE], "records")
        at += wire.U32_SIZE
        result.records = bytes(data[at : at + size])
        at += size
    assert at == len(data), "the answer must be consumed exactly"
    return response


@given(_response)
def test_an_answer_round_trips_with_its_records_outside_the_message(
    response: pb.FetchResponse,
) -> None:
    original = pb.FetchResponse()
    original.CopyFrom(response)
    pieces = wire.encode_answer(response)
    header = pb.FetchResponse()
    header.ParseFromString(pieces[1])
    assert all(not p.records for t in header.topics for p in t.partitions)
    assert _decode(pieces) == original


def test_a_request_round_trips() -> None:
    request = pb.ReplicaFetchRequest(
        replica_id=2,
        broker_epoch=77,
        max_wait_ms=500,
        min_bytes=1,
        max_bytes=1 << 20,
        topics=[
            pb.ReplicaFetchTopic(
                topic="t", partitions=[pb.ReplicaFetchPartition(partition=3, fetch_offset=9)]
            )
        ],
    )
    frame = wire.encode_request(request)
    length = wire.decode_length(frame[: wire.U32_SIZE], "request")
    assert length == len(frame) - wire.U32_SIZE
    assert wire.decode_request(frame[wire.U32_SIZE :]) == request


def test_an_error_answer_carries_the_kind_and_message() -> None:
    frame = wire.encode_error(ValueError("no such broker"))
    status, length = wire.decode_answer_head(frame[: wire.ANSWER_HEAD_SIZE])
    assert status == wire.STATUS_ERROR
    assert frame[wire.ANSWER_HEAD_SIZE :].decode() == "ValueError: no such broker"
    assert length == len(frame) - wire.ANSWER_HEAD_SIZE


def test_malformed_input_is_refused_with_a_clear_error() -> None:
    with pytest.raises(wire.ReplicationWireError, match="handshake"):
        wire.check_handshake(b"GET / ")
    with pytest.raises(wire.ReplicationWireError, match="over"):
        wire.decode_length((wire.MAX_FRAME_BYTES + 1).to_bytes(4, "big"), "request")
    with pytest.raises(wire.ReplicationWireError, match="status"):
        wire.decode_answer_head(b"\x07\x00\x00\x00\x01")
    with pytest.raises(wire.ReplicationWireError, match="malformed"):
        wire.decode_request(b"\xff\xff\xff")

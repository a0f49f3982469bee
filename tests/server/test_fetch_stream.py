"""FetchStream: pipelined fetches answered in order, with fetch_offset -1 continuing."""

from __future__ import annotations

import queue
import time

import pytest

from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.codec import record_batch as rb
from logstore.codec.wire import decode_response, encode_produce_request, encode_response
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess
from tests.server.test_broker_rpc import _batch, _produce


def _request(topic: str, offset: int, max_bytes: int = 0, wait_ms: int = 0) -> pb.FetchRequest:
    part = pb.FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=max_bytes)
    return pb.FetchRequest(
        topics=[pb.FetchTopic(topic=topic, partitions=[part])], max_wait_ms=wait_ms
    )


def _values(response: pb.FetchResponse) -> list[bytes]:
    result = response.topics[0].partitions[0]
    return [r.value for r in rb.decode_all(result.records)]  # type: ignore[misc]


def test_continuation_reads_on_where_the_previous_answer_ended(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="s", partitions=1), timeout=10)
    for i in range(3):
        _produce(stub, "s", 0, _batch([f"v{i}".encode()]))
    requests = [
        _request("s", -1),  # no earlier answer on this stream: an error for the partition
        _request("s", 1, max_bytes=1),  # one batch (KIP-74: the first is whole)
        _request("s", -1, max_bytes=1),
        _request("s", -1),  # caught up: answers empty after its (zero) wait
    ]
    answers = list(stub.FetchStream(iter(requests), timeout=10))
    assert answers[0].topics[0].partitions[0].error.kind == "InvalidRequestError"
    assert [_values(a) for a in answers[1:]] == [[b"v1"], [b"v2"], []]


def test_next_request_ends_a_long_poll(stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="lp", partitions=1), timeout=10)
    outbox: queue.SimpleQueue[pb.FetchRequest | None] = queue.SimpleQueue()
    call = stub.FetchStream(iter(outbox.get, None), timeout=20)
    # The broker answers in order and takes the next request only after answering one:
    # once the quick first answer is here, the 10 s long poll is the request in hand.
    outbox.put(_request("lp", 0))
    outbox.put(_request("lp", 0, wait_ms=10_000))
    assert _values(next(call)) == []
    started = time.monotonic()
    outbox.put(_request("lp", 0))
    long_poll = next(call)
    assert time.monotonic() - started < 5, "the long poll ran on after the next request"
    assert _values(long_poll) == []
    outbox.put(None)
    assert [_values(a) for a in call] == [[]]


def _poll_values(consumer: Consumer, count: int, timeout_s: float = 30.0) -> list[bytes]:
    """Values of the next `count` records, polled for at most `timeout_s` (fewer if that
    runs out, for the caller's assertion to show)."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    # a poll returns records or waits up to 0.2 s: the deadline ends the loop well before
    for _ in range(count + 10 * int(timeout_s / 0.2)):
        if len(values) >= count or time.monotonic() > deadline:
            break
        values += [r.value for r in consumer.poll(timeout=0.2)]  # type: ignore[misc]
    return values


def test_consumer_reads_the_same_over_stream_and_unary(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="both", partitions=1), timeout=10)
    with Producer(broker.address, batch_size=10_000) as producer:
        values = [f"{i:05d}".encode() * 400 for i in range(500)]
        for v in values:
            producer.send("both", v, partition=0)
        producer.flush()
        producer.send("both", b"last", partition=0).result(10)
    values.append(b"last")
    for streaming in (True, False):
        consumer = Consumer(
            broker.address,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_stream=streaming,
            max_partition_fetch_bytes=20_000,
        )
        try:
            consumer.assign([("both", 0)])
            got = _poll_values(consumer, len(values))
            consumer.seek("both", 0, 250)
            again = _poll_values(consumer, len(values) - 250)
        finally:
            consumer.close()
        assert got == values, streaming
        assert again == values[250:], streaming


@pytest.mark.parametrize("error", [pb.Error(), pb.Error(code=5, kind="X", message="m")])
def test_wire_encoding_is_the_protobuf_message(error: pb.Error) -> None:
    from logstore.codec.wire import PartitionAnswer

    answers = [("t", [PartitionAnswer(2, error, -1, 7, b"abc" * 100)])]
    message = pb.FetchResponse.FromString(encode_response(answers))
    result = message.topics[0].partitions[0]
    assert (result.partition, result.error, result.log_start_offset) == (2, error, 7)
    decoded = decode_response(message.SerializeToString())[0][1][0]
    assert (decoded.partition, decoded.error, decoded.high_watermark) == (2, error, -1)
    assert bytes(decoded.records) == b"abc" * 100
    produce = encode_produce_request(-1, 9, {"t": [(3, b"xyz")]})
    assert pb.ProduceRequest.FromString(produce) == pb.ProduceRequest(
        acks=-1,
        correlation_id=9,
        topics=[
            pb.ProduceTopicData(
                topic="t", partitions=[pb.ProducePartitionData(partition=3, records=b"xyz")]
            )
        ],
    )

"""The broker's RPCs over real gRPC against a real `logstore serve` process."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from logstore.codec import record_batch as rb
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess


def _batch(values: list[bytes], ts: int = 1_700_000_000_000, **producer: int) -> bytes:
    return rb.encode_batch([(None, v, None, ts + i) for i, v in enumerate(values)], **producer)


def _produce(
    stub: pb_grpc.LogStoreStub, topic: str, partition: int, data: bytes, acks: int = 1
) -> pb.ProducePartitionResult:
    response = stub.Produce(
        pb.ProduceRequest(
            acks=acks,
            topics=[
                pb.ProduceTopicData(
                    topic=topic,
                    partitions=[pb.ProducePartitionData(partition=partition, records=data)],
                )
            ],
        ),
        timeout=10,
    )
    return response.topics[0].partitions[0]


def _fetch(
    stub: pb_grpc.LogStoreStub,
    topic: str,
    partition: int,
    offset: int,
    part: dict[str, int] | None = None,
    **kw: int,
) -> pb.FetchPartitionResult:
    """Fetch one partition; `part` holds more FetchPartition fields, `kw` FetchRequest's."""
    fetch_partition = pb.FetchPartition(partition=partition, fetch_offset=offset, **(part or {}))
    response = stub.Fetch(
        pb.FetchRequest(topics=[pb.FetchTopic(topic=topic, partitions=[fetch_partition])], **kw),
        timeout=30,
    )
    return response.topics[0].partitions[0]


def _values(result: pb.FetchPartitionResult) -> list[bytes]:
    return [r.value for r in rb.decode_all(result.records)]  # type: ignore[misc]


def test_a_fetch_with_skip_bytes_starts_where_the_fetch_it_skips_ends(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=1), timeout=10)
    for i in range(30):
        _produce(stub, "t", 0, _batch([b"%d-%d" % (i, j) for j in range(i % 4 + 1)]))
    limit = {"partition_max_bytes": 300}
    for offset in (0, 5, 17, 40):
        skipped = rb.decode_all(_fetch(stub, "t", 0, offset, limit).records)
        after = rb.decode_all(_fetch(stub, "t", 0, offset, {**limit, "skip_bytes": 300}).records)
        assert skipped and after
        assert after[0].offset == skipped[-1].offset + 1
    everything = _fetch(stub, "t", 0, 0, {"partition_max_bytes": 1_000_000})
    end = rb.decode_all(everything.records)[-1].offset + 1
    past_all = _fetch(stub, "t", 0, 0, {"skip_bytes": 1_000_000}, max_wait_ms=0)
    assert (past_all.records, past_all.high_watermark) == (b"", end)


def test_create_produce_fetch_round_trip(stub: pb_grpc.LogStoreStub) -> None:
    created = stub.CreateTopic(pb.CreateTopicRequest(name="orders", partitions=3), timeout=10)
    assert [p.partition for p in created.topic.partitions] == [0, 1, 2]
    first = _produce(stub, "orders", 1, _batch([b"a", b"b"]))
    second = _produce(stub, "orders", 1, _batch([b"c"]), acks=-1)
    assert (first.base_offset, second.base_offset) == (0, 2)
    assert first.error.code == 0
    fetched = _fetch(stub, "orders", 1, 0)
    assert fetched.high_watermark == 3 and fetched.log_start_offset == 0
    assert _values(fetched) == [b"a", b"b", b"c"]
    described = stub.DescribeTopic(pb.DescribeTopicRequest(name="orders"), timeout=10).topic
    assert [p.log_end_offset for p in described.partitions] == [0, 3, 0]
    assert described.config["segment.bytes"] == "1073741824"


def test_bad_batches_get_invalid_argument_and_the_broker_keeps_serving(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=1), timeout=10)
    good = _batch([b"x" * 10])
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    bad_magic = bytearray(good)
    bad_magic[16] = 1
    for bad, word in [
        (bytes(bad_crc), "CRC"),
        (bytes(bad_magic), "magic"),
        (good[:-3], "bytes"),
        (b"\x00" * 7, "header"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            _produce(stub, "t", 0, bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert word in info.value.details()
    stub.AlterTopicConfig(
        pb.AlterTopicConfigRequest(name="t", set={"max.message.bytes": "100"}), timeout=10
    )
    with pytest.raises(grpc.RpcError) as info:
        _produce(stub, "t", 0, _batch([b"y" * 200]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max.message.bytes" in info.value.details()
    assert _produce(stub, "t", 0, good).base_offset == 0
    assert _values(_fetch(stub, "t", 0, 0)) == [b"x" * 10]


def test_errors_name_what_is_allowed(stub: pb_grpc.LogStoreStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.DescribeTopic(pb.DescribeTopicRequest(name="missing"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    stub.CreateTopic(pb.CreateTopicRequest(name="r", partitions=1), timeout=10)
    _produce(stub, "r", 0, _batch([b"1", b"2"]))
    result = _fetch(stub, "r", 0, 900)
    assert result.error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert result.error.message == "offset 900 out of range for r-0: valid 0..2"
    assert result.error.kind == "OffsetOutOfRangeError"
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateTopic(pb.CreateTopicRequest(name="../evil", partitions=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_long_poll_wakes_as_soon_as_data_arrives(stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="lp", partitions=1), timeout=10)
    timer = threading.Timer(0.3, lambda: _produce(stub, "lp", 0, _batch([b"wake"])))
    started = time.monotonic()
    timer.start()
    try:
        result = _fetch(stub, "lp", 0, 0, max_wait_ms=10_000, min_bytes=1)
    finally:
        timer.join(timeout=10)
    elapsed = time.monotonic() - started
    assert _values(result) == [b"wake"]
    assert 0.25 <= elapsed < 5.0
    empty_started = time.monotonic()
    assert _fetch(stub, "lp", 0, 1, max_wait_ms=200, min_bytes=1).records == b""
    assert time.monotonic() - empty_started >= 0.19


def test_committed_offsets_and_list_offsets(stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="c", partitions=2), timeout=10)
    _produce(stub, "c", 0, _batch([b"a", b"b", b"c"], ts=1000))
    stub.CommitOffsets(
        pb.CommitOffsetsRequest(
            group_id="billing",
            generation_id=-1,
            topics=[
                pb.CommitTopic(
                    topic="c", partitions=[pb.CommitPartition(partition=0, offset=2, metadata="m")]
                )
            ],
        ),
        timeout=10,
    )
    got = stub.FetchCommittedOffsets(
        pb.FetchCommittedOffsetsRequest(group_id="billing", topics=[pb.TopicPartitions(topic="c")]),
        timeout=10,
    ).offsets
    assert [(o.partition, o.offset, o.metadata) for o in got] == [(0, 2, "m"), (1, -1, "")]
    listed = stub.ListOffsets(
        pb.ListOffsetsRequest(
            topics=[
                pb.ListOffsetsTopic(
                    topic="c",
                    partitions=[
                        pb.ListOffsetsPartition(partition=0, timestamp=t)
                        for t in (-2, -1, 1001, 5000)
                    ],
                )
            ]
        ),
        timeout=10,
    )
    assert [(p.offset, p.timestamp) for p in listed.topics[0].partitions] == [
        (0, -1),
        (3, -1),
        (1, 1001),
        (-1, -1),
    ]


def test_idempotent_retry_is_not_appended_twice(stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="idem", partitions=1), timeout=10)
    pid = stub.InitProducerId(pb.InitProducerIdRequest(), timeout=10)
    batch = _batch(
        [b"pay"], producer_id=pid.producer_id, producer_epoch=pid.producer_epoch, base_sequence=0
    )
    first = _produce(stub, "idem", 0, batch)
    retry = _produce(stub, "idem", 0, batch)  # as if the first response was lost
    assert (first.base_offset, retry.base_offset, retry.duplicate) == (0, 0, True)
    assert _fetch(stub, "idem", 0, 0).high_watermark == 1


def test_kill9_keeps_acknowledged_records_and_commits(broker: BrokerProcess) -> None:
    with grpc.insecure_channel(broker.address) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        stub.CreateTopic(pb.CreateTopicRequest(name="k", partitions=2), timeout=10)
        for i in range(20):
            _produce(stub, "k", i % 2, _batch([b"%d" % i]))
        stub.CommitOffsets(
            pb.CommitOffsetsRequest(
                group_id="g",
                generation_id=-1,
                topics=[
                    pb.CommitTopic(
                        topic="k", partitions=[pb.CommitPartition(partition=1, offset=7)]
                    )
                ],
            ),
            timeout=10,
        )
    broker.kill9()
    broker.start()
    with grpc.insecure_channel(broker.address) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        assert _values(_fetch(stub, "k", 0, 0)) == [b"%d" % i for i in range(0, 20, 2)]
        assert _values(_fetch(stub, "k", 1, 0)) == [b"%d" % i for i in range(1, 20, 2)]
        got = stub.FetchCommittedOffsets(pb.FetchCommittedOffsetsRequest(group_id="g"), timeout=10)
        assert [(o.topic, o.partition, o.offset) for o in got.offsets] == [("k", 1, 7)]
    assert "recovered after unclean shutdown" in broker.start_line


def test_sigterm_shuts_down_cleanly(broker: BrokerProcess) -> None:
    assert broker.stop() == 0
    from logstore.codec import format as fmt

    assert (broker.data_dir / fmt.CLEAN_SHUTDOWN_FILE).exists()


def test_produce_stream_reports_a_bad_batch_per_partition_and_keeps_going(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="s", partitions=2), timeout=10)
    bad = bytearray(_batch([b"bad"]))
    bad[-1] ^= 0xFF

    def requests() -> Iterator[pb.ProduceRequest]:
        for cid, (p0, p1) in enumerate(
            [(_batch([b"a"]), bytes(bad)), (_batch([b"b"]), _batch([b"c"]))]
        ):
            yield pb.ProduceRequest(
                acks=1,
                correlation_id=cid,
                topics=[
                    pb.ProduceTopicData(
                        topic="s",
                        partitions=[
                            pb.ProducePartitionData(partition=0, records=p0),
                            pb.ProducePartitionData(partition=1, records=p1),
                        ],
                    )
                ],
            )

    responses = list(stub.ProduceStream(requests(), timeout=10))
    assert [r.correlation_id for r in responses] == [0, 1]
    first = {p.partition: p for p in responses[0].topics[0].partitions}
    assert first[0].error.code == 0 and first[0].base_offset == 0
    assert first[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "CRC" in first[1].error.message
    second = {p.partition: p.base_offset for p in responses[1].topics[0].partitions}
    assert second == {0: 1, 1: 0}  # the bad batch was never appended


def test_shutdown_does_not_wait_for_an_idle_open_stream(broker: BrokerProcess) -> None:
    import queue

    with grpc.insecure_channel(broker.address) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        stub.CreateTopic(pb.CreateTopicRequest(name="idle", partitions=1), timeout=10)
        pending: queue.Queue[pb.ProduceRequest | None] = queue.Queue()
        pending.put(
            pb.ProduceRequest(
                acks=1,
                topics=[
                    pb.ProduceTopicData(
                        topic="idle",
                        partitions=[pb.ProducePartitionData(partition=0, records=_batch([b"x"]))],
                    )
                ],
            )
        )
        stream = stub.ProduceStream(iter(pending.get, None), timeout=60)
        assert next(stream).topics[0].partitions[0].base_offset == 0  # the stream is open
        started = time.monotonic()
        assert broker.stop() == 0
        assert time.monotonic() - started < 5.0
        pending.put(None)


def test_fetch_keeps_to_its_byte_budget_and_errors_end_a_long_poll(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="big", partitions=2), timeout=10)
    for p in (0, 1):
        _produce(stub, "big", p, _batch([b"v" * 600_000]))
    response = stub.Fetch(
        pb.FetchRequest(
            max_bytes=1_000_000,
            topics=[
                pb.FetchTopic(
                    topic="big",
                    partitions=[
                        pb.FetchPartition(partition=0, fetch_offset=0),
                        pb.FetchPartition(partition=1, fetch_offset=0),
                    ],
                )
            ],
        ),
        timeout=10,
    )
    sizes = [len(p.records) for p in response.topics[0].partitions]
    assert sizes[0] > 600_000 and sizes[1] == 0  # only the first batch may pass the budget
    assert response.topics[0].partitions[1].high_watermark == 1
    started = time.monotonic()
    result = _fetch(stub, "big", 0, 99, max_wait_ms=10_000, min_bytes=1)
    assert result.error.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert time.monotonic() - started < 5.0

"""Names, config and size limits over the real gRPC API: every bad value is refused with
INVALID_ARGUMENT and a message naming the value and the rule, and nothing reaches disk.
(The rules themselves are unit-tested in tests/storage/test_log_config.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.faults.support import (
    RPC_TIMEOUT_S,
    connect,
    create_topic,
    fetch_once,
    produce,
    values_batch,
)
from tests.server.conftest import BrokerProcess


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path_factory.mktemp("validation") / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with connect(broker.address) as s:
        yield s


def _refused(call: object, *args: object, match: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=RPC_TIMEOUT_S)  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value  # type: ignore[attr-defined]
    assert match in info.value.details(), info.value.details()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "x" * 250, "tab\tname", "ü"])
def test_bad_topic_names(broker: BrokerProcess, stub: pb_grpc.LogStoreStub, name: str) -> None:
    _refused(stub.CreateTopic, pb.CreateTopicRequest(name=name, partitions=1), match="topic name")
    assert not (broker.data_dir / f"{name}-0").exists()
    assert not list(broker.data_dir.parent.glob("x-0"))


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("segment.bytes", str(10**30), "segment.bytes"),
        ("segment.bytes", "-1", "segment.bytes"),
        ("retention.ms", "-2", "-1 = unlimited"),
        ("retention.bytes", "-5", "retention.bytes"),
        ("max.message.bytes", str(2**31 - 1), "max.message.bytes"),
        ("max.message.bytes", str(65 * 1024 * 1024), "at most"),
        ("../segment.bytes", "1", "unknown config"),
        ("cleanup.policy", "../../etc", "cleanup.policy"),
        ("flush.ms", "1e3", "flush.ms"),
    ],
)
def test_bad_config_on_create_and_alter(
    stub: pb_grpc.LogStoreStub, key: str, value: str, match: str
) -> None:
    _refused(
        stub.CreateTopic,
        pb.CreateTopicRequest(name="cfg-new", partitions=1, config={key: value}),
        match=match,
    )
    names = {t.name for t in stub.ListTopics(pb.ListTopicsRequest(), timeout=RPC_TIMEOUT_S).topics}
    assert "cfg-new" not in names
    if "cfg" not in names:
        create_topic(stub, "cfg")
    _refused(
        stub.AlterTopicConfig, pb.AlterTopicConfigRequest(name="cfg", set={key: value}), match=match
    )
    described = stub.DescribeTopic(pb.DescribeTopicRequest(name="cfg"), timeout=RPC_TIMEOUT_S)
    assert dict(described.topic.config_overrides) == {}


def test_max_message_bytes_up_to_the_request_limit_is_accepted(stub: pb_grpc.LogStoreStub) -> None:
    """A limit below the 64 MiB request limit is kept, and it is the limit a batch meets:
    a 2 MiB batch, over the 1 MiB default, is appended and read back whole."""
    limit = str(60 * 1024 * 1024)
    create_topic(stub, "big-ok", max_message_bytes=limit)
    described = stub.DescribeTopic(pb.DescribeTopicRequest(name="big-ok"), timeout=RPC_TIMEOUT_S)
    assert dict(described.topic.config_overrides) == {"max.message.bytes": limit}
    values = [bytes([65 + i]) * (512 * 1024) for i in range(4)]
    batch = values_batch(values)
    assert len(batch) > 2 * 1024 * 1024
    result = produce(stub, "big-ok", batch)
    assert (result.error.code, result.base_offset) == (0, 0)
    fetched = fetch_once(stub, "big-ok", 0, 0, max_bytes=len(batch))
    assert fetched.records == batch
    create_topic(stub, "big-default")  # the same batch against the default limit
    with pytest.raises(grpc.RpcError) as refused:
        produce(stub, "big-default", batch)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "exceeds max.message.bytes 1048588" in refused.value.details()  # type: ignore[attr-defined]


def test_batch_over_max_message_bytes_names_the_limit(stub: pb_grpc.LogStoreStub) -> None:
    create_topic(stub, "small", max_message_bytes="2048")
    assert produce(stub, "small", values_batch([b"x" * 1000])).error.code == 0
    with pytest.raises(grpc.RpcError) as info:
        produce(stub, "small", values_batch([b"x" * 4000]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "exceeds max.message.bytes 2048" in info.value.details()  # type: ignore[attr-defined]


def test_request_over_the_grpc_limit_is_resource_exhausted(stub: pb_grpc.LogStoreStub) -> None:
    create_topic(stub, "huge")
    with pytest.raises(grpc.RpcError) as info:
        produce(stub, "huge", values_batch([b"x" * (65 * 1024 * 1024)]))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("group", "match"), [("", "group_id must not be empty"), ("g" * 40_000, "too long")]
)
def test_bad_group_ids_on_commit(stub: pb_grpc.LogStoreStub, group: str, match: str) -> None:
    if "cfg" not in {t.name for t in stub.ListTopics(pb.ListTopicsRequest()).topics}:
        create_topic(stub, "cfg")
    request = pb.CommitOffsetsRequest(
        group_id=group,
        topics=[
            pb.CommitTopic(topic="cfg", partitions=[pb.CommitPartition(partition=0, offset=1)])
        ],
    )
    _refused(stub.CommitOffsets, request, match=match)


def test_path_like_group_ids_are_only_names(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    """Group ids are keys inside __consumer_offsets, never paths."""
    if "cfg" not in {t.name for t in stub.ListTopics(pb.ListTopicsRequest()).topics}:
        create_topic(stub, "cfg")
    before = sorted(p.name for p in broker.data_dir.parent.iterdir())
    for group in ("../../etc/passwd", "/abs", "a\0b"):
        stub.CommitOffsets(
            pb.CommitOffsetsRequest(
                group_id=group,
                topics=[
                    pb.CommitTopic(
                        topic="cfg", partitions=[pb.CommitPartition(partition=0, offset=1)]
                    )
                ],
            ),
            timeout=RPC_TIMEOUT_S,
        )
        committed = stub.FetchCommittedOffsets(
            pb.FetchCommittedOffsetsRequest(group_id=group), timeout=RPC_TIMEOUT_S
        )
        assert [(c.topic, c.offset) for c in committed.offsets] == [("cfg", 1)]
    assert sorted(p.name for p in broker.data_dir.parent.iterdir()) == before


def test_request_bytes_that_do_not_parse_are_invalid_argument(broker: BrokerProcess) -> None:
    """Regression: gRPC answers INTERNAL when a request deserializer raises."""
    with grpc.insecure_channel(broker.address) as channel:
        call = channel.unary_unary("/logstore.v1.LogStore/Produce")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff", timeout=RPC_TIMEOUT_S)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "malformed logstore.v1.ProduceRequest" in info.value.details()  # type: ignore[attr-defined]


def test_a_fetch_of_no_partitions_returns_at_once(stub: pb_grpc.LogStoreStub) -> None:
    """Regression: it waited out max_wait_ms (up to 30 s) for data that cannot arrive."""
    started = time.monotonic()
    stub.Fetch(pb.FetchRequest(max_wait_ms=20_000), timeout=RPC_TIMEOUT_S)
    stub.Fetch(
        pb.FetchRequest(topics=[pb.FetchTopic(topic="cfg")], max_wait_ms=20_000),
        timeout=RPC_TIMEOUT_S,
    )
    assert time.monotonic() - started < 5

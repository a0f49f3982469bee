"""Prometheus metrics: real gRPC to a real in-process broker, /metrics scraped over HTTP."""

from __future__ import annotations

import re
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from logstore import __version__
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.server.app import Broker, BrokerSettings
from logstore.storage.log_manager import ManagerSettings
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.helpers import wait_until

SERVICE = "logstore.v1.LogStore"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _start(data_dir: Path, manager: ManagerSettings | None = None) -> Broker:
    broker = Broker(
        BrokerSettings(
            data_dir=data_dir,
            listen="127.0.0.1:0",
            metrics_listen="127.0.0.1:0",
            manager=manager or ManagerSettings(),
            shutdown_grace_s=2.0,
        )
    )
    broker.start()
    return broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    started = _start(tmp_path / "data")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def stub(broker: Broker) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def scrape(broker: Broker) -> Samples:
    """Every sample of /metrics, keyed by (name, labels)."""
    url = f"http://{broker.metrics_address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def requests_of(samples: Samples, method: str, code: str) -> float:
    found = value(samples, "logstore_rpc_requests_total", service=SERVICE, method=method, code=code)
    return found or 0.0


def _batch(count: int, size: int = 10, **producer: int) -> bytes:
    return rb.encode_batch(
        [(None, bytes([65 + i % 26]) * size, None, 1_700_000_000_000 + i) for i in range(count)],
        **producer,
    )


def _produce_request(topic: str, partition: int, data: bytes) -> pb.ProduceRequest:
    return pb.ProduceRequest(
        acks=1,
        topics=[
            pb.ProduceTopicData(
                topic=topic, partitions=[pb.ProducePartitionData(partition=partition, records=data)]
            )
        ],
    )


def _produce(
    stub: pb_grpc.LogStoreStub, topic: str, partition: int, data: bytes
) -> pb.ProducePartitionResult:
    return (
        stub.Produce(_produce_request(topic, partition, data), timeout=10).topics[0].partitions[0]
    )


def _fetch(stub: pb_grpc.LogStoreStub, topic: str, partition: int, offset: int) -> bytes:
    response = stub.Fetch(
        pb.FetchRequest(
            topics=[
                pb.FetchTopic(
                    topic=topic,
                    partitions=[pb.FetchPartition(partition=partition, fetch_offset=offset)],
                )
            ]
        ),
        timeout=10,
    )
    return response.topics[0].partitions[0].records


def test_produce_fetch_counters_and_partition_gauges(
    broker: Broker, stub: pb_grpc.LogStoreStub
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="orders", partitions=2), timeout=10)
    unary = [_batch(5), _batch(7, size=100), _batch(3)]
    for data in unary:
        assert _produce(stub, "orders", 0, data).error.code == 0
    streamed = [_batch(2), _batch(2)]
    responses = list(
        stub.ProduceStream(iter(_produce_request("orders", 1, d) for d in streamed), timeout=10)
    )
    assert len(responses) == 2
    fetched = _fetch(stub, "orders", 0, 0)
    stream_request = pb.FetchRequest(
        topics=[pb.FetchTopic(topic="orders", partitions=[pb.FetchPartition(partition=1)])]
    )
    (answer,) = stub.FetchStream(iter([stream_request]), timeout=10)
    assert len(answer.topics[0].partitions[0].records) == sum(map(len, streamed))

    samples = scrape(broker)
    p0 = {"topic": "orders", "partition": "0"}
    p1 = {"topic": "orders", "partition": "1"}
    assert value(samples, "logstore_partition_log_start_offset", **p0) == 0
    assert value(samples, "logstore_partition_log_end_offset", **p0) == 15
    assert value(samples, "logstore_partition_log_end_offset", **p1) == 4
    assert value(samples, "logstore_partition_size_bytes", **p0) == sum(map(len, unary))
    assert value(samples, "logstore_partition_segments", **p0) == 1
    assert value(samples, "logstore_partition_retention_deleted_segments_total", **p0) == 0
    assert value(samples, "logstore_partition_compacted_records_total", **p0) == 0
    # the internal offsets topic is storage too, so it is reported like any other
    assert (
        value(
            samples, "logstore_partition_log_end_offset", topic="__consumer_offsets", partition="0"
        )
        == 0
    )

    assert value(samples, "logstore_produced_records_total", topic="orders") == 19
    all_bytes = sum(map(len, unary + streamed))
    assert value(samples, "logstore_produced_bytes_total", topic="orders") == all_bytes
    # 15 by Fetch, 4 by FetchStream
    assert value(samples, "logstore_fetched_records_total", topic="orders") == 19
    fetched_bytes = len(fetched) + sum(map(len, streamed))
    assert value(samples, "logstore_fetched_bytes_total", topic="orders") == fetched_bytes

    assert requests_of(samples, "Produce", "OK") == 3
    assert requests_of(samples, "ProduceStream", "OK") == 1  # a stream counts once
    assert requests_of(samples, "Fetch", "OK") == 1
    assert requests_of(samples, "CreateTopic", "OK") == 1
    duration = {"service": SERVICE, "method": "Produce"}
    assert value(samples, "logstore_rpc_request_duration_seconds_count", **duration) == 3
    assert value(samples, "logstore_rpc_request_duration_seconds_sum", **duration) > 0
    inf = value(samples, "logstore_rpc_request_duration_seconds_bucket", le="+Inf", **duration)
    assert inf == 3


def test_rejected_and_duplicate_batches_count_as_errors_not_records(
    broker: Broker, stub: pb_grpc.LogStoreStub
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=1), timeout=10)
    good = _batch(4)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    with pytest.raises(grpc.RpcError) as info:
        _produce(stub, "t", 0, bytes(bad_crc))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        _produce(stub, "no-such-topic", 0, good)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    pid = stub.InitProducerId(pb.InitProducerIdRequest(), timeout=10)
    idempotent = _batch(
        3, producer_id=pid.producer_id, producer_epoch=pid.producer_epoch, base_sequence=0
    )
    assert not _produce(stub, "t", 0, idempotent).duplicate
    assert _produce(stub, "t", 0, idempotent).duplicate  # a retry: acknowledged, not appended

    samples = scrape(broker)
    assert requests_of(samples, "Produce", "INVALID_ARGUMENT") == 1
    assert requests_of(samples, "Produce", "NOT_FOUND") == 1
    assert requests_of(samples, "Produce", "OK") == 2
    assert value(samples, "logstore_produced_records_total", topic="t") == 3
    assert value(samples, "logstore_produced_bytes_total", topic="t") == len(idempotent)
    assert value(samples, "logstore_partition_log_end_offset", topic="t", partition="0") == 3
    # a refused request names no topic series, whatever topic it asked for
    assert value(samples, "logstore_produced_records_total", topic="no-such-topic") is None


def test_group_members_state_lag_and_rebalances(broker: Broker, stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=2), timeout=10)
    _produce(stub, "t", 0, _batch(10))
    joined = stub.JoinGroup(
        pb.GroupHeartbeatRequest(
            group_id="g",
            subscription=pb.Subscription(topics=["t"]),
            client_id="metrics-test",
            session_timeout_ms=30_000,
        ),
        timeout=10,
    )
    member, epoch, assignment = joined.member_id, joined.member_epoch, joined.assignment
    for _ in range(10):  # heartbeat, acknowledging what it holds, until nothing changes
        beat = stub.Heartbeat(
            pb.GroupHeartbeatRequest(
                group_id="g", member_id=member, member_epoch=epoch, owned=assignment
            ),
            timeout=10,
        )
        if beat.member_epoch == epoch and beat.assignment == assignment:
            break
        epoch, assignment = beat.member_epoch, beat.assignment
    owned = {(t.topic, p) for t in assignment.topics for p in t.partitions}
    assert owned == {("t", 0), ("t", 1)}
    stub.CommitOffsets(
        pb.CommitOffsetsRequest(
            group_id="g",
            member_id=member,
            generation_id=epoch,
            topics=[
                pb.CommitTopic(topic="t", partitions=[pb.CommitPartition(partition=0, offset=4)])
            ],
        ),
        timeout=10,
    )

    samples = scrape(broker)
    assert value(samples, "logstore_group_members", group="g") == 1
    assert value(samples, "logstore_group_state", group="g", state="Stable") == 1
    assert value(samples, "logstore_group_state", group="g", state="Rebalancing") == 0
    assert value(samples, "logstore_group_state", group="g", state="Empty") == 0
    tp0 = {"group": "g", "topic": "t", "partition": "0"}
    end = value(samples, "logstore_partition_log_end_offset", topic="t", partition="0")
    assert end == 10
    assert value(samples, "logstore_group_committed_offset", **tp0) == 4
    assert value(samples, "logstore_group_lag_records", **tp0) == end - 4
    # nothing committed for partition 1: its lag is unknown, so there is no series
    assert value(samples, "logstore_group_lag_records", group="g", topic="t", partition="1") is None
    rebalances = value(samples, "logstore_group_rebalances_total")
    assert rebalances is not None and rebalances >= 1

    _produce(stub, "t", 0, _batch(5))
    stub.LeaveGroup(
        pb.GroupHeartbeatRequest(group_id="g", member_id=member, member_epoch=epoch), timeout=10
    )
    samples = scrape(broker)
    assert value(samples, "logstore_group_members", group="g") == 0
    assert value(samples, "logstore_group_state", group="g", state="Empty") == 1
    assert value(samples, "logstore_group_lag_records", **tp0) == 15 - 4
    assert value(samples, "logstore_group_rebalances_total") == rebalances + 1
    assert requests_of(samples, "JoinGroup", "OK") == 1
    assert requests_of(samples, "CommitOffsets", "OK") == 1


def test_a_client_that_gives_up_is_counted_as_cancelled(
    broker: Broker, stub: pb_grpc.LogStoreStub
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="lp", partitions=1), timeout=10)
    long_poll = pb.FetchRequest(
        max_wait_ms=1_500,
        min_bytes=1,
        topics=[pb.FetchTopic(topic="lp", partitions=[pb.FetchPartition(partition=0)])],
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Fetch(long_poll, timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the handler notices once its long poll ends, after the client has gone
    wait_until(
        lambda: requests_of(scrape(broker), "Fetch", "CANCELLED") == 1,
        "the cancelled Fetch to be counted",
    )
    assert requests_of(scrape(broker), "Fetch", "OK") == 0


def test_a_cancelled_stream_is_counted_once(broker: Broker, stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="s", partitions=1), timeout=10)
    release = threading.Event()

    def requests() -> Iterator[pb.ProduceRequest]:
        yield _produce_request("s", 0, _batch(6))
        release.wait(10)  # keep the stream open until the client has cancelled it

    call = stub.ProduceStream(requests(), timeout=30)
    try:
        assert next(call).topics[0].partitions[0].base_offset == 0
        call.cancel()
    finally:
        release.set()

    def streams() -> float:
        samples = scrape(broker)
        return sum(requests_of(samples, "ProduceStream", code) for code in ("CANCELLED", "OK"))

    # The handler may see the cancel as an error or as its requests simply ending (gRPC
    # reports both), so the code is either; what matters is one request, and no hang.
    wait_until(lambda: streams() == 1, "the cancelled stream to be counted once")
    samples = scrape(broker)
    assert value(samples, "logstore_produced_records_total", topic="s") == 6
    duration = {"service": SERVICE, "method": "ProduceStream"}
    assert value(samples, "logstore_rpc_request_duration_seconds_count", **duration) == 1


def counter(broker: Broker, name: str, labels: dict[str, str]) -> float:
    """A counter's value now; 0 while it has no sample yet."""
    return value(scrape(broker), name, **labels) or 0.0


def test_retention_deletions_are_counted(tmp_path: Path) -> None:
    fast = ManagerSettings(retention_check_interval_ms=50, flush_check_interval_ms=10)
    broker = _start(tmp_path / "data", fast)
    try:
        with grpc.insecure_channel(broker.address) as channel:
            stub = pb_grpc.LogStoreStub(channel)
            config = {
                "segment.bytes": "1024",
                "retention.bytes": "1024",
                "file.delete.delay.ms": "0",
            }
            stub.CreateTopic(
                pb.CreateTopicRequest(name="r", partitions=1, config=config), timeout=10
            )
            for _ in range(5):  # each ~700-byte batch fills a segment of its own
                _produce(stub, "r", 0, _batch(1, size=600))
        labels = {"topic": "r", "partition": "0"}

        def deleted() -> float:
            return counter(broker, "logstore_partition_retention_deleted_segments_total", labels)

        wait_until(lambda: deleted() >= 3, "retention to delete 3 segments")
        samples = scrape(broker)
        assert value(samples, "logstore_partition_log_start_offset", **labels) == deleted()
        assert value(samples, "logstore_partition_log_end_offset", **labels) == 5
        assert value(samples, "logstore_partition_segments", **labels) == 5 - deleted()
    finally:
        broker.stop()


def test_compaction_is_counted(tmp_path: Path) -> None:
    fast = ManagerSettings(cleaner_backoff_ms=20, flush_check_interval_ms=10)
    broker = _start(tmp_path / "data", fast)
    try:
        with grpc.insecure_channel(broker.address) as channel:
            stub = pb_grpc.LogStoreStub(channel)
            config = {"segment.bytes": "1024", "cleanup.policy": "compact"}
            stub.CreateTopic(
                pb.CreateTopicRequest(name="c", partitions=1, config=config), timeout=10
            )
            for i in range(6):  # each ~700-byte batch fills a segment of its own
                record = (b"same-key", b"%d" % i + b"x" * 600, None, 1_700_000_000_000)
                _produce(stub, "c", 0, rb.encode_batch([record]))
        labels = {"topic": "c", "partition": "0"}

        def compacted() -> float:
            return counter(broker, "logstore_partition_compacted_records_total", labels)

        # Sealed: offsets 0-4, one key. However passes fall between the appends, at least
        # three of those records go (the dirty-ratio rule may leave the fourth for later).
        wait_until(lambda: compacted() >= 3, "compaction to remove 3 records")
        assert value(scrape(broker), "logstore_partition_log_end_offset", **labels) == 6
    finally:
        broker.stop()


def test_recovery_after_unclean_shutdown_is_reported(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = _start(data_dir)
    try:
        with grpc.insecure_channel(first.address) as channel:
            stub = pb_grpc.LogStoreStub(channel)
            stub.CreateTopic(pb.CreateTopicRequest(name="c", partitions=1), timeout=10)
            _produce(stub, "c", 0, _batch(8))
        samples = scrape(first)
        assert value(samples, "logstore_recovery_unclean_shutdown") == 0  # a new data dir
        assert value(samples, "logstore_recovery_repaired_partitions") == 0
    finally:
        first.stop()

    # Simulate a crash mid-write: a torn batch at the tail and no clean-shutdown marker.
    torn = b"\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00"
    with open(data_dir / "c-0" / fmt.offset_file_name(0, fmt.LOG_SUFFIX), "ab") as log_file:
        log_file.write(torn)
    (data_dir / fmt.CLEAN_SHUTDOWN_FILE).unlink()

    second = _start(data_dir)
    try:
        samples = scrape(second)
        assert value(samples, "logstore_recovery_unclean_shutdown") == 1
        # only the torn partition: idle ones whose tail was merely re-scanned are intact
        assert value(samples, "logstore_recovery_repaired_partitions") == 1
        assert value(samples, "logstore_recovery_truncated_bytes") == len(torn)
        assert value(samples, "logstore_partition_log_end_offset", topic="c", partition="0") == 8
    finally:
        second.stop()


def test_metrics_server_stops_with_the_broker(tmp_path: Path) -> None:
    broker = _start(tmp_path / "data")
    try:
        url = f"http://{broker.metrics_address}/metrics"
        assert value(scrape(broker), "logstore_build_info", version=__version__) == 1
    finally:
        broker.stop()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, timeout=5)


def test_an_unusable_metrics_address_fails_the_start_and_leaves_the_data_clean(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for listen in (f"127.0.0.1:{port}", "127.0.0.1:not-a-port"):
            settings = BrokerSettings(
                data_dir=data_dir, listen="127.0.0.1:0", metrics_listen=listen
            )
            # one wording, naming the address, whichever check refused it
            with pytest.raises(OSError, match=f"^cannot serve metrics: '?{re.escape(listen)}"):
                Broker(settings)
    # the failed starts were refused before touching the data dir: nothing to recover
    assert not data_dir.exists()
    broker = Broker(BrokerSettings(data_dir=data_dir, listen="127.0.0.1:0"))
    try:
        assert not broker.manager.recovered_after_unclean_shutdown
        assert broker.metrics is None and broker.metrics_address == ""
    finally:
        broker.stop()


def test_serve_flag_serves_metrics(tmp_path: Path) -> None:
    from tests.server.conftest import BrokerProcess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = BrokerProcess(tmp_path / "data", ["--metrics-listen", f"127.0.0.1:{port}"])
    broker.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert "logstore_build_info" in text
    finally:
        assert broker.stop() == 0

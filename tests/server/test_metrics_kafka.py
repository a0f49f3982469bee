"""Prometheus metrics of the Kafka listener and of Kafka clients' groups: a real broker
process (`--kafka-listen`, `--metrics-listen`), unmodified Kafka clients, /metrics scraped
over HTTP.

Every client has short timeouts; every wait is bounded (`wait_until`, `poll_records`).
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka as confluent
import pytest
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.protocol.metadata import ApiVersionsResponse
from kafka.protocol.producer import ProduceRequest
from prometheus_client.parser import text_string_to_metric_families

from logstore import Admin
from logstore.codec import record_batch as rb
from tests.helpers import wait_until
from tests.kafka.conftest import KafkaBrokerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: how long any one expected change may take (s)
WAIT_S = 30.0
#: Kafka's minimum session timeout (ms), so a member that leaves is noticed soon
SESSION_MS = 6_000
#: the states a group's `logstore_group_state` samples name, one each
ALL_STATES = ("Empty", "Rebalancing", "PreparingRebalance", "CompletingRebalance", "Stable")


class MetricsBroker(KafkaBrokerProcess):
    """A broker process with a Kafka listener and /metrics on a port picked here."""

    def __init__(self, data_dir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.metrics_port = probe.getsockname()[1]
        super().__init__(
            data_dir,
            [
                f"--metrics-listen=127.0.0.1:{self.metrics_port}",
                # classic groups form at once: tests need not wait Kafka's 3 s
                "--group-initial-rebalance-delay-ms=0",
            ],
        )

    def scrape(self) -> Samples:
        """Every sample of /metrics, keyed by (name, labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MetricsBroker]:
    process = MetricsBroker(tmp_path / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (e.g. over versions)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def create_topic(broker: MetricsBroker, topic: str, partitions: int) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic(topic, partitions=partitions)


def confluent_produce(broker: MetricsBroker, topic: str, count: int) -> None:
    """`count` records to partition 0, acknowledged by all replicas, in a few batches."""
    producer = confluent.Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "message.timeout.ms": 20_000,
            "socket.timeout.ms": 10_000,
        }
    )
    for i in range(count):
        producer.produce(topic, value=b"value-%d" % i, key=b"key-%d" % i, partition=0)
    assert producer.flush(WAIT_S) == 0, "records still unacknowledged"


def kafka_python_consumer(broker: MetricsBroker, **config: Any) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        request_timeout_ms=20_000,
        fetch_max_wait_ms=100,
        **config,
    )


def poll_records(consumer: KafkaConsumer, count: int) -> list[Any]:
    """Exactly the first `count` records a kafka-python consumer gets, within WAIT_S."""
    got: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    for _ in range(10_000):
        if len(got) >= count or time.monotonic() > deadline:
            break
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(batch)
    assert len(got) == count, f"got {len(got)} of {count} records"
    return got


def test_kafka_requests_and_records_are_counted(broker: MetricsBroker) -> None:
    n = 500
    create_topic(broker, "kafka-traffic", 1)
    confluent_produce(broker, "kafka-traffic", n)
    consumer = kafka_python_consumer(broker, client_id="metrics-reader")
    try:
        consumer.assign([TopicPartition("kafka-traffic", 0)])
        records = poll_records(consumer, n)
    finally:
        consumer.close()
    assert [r.offset for r in records] == list(range(n))

    samples = broker.scrape()
    topic = {"topic": "kafka-traffic"}
    assert value(samples, "logstore_produced_records_total", **topic) == n
    produced_bytes = value(samples, "logstore_produced_bytes_total", **topic)
    assert produced_bytes is not None and produced_bytes > n * len(b"value-0")
    # one pass from offset 0, whole batches: what was stored is what was sent back
    assert value(samples, "logstore_fetched_records_total", **topic) == n
    assert value(samples, "logstore_fetched_bytes_total", **topic) == produced_bytes

    for api in ("ApiVersions", "Metadata", "Produce", "Fetch"):
        # ApiVersions above the served range is answered without a handler, so untimed
        unserved = value(samples, "logstore_kafka_requests_total", api=api, version="unserved")
        count = total(samples, "logstore_kafka_requests_total", api=api) - (unserved or 0)
        assert count >= 1, api
        duration = {"api": api}
        assert value(samples, "logstore_kafka_request_duration_seconds_count", **duration) == count
        assert value(samples, "logstore_kafka_request_bytes_total", **duration) > 0
        assert value(samples, "logstore_kafka_response_bytes_total", **duration) > 0
    # every Produce a client sends is at a served version with record batches (v3+)
    produce_versions = {
        dict(labels)["version"]
        for (name, labels), _ in samples.items()
        if name == "logstore_kafka_requests_total" and dict(labels)["api"] == "Produce"
    }
    assert produce_versions and all(int(v) >= 3 for v in produce_versions)
    # the topic was created over gRPC, and no Kafka client asked for it
    assert total(samples, "logstore_kafka_requests_total", api="CreateTopics") == 0
    assert total(samples, "logstore_kafka_closing_requests_total") == 0
    assert value(samples, "logstore_kafka_protocol_violations_total") == 0
    accepted = value(samples, "logstore_kafka_connections_accepted_total")
    assert accepted is not None and accepted >= 2  # a producer and a consumer at least
    assert value(samples, "logstore_kafka_connections_refused_total") == 0
    # both clients are closed: their connections end
    wait_until(
        lambda: value(broker.scrape(), "logstore_kafka_connections") == 0,
        "the Kafka connections to close",
        timeout_s=WAIT_S,
    )


def test_a_kafka_python_group_is_reported_with_its_lag(broker: MetricsBroker) -> None:
    create_topic(broker, "kafka-group-topic", 2)
    confluent_produce(broker, "kafka-group-topic", 30)
    consumer = kafka_python_consumer(
        broker,
        group_id="kafka-metrics-group",
        client_id="metrics-member",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=500,
        max_poll_interval_ms=20_000,
    )
    group = {"group": "kafka-metrics-group"}
    try:
        consumer.subscribe(["kafka-group-topic"])
        poll_records(consumer, 30)
        tp = TopicPartition("kafka-group-topic", 0)
        consumer.commit({tp: OffsetAndMetadata(10, "", -1)})
        samples = broker.scrape()
        assert value(samples, "logstore_group_members", **group) == 1
        states = {s: value(samples, "logstore_group_state", state=s, **group) for s in ALL_STATES}
        assert states == {s: float(s == "Stable") for s in ALL_STATES}
        tp0 = {**group, "topic": "kafka-group-topic", "partition": "0"}
        assert value(samples, "logstore_group_committed_offset", **tp0) == 10
        assert value(samples, "logstore_group_lag_records", **tp0) == 30 - 10
        rebalances = value(samples, "logstore_group_rebalances_total")
        assert rebalances is not None and rebalances >= 1
        for api in ("FindCoordinator", "JoinGroup", "SyncGroup", "OffsetCommit"):
            assert total(samples, "logstore_kafka_requests_total", api=api) >= 1, api
    finally:
        consumer.close()  # leaves the group

    def left() -> bool:
        samples = broker.scrape()
        return (
            value(samples, "logstore_group_members", **group) == 0
            and value(samples, "logstore_group_state", state="Empty", **group) == 1
        )

    wait_until(left, "the group to be reported Empty", timeout_s=WAIT_S)
    samples = broker.scrape()
    assert value(samples, "logstore_group_state", state="Stable", **group) == 0
    # the commit outlives the membership
    tp0 = {**group, "topic": "kafka-group-topic", "partition": "0"}
    assert value(samples, "logstore_group_lag_records", **tp0) == 20
    assert total(samples, "logstore_kafka_requests_total", api="LeaveGroup") == 1


def _connect(broker: MetricsBroker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", broker.kafka_port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_by_broker(sock: socket.socket) -> bool:
    """Whether the broker closes `sock` without a byte more (within the socket timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _read_frame(sock: socket.socket) -> bytes:
    data = b""
    for _ in range(1_000):
        if len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
            return data[4:]
        chunk = sock.recv(65536)
        assert chunk, "the broker closed the connection instead of answering"
        data += chunk
    raise AssertionError("no whole response frame")


def _acks0_produce_frame(topic: str, batch: bytes) -> bytes:
    partition = ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=batch)
    request = ProduceRequest(
        version=7,
        transactional_id=None,
        acks=0,
        timeout_ms=5_000,
        topic_data=[ProduceRequest.TopicProduceData(name=topic, partition_data=[partition])],
    )
    request.with_header(correlation_id=3, client_id="metrics-test")
    return bytes(request.encode(header=True, framed=True))


def test_protocol_violations_and_closing_requests_are_counted(broker: MetricsBroker) -> None:
    create_topic(broker, "kafka-refused", 1)
    # a frame too small for a request header, then an unknown API key
    unknown_api = struct.pack(">hhih", 999, 0, 5, -1)
    for data in (struct.pack(">i", 3), struct.pack(">i", len(unknown_api)) + unknown_api):
        with _connect(broker) as sock:
            sock.sendall(data)
            assert _closed_by_broker(sock)
    # ApiVersions at a version above the served range: answered by the connection itself
    api_versions_v9 = struct.pack(">hhih", 18, 9, 41, -1)
    with _connect(broker) as sock:
        sock.sendall(struct.pack(">i", len(api_versions_v9)) + api_versions_v9)
        answer = ApiVersionsResponse.decode(_read_frame(sock), version=0, header=True)
        assert answer.error_code == 35  # UNSUPPORTED_VERSION
    # acks=0 with a corrupt batch: no response can carry the error, so the broker closes
    batch = bytearray(rb.encode_batch([(b"k", b"v", (), 1_700_000_000_000)]))
    batch[-1] ^= 0xFF
    with _connect(broker) as sock:
        sock.sendall(_acks0_produce_frame("kafka-refused", bytes(batch)))
        assert _closed_by_broker(sock)

    def settled() -> bool:
        return value(broker.scrape(), "logstore_kafka_connections") == 0

    wait_until(settled, "the refused connections to close", timeout_s=WAIT_S)
    samples = broker.scrape()
    assert value(samples, "logstore_kafka_protocol_violations_total") == 2
    assert value(samples, "logstore_kafka_connections_accepted_total") == 4
    unserved = {"api": "ApiVersions", "version": "unserved"}
    assert value(samples, "logstore_kafka_requests_total", **unserved) == 1
    closing = {"api": "Produce", "reason": "not_served"}
    assert value(samples, "logstore_kafka_closing_requests_total", **closing) == 1
    assert value(samples, "logstore_kafka_requests_total", api="Produce", version="7") == 1
    assert value(samples, "logstore_kafka_response_bytes_total", api="Produce") in (None, 0)
    # refused, so nothing was appended or counted for the topic
    assert value(samples, "logstore_produced_records_total", topic="kafka-refused") is None

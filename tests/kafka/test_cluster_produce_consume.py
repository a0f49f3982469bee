"""Kafka clients against a three-broker cluster (real etcd, three `logstore serve` processes,
each with a Kafka listener): only a partition's leader serves produce, fetch and list
offsets, and a leader killed under load costs an idempotent acks=all producer and an
assign() consumer no record."""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer as ConfluentProducer
from kafka import KafkaConsumer, TopicPartition
from kafka.protocol.consumer import (
    FetchRequest,
    FetchResponse,
    ListOffsetsRequest,
    ListOffsetsResponse,
)
from kafka.protocol.producer import ProduceRequest, ProduceResponse

from logstore import Admin
from logstore.codec import record_batch as rb
from tests.cluster.etcd import free_port
from tests.cluster.harness import ClusterHarness

TOPIC = "payments"
#: upper bound for any wait here (s): a failover takes a session timeout and an election
WAIT_S = 60.0
NOT_LEADER = 6  # NOT_LEADER_OR_FOLLOWER

_correlation = itertools.count(1)


class KafkaCluster:
    """The harness, and each broker's Kafka address."""

    def __init__(self, harness: ClusterHarness, kafka_ports: dict[int, int]) -> None:
        self.harness = harness
        self.kafka_ports = kafka_ports

    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.kafka_ports.values())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[KafkaCluster]:
    ports = {broker_id: free_port() for broker_id in (1, 2, 3)}
    harness = ClusterHarness(
        tmp_path,
        brokers=3,
        broker_args={b: [f"--kafka-listen=127.0.0.1:{p}"] for b, p in ports.items()},
    )
    try:
        harness.start()
        with Admin(harness.bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=1, replication_factor=3)
        harness.wait_for_leader(TOPIC)
        harness.wait_for_isr(TOPIC, 3)
        yield KafkaCluster(harness, ports)
    finally:
        harness.close()


def _call(port: int, request: Any, response_class: Any) -> Any:
    """One request on a fresh connection to the Kafka listener on `port`."""
    request.with_header(correlation_id=next(_correlation), client_id="test")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes(request.encode(header=True, framed=True)))
        size = struct.unpack(">i", _read(sock, 4))[0]
        body = _read(sock, size)
    return response_class.decode(body, version=request.version, header=True)


def _read(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the broker closed the connection"
        data += chunk
    return bytes(data)


def test_only_the_leader_serves_produce_fetch_and_list_offsets(cluster: KafkaCluster) -> None:
    leader = cluster.harness.partition(TOPIC).leader
    follower = next(b for b in cluster.kafka_ports if b != leader)
    records = rb.encode_batch([(None, b"x", None, 1_000)])
    produce_topic = ProduceRequest.TopicProduceData
    produce = ProduceRequest(
        version=8,
        transactional_id=None,
        acks=-1,
        timeout_ms=10_000,
        topic_data=[
            produce_topic(
                name=TOPIC,
                partition_data=[produce_topic.PartitionProduceData(index=0, records=records)],
            )
        ],
    )
    fetch_topic = FetchRequest.FetchTopic
    fetch = FetchRequest(
        version=11,
        replica_id=-1,
        max_wait_ms=0,
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=0,
        topics=[
            fetch_topic(
                topic=TOPIC,
                partitions=[
                    fetch_topic.FetchPartition(
                        partition=0, fetch_offset=0, partition_max_bytes=1 << 20
                    )
                ],
            )
        ],
    )
    offsets_topic = ListOffsetsRequest.ListOffsetsTopic
    list_offsets = ListOffsetsRequest(
        version=5,
        replica_id=-1,
        isolation_level=0,
        topics=[
            offsets_topic(
                name=TOPIC,
                partitions=[offsets_topic.ListOffsetsPartition(partition_index=0, timestamp=-1)],
            )
        ],
    )

    def codes(port: int) -> tuple[int, int, int]:
        produced = _call(port, produce, ProduceResponse).responses[0].partition_responses[0]
        fetched = _call(port, fetch, FetchResponse).responses[0].partitions[0]
        listed = _call(port, list_offsets, ListOffsetsResponse).topics[0].partitions[0]
        return produced.error_code, fetched.error_code, listed.error_code

    assert codes(cluster.kafka_ports[follower]) == (NOT_LEADER,) * 3
    assert codes(cluster.kafka_ports[leader]) == (0, 0, 0)
    listed = _call(cluster.kafka_ports[leader], list_offsets, ListOffsetsResponse)
    answer = listed.topics[0].partitions[0]
    # the high watermark after the one acks=all record, at the epoch Metadata reports
    assert (answer.offset, answer.leader_epoch) == (
        1,
        cluster.harness.partition(TOPIC).leader_epoch,
    )


def test_a_leader_killed_under_load_costs_the_kafka_clients_no_record(
    cluster: KafkaCluster,
) -> None:
    producer = ConfluentProducer(
        {
            "bootstrap.servers": cluster.bootstrap(),
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 2,
            "message.timeout.ms": int(WAIT_S * 1000),
        }
    )
    acknowledged: list[tuple[int, bytes]] = []
    failed: list[Any] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            acknowledged.append((msg.offset(), msg.value()))
        else:
            failed.append(err)

    def send_round(round_no: int, count: int = 200) -> None:
        for i in range(count):
            producer.produce(TOPIC, value=b"%d-%d" % (round_no, i), on_delivery=delivered)
            producer.poll(0)

    send_round(0)
    assert producer.flush(WAIT_S) == 0
    victim = cluster.harness.partition(TOPIC).leader
    send_round(1)  # in flight or about to be when the leader dies
    cluster.harness.kill9(victim)
    send_round(2)
    assert producer.flush(WAIT_S) == 0
    assert failed == []
    assert cluster.harness.wait_for_leader(TOPIC, not_on=victim) != victim
    sent = [b"%d-%d" % (r, i) for r in range(3) for i in range(200)]
    # Idempotence: each record once, at consecutive offsets, in send order.
    assert sorted(acknowledged) == list(enumerate(sent))

    consumer = KafkaConsumer(
        bootstrap_servers=cluster.bootstrap(),
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        fetch_max_wait_ms=200,
    )
    got: list[Any] = []
    try:
        consumer.assign([TopicPartition(TOPIC, 0)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + WAIT_S
        while len(got) < len(sent) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
    finally:
        consumer.close()
    assert [(r.offset, r.value) for r in got] == list(enumerate(sent))
    # Batches carry the leader epoch they were appended at; the new leader's are newer.
    epochs = [r.leader_epoch for r in got]
    assert epochs == sorted(epochs) and epochs[0] >= 0 and epochs[-1] > epochs[0]

"""Metadata through the Kafka listener, as three unmodified clients see it: the broker,
the controller, topics with their partitions and leaders, and topic auto-creation."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient
from kafka import errors as kafka_errors
from kafka.protocol.metadata import MetadataRequest, MetadataResponse

from logstore import Admin
from tests.kafka.conftest import KafkaBrokerProcess


def test_confluent_sees_the_broker_controller_and_partitions(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    with Admin(kafka_broker.address) as admin:
        admin.create_topic("orders", partitions=3)
    metadata = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert [f"{b.host}:{b.port}" for b in metadata.brokers.values()] == [kafka_broker.bootstrap]
    assert metadata.controller_id == 0
    orders = metadata.topics["orders"]
    assert orders.error is None
    assert sorted(orders.partitions) == [0, 1, 2]
    for partition in orders.partitions.values():
        assert (partition.leader, partition.replicas, partition.isrs) == (0, [0], [0])


def test_kafka_python_lists_topics_and_flags_the_internal_one(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    with Admin(kafka_broker.address) as admin:
        admin.create_topic("payments", partitions=2)
    client = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=10_000)
    try:
        assert "payments" in client.list_topics()
        described = {t["name"]: t for t in client.describe_topics(["payments"])}
        assert described["payments"]["is_internal"] is False
        assert len(described["payments"]["partitions"]) == 2
    finally:
        client.close()


def test_aiokafka_lists_topics(kafka_broker: KafkaBrokerProcess) -> None:
    with Admin(kafka_broker.address) as admin:
        admin.create_topic("events", partitions=1)

    async def listed() -> list[str]:
        client = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await client.start()
        try:
            return list(await client.list_topics())
        finally:
            await client.close()

    assert "events" in asyncio.run(asyncio.wait_for(listed(), timeout=30))


def test_metadata_for_an_unknown_topic_creates_it_with_num_partitions(tmp_path: Path) -> None:
    broker = KafkaBrokerProcess(tmp_path / "data", ["--num-partitions", "4"])
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        metadata = admin.list_topics(topic="auto-made", timeout=10)
        assert metadata.topics["auto-made"].error is None
        assert sorted(metadata.topics["auto-made"].partitions) == [0, 1, 2, 3]
        with Admin(broker.address) as logstore_admin:
            assert len(logstore_admin.describe_topic("auto-made").partitions) == 4
    finally:
        broker.close()


def test_without_auto_creation_an_unknown_topic_is_unknown(tmp_path: Path) -> None:
    broker = KafkaBrokerProcess(tmp_path / "data", ["--no-auto-create-topics-enable"])
    broker.start()
    try:
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(
            topic="not-there", timeout=10
        )
        error = metadata.topics["not-there"].error
        assert error is not None and error.name() == "UNKNOWN_TOPIC_OR_PART"
        with Admin(broker.address) as logstore_admin:
            assert "not-there" not in logstore_admin.list_topics()
    finally:
        broker.close()


def test_an_invalid_topic_name_is_invalid_at_once_and_never_created(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    """As Kafka: INVALID_TOPIC_EXCEPTION, so a producer fails at once rather than waiting
    out its timeout on UNKNOWN_TOPIC_OR_PART."""
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "message.timeout.ms": 20_000})
    errors: list[Any] = []
    started = time.monotonic()
    producer.produce("bad name!", value=b"x", on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(25) == 0
    assert time.monotonic() - started < 10
    assert [e.code() for e in errors] == [KafkaError.TOPIC_EXCEPTION]
    with Admin(kafka_broker.address) as admin:
        assert [t for t in admin.list_topics() if "bad" in t] == []


def test_a_name_asked_twice_is_answered_once(kafka_broker: KafkaBrokerProcess) -> None:
    request = MetadataRequest(
        version=4,
        topics=[MetadataRequest.MetadataRequestTopic(name=n) for n in ("dup", "dup", "x y")],
        allow_auto_topic_creation=True,
    )
    request.with_header(correlation_id=3, client_id="test")
    with socket.create_connection(("127.0.0.1", kafka_broker.kafka_port), timeout=10) as sock:
        sock.sendall(bytes(request.encode(header=True, framed=True)))
        size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
        body = sock.recv(size, socket.MSG_WAITALL)
    response = MetadataResponse.decode(body, version=4, header=True)
    answered = [(t.name, t.error_code) for t in response.topics]
    assert answered == [("dup", 0), ("x y", kafka_errors.InvalidTopicError.errno)]


def test_a_standalone_broker_has_a_cluster_id_that_outlives_restarts(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    """Kafka always sends one; librdkafka's describe_cluster crashed on none."""
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    described = admin.describe_cluster().result(10)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", described.cluster_id)
    assert [n.id for n in described.nodes] == [0]
    kafka_broker.restart()
    again = AdminClient({"bootstrap.servers": kafka_broker.bootstrap}).list_topics(timeout=10)
    assert again.cluster_id == described.cluster_id

"""aiokafka against a three-broker cluster: partitions led by different brokers, an
acks=all producer that finds each leader, and a group consumer whose coordinator is the
broker holding the group's offsets, which commits where LogStore's client sees it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from logstore import Admin
from tests.cluster.etcd import free_port
from tests.cluster.harness import ClusterHarness

TOPIC = "shipments"
PARTITIONS = 3
RECORDS = 300
WAIT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ClusterHarness, str]]:
    ports = {broker_id: free_port() for broker_id in (1, 2, 3)}
    harness = ClusterHarness(
        tmp_path,
        brokers=3,
        broker_args={
            b: [f"--kafka-listen=127.0.0.1:{p}", "--group-initial-rebalance-delay-ms=0"]
            for b, p in ports.items()
        },
    )
    try:
        harness.start()
        with Admin(harness.bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        for partition in range(PARTITIONS):
            harness.wait_for_isr(TOPIC, 3, partition=partition)
        yield harness, ",".join(f"127.0.0.1:{p}" for p in ports.values())
    finally:
        harness.close()


async def _produce(bootstrap: str) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(TOPIC, key=b"k%d" % i, value=b"v%d" % i)
            for i in range(RECORDS)
        ]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in sent]


async def _consume(bootstrap: str) -> set[bytes]:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id="dispatch",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    got: set[bytes] = set()
    try:
        while len(got) < RECORDS:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                got.update(r.value for r in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


def test_aiokafka_produces_to_each_leader_and_consumes_in_a_group(
    cluster: tuple[ClusterHarness, str],
) -> None:
    harness, bootstrap = cluster
    # The producer must find more than one leader, and the group a coordinator.
    assert len({harness.partition(TOPIC, p).leader for p in range(PARTITIONS)}) > 1
    acknowledged = asyncio.run(asyncio.wait_for(_produce(bootstrap), WAIT_S))
    assert {p for p, _ in acknowledged} == set(range(PARTITIONS))
    got = asyncio.run(asyncio.wait_for(_consume(bootstrap), WAIT_S))
    assert got == {b"v%d" % i for i in range(RECORDS)}
    with Admin(harness.bootstrap) as admin:
        committed = admin.committed_offsets("dispatch")
        ends = {p.partition: p.high_watermark for p in admin.describe_topic(TOPIC).partitions}
    assert {tp[1]: offset.offset for tp, offset in committed.items()} == ends
    assert sum(ends.values()) == RECORDS

"""ListOffsets through the Kafka listener: the earliest and latest offsets and offsets by
time, as unmodified kafka-python, confluent-kafka and aiokafka ask for them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTopicPartition
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import TopicPartition as ConfluentTopicPartition
from kafka import KafkaConsumer, TopicPartition

from logstore import Admin, Producer
from tests.kafka.conftest import KafkaBrokerProcess

WAIT_S = 30.0
TOPIC = "clicks"
#: record i of partition 0 has timestamp T0 + 1000 * i (ms); partition 1 stays empty
T0 = 1_700_000_000_000
COUNT = 20


@pytest.fixture
def filled(kafka_broker: KafkaBrokerProcess) -> Iterator[KafkaBrokerProcess]:
    with Admin(kafka_broker.address) as admin:
        admin.create_topic(TOPIC, partitions=2)
    with Producer(kafka_broker.address, linger_ms=0) as producer:
        for i in range(COUNT):  # one request per record: many batches, not one
            producer.send(TOPIC, value=b"%d" % i, partition=0, timestamp_ms=T0 + 1000 * i).result(
                WAIT_S
            )
    yield kafka_broker


def test_kafka_python_offsets_by_time_and_both_ends(filled: KafkaBrokerProcess) -> None:
    consumer = KafkaConsumer(bootstrap_servers=filled.bootstrap, request_timeout_ms=10_000)
    p0, p1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)
    try:
        found = consumer.offsets_for_times({p0: T0 + 4500, p1: T0})
        assert (found[p0].offset, found[p0].timestamp) == (5, T0 + 5000)
        assert found[p1] is None  # an empty partition has no record that new
        assert consumer.offsets_for_times({p0: T0 + 1000 * COUNT})[p0] is None
        assert consumer.offsets_for_times({p0: 0})[p0].offset == 0
        assert consumer.beginning_offsets([p0, p1]) == {p0: 0, p1: 0}
        assert consumer.end_offsets([p0, p1]) == {p0: COUNT, p1: 0}
    finally:
        consumer.close()


def test_confluent_offsets_by_time_and_watermarks(filled: KafkaBrokerProcess) -> None:
    consumer = ConfluentConsumer({"bootstrap.servers": filled.bootstrap, "group.id": "unused"})
    try:
        asked = [
            ConfluentTopicPartition(TOPIC, 0, T0 + 12_000),
            ConfluentTopicPartition(TOPIC, 1, T0),
        ]
        found = consumer.offsets_for_times(asked, timeout=WAIT_S)
        assert [(tp.partition, tp.offset, tp.error) for tp in found] == [
            (0, 12, None),
            (1, -1, None),  # librdkafka's OFFSET_END: nothing that new
        ]
        low, high = consumer.get_watermark_offsets(
            ConfluentTopicPartition(TOPIC, 0), timeout=WAIT_S, cached=False
        )
        assert (low, high) == (0, COUNT)
    finally:
        consumer.close()


def test_aiokafka_offsets_by_time(filled: KafkaBrokerProcess) -> None:
    async def ask() -> tuple[dict, dict, dict]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=filled.bootstrap, enable_auto_commit=False, request_timeout_ms=10_000
        )
        await consumer.start()
        tp = AioTopicPartition(TOPIC, 0)
        try:
            by_time = await consumer.offsets_for_times({tp: T0 + 19_000})
            return by_time, await consumer.beginning_offsets([tp]), await consumer.end_offsets([tp])
        finally:
            await consumer.stop()

    by_time, beginning, end = asyncio.run(asyncio.wait_for(ask(), timeout=WAIT_S))
    tp = AioTopicPartition(TOPIC, 0)
    assert (by_time[tp].offset, by_time[tp].timestamp) == (19, T0 + 19_000)
    assert (beginning[tp], end[tp]) == (0, COUNT)


def test_a_consumer_seeks_by_time_then_reads_from_there(filled: KafkaBrokerProcess) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=filled.bootstrap, enable_auto_commit=False, request_timeout_ms=10_000
    )
    p0 = TopicPartition(TOPIC, 0)
    try:
        consumer.assign([p0])
        consumer.seek(p0, consumer.offsets_for_times({p0: T0 + 16_000})[p0].offset)
        got = []
        for _ in range(40):  # bounded: 40 polls of at most 500 ms
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
            if len(got) >= 4:
                break
    finally:
        consumer.close()
    assert [(r.offset, r.value, r.timestamp) for r in got] == [
        (i, b"%d" % i, T0 + 1000 * i) for i in range(16, COUNT)
    ]

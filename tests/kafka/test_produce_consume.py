"""Produce and consume through the Kafka listener with unmodified kafka-python,
confluent-kafka and aiokafka, without consumer groups (assign()), and across protocols:
records written over Kafka are read by `logstore.Consumer` over gRPC, and the reverse."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as ConfluentProducer
from confluent_kafka import TopicPartition as ConfluentTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from logstore import Admin, Consumer, Producer
from logstore.codec import record_batch as rb
from tests.kafka.conftest import KafkaBrokerProcess

#: how long any one wait in these tests may take (s)
WAIT_S = 30.0
#: a record's timestamp, as a producer sets it (ms)
BASE_TS = 1_700_000_000_000


def records(prefix: str, count: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]], int]]:
    """(key, value, headers, timestamp ms) of `count` distinct records."""
    return [
        (
            b"key-%d" % (i % 3),
            f"{prefix}-{i}".encode(),
            [("n", b"%d" % i), ("source", prefix.encode())],
            BASE_TS + i,
        )
        for i in range(count)
    ]


def kafka_python_consumer(bootstrap: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        request_timeout_ms=10_000,
        fetch_max_wait_ms=200,
    )


def read_kafka_python(consumer: KafkaConsumer, count: int) -> list[Any]:
    """Poll until `count` records arrived (or WAIT_S passed)."""
    got: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            got.extend(batch)
    return got


def confluent_consumer(bootstrap: str, **config: Any) -> ConfluentConsumer:
    # librdkafka insists on a group.id even for assign(); no group API is used without
    # subscribe() and with auto commit off.
    return ConfluentConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 200,
            **config,
        }
    )


def read_confluent(consumer: ConfluentConsumer, count: int) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        got.append(message)
    return got


def read_logstore(address: str, topic: str, count: int) -> list[Any]:
    got: list[Any] = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        deadline = time.monotonic() + WAIT_S
        while len(got) < count and time.monotonic() < deadline:
            got.extend(consumer.poll(timeout=0.5))
    return got


@pytest.fixture
def topic(kafka_broker: KafkaBrokerProcess) -> Iterator[str]:
    with Admin(kafka_broker.address) as admin:
        admin.create_topic("orders", partitions=1)
    yield "orders"


def test_kafka_python_defaults_round_trip_keys_values_headers_and_timestamps(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    """Its defaults are an idempotent producer with acks=all (InitProducerId first), to a
    topic nobody created: Metadata creates it."""
    sent = records("kp", 50)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=10_000)
    try:
        assert producer.config["enable_idempotence"] and producer.config["acks"] == -1
        futures = [
            producer.send("fresh", key=k, value=v, headers=h, timestamp_ms=ts)
            for k, v, h, ts in sent
        ]
        producer.flush(WAIT_S)
        offsets = [f.get(WAIT_S).offset for f in futures]
    finally:
        producer.close(WAIT_S)
    assert offsets == list(range(50))
    consumer = kafka_python_consumer(kafka_broker.bootstrap)
    try:
        consumer.assign([TopicPartition("fresh", 0)])
        consumer.seek_to_beginning()
        got = read_kafka_python(consumer, 50)
    finally:
        consumer.close()
    assert [(r.key, r.value, r.headers, r.timestamp) for r in got] == [
        (k, v, h, ts) for k, v, h, ts in sent
    ]
    assert [r.offset for r in got] == list(range(50))
    assert "created topic fresh on a Kafka client's Metadata request" in kafka_broker.logs()


@pytest.mark.parametrize(
    ("acks", "idempotent"), [("0", False), ("1", False), ("all", False), ("all", True)]
)
def test_confluent_produces_with_each_acks_and_reads_back(
    kafka_broker: KafkaBrokerProcess, topic: str, acks: str, idempotent: bool
) -> None:
    sent = records(f"acks{acks}", 40)
    producer = ConfluentProducer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "acks": acks,
            "enable.idempotence": idempotent,
            "linger.ms": 5,
        }
    )
    reports: list[tuple[Any, int]] = []
    for key, value, headers, ts in sent:
        producer.produce(
            topic,
            value=value,
            key=key,
            headers=headers,
            timestamp=ts,
            on_delivery=lambda err, msg: reports.append((err, msg.offset())),
        )
    assert producer.flush(WAIT_S) == 0
    assert [err for err, _ in reports] == [None] * 40
    if acks != "0":  # acks=0 has no response, so no offsets
        assert [offset for _, offset in reports] == list(range(40))
    consumer = confluent_consumer(kafka_broker.bootstrap)
    try:
        consumer.assign([ConfluentTopicPartition(topic, 0, 0)])
        got = read_confluent(consumer, 40)
    finally:
        consumer.close()
    assert [(m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in got] == [
        (k, v, h, ts) for k, v, h, ts in sent
    ]
    assert [m.offset() for m in got] == list(range(40))


def test_aiokafka_produces_and_consumes_with_assign(
    kafka_broker: KafkaBrokerProcess, topic: str
) -> None:
    sent = records("aio", 30)

    async def run() -> list[Any]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=10_000
        )
        await producer.start()
        try:
            for key, value, headers, ts in sent:
                await producer.send(topic, value=value, key=key, headers=headers, timestamp_ms=ts)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_broker.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=10_000,
        )
        await consumer.start()
        got: list[Any] = []
        try:
            consumer.assign([AioTopicPartition(topic, 0)])
            for _ in range(60):  # bounded: 60 x 500 ms
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got.extend(batch)
                if len(got) >= len(sent):
                    break
        finally:
            await consumer.stop()
        return got

    got = asyncio.run(asyncio.wait_for(run(), timeout=2 * WAIT_S))
    assert [(r.key, r.value, list(r.headers), r.timestamp) for r in got] == [
        (k, v, [tuple(p) for p in h], ts) for k, v, h, ts in sent
    ]


def test_records_from_kafka_python_are_read_by_logstore_over_grpc(
    kafka_broker: KafkaBrokerProcess, topic: str
) -> None:
    sent = records("to-grpc", 25)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=10_000)
    try:
        for key, value, headers, ts in sent:
            producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=ts)
        producer.flush(WAIT_S)
    finally:
        producer.close(WAIT_S)
    got = read_logstore(kafka_broker.address, topic, 25)
    assert [(r.key, r.value, list(r.headers), r.timestamp) for r in got] == [
        (k, v, h, ts) for k, v, h, ts in sent
    ]


def test_records_from_logstore_are_read_by_confluent(
    kafka_broker: KafkaBrokerProcess, topic: str
) -> None:
    sent = records("from-grpc", 25)
    with Producer(kafka_broker.address) as producer:
        futures = [
            producer.send(topic, value=v, key=k, headers=h, timestamp_ms=ts) for k, v, h, ts in sent
        ]
        for future in futures:
            future.result(WAIT_S)
    consumer = confluent_consumer(kafka_broker.bootstrap)
    try:
        consumer.assign([ConfluentTopicPartition(topic, 0, 0)])
        got = read_confluent(consumer, 25)
    finally:
        consumer.close()
    assert [(m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in got] == [
        (k, v, h, ts) for k, v, h, ts in sent
    ]


def test_acknowledged_records_survive_a_kill_9(
    kafka_broker: KafkaBrokerProcess, topic: str
) -> None:
    producer = ConfluentProducer(
        {"bootstrap.servers": kafka_broker.bootstrap, "acks": "all", "linger.ms": 2}
    )
    acknowledged: list[int] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            acknowledged.append(msg.offset())

    for i in range(500):
        producer.produce(topic, value=b"durable-%d" % i, on_delivery=delivered)
        if i % 50 == 49:
            producer.poll(0)
    assert producer.flush(WAIT_S) == 0
    assert len(acknowledged) == 500
    # Disconnect first, so that no connection the dying broker closes holds its Kafka port
    # in TIME_WAIT when the restart binds it again.
    del producer
    gc.collect()
    kafka_broker.kill9()
    kafka_broker.start()  # the same ports
    consumer = confluent_consumer(kafka_broker.bootstrap)
    try:
        consumer.assign([ConfluentTopicPartition(topic, 0, 0)])
        got = read_confluent(consumer, 500)
    finally:
        consumer.close()
    assert [m.value() for m in got] == [b"durable-%d" % i for i in range(500)]


def _segment_batches(kafka_broker: KafkaBrokerProcess, topic: str) -> list[tuple[int, int]]:
    """(base offset, record count) of every batch stored for partition 0."""
    found: list[tuple[int, int]] = []
    for path in sorted((kafka_broker.data_dir / f"{topic}-0").glob("*.log")):
        data = path.read_bytes()
        found += [(h.base_offset, h.record_count) for _, h in rb.iter_batches(data)]
    return found


def test_a_fetch_at_an_offset_inside_a_batch_starts_there_for_the_client(
    kafka_broker: KafkaBrokerProcess, topic: str
) -> None:
    producer = ConfluentProducer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 500})
    for i in range(10):
        producer.produce(topic, value=b"m%d" % i)
    assert producer.flush(WAIT_S) == 0
    assert _segment_batches(kafka_broker, topic) == [(0, 10)]  # one batch holds 0..9
    consumer = kafka_python_consumer(kafka_broker.bootstrap)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek(TopicPartition(topic, 0), 6)
        got = read_kafka_python(consumer, 4)
    finally:
        consumer.close()
    assert [(r.offset, r.value) for r in got] == [(i, b"m%d" % i) for i in range(6, 10)]
    confluent = confluent_consumer(kafka_broker.bootstrap)
    try:
        confluent.assign([ConfluentTopicPartition(topic, 0, 3)])
        from_three = read_confluent(confluent, 7)
    finally:
        confluent.close()
    assert [m.offset() for m in from_three] == list(range(3, 10))


def _first_arrival_s(poll: Callable[[], bool], produce: Callable[[], None]) -> float:
    """Seconds from `produce()` until `poll()` (a consumer already in its long poll)
    returns True."""
    produced_at = 0.0
    deadline = time.monotonic() + WAIT_S
    polls = 0
    while time.monotonic() < deadline:
        if polls == 3:  # the consumer has settled into waiting on an empty partition
            produce()
            produced_at = time.monotonic()
        if poll() and produced_at:
            return time.monotonic() - produced_at
        polls += 1
    raise AssertionError("the record never arrived")


def test_a_long_poll_returns_as_soon_as_a_record_arrives(
    kafka_broker: KafkaBrokerProcess, topic: str
) -> None:
    """The consumer waits up to 20 s per fetch: the record must come long before that."""
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_broker.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=20_000,
        request_timeout_ms=40_000,
    )
    producer = ConfluentProducer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 0})
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek(TopicPartition(topic, 0), 0)

        def poll() -> bool:
            return bool(consumer.poll(timeout_ms=300))

        def produce() -> None:
            producer.produce(topic, value=b"wake up")
            producer.flush(WAIT_S)

        elapsed = _first_arrival_s(poll, produce)
    finally:
        consumer.close()
    assert elapsed < 5.0


def test_confluent_sees_produce_errors(kafka_broker: KafkaBrokerProcess, topic: str) -> None:
    """A record over the topic's max.message.bytes is refused as MSG_SIZE_TOO_LARGE."""
    with Admin(kafka_broker.address) as admin:
        admin.create_topic("tiny", partitions=1, config={"max.message.bytes": "1000"})
    producer = ConfluentProducer(
        {"bootstrap.servers": kafka_broker.bootstrap, "message.max.bytes": 1_000_000}
    )
    errors: list[Any] = []
    producer.produce("tiny", value=b"x" * 5000, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(WAIT_S) == 0
    assert [e.code() for e in errors] == [KafkaError.MSG_SIZE_TOO_LARGE]


def test_a_keyless_record_on_a_compacted_topic_is_invalid_record(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    """As Kafka: a compacted topic keeps the latest record per key, so a record without a
    key is refused with INVALID_RECORD (a client error the producer does not retry) and
    nothing is written; a keyed record is accepted."""
    with Admin(kafka_broker.address) as admin:
        admin.create_topic("latest", partitions=1, config={"cleanup.policy": "compact"})
    producer = ConfluentProducer({"bootstrap.servers": kafka_broker.bootstrap})
    errors: list[Any] = []
    producer.produce("latest", value=b"no key", on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(WAIT_S) == 0
    # Its own batch: a batch holding a keyless record is refused whole, as in Kafka.
    producer.produce(
        "latest", key=b"k", value=b"keyed", on_delivery=lambda err, msg: errors.append(err)
    )
    assert producer.flush(WAIT_S) == 0
    assert [e.code() if e else None for e in errors] == [KafkaError.INVALID_RECORD, None]
    assert [r.value for r in read_logstore(kafka_broker.address, "latest", 1)] == [b"keyed"]


def test_a_transactional_producer_fails_at_once_until_transactions_exist(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    """Not a hang until the client's own timeout: init_transactions raises a fatal error
    naming the refusal within seconds, and nothing is written."""
    producer = ConfluentProducer(
        {"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": "orders-enricher-0"}
    )
    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        producer.init_transactions(30)
    assert time.monotonic() - started < 10
    error = raised.value.args[0]
    assert error.code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    with Admin(kafka_broker.address) as admin:
        assert "orders-enricher-0" not in admin.list_topics()


def test_an_idempotent_producer_whose_state_expired_goes_on(tmp_path: Path) -> None:
    """A backfill: records two days old expire the producer's state at the next retention
    check (producer_id_expiration_ms, one day, counts from record timestamps). As Kafka
    since 2.5, the partition accepts the producer's next sequence instead of demanding 0,
    which librdkafka treats as fatal."""
    config = tmp_path / "broker.toml"
    config.write_text("[log-manager]\nretention_check_interval_ms = 200\n")
    broker = KafkaBrokerProcess(tmp_path / "data", ["--config", str(config)])
    broker.start()
    try:
        with Admin(broker.address) as admin:
            admin.create_topic("backfill", partitions=1)
        producer = ConfluentProducer(
            {"bootstrap.servers": broker.bootstrap, "enable.idempotence": True}
        )
        errors: list[Any] = []
        two_days_ago = int(time.time() * 1000) - 2 * 86_400_000
        for round_no in range(3):
            for i in range(10):
                producer.produce(
                    "backfill",
                    value=b"%d-%d" % (round_no, i),
                    partition=0,
                    timestamp=two_days_ago,
                    on_delivery=lambda err, msg: errors.append(err) if err else None,
                )
            assert producer.flush(WAIT_S) == 0
            time.sleep(0.6)  # a few retention checks: the producer's state expires
        assert errors == []
        assert len(read_logstore(broker.address, "backfill", 30)) == 30
    finally:
        broker.close()

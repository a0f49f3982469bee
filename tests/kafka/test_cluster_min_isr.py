"""acks=all with min.insync.replicas=2 on a three-broker cluster: when both followers stop
before copying a batch, the ISR shrinks to the leader and the high watermark passes the
batch, but the producer must not be told it is durable (Kafka's
NOT_ENOUGH_REPLICAS_AFTER_APPEND, then NOT_ENOUGH_REPLICAS while the ISR is too small)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError
from confluent_kafka import Producer as ConfluentProducer

from logstore import Admin
from tests.cluster.etcd import free_port
from tests.cluster.harness import ClusterHarness
from tests.helpers import wait_until


def test_a_batch_held_by_fewer_than_min_isr_replicas_is_not_acknowledged(
    tmp_path: Path,
) -> None:
    ports = {b: free_port() for b in (1, 2, 3)}
    harness = ClusterHarness(
        tmp_path,
        brokers=3,
        broker_args={b: [f"--kafka-listen=127.0.0.1:{p}"] for b, p in ports.items()},
    )
    try:
        harness.start()
        with Admin(harness.bootstrap) as admin:
            admin.create_topic(
                "t", partitions=1, replication_factor=3, config={"min.insync.replicas": "2"}
            )
        harness.wait_for_leader("t")
        harness.wait_for_isr("t", 3)
        leader = harness.partition("t").leader
        producer = ConfluentProducer(
            {
                "bootstrap.servers": ",".join(f"127.0.0.1:{p}" for p in ports.values()),
                "acks": "all",
                "linger.ms": 0,
                "message.timeout.ms": 8000,
            }
        )
        answers: list[Any] = []
        producer.produce("t", value=b"warm", on_delivery=lambda err, msg: answers.append(err))
        assert producer.flush(20) == 0 and answers == [None]
        for broker_id in (1, 2, 3):
            if broker_id != leader:
                harness.pause(broker_id)
        producer.produce("t", value=b"one copy", on_delivery=lambda err, msg: answers.append(err))
        assert producer.flush(20) == 0
        wait_until(lambda: harness.partition("t").isr == [leader], "the ISR to shrink", 30)
        (error,) = answers[1:]
        assert error is not None, "acknowledged while held by one replica of min.insync 2"
        assert error.code() in (
            KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            KafkaError.NOT_ENOUGH_REPLICAS,
            KafkaError._MSG_TIMED_OUT,
        )
    finally:
        harness.heal()
        harness.close()

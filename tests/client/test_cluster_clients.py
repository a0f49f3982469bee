"""`Producer` and `Consumer` against a real cluster: three `logstore serve --broker-id`
processes and a real etcd (tests/cluster/harness.py).

The clients are given the bootstrap list and find every partition's leader themselves.
Killing a leader (kill -9) while they run must cost neither side a record: every record the
producer was told is acknowledged is in the log once, in send order per partition, and the
consumer reads each once, in offset order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.types import ConsumerRecord, RecordMetadata
from tests.cluster.harness import ClusterHarness

TOPIC = "orders"
PARTITIONS = 3
#: upper bound for any wait here (s): a failover takes a session timeout and an election
WAIT_S = 60.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path, brokers=3)
    try:
        harness.start()
        with Admin(harness.bootstrap) as admin:
            admin.create_topic(TOPIC, partitions=PARTITIONS, replication_factor=3)
        for p in range(PARTITIONS):
            harness.wait_for_leader(TOPIC, p)
            harness.wait_for_isr(TOPIC, 3, p)
        yield harness
    finally:
        harness.close()


def send_round(producer: Producer, round_no: int, count: int) -> list[Future[RecordMetadata]]:
    return [
        producer.send(TOPIC, b"%d-%d" % (round_no, i), partition=i % PARTITIONS)
        for i in range(count)
    ]


def values_by_partition(records: list[ConsumerRecord]) -> dict[int, list[bytes]]:
    by_partition: dict[int, list[bytes]] = {}
    for record in records:
        assert record.value is not None
        by_partition.setdefault(record.partition, []).append(record.value)
    return by_partition


def expected(rounds: int, count: int) -> dict[int, list[bytes]]:
    return {
        p: [b"%d-%d" % (r, i) for r in range(rounds) for i in range(p, count, PARTITIONS)]
        for p in range(PARTITIONS)
    }


def read(consumer: Consumer, count: int, timeout_s: float = WAIT_S) -> list[ConsumerRecord]:
    """Poll until `count` records arrived or the time is up (bounded)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records += consumer.poll(timeout=0.5)
    return records


def check_offsets(records: list[ConsumerRecord]) -> None:
    for partition in range(PARTITIONS):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets))), f"partition {partition}: gaps or repeats"


def test_the_clients_find_every_leader_from_the_bootstrap_list(cluster: ClusterHarness) -> None:
    # a broker that does not lead a partition refuses it: only routing by leader gets through
    with Producer(cluster.bootstrap, linger_ms=2) as producer:
        assert producer.partitions_for(TOPIC) == set(range(PARTITIONS))
        metadata = [f.result(WAIT_S) for f in send_round(producer, 0, 300)]
    assert [md.offset for md in metadata] == [i // PARTITIONS for i in range(300)]
    consumer = Consumer(cluster.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100)
    with consumer:
        consumer.assign([(TOPIC, p) for p in range(PARTITIONS)])
        records = read(consumer, 300)
        assert consumer.poll(timeout=0.3) == []
    check_offsets(records)
    assert values_by_partition(records) == expected(1, 300)


def test_a_leader_killed_under_load_costs_the_clients_no_record(cluster: ClusterHarness) -> None:
    victim = cluster.partition(TOPIC, 0).leader
    consumer = Consumer(cluster.bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100)
    consumed: list[ConsumerRecord] = []
    stop = threading.Event()

    def consume() -> None:
        deadline = time.monotonic() + 3 * WAIT_S
        while not stop.is_set() and time.monotonic() < deadline:
            consumed.extend(consumer.poll(timeout=0.2))

    with consumer, Producer(cluster.bootstrap, linger_ms=2, retry_backoff_ms=50) as producer:
        consumer.assign([(TOPIC, p) for p in range(PARTITIONS)])
        reader = threading.Thread(target=consume, name="test-consumer", daemon=True)
        reader.start()
        futures = send_round(producer, 0, 300)
        futures += send_round(producer, 1, 300)
        cluster.brokers[victim].kill9()  # requests to it are in flight or about to be
        futures += send_round(producer, 2, 300)
        acknowledged = [f.result(WAIT_S) for f in futures]
        futures = send_round(producer, 3, 300)  # after the failover
        acknowledged += [f.result(WAIT_S) for f in futures]
        deadline = time.monotonic() + WAIT_S
        while len(consumed) < 1200 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        reader.join(WAIT_S)
    assert cluster.partition(TOPIC, 0).leader != victim
    per_partition = {p: [md.offset for md in acknowledged if md.partition == p] for p in (0, 1, 2)}
    for offsets in per_partition.values():
        assert offsets == list(range(len(offsets)))  # acknowledged in send order, no gap
    check_offsets(consumed)
    assert values_by_partition(consumed) == expected(4, 300)

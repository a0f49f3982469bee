"""Admin operations on a real three-broker cluster: reassignment, config, partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore import Admin
from logstore.v1 import logstore_pb2 as pb
from tests.cluster.harness import ClusterHarness
from tests.cluster.history import produce
from tests.helpers import wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path, brokers=3)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def produce_acks_all(cluster: ClusterHarness, topic: str, values: list[bytes]) -> int:
    result = produce(cluster, cluster.wait_for_leader(topic), values, topic=topic)
    assert not result.error.code, result.error.message
    return result.base_offset


def segment_bytes(cluster: ClusterHarness, broker_id: int, topic: str) -> bytes:
    directory = cluster.brokers[broker_id].data_dir / f"{topic}-0"
    return b"".join(p.read_bytes() for p in sorted(directory.glob("*.log")))


def test_reassignment_moves_a_replica_to_another_broker(cluster: ClusterHarness) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("moving", partitions=1, replication_factor=2)
        cluster.wait_for_isr("moving", 2)
        before = list(cluster.partition("moving").replicas)
        newcomer = next(b for b in cluster.brokers if b not in before)
        for i in range(20):
            produce_acks_all(cluster, "moving", [f"v{i}-{j}".encode() for j in range(10)])
        target = [newcomer, before[0]]
        admin.alter_partition_reassignments({("moving", 0): target})
        wait_until(
            lambda: (
                not admin.list_partition_reassignments()
                and sorted(cluster.partition("moving").replicas) == sorted(target)
            ),
            "the reassignment to finish",
            timeout_s=30,
        )
        state = cluster.partition("moving")
        assert list(state.replicas) == target
        assert sorted(state.isr) == sorted(target)
        # acks=all still works, and now waits for the newcomer too.
        produce_acks_all(cluster, "moving", [b"after"])
        wait_until(
            lambda: cluster.partition("moving").isr and len(cluster.partition("moving").isr) == 2,
            "a full ISR",
        )
    leader = cluster.partition("moving").leader
    for process in cluster.brokers.values():
        process.stop()
    assert segment_bytes(cluster, newcomer, "moving") == segment_bytes(cluster, leader, "moving")


def describe(cluster: ClusterHarness, topic: str, broker_id: int) -> pb.TopicDescription:
    answer = cluster.call("DescribeTopic", pb.DescribeTopicRequest(name=topic), broker_id)
    assert isinstance(answer, pb.DescribeTopicResponse)
    return answer.topic


def test_config_changes_and_new_partitions_reach_every_broker(cluster: ClusterHarness) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("grown", partitions=2, replication_factor=3)
        admin.alter_topic_config("grown", {"retention.ms": "3600000"})
        admin.add_partitions("grown", 4)
    for broker_id in cluster.brokers:
        wait_until(
            lambda b=broker_id: len(describe(cluster, "grown", b).partitions) == 4,
            f"broker {broker_id} to have 4 partitions",
        )
        assert describe(cluster, "grown", broker_id).config["retention.ms"] == "3600000"
    for partition in range(4):
        assert len(cluster.partition("grown", partition).replicas) == 3


def test_list_offsets_asks_each_partitions_leader(cluster: ClusterHarness) -> None:
    """Whichever broker the admin client reaches, offsets come from the leaders: a broker
    holding no replica (or a trailing one) refuses, it does not answer from its own log."""
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("spread", partitions=3, replication_factor=1)
    for partition in range(3):
        leader = cluster.wait_for_leader("spread", partition)
        result = produce(
            cluster, leader, [b"x"] * (partition + 2), topic="spread", partition=partition
        )
        assert not result.error.code, result.error.message
    for process in cluster.brokers.values():
        with Admin(process.address) as admin:
            latest = admin.list_offsets("spread", "latest")
            assert {p: o.offset for p, o in latest.items()} == {0: 2, 1: 3, 2: 4}
            earliest = admin.list_offsets("spread", "earliest")
            assert {p: o.offset for p, o in earliest.items()} == {0: 0, 1: 0, 2: 0}

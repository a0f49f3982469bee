"""Topics with more partitions than etcd puts in one transaction, on a real three-broker
cluster: created whole, served, and completed by the controller when their creator left
them half written (as a broker that dies mid-creation does)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import etcd3
import grpc
import pytest

from logstore import Admin, Producer
from logstore.addresses import parse_host_port
from logstore.errors import NotLeaderOrFollowerError
from logstore.server.cluster import election, placement
from logstore.server.cluster.state import PartitionState, TopicRecord
from logstore.v1 import logstore_pb2 as pb
from tests.cluster.harness import ClusterHarness
from tests.cluster.history import produce
from tests.helpers import wait_until

#: the harness's brokers run with the default cluster name
PREFIX = "/logstore/logstore/"
#: partitions of the big topics: more than two transactions' worth at etcd's default
PARTITIONS = 300
#: what one chunk of states holds (etcd's default --max-txn-ops, less the two fences)
CHUNK = 126
#: a few partitions spread over the topic, produced to with acks=all
PRODUCED = (0, 125, 126, 200, 299)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path_factory.mktemp("big-topics"), brokers=3)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


@pytest.fixture
def raw(cluster: ClusterHarness) -> Iterator[etcd3.MultiEndpointEtcd3Client]:
    """A plain etcd client, to leave in etcd what a broker that died mid-creation leaves."""
    host, port = parse_host_port(cluster.etcd.endpoint)
    client = etcd3.client(host, port, timeout=5)
    yield client
    client.close()


def describe_all(cluster: ClusterHarness, topic: str) -> dict[int, pb.TopicDescription]:
    return {b: cluster.describe_topic(topic, b) for b in cluster.brokers}


def whole(cluster: ClusterHarness, topic: str, partitions: int, isr: int) -> bool:
    """Every broker describes every partition with a live leader and a full ISR."""
    try:
        described = describe_all(cluster, topic)
    except grpc.RpcError:
        return False  # a broker that has not created the topic yet answers NOT_FOUND
    return all(
        len(d.partitions) == partitions
        and all(p.leader in cluster.brokers and len(p.isr) == isr for p in d.partitions)
        for d in described.values()
    )


def produce_acks_all(bootstrap: str, topic: str, partitions: tuple[int, ...]) -> None:
    with Producer(bootstrap, acks="all", linger_ms=0) as producer:
        futures = [producer.send(topic, value=f"v{p}".encode(), partition=p) for p in partitions]
        for p, future in zip(partitions, futures, strict=True):
            assert future.result(timeout=20).partition == p


def test_a_300_partition_topic_is_created_whole_and_serves(cluster: ClusterHarness) -> None:
    started = time.monotonic()
    with Admin(cluster.bootstrap) as admin:
        created = admin.create_topic("wide", partitions=PARTITIONS, replication_factor=3)
    assert len(created.partitions) == PARTITIONS
    produce_acks_all(cluster.bootstrap, "wide", PRODUCED)
    wait_until(
        lambda: whole(cluster, "wide", PARTITIONS, isr=3),
        "every partition of wide to have a leader and a full ISR on every broker",
        timeout_s=20,
    )
    for p in PRODUCED:
        leader = cluster.partition("wide", p).leader
        assert cluster.describe_topic("wide", leader).partitions[p].high_watermark == 1
    # Leaders spread round-robin: each broker leads a third.
    leaders = [p.leader for p in cluster.describe_topic("wide", 1).partitions]
    assert sorted(leaders.count(b) for b in cluster.brokers) == [100, 100, 100]
    assert time.monotonic() - started < 30


def half_written(
    raw: etcd3.MultiEndpointEtcd3Client, name: str, replication_factor: int
) -> dict[int, PartitionState]:
    """Leave in etcd what a broker that died after writing the record and the first chunk
    of states of a new topic leaves; returns the states written."""
    start = 7
    record = TopicRecord(name, uuid.uuid4().hex, PARTITIONS, {}, replication_factor, start)
    live = [1, 2, 3]
    placed = placement.assign_partitions(range(CHUNK), min(replication_factor, 3), live, start)
    written = {p: election.initial_state(r, set(live)) for p, r in placed.items()}
    raw.put(f"{PREFIX}topics/{name}", record.to_json())
    for p, state in written.items():
        raw.put(f"{PREFIX}partitions/{name}/{p}", state.to_json())
    return written


def states_in_etcd(raw: etcd3.MultiEndpointEtcd3Client, name: str) -> dict[int, PartitionState]:
    prefix = f"{PREFIX}partitions/{name}/"
    return {
        int(meta.key.decode()[len(prefix) :]): PartitionState.from_json(value)
        for value, meta in raw.get_prefix(prefix)
    }


def test_the_controller_completes_a_topic_its_creator_left_half_written(
    cluster: ClusterHarness, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    written = half_written(raw, "half", replication_factor=3)
    wait_until(
        lambda: whole(cluster, "half", PARTITIONS, isr=3),
        "the controller to write the missing states of half",
        timeout_s=20,
    )
    after = states_in_etcd(raw, "half")
    assert len(after) == PARTITIONS
    assert {p: after[p] for p in written} == written  # the creator's states untouched
    # The missing ones are placed as the creator would have placed them.
    expected = placement.assign_replicas(PARTITIONS, 3, [1, 2, 3], start_index=7)
    assert all(after[p].replicas == expected[p] for p in range(PARTITIONS))
    produce_acks_all(cluster.bootstrap, "half", PRODUCED)


def test_partitions_without_a_state_are_not_available_yet_and_delete_removes_all(
    cluster: ClusterHarness, raw: etcd3.MultiEndpointEtcd3Client
) -> None:
    """A half-written topic the controller cannot complete (it asks for 4 replicas of 3
    live brokers): its stateless partitions have no leader, and say so; nothing crashes."""
    half_written(raw, "stuck", replication_factor=4)
    wait_until(
        lambda: (
            [len(d.partitions) for d in describe_all_quietly(cluster, "stuck")]
            == [PARTITIONS] * len(cluster.brokers)
        ),
        "every broker to create the logs of stuck",
        timeout_s=20,
    )
    for broker_id in cluster.brokers:
        described = cluster.describe_topic("stuck", broker_id).partitions
        assert all(p.leader in cluster.brokers for p in described[:CHUNK])
        assert all(p.leader == -1 and not p.replicas for p in described[CHUNK:])
        metadata = cluster.call("Metadata", pb.MetadataRequest(topics=["stuck"]), broker_id)
        assert isinstance(metadata, pb.MetadataResponse)
        assert not metadata.topics[0].error.code
        assert [p.leader for p in metadata.topics[0].partitions[CHUNK:]] == [-1] * (
            PARTITIONS - CHUNK
        )
        with pytest.raises(grpc.RpcError) as refused:  # retriable: a producer retries it
            produce(cluster, broker_id, [b"x"], topic="stuck", partition=200)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "stuck-200: broker" in str(refused.value.details())
        assert "is not its leader" in str(refused.value.details())
    with Admin(cluster.bootstrap) as admin:
        with pytest.raises(NotLeaderOrFollowerError, match="not available yet"):
            admin.alter_partition_reassignments({("stuck", 200): [1]})
        admin.delete_topic("stuck")
    assert states_in_etcd(raw, "stuck") == {}
    assert raw.get(f"{PREFIX}topics/stuck") == (None, None)


def describe_all_quietly(cluster: ClusterHarness, topic: str) -> list[pb.TopicDescription]:
    try:
        return list(describe_all(cluster, topic).values())
    except grpc.RpcError:
        return []

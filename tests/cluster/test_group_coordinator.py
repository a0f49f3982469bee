"""Consumer groups in a cluster: the coordinator is the leader of the group's partition of
__consumer_offsets, and an acknowledged commit survives the coordinator's death."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from logstore.codec.partitioner import partition_for_key
from logstore.server.cluster.node import OFFSETS_TOPIC_PARTITIONS
from logstore.v1 import logstore_pb2 as pb
from tests.cluster.harness import ClusterHarness
from tests.cluster.history import produce
from tests.helpers import wait_until

GROUP = "billing"
#: the group's partition of __consumer_offsets (10 partitions in a cluster)
GROUP_PARTITION = partition_for_key(GROUP.encode(), OFFSETS_TOPIC_PARTITIONS)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path, brokers=3)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def coordinator(cluster: ClusterHarness, not_on: int | None = None) -> int:
    found: list[int] = []

    def answered() -> bool:
        try:
            answer = cluster.call("FindCoordinator", pb.FindCoordinatorRequest(group_id=GROUP))
        except grpc.RpcError:
            return False
        assert isinstance(answer, pb.FindCoordinatorResponse)
        broker = answer.coordinator.broker_id
        if broker == not_on or cluster.brokers[broker].proc is None:
            return False
        found[:] = [broker]
        return True

    wait_until(answered, f"a coordinator for {GROUP}", timeout_s=30)
    return found[0]


def commit(cluster: ClusterHarness, broker: int, offset: int) -> None:
    request = pb.CommitOffsetsRequest(
        group_id=GROUP,
        topics=[
            pb.CommitTopic(
                topic="orders", partitions=[pb.CommitPartition(partition=0, offset=offset)]
            )
        ],
    )
    answer = cluster.call("CommitOffsets", request, broker)
    assert isinstance(answer, pb.CommitOffsetsResponse)
    assert not answer.topics[0].partitions[0].error.code


def committed(cluster: ClusterHarness, broker: int) -> int:
    answer = cluster.call(
        "FetchCommittedOffsets", pb.FetchCommittedOffsetsRequest(group_id=GROUP), broker
    )
    assert isinstance(answer, pb.FetchCommittedOffsetsResponse)
    return answer.offsets[0].offset if answer.offsets else -1


def committed_or_none(cluster: ClusterHarness, broker: int) -> int | None:
    try:
        return committed(cluster, broker)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


def committed_at_coordinator(cluster: ClusterHarness, not_on: int | None = None) -> int:
    """The committed offset, read from the coordinator as a client does: a coordinator that
    has not applied its new leadership yet answers NotCoordinator, and the client retries."""
    found: list[int] = []

    def read() -> bool:
        try:
            found[:] = [committed(cluster, coordinator(cluster, not_on))]
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return False
        return True

    wait_until(read, "the coordinator to answer", timeout_s=30)
    return found[0]


def test_commits_survive_the_coordinator_being_killed(cluster: ClusterHarness) -> None:
    cluster.call(
        "CreateTopic", pb.CreateTopicRequest(name="orders", partitions=1, replication_factor=3)
    )
    first = coordinator(cluster)
    other = next(b for b in cluster.brokers if b != first)
    with pytest.raises(grpc.RpcError) as refused:
        commit(cluster, other, 1)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "coordinate" in str(refused.value.details())
    wait_until(
        lambda: len(cluster.partition("__consumer_offsets", GROUP_PARTITION).isr) == 3,
        "a full ISR for the group's offsets partition",
    )
    # The coordinator may take a moment to apply the leadership etcd already records.
    wait_until(lambda: committed_or_none(cluster, first) is not None, "the coordinator to load")
    for offset in range(1, 30):
        commit(cluster, first, offset)
    assert committed(cluster, first) == 29
    cluster.brokers[first].kill9()
    assert committed_at_coordinator(cluster, not_on=first) == 29
    commit(cluster, coordinator(cluster, not_on=first), 30)
    cluster.brokers[first].start()
    wait_until(
        lambda: (
            first in cluster.partition("__consumer_offsets", 0).isr
            or first in cluster.partition("__consumer_offsets", 1).isr
        ),
        f"broker {first} back in an offsets ISR",
        timeout_s=30,
    )
    assert committed_at_coordinator(cluster) == 30


def test_lag_and_resets_use_the_leaders_offsets(cluster: ClusterHarness) -> None:
    """With one replica per partition, the coordinator holds no copy of most partitions:
    lag and reset positions must come from their leaders."""
    cluster.call(
        "CreateTopic", pb.CreateTopicRequest(name="spread", partitions=3, replication_factor=1)
    )
    leaders = {p: cluster.wait_for_leader("spread", p) for p in range(3)}
    for partition, leader in leaders.items():
        result = produce(
            cluster, leader, [b"x"] * (partition + 5), topic="spread", partition=partition
        )
        assert not result.error.code, result.error.message
    commits = pb.CommitOffsetsRequest(
        group_id=GROUP,
        topics=[
            pb.CommitTopic(
                topic="spread",
                partitions=[pb.CommitPartition(partition=p, offset=1) for p in range(3)],
            )
        ],
    )
    wait_until(
        lambda: committed_or_none(cluster, coordinator(cluster)) is not None, "a coordinator"
    )
    where = coordinator(cluster)
    cluster.call("CommitOffsets", commits, where)
    described = cluster.call("DescribeGroup", pb.DescribeGroupRequest(group_id=GROUP), where)
    assert isinstance(described, pb.DescribeGroupResponse)
    lags = {o.partition: (o.log_end_offset, o.lag) for o in described.offsets}
    assert lags == {p: (p + 5, p + 4) for p in range(3)}
    reset = pb.ResetOffsetsRequest(group_id=GROUP, to_latest=True, dry_run=True)
    planned = cluster.call("ResetOffsets", reset, where)
    assert isinstance(planned, pb.ResetOffsetsResponse)
    assert {e.partition: e.new_offset for e in planned.plan} == {p: p + 5 for p in range(3)}

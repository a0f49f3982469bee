"""Three real brokers and a real etcd: replication, acks=all, and failover of the leader.

Every test keeps a history of the records the cluster acknowledged, then checks after
healing that each is present exactly once at one offset, offsets are dense, and every
replica's log is identical below the high watermark (read from each broker's files).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore.codec import record_batch as rb
from tests.cluster.harness import ClusterHarness
from tests.cluster.history import (
    TOPIC,
    check_history,
    create_topic,
    fetch_all,
    log_batches,
    produce,
    records_of,
    send_until_acknowledged,
)
from tests.helpers import wait_until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path, brokers=3)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


#: what a follower logs when it starts fetching, by transport
_FOLLOWING_OVER = {"stream": "over its replication stream at", "grpc": "over gRPC"}


@pytest.mark.parametrize("transport", ["stream", "grpc"])
def test_acks_all_reaches_every_replica_with_the_leader_epoch(
    tmp_path: Path, transport: str
) -> None:
    """Over either transport: the plain replication stream (the default without
    security) and gRPC (`--no-replication-stream`, and every secured cluster)."""
    extra = ["--no-replication-stream"] if transport == "grpc" else []
    with contextlib.closing(ClusterHarness(tmp_path, brokers=3, extra_args=extra)) as cluster:
        cluster.start()
        _acks_all_reaches_every_replica(cluster, transport)


def _acks_all_reaches_every_replica(cluster: ClusterHarness, transport: str) -> None:
    create_topic(cluster)
    leader = cluster.wait_for_leader(TOPIC)
    assert sorted(cluster.wait_for_isr(TOPIC, 3)) == [1, 2, 3]
    for broker_id, process in cluster.brokers.items():
        if broker_id != leader:
            line = f"following partitions of leader {leader} at"
            assert any(
                line in entry and _FOLLOWING_OVER[transport] in entry
                for entry in process.logs().splitlines()
            ), f"broker {broker_id} does not fetch over {transport}"
    acknowledged: dict[bytes, int] = {}
    for i in range(20):
        values = [f"r{i}-{j}".encode() for j in range(5)]
        result = produce(cluster, leader, values)
        assert not result.error.code, result.error.message
        for j, value in enumerate(values):
            acknowledged[value] = result.base_offset + j
    # acks=all answered: every in-sync replica has the batches, byte for byte.
    state = cluster.partition(TOPIC)
    for process in cluster.brokers.values():
        process.stop()
    copies = {b: log_batches(cluster, b) for b in cluster.brokers}
    assert copies[1] == copies[2] == copies[3]
    epochs = {rb.read_header(batch).partition_leader_epoch for batch in copies[leader]}
    assert epochs == {state.leader_epoch}
    checkpoint = cluster.brokers[leader].data_dir / f"{TOPIC}-0" / "leader-epoch-checkpoint"
    assert checkpoint.read_text().splitlines()[:2] == ["0", "1"]


def test_producer_fails_over_when_the_leader_is_killed(cluster: ClusterHarness) -> None:
    create_topic(cluster)
    first_leader = cluster.wait_for_leader(TOPIC)
    cluster.wait_for_isr(TOPIC, 3)
    acknowledged: dict[bytes, int] = {}

    def send(i: int) -> None:
        # Each attempt sends values of its own: an attempt whose answer was lost may still
        # be stored, and must not be mistaken for the acknowledged one.
        sent = send_until_acknowledged(
            cluster, lambda attempt: [f"m{i}-{attempt}-{j}".encode() for j in range(3)]
        )
        assert sent is not None, f"send {i} was never acknowledged"
        for j, value in enumerate(sent.values):
            acknowledged[value] = sent.base_offset + j

    for i in range(10):
        send(i)
    cluster.brokers[first_leader].kill9()
    killed_at = time.monotonic()
    new_leader = cluster.wait_for_leader(TOPIC, not_on=first_leader)
    for i in range(10, 20):
        send(i)
    failover_s = time.monotonic() - killed_at
    assert failover_s < 20, f"the first acknowledged produce took {failover_s:.1f} s"
    assert new_leader != first_leader
    check_history(acknowledged, fetch_all(cluster, new_leader))

    # The old leader comes back as a follower, catches up and rejoins the ISR.
    cluster.brokers[first_leader].start()
    wait_until(
        lambda: first_leader in cluster.partition(TOPIC).isr,
        f"broker {first_leader} to rejoin the ISR",
        timeout_s=30,
    )
    for i in range(20, 25):
        send(i)
    high_watermark = max(acknowledged.values()) + 1
    for process in cluster.brokers.values():
        process.stop()
    copies = {b: log_batches(cluster, b) for b in cluster.brokers}
    for batches in copies.values():
        check_history(acknowledged, records_of(batches)[:high_watermark])
    assert copies[1] == copies[2] == copies[3]


def test_fewer_in_sync_replicas_than_min_insync_refuses_acks_all(
    cluster: ClusterHarness,
) -> None:
    create_topic(cluster, **{"min.insync.replicas": "3"})
    leader = cluster.wait_for_leader(TOPIC)
    cluster.wait_for_isr(TOPIC, 3)
    assert not produce(cluster, leader, [b"before"]).error.code
    follower = next(b for b in cluster.brokers if b != leader)
    cluster.brokers[follower].kill9()
    wait_until(
        lambda: follower not in cluster.partition(TOPIC).isr,
        f"broker {follower} to leave the ISR",
        timeout_s=20,
    )
    refused = produce(cluster, leader, [b"refused"])
    assert refused.error.kind == "NotEnoughReplicasError", refused.error.message
    # acks=1 does not wait for the ISR, and is still served.
    assert not produce(cluster, leader, [b"acks-1"], acks=1).error.code

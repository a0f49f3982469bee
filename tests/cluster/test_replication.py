"""Three real brokers and a real etcd: replication, acks=all, and failover of the leader.

Every test keeps a history of the records the cluster acknowledged, then checks after
healing that each is present exactly once at one offset, offsets are dense, and every
replica's log is identical below the high watermark (read from each broker's files).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from logstore.codec import record_batch as rb
from logstore.v1 import logstore_pb2 as pb
from tests.cluster.harness import ClusterHarness
from tests.helpers import scan_file, wait_until

TOPIC = "orders"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path, brokers=3)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def create_topic(cluster: ClusterHarness, partitions: int = 1, rf: int = 3, **config: str) -> None:
    cluster.call(
        "CreateTopic",
        pb.CreateTopicRequest(
            name=TOPIC, partitions=partitions, replication_factor=rf, config=config
        ),
    )


def produce(
    cluster: ClusterHarness, leader: int, values: list[bytes], acks: int = -1
) -> pb.ProducePartitionResult:
    batch = rb.encode_values(list(values), int(time.time() * 1000))
    request = pb.ProduceRequest(
        acks=acks,
        topics=[
            pb.ProduceTopicData(
                topic=TOPIC, partitions=[pb.ProducePartitionData(partition=0, records=batch)]
            )
        ],
    )
    answer = cluster.call("Produce", request, leader)
    assert isinstance(answer, pb.ProduceResponse)
    return answer.topics[0].partitions[0]


def produce_until_acknowledged(
    cluster: ClusterHarness, values: list[bytes], timeout_s: float = 30
) -> int:
    """Send one batch acks=all to whichever broker leads, retrying through a failover;
    return its base offset. Retries may duplicate only what was never acknowledged."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            leader = cluster.partition(TOPIC).leader
            if leader > 0 and cluster.brokers[leader].proc is not None:
                result = produce(cluster, leader, values)
                if not result.error.code:
                    return result.base_offset
                last = f"{result.error.kind}: {result.error.message}"
        except grpc.RpcError as exc:
            last = str(exc.code())
        time.sleep(0.1)
    raise AssertionError(f"no acknowledgement within {timeout_s} s: {last}")


def fetch_all(cluster: ClusterHarness, broker_id: int) -> list[rb.Record]:
    records: list[rb.Record] = []
    offset = 0
    for _ in range(10_000):
        request = pb.FetchRequest(
            topics=[
                pb.FetchTopic(
                    topic=TOPIC, partitions=[pb.FetchPartition(partition=0, fetch_offset=offset)]
                )
            ],
            max_wait_ms=0,
        )
        answer = cluster.call("Fetch", request, broker_id)
        assert isinstance(answer, pb.FetchResponse)
        result = answer.topics[0].partitions[0]
        assert not result.error.code, result.error.message
        batch = rb.decode_all(result.records)
        if not batch:
            return records
        records.extend(batch)
        offset = batch[-1].offset + 1
    raise AssertionError("fetch did not reach the end")


def log_batches(cluster: ClusterHarness, broker_id: int) -> list[bytes]:
    """Every batch in the broker's segment files of orders-0, as bytes, oldest first."""
    directory = cluster.brokers[broker_id].data_dir / f"{TOPIC}-0"
    batches = []
    for path in sorted(directory.glob("*.log")):
        data = path.read_bytes()
        for position, header in scan_file(path):
            batches.append(data[position : position + header.size])
    return batches


def check_history(acknowledged: dict[bytes, int], records: list[rb.Record]) -> None:
    offsets = [r.offset for r in records]
    assert offsets == list(range(len(offsets))), "offsets are dense from 0"
    seen: dict[bytes, list[int]] = {}
    for record in records:
        assert record.value is not None
        seen.setdefault(record.value, []).append(record.offset)
    for value, offset in acknowledged.items():
        found = seen.get(value)
        assert found == [offset], f"{value!r} acknowledged at {offset}, found at {found}"


def test_acks_all_reaches_every_replica_with_the_leader_epoch(cluster: ClusterHarness) -> None:
    create_topic(cluster)
    leader = cluster.wait_for_leader(TOPIC)
    assert sorted(cluster.wait_for_isr(TOPIC, 3)) == [1, 2, 3]
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
        values = [f"m{i}-{j}".encode() for j in range(3)]
        base = produce_until_acknowledged(cluster, values)
        for j, value in enumerate(values):
            acknowledged[value] = base + j

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
    high_watermark = len(acknowledged)
    for process in cluster.brokers.values():
        process.stop()
    copies = {b: log_batches(cluster, b) for b in cluster.brokers}
    for batches in copies.values():
        records = [r for batch in batches for r in rb.decode_all(batch)]
        check_history(acknowledged, records[:high_watermark])
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

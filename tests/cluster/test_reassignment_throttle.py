"""Throttled reassignment on a real three-broker cluster: a replica being added copies the
partition no faster than the throttle (Kafka's `kafka-reassign-partitions --throttle`),
other replication goes on at full speed, `--verify` removes the throttle once the move is
done, a throttle raised while a move runs takes effect, and an unthrottled move of the
same data is much faster."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore import Admin
from tests.cli.conftest import Result, run_cli
from tests.cluster.harness import ClusterHarness
from tests.cluster.history import produce
from tests.helpers import wait_until

MB = 1_000_000
#: the data the moved partition holds: 40 batches of 128 KiB values (5 MiB and a bit)
BATCHES = 40
VALUES_PER_BATCH = 16
VALUE_BYTES = 8 * 1024
#: the throttle of the measured move (bytes/s)
THROTTLE = 1 * MB
#: a full bucket lets this much through at once (TokenBucket's burst: one second's worth)
BURST = THROTTLE
#: the throttled move must take at least this share of what the throttle implies
TOLERANCE = 0.8


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(tmp_path / "cluster", brokers=3)
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def fill(
    cluster: ClusterHarness,
    topic: str,
    batches: int,
    partition: int = 0,
    value_bytes: int = VALUE_BYTES,
) -> int:
    """Append `batches` batches of VALUES_PER_BATCH values; the bytes appended."""
    leader = cluster.wait_for_leader(topic, partition)
    size = 0
    for i in range(batches):
        values = [bytes([i % 251, v % 251]) * (value_bytes // 2) for v in range(VALUES_PER_BATCH)]
        result = produce(cluster, leader, values, topic=topic, partition=partition)
        assert not result.error.code, result.error.message
        size += sum(len(v) for v in values)
    return size


def plan_file(
    tmp_path: Path, topic: str, replicas: list[int], partitions: tuple[int, ...] = (0,)
) -> str:
    path = tmp_path / f"move-{topic}-{'-'.join(map(str, replicas))}.json"
    entries = [{"topic": topic, "partition": p, "replicas": replicas} for p in partitions]
    path.write_text(json.dumps({"version": 1, "partitions": entries}))
    return str(path)


def reassign(cluster: ClusterHarness, path: str, *args: str) -> Result:
    return run_cli(
        "partitions", "reassign", "--reassignment-json-file", path, *args,
        bootstrap=cluster.bootstrap,
    )  # fmt: skip


def moved(
    admin: Admin,
    cluster: ClusterHarness,
    topic: str,
    target: list[int],
    partitions: tuple[int, ...] = (0,),
) -> bool:
    return not admin.list_partition_reassignments([(topic, p) for p in partitions]) and all(
        list(cluster.partition(topic, p).replicas) == target for p in partitions
    )


def time_move(admin: Admin, cluster: ClusterHarness, topic: str, target: list[int]) -> float:
    """Seconds from now until the move of `topic`-0 to `target` has completed."""
    started = time.monotonic()
    wait_until(lambda: moved(admin, cluster, topic, target), f"{topic} to move to {target}", 60)
    return time.monotonic() - started


class AckTimer:
    """acks=all produces to a partition, one after another, timed, until stopped."""

    def __init__(self, cluster: ClusterHarness, topic: str, partition: int) -> None:
        self._cluster = cluster
        self._topic = topic
        self._partition = partition
        self._leader = cluster.wait_for_leader(topic, partition)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        value = b"s" * 64 * 1024
        for _ in range(10_000):  # bounded; stop() ends it long before
            if self._stop.wait(0.05):
                return
            started = time.monotonic()
            result = produce(
                self._cluster, self._leader, [value], topic=self._topic, partition=self._partition
            )
            if result.error.code:
                self.failures.append(result.error.message)
            self.latencies.append(time.monotonic() - started)

    def __enter__(self) -> AckTimer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def test_a_throttled_move_keeps_to_its_rate_and_verify_removes_the_throttle(
    cluster: ClusterHarness, tmp_path: Path
) -> None:
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("moving", partitions=1, replication_factor=1)
        admin.create_topic("steady", partitions=3, replication_factor=3)
        size = fill(cluster, "moving", BATCHES)
        [source] = list(cluster.partition("moving").replicas)
        target, third = [b for b in cluster.brokers if b != source]
        # The steady partition this broker leads: its followers fetch from the same leader
        # as the moving replica does.
        steady = next(p for p in range(3) if cluster.wait_for_leader("steady", p) == source)
        for p in range(3):
            cluster.wait_for_isr("steady", 3, p)

        move = plan_file(tmp_path, "moving", [target])
        with AckTimer(cluster, "steady", steady) as timer:
            executed = reassign(cluster, move, "--execute", "--throttle", str(THROTTLE))
            throttled_s = time_move(admin, cluster, "moving", [target])
            in_sync = len(cluster.partition("steady", steady).isr)
        assert executed.code == 0, executed.err
        assert json.loads(executed.out)["partitions"][0]["replicas"] == [source]
        assert f"The inter-broker throttle limit was set to {THROTTLE} B/s." in executed.err

        # At most the burst and one fetch beyond the rate: the move took that long at least.
        implied_s = (size - BURST) / THROTTLE
        assert throttled_s >= TOLERANCE * implied_s, (throttled_s, implied_s)
        # Other replication went on at full speed meanwhile.
        # (Bounds far above the ~10 ms these take, so a loaded machine does not trip them;
        # a throttle applied to them would queue them behind the moving replica's debt.)
        assert not timer.failures and len(timer.latencies) >= 5, timer.latencies
        assert statistics.median(timer.latencies) < 0.5, timer.latencies
        assert statistics.quantiles(timer.latencies, n=10)[-1] < 1.0, timer.latencies
        assert in_sync == 3, "a follower of the steady partition fell out of the ISR"
        assert admin.replication_throttle() == THROTTLE  # until --verify sees the move done

        verified = reassign(cluster, move, "--verify")
        assert verified.code == 0, verified.err
        assert verified.out.splitlines() == [
            "Status of partition reassignment:",
            "Reassignment of partition moving-0 is completed.",
            "Throttle was removed.",
        ]
        assert admin.replication_throttle() == 0
        again = reassign(cluster, move, "--verify")
        assert "Throttle was removed." not in again.out  # there was none to remove

        # The same data, moved on without a throttle, is much faster.
        admin.alter_partition_reassignments({("moving", 0): [third]})
        unthrottled_s = time_move(admin, cluster, "moving", [third])
        assert unthrottled_s < throttled_s / 2, (unthrottled_s, throttled_s)
        ends = {
            cluster.describe_topic("moving", b).partitions[0].log_end_offset
            for b in cluster.brokers
        }
        assert ends == {BATCHES * VALUES_PER_BATCH}


def test_a_throttle_raised_while_a_move_runs_lets_it_finish(
    cluster: ClusterHarness, tmp_path: Path
) -> None:
    """Two partitions of one leader move together under a 300 kB/s throttle: both make
    progress (the throttled fetches take turns), neither finishes in two seconds, and
    `--verify` leaves the throttle alone meanwhile; `--execute` again with the same file
    and a higher `--throttle` changes the rate, and the moves finish."""
    with Admin(cluster.bootstrap) as admin:
        admin.create_topic("slow", partitions=4, replication_factor=1)
        # Four partitions round-robin over three brokers: 0 and 3 share a broker.
        [source] = list(cluster.partition("slow", 0).replicas)
        assert list(cluster.partition("slow", 3).replicas) == [source]
        both = (0, 3)
        for p in both:
            fill(cluster, "slow", 32, partition=p, value_bytes=2048)  # 32 KiB batches, 1 MiB
        target = next(b for b in cluster.brokers if b != source)
        move = plan_file(tmp_path, "slow", [target], both)
        first = reassign(cluster, move, "--execute", "--throttle", "300000")
        assert first.code == 0, first.err
        time.sleep(2.0)
        assert not moved(admin, cluster, "slow", [target], both)
        copied = [cluster.describe_topic("slow", target).partitions[p].log_end_offset for p in both]
        full = 32 * VALUES_PER_BATCH
        assert all(0 < c < full for c in copied), copied
        running = reassign(cluster, move, "--verify")
        assert running.code == 1
        assert "Reassignment of partition slow-0 is still in progress." in running.out
        assert "Throttle was removed." not in running.out
        assert admin.replication_throttle() == 300_000

        second = reassign(cluster, move, "--execute", "--throttle", str(100 * MB))
        assert second.code == 0, second.err
        # The rollback file still names the replicas from before the move.
        rollback = json.loads(second.out)["partitions"]
        assert [e["replicas"] for e in rollback] == [[source], [source]]
        assert "already being moved to these replicas: slow-0,slow-3" in second.err
        assert admin.replication_throttle() == 100 * MB
        wait_until(lambda: moved(admin, cluster, "slow", [target], both), "the moves to finish", 15)
        done = reassign(cluster, move, "--verify")
        assert done.code == 0 and "Throttle was removed." in done.out
        assert admin.replication_throttle() == 0

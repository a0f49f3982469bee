"""Consumer groups against a real cluster (etcd and three `logstore serve --broker-id`
processes, tests/cluster/harness.py), through the clients.

A group's coordinator is the leader of the group's partition of __consumer_offsets; every
other broker refuses the group's requests. The clients find the coordinator themselves:
a group consumes through a broker that does not coordinate it, carries on when its
coordinator is killed (kill -9) while it consumes, and never sees a committed offset go
back; `Admin` and the `logstore groups` commands describe and list groups from any
bootstrap broker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import grpc
import pytest

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.errors import LogStoreError
from logstore.types import ConsumerRecord, RecordMetadata, TopicPartition
from logstore.v1 import logstore_pb2 as pb
from tests.cli.conftest import run_cli
from tests.cluster.harness import ClusterHarness
from tests.helpers import wait_until

TOPIC = "orders"
PARTITIONS = 4
GROUP = "billing"
#: upper bound of every wait here (s): a failover takes a session timeout and an election
WAIT_S = 90.0
FOREVER = float("inf")
#: members notice a lost coordinator within a heartbeat or two
MEMBER_OPTIONS = {
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "session_timeout_ms": 10_000,
    "heartbeat_interval_ms": 300,
    "request_timeout_ms": 15_000,
    "retry_backoff_ms": 50,
    "fetch_max_wait_ms": 100,
}


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


def coordinator(cluster: ClusterHarness, group: str, not_on: int | None = None) -> int:
    """The broker FindCoordinator names for `group` (a running one other than `not_on`)."""
    found: list[int] = []

    def named() -> bool:
        try:
            answer = cluster.call("FindCoordinator", pb.FindCoordinatorRequest(group_id=group))
        except grpc.RpcError:
            return False  # no leader of the group's offsets partition yet
        assert isinstance(answer, pb.FindCoordinatorResponse)
        broker = answer.coordinator.broker_id
        if broker == not_on or not cluster.running(broker):
            return False
        found[:] = [broker]
        return True

    wait_until(named, f"a coordinator for {group}", timeout_s=30)
    return found[0]


def log_ends(acknowledged: list[RecordMetadata]) -> dict[TopicPartition, int]:
    """The log end of each partition once everything acknowledged is in (nothing else is
    produced to the topic)."""
    ends: dict[TopicPartition, int] = {}
    for md in acknowledged:
        tp = (md.topic, md.partition)
        ends[tp] = max(ends.get(tp, 0), md.offset + 1)
    return ends


def committed(admin: Admin, group: str = GROUP) -> dict[TopicPartition, int]:
    return {tp: om.offset for tp, om in admin.committed_offsets(group).items()}


class Member(threading.Thread):
    """A consumer of the group on a thread of its own: polls, commits after every poll
    that returned records (a commit refused in a rebalance is retried by the next one),
    until `stop` is set or WAIT_S passed. Keeps every record, and every error met.
    `pace_s`: a pause after each poll that returned records, so consuming takes a while."""

    def __init__(
        self, bootstrap: str, name: str, stop: threading.Event, pace_s: float = 0.0
    ) -> None:
        super().__init__(name=f"test-member-{name}", daemon=True)
        self.bootstrap = bootstrap
        self.client_id = name
        self.stop = stop
        self.pace_s = pace_s
        self.records: list[ConsumerRecord] = []
        self.errors: list[LogStoreError] = []
        self.commits = 0

    def run(self) -> None:
        options = {**MEMBER_OPTIONS, "client_id": self.client_id}
        with Consumer(self.bootstrap, group_id=GROUP, **options) as consumer:  # type: ignore[arg-type]
            consumer.subscribe([TOPIC])
            deadline = time.monotonic() + WAIT_S
            dirty = False
            records: list[ConsumerRecord] = []
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    records = consumer.poll(timeout=0.2, max_records=self.batch)
                    self.records += records
                    dirty |= bool(records)
                    if dirty:
                        consumer.commit()
                        self.commits += 1
                        dirty = False
                except LogStoreError as exc:
                    self.errors.append(exc)
                if records and self.pace_s:
                    time.sleep(self.pace_s)

    @property
    def batch(self) -> int | None:
        """At most this many records a poll (None: the consumer's default)."""
        return 50 if self.pace_s else None

    def consumed(self) -> int:
        return len(self.records)


class CommitWatcher(threading.Thread):
    """Reads the group's committed offsets through `Admin` every 100 ms (any bootstrap
    broker; the coordinator is found again when it moves) and keeps every reading with
    the time it was answered (monotonic s)."""

    def __init__(self, bootstrap: str, stop: threading.Event) -> None:
        super().__init__(name="test-commit-watcher", daemon=True)
        self.bootstrap = bootstrap
        self.stop = stop
        self.readings: list[tuple[float, dict[TopicPartition, int]]] = []
        self.failures = 0

    def run(self) -> None:
        with Admin(self.bootstrap, request_timeout_ms=5000) as admin:
            deadline = time.monotonic() + WAIT_S
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    reading = committed(admin)
                    self.readings.append((time.monotonic(), reading))
                except LogStoreError:
                    self.failures += 1
                time.sleep(0.1)

    def read_between(self, start: float, end: float) -> bool:
        """Whether some reading with a commit in it was answered between `start` and
        `end` (monotonic s)."""
        return any(start < at < end and reading for at, reading in self.readings)

    def went_back(self) -> list[str]:
        """Every partition whose committed offset was read lower than an earlier reading."""
        highest: dict[TopicPartition, int] = {}
        found: list[str] = []
        for _, reading in self.readings:
            for tp, offset in reading.items():
                if offset < highest.get(tp, -1):
                    found.append(f"{tp}: {highest[tp]} -> {offset}")
                highest[tp] = max(offset, highest.get(tp, -1))
            for tp in set(highest) - set(reading):
                found.append(f"{tp}: {highest[tp]} -> nothing")
        return found


def produce(producer: Producer, start: int, count: int) -> list[Future[RecordMetadata]]:
    return [
        producer.send(TOPIC, b"%d" % i, partition=i % PARTITIONS)
        for i in range(start, start + count)
    ]


def latest_by_partition(records: list[ConsumerRecord]) -> dict[TopicPartition, int]:
    """The offset after the last record consumed of each partition."""
    ends: dict[TopicPartition, int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        ends[tp] = max(ends.get(tp, 0), r.offset + 1)
    return ends


def wait_for_commits(admin: Admin, ends: dict[TopicPartition, int], members: list[Member]) -> None:
    """Wait until the group's committed offsets are `ends`; the failure says how far it
    got and what the members met."""
    seen: list[dict[TopicPartition, int]] = [{}]

    def done() -> bool:
        try:
            seen[0] = committed(admin)
        except LogStoreError:
            return False
        return seen[0] == ends

    try:
        wait_until(done, "every record committed", WAIT_S)
    except AssertionError as exc:
        report = [f"{m.client_id}: {m.consumed()} records, {m.commits} commits" for m in members]
        errors = [f"{m.client_id}: {e!r}" for m in members for e in m.errors[-5:]]
        raise AssertionError(
            f"{exc}: committed {seen[0]}, log ends {ends}; {report}; last errors {errors}"
        ) from None


def test_a_group_consumes_everything_once_through_a_broker_that_does_not_coordinate_it(
    cluster: ClusterHarness,
) -> None:
    """Each member's only bootstrap broker refuses the group's requests: they reach the
    coordinator or nothing works. With commits after every poll and no fault, every record
    is read exactly once, by one of the two members."""
    boss = coordinator(cluster, GROUP)
    others = [b for b in cluster.brokers if b != boss]
    stop = threading.Event()
    members = [Member(cluster.brokers[b].address, f"m{b}", stop) for b in others]
    for member in members:
        member.start()
    try:
        with Admin(cluster.bootstrap) as admin:

            def both_assigned() -> bool:
                members = admin.describe_group(GROUP).members
                return len([m for m in members if m.assignment]) == 2

            wait_until(both_assigned, "both members to own partitions", timeout_s=WAIT_S)
            with Producer(cluster.bootstrap, linger_ms=2) as producer:
                acknowledged = [f.result(WAIT_S) for f in produce(producer, 0, 2000)]
            ends = log_ends(acknowledged)
            wait_for_commits(admin, ends, members)
    finally:
        stop.set()
        for member in members:
            member.join(WAIT_S)
    records = [r for member in members for r in member.records]
    assert sorted(r.value or b"" for r in records) == sorted(b"%d" % i for i in range(2000))
    assert len({(r.partition, r.offset) for r in records}) == len(records) == len(acknowledged)
    assert all(member.consumed() > 0 for member in members), [m.consumed() for m in members]
    assert latest_by_partition(records) == ends
    assert [e for m in members for e in m.errors] == []


def test_the_group_carries_on_when_its_coordinator_is_killed(cluster: ClusterHarness) -> None:
    """kill -9 of the coordinator while both members consume and commit: they find the new
    coordinator and go on; no reading of the committed offsets ever goes back, and in the
    end they equal the end of what was consumed (every acknowledged record was).

    Everything is produced first, so the test is about the group alone: the members read
    at a bounded pace, and the kill comes while they are at it."""
    total = 3000
    addresses = [cluster.brokers[b].address for b in cluster.brokers]
    with Producer(",".join(addresses), linger_ms=2) as producer:
        acknowledged = [f.result(WAIT_S) for f in produce(producer, 0, total)]
    ends = log_ends(acknowledged)
    boss = coordinator(cluster, GROUP)
    doomed = cluster.brokers[boss].address
    # One member starts at the coordinator (its home dies too), the other elsewhere.
    first = [doomed] + [a for a in addresses if a != doomed]
    stop = threading.Event()
    members = [
        Member(",".join(first), "m1", stop, pace_s=0.05),
        Member(",".join(reversed(first)), "m2", stop, pace_s=0.05),
    ]
    watcher = CommitWatcher(",".join(addresses), stop)
    try:
        for thread in (*members, watcher):
            thread.start()
        wait_until(
            lambda: sum(m.consumed() for m in members) >= 500 and watcher.read_between(0, FOREVER),
            "the members to consume and commit",
            timeout_s=WAIT_S,
        )
        killed_at = time.monotonic()
        cluster.kill9(boss)
        assert sum(m.consumed() for m in members) < total, "consumed all before the kill"
        new_boss = coordinator(cluster, GROUP, not_on=boss)
        with Admin(",".join(cluster.brokers[b].address for b in cluster.reachable())) as admin:
            wait_for_commits(admin, ends, members)
            final = committed(admin)
        wait_until(
            lambda: watcher.read_between(killed_at, FOREVER),
            "the commits to be read from the new coordinator",
            timeout_s=WAIT_S,
        )
    finally:
        stop.set()
        for thread in (*members, watcher):
            thread.join(WAIT_S)
    records = [r for member in members for r in member.records]
    assert {r.value for r in records} == {b"%d" % i for i in range(total)}
    assert latest_by_partition(records) == final == ends
    assert sum(ends.values()) == total
    assert watcher.went_back() == []
    assert watcher.read_between(0, killed_at), "no commit was read before the kill"
    assert new_boss != boss


def test_admin_and_the_cli_describe_and_list_groups_from_any_broker(
    cluster: ClusterHarness,
) -> None:
    """Groups spread over several coordinators: every broker, as bootstrap, describes each
    one and lists them all, once each (each broker lists only the groups it coordinates)."""
    groups = [f"g{i:02d}" for i in range(12)]
    with Admin(cluster.bootstrap) as admin:
        for i, group in enumerate(groups):
            admin.commit_offsets(group, {(TOPIC, i % PARTITIONS): i + 1})
    coordinators = {group: coordinator(cluster, group) for group in groups}
    assert len(set(coordinators.values())) >= 2, coordinators
    for broker in cluster.brokers.values():
        with Admin(broker.address) as admin:
            listed = admin.list_groups()
            assert [g.group_id for g in listed] == groups
            assert all(g.state == "Empty" and g.members == 0 for g in listed)
            for i, group in enumerate(groups):
                description = admin.describe_group(group)
                offsets = [(o.topic, o.partition, o.committed_offset) for o in description.offsets]
                assert offsets == [(TOPIC, i % PARTITIONS, i + 1)]

    bootstrap = ",".join(b.address for b in cluster.brokers.values())
    result = run_cli("groups", "list", "--json", bootstrap=bootstrap)
    assert result.code == 0, result.err
    assert [g["group_id"] for g in json.loads(result.out)] == groups
    for group in (groups[0], groups[-1]):
        result = run_cli("groups", "describe", group, bootstrap=bootstrap)
        assert result.code == 0, result.err
        assert group in result.out and TOPIC in result.out
    result = run_cli("groups", "list", bootstrap=bootstrap)
    assert result.code == 0, result.err
    assert {line.split()[0] for line in result.out.splitlines()[1:] if line.strip()} == set(groups)

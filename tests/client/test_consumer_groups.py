"""Consumer groups against a real `logstore serve` process: sharing partitions,
rebalancing and listener calls, the assignor option, member commits, a stalled
application, a broker restart, failover of a member killed outright (in its own process,
tests/client/group_worker.py), fan-out to several groups, and replay by offset reset.

Records are produced with raw Produce RPCs; record i of a partition has the value
b"p<partition>-<i>" and the timestamp `ts0 + i` (ms), so reads can be checked for loss and
duplication. Heartbeats are fast (HEARTBEAT_MS) so groups settle within about a second;
every loop is bounded both in rounds and in time (WAIT_S).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer, ConsumerRebalanceListener
from logstore.codec import record_batch as rb
from logstore.errors import CommitFailedError, GroupNotEmptyError, InvalidRequestError
from logstore.types import ConsumerRecord, TopicPartition
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.helpers import wait_until
from tests.server.conftest import BrokerProcess

TOPIC = "t"
HEARTBEAT_MS = 200
#: the shortest session the coordinator accepts (ms)
SESSION_MS = 6000
#: upper bound of any wait in these tests (s)
WAIT_S = 20.0
#: upper bound of polling rounds in any loop
MAX_ROUNDS = 2000
TS0 = 1_700_000_000_000
WORKER = Path(__file__).with_name("group_worker.py")


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[Admin]:
    with Admin(broker.address) as client:
        yield client


def produce(
    stub: pb_grpc.LogStoreStub, partition: int, start: int, count: int, ts0: int = TS0
) -> None:
    """Append records start..start+count-1 to TOPIC-`partition` in one batch (acks=-1)."""
    batch = rb.encode_batch(
        [(None, f"p{partition}-{i}".encode(), None, ts0 + i) for i in range(start, start + count)]
    )
    request = pb.ProduceRequest(
        acks=-1,
        topics=[
            pb.ProduceTopicData(
                topic=TOPIC,
                partitions=[pb.ProducePartitionData(partition=partition, records=batch)],
            )
        ],
    )
    result = stub.Produce(request, timeout=10).topics[0].partitions[0]
    assert result.error.code == 0, result.error.message


def produce_all(
    stub: pb_grpc.LogStoreStub, partitions: int, start: int, count: int, ts0: int = TS0
) -> None:
    for partition in range(partitions):
        produce(stub, partition, start, count, ts0)


def member(broker: BrokerProcess, group: str, client_id: str, **options: Any) -> Consumer:
    settings: dict[str, Any] = {
        "group_id": group,
        "client_id": client_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "heartbeat_interval_ms": HEARTBEAT_MS,
        "session_timeout_ms": SESSION_MS,
        "fetch_max_wait_ms": 100,
    }
    settings.update(options)
    return Consumer(broker.address, **settings)


def partitions_of(count: int) -> set[TopicPartition]:
    return {(TOPIC, p) for p in range(count)}


def settle(
    admin: Admin,
    group: str,
    members: dict[str, Consumer],
    sizes: list[int],
    reads: dict[str, list[ConsumerRecord]],
    partitions: int,
) -> dict[str, set[TopicPartition]]:
    """Poll each member (client id -> consumer) in turn until their assignments have
    `sizes` (in any order), are disjoint and cover the topic, the coordinator calls the
    group Stable and gives each member exactly what its consumer applied. Records read
    meanwhile are appended to `reads[client id]`. Returns the assignments."""
    deadline = time.monotonic() + WAIT_S
    owned: dict[str, set[TopicPartition]] = {}
    for _ in range(MAX_ROUNDS):
        for cid, consumer in members.items():
            reads.setdefault(cid, []).extend(consumer.poll(timeout=0.02))
        owned = {cid: consumer.assignment() for cid, consumer in members.items()}
        if _settled(admin, group, owned, sizes, partitions):
            return owned
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"group {group} did not settle at {sizes}: {owned}")


def _settled(
    admin: Admin,
    group: str,
    owned: dict[str, set[TopicPartition]],
    sizes: list[int],
    partitions: int,
) -> bool:
    if sorted(len(o) for o in owned.values()) != sorted(sizes) or sum(sizes) != partitions:
        return False
    if set().union(*owned.values()) != partitions_of(partitions):
        return False
    description = admin.describe_group(group)
    coordinator = {m.client_id: set(m.assignment) for m in description.members}
    return description.state == "Stable" and coordinator == owned


def poll_all(
    members: dict[str, Consumer], reads: dict[str, list[ConsumerRecord]], total: int
) -> None:
    """Poll every member in turn until their `reads` hold `total` records, then a few
    rounds more so that a duplicate would show."""
    deadline = time.monotonic() + WAIT_S
    for _ in range(MAX_ROUNDS):
        done = sum(len(reads.get(cid, [])) for cid in members)
        if done >= total or time.monotonic() > deadline:
            break
        for cid, consumer in members.items():
            reads.setdefault(cid, []).extend(consumer.poll(timeout=0.02))
    for _ in range(3):
        for cid, consumer in members.items():
            reads.setdefault(cid, []).extend(consumer.poll(timeout=0.1))


def all_reads(reads: dict[str, list[ConsumerRecord]]) -> list[ConsumerRecord]:
    return [r for records in reads.values() for r in records]


def keys(records: list[ConsumerRecord]) -> list[tuple[int, int]]:
    return sorted((r.partition, r.offset) for r in records)


def every_record(partitions: int, count: int) -> list[tuple[int, int]]:
    return [(p, o) for p in range(partitions) for o in range(count)]


class Recorder(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, set[TopicPartition]]] = []

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", assigned))

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.events.append(("lost", lost))

    def union(self, kind: str) -> set[TopicPartition]:
        return set().union(*(tps for k, tps in self.events if k == kind))

    def kinds(self) -> set[str]:
        return {k for k, _ in self.events}

    def owned(self) -> set[TopicPartition]:
        """What the events add up to, checking each is consistent with the ones before."""
        owned: set[TopicPartition] = set()
        for kind, tps in self.events:
            if kind == "assigned":
                assert owned.isdisjoint(tps), (owned, kind, tps)
                owned |= tps
            else:
                assert tps <= owned, (owned, kind, tps)
                owned -= tps
        return owned


# --- sharing and rebalancing -----------------------------------------------------------------


def test_two_members_split_six_partitions_and_read_every_record_once(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=6)
    produce_all(stub, 6, 0, 50)
    # Auto-commit (on revocation): the first member may read partitions the second is about
    # to get, and the second must continue exactly where the first stopped.
    options = {"enable_auto_commit": True, "auto_commit_interval_ms": 60_000}
    with (
        member(broker, "g", "c0", **options) as c0,
        member(broker, "g", "c1", **options) as c1,
    ):
        members = {"c0": c0, "c1": c1}
        for consumer in members.values():
            consumer.subscribe([TOPIC])
        reads: dict[str, list[ConsumerRecord]] = {}
        owned = settle(admin, "g", members, [3, 3], reads, 6)
        assert owned["c0"].isdisjoint(owned["c1"])
        settled_at = {cid: len(records) for cid, records in reads.items()}
        produce_all(stub, 6, 50, 50)
        poll_all(members, reads, 600)
    for cid, records in reads.items():
        # once settled, each member reads only its own partitions
        assert {(r.topic, r.partition) for r in records[settled_at[cid] :]} <= owned[cid]
    assert keys(all_reads(reads)) == every_record(6, 100)
    for r in all_reads(reads):
        assert r.value == f"p{r.partition}-{r.offset}".encode()


def test_third_member_joins_then_one_leaves_and_listeners_see_each_move(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=6)
    listeners = {cid: Recorder() for cid in ("c0", "c1", "c2")}
    members = {cid: member(broker, "g", cid) for cid in listeners}
    old = {cid: members[cid] for cid in ("c0", "c1")}
    reads: dict[str, list[ConsumerRecord]] = {}
    try:
        for cid, consumer in old.items():
            consumer.subscribe([TOPIC], listener=listeners[cid])
        before = settle(admin, "g", old, [3, 3], reads, 6)
        for cid in old:
            # the first to join may get all six, then give three back
            assert listeners[cid].owned() == before[cid] == members[cid].assignment()
            listeners[cid].events.clear()

        members["c2"].subscribe([TOPIC], listener=listeners["c2"])
        after = settle(admin, "g", members, [2, 2, 2], reads, 6)
        for cid in old:
            # sticky: each old member gives up one partition and gets nothing new
            assert listeners[cid].kinds() == {"revoked"}
            assert listeners[cid].union("revoked") == before[cid] - after[cid]
            assert len(before[cid] - after[cid]) == 1
        # granted as the others release them: in one step or two
        assert listeners["c2"].kinds() == {"assigned"}
        assert listeners["c2"].union("assigned") == after["c2"]
        for listener in listeners.values():
            listener.events.clear()

        members["c2"].close()
        # it left the group at once, without waiting for its session to expire
        assert len(admin.describe_group("g").members) == 2
        assert listeners["c2"].events == [("revoked", after["c2"])]
        final = settle(admin, "g", old, [3, 3], reads, 6)
        for cid in old:
            assert listeners[cid].kinds() == {"assigned"}
            assert listeners[cid].union("assigned") == final[cid] - after[cid]
        assert final["c0"] - after["c0"] | final["c1"] - after["c1"] == after["c2"]
    finally:
        for consumer in members.values():
            consumer.close()


def test_more_members_than_partitions_leaves_the_extra_idle(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=2)
    members = {cid: member(broker, "g", cid) for cid in ("c0", "c1", "c2")}
    try:
        for consumer in members.values():
            consumer.subscribe([TOPIC])
        reads: dict[str, list[ConsumerRecord]] = {}
        owned = settle(admin, "g", members, [1, 1, 0], reads, 2)
        produce_all(stub, 2, 0, 20)
        poll_all(members, reads, 40)
        idle = next(cid for cid, tps in owned.items() if not tps)
        assert reads[idle] == []
        assert keys(all_reads(reads)) == every_record(2, 20)
        description = admin.describe_group("g")
        assert description.state == "Stable"
        assert len(description.members) == 3
        assignments = {m.client_id: m.assignment for m in description.members}
        assert assignments[idle] == []
        assert sorted(len(a) for a in assignments.values()) == [0, 1, 1]
        # no partition names the idle member as its owner
        assert idle not in {o.client_id for o in description.offsets}
    finally:
        for consumer in members.values():
            consumer.close()


def test_two_groups_each_read_every_record(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=3)
    produce_all(stub, 3, 0, 40)
    with member(broker, "a", "a0") as a, member(broker, "b", "b0") as b:
        a.subscribe([TOPIC])
        b.subscribe([TOPIC])
        reads: dict[str, list[ConsumerRecord]] = {}
        poll_all({"a0": a, "b0": b}, reads, 240)
        a.commit()
        b.commit()
    assert keys(reads["a0"]) == keys(reads["b0"]) == every_record(3, 40)
    for group in ("a", "b"):
        lags = admin.describe_group(group).offsets
        assert [(o.partition, o.committed_offset, o.lag) for o in lags] == [
            (p, 40, 0) for p in range(3)
        ]


def test_assignor_option_and_a_mismatch(broker: BrokerProcess, admin: Admin) -> None:
    admin.create_topic(TOPIC, partitions=4)
    with (
        member(broker, "g", "c0", group_remote_assignor="range") as c0,
        member(broker, "g", "c1", group_remote_assignor="roundrobin") as c1,
    ):
        c0.subscribe([TOPIC])
        settle(admin, "g", {"c0": c0}, [4], {}, 4)
        assert admin.describe_group("g").assignor == "range"
        c1.subscribe([TOPIC])
        deadline = time.monotonic() + WAIT_S
        with pytest.raises(InvalidRequestError, match="same assignor"):
            for _ in range(MAX_ROUNDS):
                c1.poll(timeout=0.1)
                if time.monotonic() > deadline:
                    break
        assert c1.assignment() == set()
    with pytest.raises(InvalidRequestError, match="unknown assignor"):
        member(broker, "g", "c2", group_remote_assignor="uniform")
    with pytest.raises(InvalidRequestError, match="max_poll_interval_ms must be <="):
        member(broker, "g", "c2", max_poll_interval_ms=2**31)


def test_a_member_naming_no_assignor_takes_the_groups(broker: BrokerProcess, admin: Admin) -> None:
    admin.create_topic(TOPIC, partitions=4)
    with (
        member(broker, "g", "c0", group_remote_assignor="range") as c0,
        member(broker, "g", "c1") as c1,
    ):
        c0.subscribe([TOPIC])
        settle(admin, "g", {"c0": c0}, [4], {}, 4)
        c1.subscribe([TOPIC])
        settle(admin, "g", {"c0": c0, "c1": c1}, [2, 2], {}, 4)
        assert admin.describe_group("g").assignor == "range"
    with member(broker, "fresh", "c2") as c2:
        c2.subscribe([TOPIC])
        settle(admin, "fresh", {"c2": c2}, [4], {}, 4)
        assert admin.describe_group("fresh").assignor == "sticky"


def test_member_commits_carry_its_identity_and_only_owned_partitions(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=2)
    admin.create_topic("other", partitions=1)
    produce_all(stub, 2, 0, 10)
    with member(broker, "g", "c0") as consumer:
        consumer.subscribe([TOPIC])
        reads: dict[str, list[ConsumerRecord]] = {}
        settle(admin, "g", {"c0": consumer}, [2], reads, 2)
        poll_all({"c0": consumer}, reads, 20)
        # ("other", 0) is not this member's: it is skipped, the rest is committed
        consumer.commit({(TOPIC, 0): 7, (TOPIC, 1): 10, ("other", 0): 3})
        committed = {tp: om.offset for tp, om in admin.committed_offsets("g").items()}
        assert committed == {(TOPIC, 0): 7, (TOPIC, 1): 10}
        # a commit from outside the group protocol is refused while the group has members
        with pytest.raises(GroupNotEmptyError):
            admin.commit_offsets("g", {(TOPIC, 0): 1})
    # after close (which left the group) outside commits are accepted again
    admin.commit_offsets("g", {(TOPIC, 0): 1})
    assert admin.committed_offsets("g")[(TOPIC, 0)].offset == 1


def test_unsubscribe_leaves_at_once_and_subscribe_rejoins(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=2)
    produce_all(stub, 2, 0, 10)
    listener = Recorder()
    options = {"enable_auto_commit": True, "auto_commit_interval_ms": 60_000}
    with member(broker, "g", "c0", **options) as consumer:
        consumer.subscribe([TOPIC], listener=listener)
        reads: dict[str, list[ConsumerRecord]] = {}
        owned = settle(admin, "g", {"c0": consumer}, [2], reads, 2)["c0"]
        poll_all({"c0": consumer}, reads, 20)
        consumer.unsubscribe()
        assert listener.events[-1] == ("revoked", owned)
        assert (consumer.assignment(), consumer.subscription()) == (set(), set())
        assert admin.describe_group("g").members == []
        # the revocation committed what was read (auto-commit)
        committed = {tp: om.offset for tp, om in admin.committed_offsets("g").items()}
        assert committed == {(TOPIC, 0): 10, (TOPIC, 1): 10}
        consumer.subscribe([TOPIC], listener=listener)
        assert settle(admin, "g", {"c0": consumer}, [2], reads, 2)["c0"] == owned
    assert keys(reads["c0"]) == every_record(2, 10)


def test_a_stalled_application_loses_its_partitions_and_rejoins_on_the_next_poll(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=2)
    listener = Recorder()
    with member(broker, "g", "c0", max_poll_interval_ms=1000) as consumer:
        consumer.subscribe([TOPIC], listener=listener)
        owned = settle(admin, "g", {"c0": consumer}, [2], {}, 2)["c0"]
        # no poll() for longer than max_poll_interval_ms: the heartbeat thread leaves
        wait_until(lambda: admin.describe_group("g").members == [], "the member to leave")
        assert consumer.assignment() == owned  # nothing changes until the next poll()
        produce_all(stub, 2, 0, 5)
        reads: dict[str, list[ConsumerRecord]] = {}
        settle(admin, "g", {"c0": consumer}, [2], reads, 2)
        poll_all({"c0": consumer}, reads, 10)
    assert listener.events[:3] == [
        ("assigned", owned),
        ("lost", owned),
        ("assigned", owned),
    ]
    assert keys(reads["c0"]) == every_record(2, 5)


def test_broker_restart_makes_the_member_rejoin_and_resume_at_its_commits(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=3)
    produce_all(stub, 3, 0, 20)
    listener = Recorder()
    reads: dict[str, list[ConsumerRecord]] = {}
    with member(broker, "g", "c0", retry_backoff_ms=50) as consumer:
        consumer.subscribe([TOPIC], listener=listener)
        poll_all({"c0": consumer}, reads, 60)
        consumer.commit()
        broker.kill9()
        for _ in range(5):  # heartbeats fail meanwhile; poll() keeps working
            assert consumer.poll(timeout=0.1) == []
        broker.start()
        produce_all(stub, 3, 20, 10)
        # the restarted coordinator does not know the member: it rejoins
        poll_all({"c0": consumer}, reads, 90)
        assert consumer.assignment() == partitions_of(3)
    assert set(keys(reads["c0"])) == set(every_record(3, 30))
    # lost partitions are not committed: what was read after the commit may come again
    twice = {key for key, n in Counter(keys(reads["c0"])).items() if n > 1}
    assert all(offset >= 20 for _, offset in twice)
    assert [kind for kind, _ in listener.events] == ["assigned", "lost", "assigned", "revoked"]


def test_a_commit_after_the_broker_forgot_the_member_fails_and_the_member_rejoins(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    """As in Kafka: CommitFailedError, whether the commit itself meets the unknown member
    or a heartbeat found out first; the next poll() rejoins and commits work again."""
    admin.create_topic(TOPIC, partitions=2)
    produce_all(stub, 2, 0, 20)
    reads: dict[str, list[ConsumerRecord]] = {}
    with member(broker, "g", "c0", retry_backoff_ms=50) as consumer:
        consumer.subscribe([TOPIC])
        poll_all({"c0": consumer}, reads, 40)
        before = {p: consumer.position((TOPIC, p)) for p in range(2)}
        assert before == {0: 20, 1: 20}
        broker.restart()
        with pytest.raises(CommitFailedError, match="no longer a member") as refused:
            consumer.commit()
        assert "rejoins in the next poll()" in str(refused.value)
        # nothing was committed: offsets are still unset for this group
        assert admin.committed_offsets("g") == {}
        produce_all(stub, 2, 20, 5)
        settle(admin, "g", {"c0": consumer}, [2], reads, 2)
        poll_all({"c0": consumer}, reads, len(reads["c0"]) + 50)
        consumer.commit()
        committed = admin.committed_offsets("g")
        assert {tp: om.offset for tp, om in committed.items()} == {(TOPIC, 0): 25, (TOPIC, 1): 25}
    # the uncommitted records come again after the rejoin; none is missing
    assert set(keys(reads["c0"])) == set(every_record(2, 25))
    assert Counter(keys(reads["c0"]))[(0, 0)] == 2


# --- a member killed outright ----------------------------------------------------------------


def start_worker(broker: BrokerProcess, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """Run group_worker.py as member `name` of group "g"; its reads go to <name>.jsonl."""
    out, stop = tmp_path / f"{name}.jsonl", tmp_path / "stop"
    args = [broker.address, "g", TOPIC, str(out), str(stop), name]
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=log, stderr=log)


def worker_lines(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    """The complete lines a worker has written so far, parsed."""
    path = tmp_path / f"{name}.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


def read_offsets(lines: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(line["p"], line["o"]) for line in lines if "p" in line]


def committed_by_partition(admin: Admin) -> dict[int, int]:
    """Group "g"'s committed offset of every partition of TOPIC that has one."""
    return {p: om.offset for (_, p), om in admin.committed_offsets("g").items()}


def commits_until_expiry(admin: Admin, client_id: str) -> dict[int, int]:
    """Wait until the coordinator has expired the member with client id `client_id`, and
    return the last committed offsets read while it was still a member.

    A member commits only while it is one, and its partitions go to another member only
    after it has left, so that snapshot holds the member's final commits, including one
    that was in flight when its process died, and none of its successor's.
    """
    final: dict[int, int] = {}

    def expired() -> bool:
        snapshot = committed_by_partition(admin)  # read before the membership check
        if client_id in {m.client_id for m in admin.describe_group("g").members}:
            final.clear()
            final.update(snapshot)
            return False
        return True

    wait_until(expired, f"{client_id}'s session to expire", SESSION_MS / 1000 + WAIT_S)
    return final


def stop_workers(tmp_path: Path, workers: dict[str, subprocess.Popen[bytes]]) -> None:
    (tmp_path / "stop").touch()
    for process in workers.values():
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_killed_member_partitions_resume_at_its_commits_on_the_survivor(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin, tmp_path: Path
) -> None:
    admin.create_topic(TOPIC, partitions=6)
    workers = {name: start_worker(broker, tmp_path, name) for name in ("w0", "w1")}

    def split_evenly() -> bool:
        d = admin.describe_group("g")
        return d.state == "Stable" and sorted(len(m.assignment) for m in d.members) == [3, 3]

    def all_read() -> bool:
        lines = worker_lines(tmp_path, "w0") + worker_lines(tmp_path, "w1")
        return set(read_offsets(lines)) >= set(every_record(6, 300))

    try:
        wait_until(split_evenly, "two workers at 3 + 3")
        owners = {m.client_id: m.assignment for m in admin.describe_group("g").members}
        victim = {p for _, p in owners["w1"]}
        produce_all(stub, 6, 0, 200)
        wait_until(lambda: len(read_offsets(worker_lines(tmp_path, "w1"))) >= 100, "w1 to read")
        workers["w1"].kill()
        workers["w1"].wait(timeout=10)
        killed_at = len(worker_lines(tmp_path, "w0"))
        # w1 stays a member until its session times out; only then do its partitions move
        assert len(admin.describe_group("g").members) == 2
        produce_all(stub, 6, 200, 100)
        committed = commits_until_expiry(admin, "w1")
        assert {p for p in victim if committed.get(p, 0) > 0}, "w1 committed nothing"
        wait_until(all_read, "w0 to read the rest", WAIT_S)
    finally:
        stop_workers(tmp_path, workers)
    assert workers["w0"].returncode == 0, (tmp_path / "w0.log").read_text()
    w0, w1 = worker_lines(tmp_path, "w0"), worker_lines(tmp_path, "w1")
    reads = read_offsets(w0) + read_offsets(w1)
    assert set(reads) == set(every_record(6, 300)), "records were lost"
    # after the kill the survivor starts each of w1's partitions exactly at w1's commit
    after_kill = read_offsets(w0[killed_at:])
    for p in victim:
        assert next(o for q, o in after_kill if q == p) == committed.get(p, 0)
    # read twice: exactly what w1 read but had not committed
    last = {p: max((o for q, o in read_offsets(w1) if q == p), default=-1) for p in victim}
    twice = {(p, o) for p in victim for o in range(committed.get(p, 0), last[p] + 1)}
    counts = Counter(reads)
    assert {key for key, n in counts.items() if n > 1} == twice
    assert max(counts.values()) <= 2
    assert "lost" not in {line.get("event") for line in w0}


# --- replay ----------------------------------------------------------------------------------


def test_reset_offsets_to_a_datetime_replays_from_there(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, admin: Admin
) -> None:
    admin.create_topic(TOPIC, partitions=3)
    produce_all(stub, 3, 0, 30, ts0=TS0)  # record i at TS0 + i ms
    produce_all(stub, 3, 30, 20, ts0=TS0 + 60_000)  # record i at TS0 + 60 s + i ms
    reads: dict[str, list[ConsumerRecord]] = {}
    with member(broker, "replay", "r0") as first:
        first.subscribe([TOPIC])
        poll_all({"r0": first}, reads, 150)
        first.commit()
    assert keys(reads["r0"]) == every_record(3, 50)
    between = datetime.fromtimestamp((TS0 + 30_000) / 1000, tz=UTC).isoformat()

    plan = admin.reset_offsets("replay", [TOPIC], to_datetime=between, dry_run=True)
    assert [(e.partition, e.current_offset, e.new_offset) for e in plan] == [
        (p, 50, 30) for p in range(3)
    ]
    committed = {tp: om.offset for tp, om in admin.committed_offsets("replay").items()}
    assert committed == {(TOPIC, p): 50 for p in range(3)}

    with member(broker, "replay", "r1") as active:
        active.subscribe([TOPIC])
        settle(admin, "replay", {"r1": active}, [3], reads, 3)
        with pytest.raises(GroupNotEmptyError, match="active member"):
            admin.reset_offsets("replay", [TOPIC], to_datetime=between, dry_run=False)
    assert reads["r1"] == []  # it started at the commits: nothing new to read

    executed = admin.reset_offsets("replay", [TOPIC], to_datetime=between, dry_run=False)
    assert executed == plan
    with member(broker, "replay", "r2") as again:
        again.subscribe([TOPIC])
        poll_all({"r2": again}, reads, 60)
    assert keys(reads["r2"]) == [(p, o) for p in range(3) for o in range(30, 50)]

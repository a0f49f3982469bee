"""The Kafka group handlers over a real log manager, offsets store and coordinators, without a
socket: each request is encoded and decoded as on the wire, served, and its answer encoded
and decoded back. Requests that wait (JoinGroup, SyncGroup) run in threads, each bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.protocol.admin import DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest
from kafka.protocol.consumer import (
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    OffsetCommitRequest,
    OffsetFetchRequest,
    SyncGroupRequest,
)
from kafka.protocol.consumer.metadata import (
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)
from kafka.protocol.metadata import FindCoordinatorRequest

from logstore.server.broker import LogStoreServicer
from logstore.server.groups.classic import ClassicGroupCoordinator
from logstore.server.groups.consumer_protocol import encode_assignment, encode_subscription
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.coordinator import HeartbeatRequest as NativeHeartbeat
from logstore.server.groups.offsets_store import OFFSETS_TOPIC, OffsetStore
from logstore.server.kafka.apis import API_BY_KEY
from logstore.server.kafka.context import KafkaBroker, RequestContext, Session
from logstore.server.kafka.handlers import groups as group_handlers
from logstore.server.kafka.router import dispatch
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage.log_manager import LogManager, ManagerSettings

NONE = 0
UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno
NOT_COORDINATOR = kafka_errors.NotCoordinatorError.errno
COORDINATOR_NOT_AVAILABLE = kafka_errors.CoordinatorNotAvailableError.errno
ILLEGAL_GENERATION = kafka_errors.IllegalGenerationError.errno
INCONSISTENT = kafka_errors.InconsistentGroupProtocolError.errno
UNKNOWN_MEMBER = kafka_errors.UnknownMemberIdError.errno
REBALANCING = kafka_errors.RebalanceInProgressError.errno
MEMBER_ID_REQUIRED = kafka_errors.MemberIdRequiredError.errno
GROUP_AUTH = kafka_errors.GroupAuthorizationFailedError.errno
TOPIC_AUTH = kafka_errors.TopicAuthorizationFailedError.errno
METADATA_TOO_LARGE = kafka_errors.OffsetMetadataTooLargeError.errno
NON_EMPTY_GROUP = kafka_errors.NonEmptyGroupError.errno
GROUP_NOT_FOUND = kafka_errors.GroupIdNotFoundError.errno
INVALID_REQUEST = kafka_errors.InvalidRequestError.errno
INVALID_GROUP_ID = kafka_errors.InvalidGroupIdError.errno

G = "billing"
#: the longest any request of these tests may take (s)
CALL_TIMEOUT_S = 20.0

_Protocol = JoinGroupRequest.JoinGroupRequestProtocol
_Assignment = SyncGroupRequest.SyncGroupRequestAssignment
_Identity = LeaveGroupRequest.MemberIdentity
_CommitTopic = OffsetCommitRequest.OffsetCommitRequestTopic
_CommitPartition = _CommitTopic.OffsetCommitRequestPartition
_FetchTopic = OffsetFetchRequest.OffsetFetchRequestTopic


class Core:
    """A standalone broker's core, seen through the Kafka handlers (no initial delay).

    `coordinating=False`: a cluster broker that leads no partition of __consumer_offsets,
    so it coordinates no group. `clustered=True`: a cluster broker leading its only
    partition, until the test moves it away (`resign`)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        coordinating: bool = True,
        clustered: bool = False,
        min_session_timeout_ms: int = 6_000,
    ) -> None:
        self.manager = LogManager(data_dir, settings=ManagerSettings(background_threads=False))
        self.manager.create_topic("orders", 3, {})
        if clustered:
            self.manager.create_topic(OFFSETS_TOPIC, 1, {})
            log = self.manager.partition(OFFSETS_TOPIC, 0)
            offsets = OffsetStore(self.manager, replicated_append=lambda _p, b: log.append(b))
            offsets.load_partition(0)
        elif coordinating:
            offsets = OffsetStore(self.manager)
        else:
            offsets = OffsetStore(self.manager, replicated_append=lambda _p, _b: None)
        self.offsets = offsets
        self.classic = ClassicGroupCoordinator(
            initial_rebalance_delay_ms=0, min_session_timeout_ms=min_session_timeout_ms
        )
        self.coordinator = GroupCoordinator(partition_counts=lambda _t: 3, classic=self.classic)
        self.servicer = LogStoreServicer(
            self.manager, offsets, ProducerIdManager(data_dir / "producer-ids"), self.coordinator
        )
        #: (resource type, name, operation) -> allowed; unlisted ones are allowed
        self.acls: dict[tuple[str, str, str], bool] = {}
        settings = KafkaSettings(listen="127.0.0.1:0")
        self.broker = KafkaBroker(self.servicer, settings, ("127.0.0.1", 9092), self._authorize)

    def _authorize(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        return self.acls.get((resource_type, name, operation), True)

    def call(self, request: Any, client_id: str = "kp") -> Any:
        """Serve `request` as the listener would, and decode the answer as a client would."""
        api = API_BY_KEY[request.API_KEY]
        version = request.version
        assert api.supports(version), f"{api.name} v{version} is not served"
        received = api.request.decode(request.encode(), version=version)
        ctx = RequestContext(self.broker, Session(peer="10.0.0.7:5555"), version, client_id, 7)
        response = dispatch(ctx, api.key, received)
        return api.response.decode(response.encode(), version=version)

    def resign(self) -> None:
        """This broker stops leading the group's offsets partition, as the broker's
        leadership callback sees it: the offsets store forgets the partition."""
        self.offsets.unload_partition(0)

    def close(self) -> None:
        self.manager.close()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path / "data")
    try:
        yield made
    finally:
        made.close()


class Background:
    """A request served in a thread (it may wait for other members); `result()` is bounded."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self._answer: list[Any] = []
        self._thread = threading.Thread(target=lambda: self._answer.append(call()), daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self) -> Any:
        self._thread.join(timeout=CALL_TIMEOUT_S)
        assert self._answer, "the request did not finish in time"
        return self._answer[0]


def subscription(*topics: str) -> bytes:
    return bytes(ConsumerProtocolSubscription(version=0, topics=list(topics)).encode())


def join(
    core: Core, member_id: str = "", version: int = 5, client_id: str = "kp", **fields: Any
) -> Any:
    request = JoinGroupRequest(
        version=version,
        group_id=fields.pop("group_id", G),
        session_timeout_ms=fields.pop("session_timeout_ms", 10_000),
        rebalance_timeout_ms=fields.pop("rebalance_timeout_ms", 10_000),
        member_id=member_id,
        group_instance_id=fields.pop("group_instance_id", None),
        protocol_type=fields.pop("protocol_type", "consumer"),
        protocols=fields.pop(
            "protocols", [_Protocol(name="range", metadata=subscription("orders"))]
        ),
    )
    assert not fields, fields
    return core.call(request, client_id)


def new_member(core: Core, client_id: str = "kp") -> Any:
    """JoinGroup v5's two steps (KIP-394); the answer of the second, which may wait."""
    first = join(core, client_id=client_id)
    assert first.error_code == MEMBER_ID_REQUIRED and first.member_id.startswith(f"{client_id}-")
    return join(core, first.member_id, client_id=client_id)


def sync(core: Core, joined: Any, assignments: dict[str, bytes] | None = None) -> Any:
    return core.call(
        SyncGroupRequest(
            version=3,
            group_id=G,
            generation_id=joined.generation_id,
            member_id=joined.member_id,
            group_instance_id=None,
            assignments=[
                _Assignment(member_id=m, assignment=a) for m, a in (assignments or {}).items()
            ],
        )
    )


def beat(core: Core, joined: Any, version: int = 3) -> int:
    request = HeartbeatRequest(
        version=version,
        group_id=G,
        generation_id=joined.generation_id,
        member_id=joined.member_id,
        group_instance_id=None,
    )
    return core.call(request).error_code


def stable_member(core: Core, client_id: str = "kp") -> Any:
    """One member, Stable at its generation, owning orders-0..2."""
    joined = new_member(core, client_id)
    assert joined.error_code == NONE and joined.leader == joined.member_id
    assignment = encode_assignment([("orders", 0), ("orders", 1), ("orders", 2)])
    assert sync(core, joined, {joined.member_id: assignment}).assignment == assignment
    return joined


def commit(
    core: Core,
    offsets: dict[tuple[str, int], tuple[int, str | None]],
    generation: int = -1,
    member_id: str = "",
    version: int = 7,
    group: str = G,
) -> dict[tuple[str, int], int]:
    topics: dict[str, list[Any]] = {}
    for (topic, partition), (offset, metadata) in offsets.items():
        topics.setdefault(topic, []).append(
            _CommitPartition(
                partition_index=partition,
                committed_offset=offset,
                committed_leader_epoch=-1,
                committed_metadata=metadata,
            )
        )
    request = OffsetCommitRequest(
        version=version,
        group_id=group,
        generation_id_or_member_epoch=generation,
        member_id=member_id,
        group_instance_id=None,
        retention_time_ms=-1,
        topics=[_CommitTopic(name=t, partitions=ps) for t, ps in topics.items()],
    )
    answer = core.call(request)
    return {(t.name, p.partition_index): p.error_code for t in answer.topics for p in t.partitions}


def fetch(core: Core, wanted: dict[str, list[int]] | None, version: int = 5, group: str = G) -> Any:
    topics = (
        None
        if wanted is None
        else [_FetchTopic(name=t, partition_indexes=ps) for t, ps in wanted.items()]
    )
    return core.call(OffsetFetchRequest(version=version, group_id=group, topics=topics))


def fetched(answer: Any) -> dict[tuple[str, int], tuple[int, str | None, int]]:
    return {
        (t.name, p.partition_index): (p.committed_offset, p.metadata, p.error_code)
        for t in answer.topics
        for p in t.partitions
    }


# --- FindCoordinator --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
def test_a_standalone_broker_coordinates_every_group(core: Core, version: int) -> None:
    answer = core.call(FindCoordinatorRequest(version=version, key=G, key_type=0))
    assert (answer.error_code, answer.node_id, answer.host, answer.port) == (
        NONE,
        0,
        "127.0.0.1",
        9092,
    )


def test_find_coordinator_for_transactions_and_unknown_key_types(core: Core) -> None:
    # This broker, so the producer's InitProducerId is refused here at once (fatal).
    tx = core.call(FindCoordinatorRequest(version=2, key="tx-1", key_type=1))
    assert tx.error_code == 0
    assert (tx.node_id, tx.host, tx.port) == (0, "127.0.0.1", 9092)
    odd = core.call(FindCoordinatorRequest(version=2, key=G, key_type=9))
    assert odd.error_code == INVALID_REQUEST


def test_find_coordinator_needs_group_describe(core: Core) -> None:
    core.acls[("group", G, "describe")] = False
    assert core.call(FindCoordinatorRequest(version=1, key=G, key_type=0)).error_code == GROUP_AUTH


# --- JoinGroup, SyncGroup, Heartbeat, LeaveGroup -------------------------------------------------


def test_join_sync_heartbeat_and_leave_one_member(core: Core) -> None:
    joined = stable_member(core)
    assert joined.generation_id == 1 and joined.protocol_name == "range"
    assert [m.member_id for m in joined.members] == [joined.member_id]
    assert joined.member_id.startswith("kp-")
    for version in range(4):
        assert beat(core, joined, version) == NONE
    desc = core.classic.describe(G)
    assert desc is not None and desc.members[0].host == "/10.0.0.7"
    left = core.call(LeaveGroupRequest(version=0, group_id=G, member_id=joined.member_id))
    assert left.error_code == NONE
    assert beat(core, joined) == UNKNOWN_MEMBER


def test_join_group_v0_to_v3_join_in_one_step(core: Core) -> None:
    joined = join(core, version=0)
    assert joined.error_code == NONE and joined.generation_id == 1


def test_a_second_member_waits_until_the_first_rejoins(core: Core) -> None:
    first = stable_member(core, "a")
    second_id = join(core, client_id="b").member_id
    second = Background(lambda: join(core, second_id, client_id="b"))
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while beat(core, first) != REBALANCING:  # the join has reached the coordinator
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not second.done()
    rejoined = join(core, first.member_id, client_id="a")
    answer = second.result()
    assert rejoined.generation_id == answer.generation_id == 2
    assert rejoined.leader == first.member_id and len(rejoined.members) == 2
    assert answer.members == []
    # the follower's SyncGroup waits for the leader's
    follower_sync = Background(lambda: sync(core, answer))
    time.sleep(0.05)
    assert not follower_sync.done()
    mine = encode_assignment([("orders", 0)])
    theirs = encode_assignment([("orders", 1), ("orders", 2)])
    assert sync(core, rejoined, {first.member_id: mine, second_id: theirs}).assignment == mine
    assert follower_sync.result().assignment == theirs


def test_a_waiting_join_ends_when_the_broker_stops(core: Core) -> None:
    stable_member(core, "a")  # it never rejoins: the join below would wait 60 s
    second_id = join(core, client_id="b").member_id
    waiting = Background(lambda: join(core, second_id, client_id="b", rebalance_timeout_ms=60_000))
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while core.classic.member_count(G) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not waiting.done()
    core.servicer.stopping = True
    started = time.monotonic()
    assert waiting.result().error_code == COORDINATOR_NOT_AVAILABLE
    assert time.monotonic() - started < 3  # it looks again at least every second


@pytest.fixture
def clustered(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path / "data", clustered=True)
    try:
        yield made
    finally:
        made.close()


def _waiting_second_member(core: Core) -> tuple[Any, Background]:
    """A Stable member "a", and "b"'s JoinGroup waiting for it to rejoin (up to 60 s)."""
    first = stable_member(core, "a")
    second_id = join(core, client_id="b").member_id
    waiting = Background(lambda: join(core, second_id, client_id="b", rebalance_timeout_ms=60_000))
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while core.classic.member_count(G) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not waiting.done()
    return first, waiting


def test_a_waiting_join_ends_not_coordinator_once_the_group_moves_away(clustered: Core) -> None:
    """As Kafka's coordinator resigning: no success from stale state a minute later, and no
    stale member left should the group come back."""
    first, waiting = _waiting_second_member(clustered)
    clustered.resign()
    started = time.monotonic()
    answer = waiting.result()
    assert (answer.error_code, answer.generation_id) == (NOT_COORDINATOR, -1)
    assert time.monotonic() - started < 3  # it looks again at least every second
    assert beat(clustered, first) == NOT_COORDINATOR
    assert clustered.classic.describe(G) is None  # forgotten with its waiting request
    clustered.offsets.load_partition(0)  # the group's partition comes back
    assert beat(clustered, first) == UNKNOWN_MEMBER


def test_unloading_the_partitions_groups_answers_waiting_joins_at_once(clustered: Core) -> None:
    """What the broker's leadership callback does: the offsets store forgets the partition,
    the coordinators its groups; a waiting join wakes at once, not at its next look."""
    _first, waiting = _waiting_second_member(clustered)
    clustered.resign()
    started = time.monotonic()
    assert clustered.coordinator.unload_partition(0, clustered.offsets.partition_of) == [G]
    assert waiting.result().error_code == NOT_COORDINATOR
    assert time.monotonic() - started < 0.5


def test_a_join_waits_for_the_group_deadline_not_its_own_timeouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator's join deadline comes from the members' largest rebalance timeout:
    a member with short timeouts joining a group with a long one waits that long, and is
    answered in the next generation rather than given up on at its own timeout."""
    monkeypatch.setattr(group_handlers, "_WAIT_MARGIN_MS", 300)  # the safety net, shortened
    core = Core(tmp_path / "data", min_session_timeout_ms=100)
    try:
        first = stable_member(core, "a")  # rebalance timeout 10 s
        second_id = join(core, client_id="b").member_id
        quick = {"session_timeout_ms": 100, "rebalance_timeout_ms": 100}
        second = Background(lambda: join(core, second_id, client_id="b", **quick))
        deadline = time.monotonic() + 1.5  # "a" heartbeats, and rejoins after 1.5 s
        while time.monotonic() < deadline:
            assert beat(core, first) == REBALANCING
            assert not second.done()
            time.sleep(0.1)
        rejoined = join(core, first.member_id, client_id="a")
        answer = second.result()
        assert (answer.error_code, answer.generation_id) == (NONE, 2)
        assert rejoined.generation_id == 2 and len(rejoined.members) == 2
    finally:
        core.close()


def test_leave_group_v3_answers_per_member(core: Core) -> None:
    joined = stable_member(core)
    answer = core.call(
        LeaveGroupRequest(
            version=3,
            group_id=G,
            members=[
                _Identity(member_id=joined.member_id, group_instance_id=None),
                _Identity(member_id="nobody", group_instance_id=None),
            ],
        )
    )
    assert answer.error_code == NONE
    assert [(m.member_id, m.error_code) for m in answer.members] == [
        (joined.member_id, NONE),
        ("nobody", UNKNOWN_MEMBER),
    ]


def test_member_apis_need_group_read(core: Core) -> None:
    joined = stable_member(core)
    core.acls[("group", G, "read")] = False
    assert join(core).error_code == GROUP_AUTH
    assert sync(core, joined).error_code == GROUP_AUTH
    assert beat(core, joined) == GROUP_AUTH
    left = core.call(LeaveGroupRequest(version=1, group_id=G, member_id=joined.member_id))
    assert left.error_code == GROUP_AUTH


def test_a_kafka_join_of_a_group_logstore_consumers_hold_is_inconsistent(core: Core) -> None:
    core.coordinator.heartbeat(NativeHeartbeat(G, subscribed_topics=("orders",)))
    assert join(core).error_code == INCONSISTENT
    assert join(core, version=0).error_code == INCONSISTENT


# --- OffsetCommit, OffsetFetch -----------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6, 7])
def test_simple_commits_round_trip_their_metadata(core: Core, version: int) -> None:
    codes = commit(core, {("orders", 0): (5, "why"), ("orders", 1): (7, None)}, version=version)
    assert codes == {("orders", 0): NONE, ("orders", 1): NONE}
    for fetch_version in range(1, 6):
        answer = fetch(core, {"orders": [0, 1, 2]}, fetch_version)
        assert fetched(answer) == {
            ("orders", 0): (5, "why", NONE),
            ("orders", 1): (7, "", NONE),
            ("orders", 2): (-1, "", NONE),
        }
    everything = fetch(core, None, version=2)
    assert everything.error_code == NONE
    assert set(fetched(everything)) == {("orders", 0), ("orders", 1)}
    assert core.servicer.offsets.fetch(G)[("orders", 0)].metadata == "why"


def test_commit_errors_per_partition(core: Core) -> None:
    core.acls[("topic", "secret", "consume")] = False
    codes = commit(
        core,
        {
            ("orders", 9): (1, ""),
            ("nope", 0): (1, ""),
            ("orders", 0): (1, "x" * 4097),
            ("secret", 0): (1, ""),
            ("orders", 1): (4, ""),
        },
    )
    assert codes == {
        ("orders", 9): UNKNOWN_TOPIC,
        ("nope", 0): UNKNOWN_TOPIC,
        ("orders", 0): METADATA_TOO_LARGE,
        ("secret", 0): TOPIC_AUTH,
        ("orders", 1): NONE,
    }
    core.acls[("group", G, "read")] = False
    assert set(commit(core, {("orders", 1): (5, "")}).values()) == {GROUP_AUTH}


def test_member_commits_follow_kafkas_generation_rules(core: Core) -> None:
    joined = stable_member(core)
    tp = ("orders", 0)
    assert commit(core, {tp: (3, "")}, 1, joined.member_id) == {tp: NONE}
    assert commit(core, {tp: (3, "")}, 0, joined.member_id) == {tp: ILLEGAL_GENERATION}
    assert commit(core, {tp: (3, "")}, 1, "nobody") == {tp: UNKNOWN_MEMBER}
    assert commit(core, {tp: (3, "")}) == {tp: UNKNOWN_MEMBER}  # simple, while it has members
    assert commit(core, {tp: (3, "")}, 4, "x", group="nobody-knows") == {tp: ILLEGAL_GENERATION}


def test_a_simple_commit_is_refused_while_logstore_consumers_hold_the_group(core: Core) -> None:
    core.coordinator.heartbeat(NativeHeartbeat(G, subscribed_topics=("orders",)))
    assert commit(core, {("orders", 0): (1, "")}) == {("orders", 0): UNKNOWN_MEMBER}
    assert core.servicer.offsets.fetch(G) == {}


def test_offset_fetch_errors(core: Core) -> None:
    commit(core, {("orders", 0): (1, "")})
    core.acls[("topic", "orders", "describe")] = False
    named = fetched(fetch(core, {"orders": [0]}))
    assert named == {("orders", 0): (-1, "", TOPIC_AUTH)}
    assert fetched(fetch(core, None)) == {}  # all: the hidden topic is left out
    core.acls[("group", G, "describe")] = False
    assert fetch(core, None).error_code == GROUP_AUTH
    v1 = fetched(fetch(core, {"orders": [0, 1]}, version=1))
    assert {code for _, _, code in v1.values()} == {GROUP_AUTH}


def test_a_broker_that_does_not_coordinate_the_group_says_so(tmp_path: Path) -> None:
    core = Core(tmp_path / "data", coordinating=False)
    try:
        assert join(core).error_code == NOT_COORDINATOR
        assert beat(core, join(core, version=0)) == NOT_COORDINATOR
        assert set(commit(core, {("orders", 0): (1, "")}).values()) == {NOT_COORDINATOR}
        assert fetch(core, None).error_code == NOT_COORDINATOR
        assert fetched(fetch(core, {"orders": [0]}, version=1)) == {
            ("orders", 0): (-1, "", NOT_COORDINATOR)
        }
        described = core.call(DescribeGroupsRequest(version=0, groups=[G])).groups[0]
        assert described.error_code == NOT_COORDINATOR
        deleted = core.call(DeleteGroupsRequest(version=0, groups_names=[G])).results[0]
        assert deleted.error_code == NOT_COORDINATOR
    finally:
        core.close()


# --- DescribeGroups, ListGroups, DeleteGroups -------------------------------------------------


def test_describe_a_stable_classic_group(core: Core) -> None:
    joined = stable_member(core)
    answer = core.call(
        DescribeGroupsRequest(version=4, groups=[G], include_authorized_operations=True)
    )
    (group,) = answer.groups
    assert (group.error_code, group.group_state, group.protocol_type, group.protocol_data) == (
        NONE,
        "Stable",
        "consumer",
        "range",
    )
    (member,) = group.members
    assert (member.member_id, member.client_id, member.client_host) == (
        joined.member_id,
        "kp",
        "/10.0.0.7",
    )
    assert ConsumerProtocolSubscription.decode(member.member_metadata).topics == ["orders"]
    assigned = ConsumerProtocolAssignment.decode(member.member_assignment)
    assert [(a.topic, a.partitions) for a in assigned.assigned_partitions] == [
        ("orders", [0, 1, 2])
    ]
    assert group.authorized_operations == {3, 6, 8}  # read, delete, describe


def test_describe_logstore_groups_as_kafka_consumer_groups(core: Core) -> None:
    core.coordinator.heartbeat(
        NativeHeartbeat(G, subscribed_topics=("orders",), client_id="ls", host="/10.0.0.8")
    )
    (group,) = core.call(DescribeGroupsRequest(version=0, groups=[G])).groups
    assert (group.protocol_type, group.protocol_data) == ("consumer", "sticky")
    (member,) = group.members
    assert member.client_id == "ls" and member.member_metadata == encode_subscription(["orders"])
    assigned = ConsumerProtocolAssignment.decode(member.member_assignment)
    assert sorted(p for a in assigned.assigned_partitions for p in a.partitions) == [0, 1, 2]


def test_describe_empty_and_unknown_groups(core: Core) -> None:
    commit(core, {("orders", 0): (1, "")})
    groups = core.call(DescribeGroupsRequest(version=1, groups=[G, "nobody"])).groups
    assert [(g.group_id, g.error_code, g.group_state, g.members) for g in groups] == [
        (G, NONE, "Empty", []),
        ("nobody", NONE, "Dead", []),
    ]
    core.acls[("group", G, "describe")] = False
    (denied,) = core.call(DescribeGroupsRequest(version=1, groups=[G])).groups
    assert denied.error_code == GROUP_AUTH


def test_list_groups_of_both_protocols_and_offsets_only(core: Core) -> None:
    stable_member(core)
    core.coordinator.heartbeat(NativeHeartbeat("native", subscribed_topics=("orders",)))
    commit(core, {("orders", 0): (1, "")}, group="offsets-only")
    core.acls[("group", "hidden", "describe")] = False
    commit(core, {("orders", 0): (1, "")}, group="hidden")
    for version in range(3):
        answer = core.call(ListGroupsRequest(version=version))
        assert answer.error_code == NONE
        assert [(g.group_id, g.protocol_type) for g in answer.groups] == [
            (G, "consumer"),
            ("native", "consumer"),
            ("offsets-only", "consumer"),
        ]


def test_delete_groups(core: Core) -> None:
    joined = stable_member(core)
    commit(core, {("orders", 0): (1, "")}, joined.generation_id, joined.member_id)
    core.acls[("group", "locked", "delete")] = False
    answer = core.call(DeleteGroupsRequest(version=1, groups_names=[G, "nobody", "locked", ""]))
    assert [(r.group_id, r.error_code) for r in answer.results] == [
        (G, NON_EMPTY_GROUP),
        ("nobody", GROUP_NOT_FOUND),
        ("locked", GROUP_AUTH),
        ("", INVALID_GROUP_ID),
    ]
    core.call(LeaveGroupRequest(version=0, group_id=G, member_id=joined.member_id))
    answer = core.call(DeleteGroupsRequest(version=0, groups_names=[G]))
    assert [(r.group_id, r.error_code) for r in answer.results] == [(G, NONE)]
    assert core.servicer.offsets.fetch(G) == {} and core.classic.describe(G) is None

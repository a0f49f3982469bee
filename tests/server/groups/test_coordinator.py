"""Group coordinator: membership, reconciliation, timeouts, commit fencing, states.

Everything runs on a ManualClock; nothing sleeps. The property test drives random histories
of well-behaved clients and checks the safety rule (no partition held by two members) after
every step, then that acknowledging repeatedly brings the group to a balanced Stable state.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.errors import (
    CommitFailedError,
    FencedMemberEpochError,
    GroupNotEmptyError,
    InvalidRequestError,
    UnknownMemberIdError,
)
from logstore.server.groups.assignors import TopicPartition
from logstore.server.groups.classic import JoinRequest
from logstore.server.groups.coordinator import (
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    GroupCoordinator,
    HeartbeatRequest,
    HeartbeatResponse,
)

G = "orders"


class World:
    """A coordinator with a manual clock, editable topic sizes and predictable member ids."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.clock = ManualClock()
        self.counts: dict[str, int] = dict({"t0": 4} if counts is None else counts)
        ids = itertools.count()
        self.coordinator = GroupCoordinator(
            self.counts.get, self.clock, id_suffix=lambda: f"{next(ids):012x}"
        )

    def join(self, *topics: str, group: str = G, **fields: object) -> HeartbeatResponse:
        return self.coordinator.heartbeat(
            HeartbeatRequest(group, subscribed_topics=topics or ("t0",), **fields)  # type: ignore[arg-type]
        )

    def beat(
        self,
        member: HeartbeatResponse,
        owned: frozenset[TopicPartition] | None = None,
        group: str = G,
        **fields: object,
    ) -> HeartbeatResponse:
        """Heartbeat as `member` last answered; by default acknowledging that answer."""
        return self.coordinator.heartbeat(
            HeartbeatRequest(
                group,
                member.member_id,
                member.member_epoch,
                owned=member.assignment if owned is None else owned,
                **fields,  # type: ignore[arg-type]
            )
        )

    def leave(self, member: HeartbeatResponse, group: str = G) -> HeartbeatResponse:
        return self.coordinator.heartbeat(HeartbeatRequest(group, member.member_id, -1))

    def holders(self, group: str = G) -> Counter[TopicPartition]:
        """How many members hold each partition (assigned or pending revocation)."""
        members = self.coordinator.describe(group).members
        return Counter(tp for m in members for tp in (*m.assigned, *m.pending_revocation))

    def state(self, group: str = G) -> str:
        return self.coordinator.describe(group).state


def all_of(topic: str, count: int) -> frozenset[TopicPartition]:
    return frozenset((topic, p) for p in range(count))


# --- joining and leaving ---------------------------------------------------------------------


def test_first_member_gets_everything_and_the_group_is_stable() -> None:
    world = World({"t0": 4})
    a = world.join(client_id="app", host="10.0.0.1")
    assert a.assignment == all_of("t0", 4)
    assert a.member_id == "app-000000000000"
    assert a.member_epoch == 1
    assert a.heartbeat_interval_ms == DEFAULT_HEARTBEAT_INTERVAL_MS
    description = world.coordinator.describe(G)
    assert (description.state, description.assignor, description.group_epoch) == (
        "Stable",
        "sticky",
        1,
    )
    [member] = description.members
    assert (member.client_id, member.host, member.subscribed_topics) == ("app", "10.0.0.1", ["t0"])
    assert member.assigned == member.target == sorted(all_of("t0", 4))


def test_second_member_waits_until_the_first_acknowledges_the_revocation() -> None:
    world = World({"t0": 4})
    a = world.join()
    b = world.join()
    assert b.assignment == frozenset() and b.member_epoch == 2
    assert world.state() == "Rebalancing"

    a = world.beat(a, owned=a.assignment)  # still holding all four
    assert len(a.assignment) == 2
    assert a.member_epoch == 1  # not at the new epoch until it has released the rest
    [da, _] = world.coordinator.describe(G).members
    assert len(da.pending_revocation) == 2

    b = world.beat(b)
    assert b.assignment == frozenset()  # the partitions are still the first member's
    a = world.beat(a, owned=all_of("t0", 4))  # not acknowledged yet
    assert len(a.assignment) == 2 and a.member_epoch == 1
    assert max(world.holders().values()) == 1

    a = world.beat(a)  # owned == its two: released
    assert a.member_epoch == 2
    b = world.beat(b)
    assert b.assignment == all_of("t0", 4) - a.assignment
    assert world.state() == "Stable"
    assert max(world.holders().values()) == 1


def test_leave_frees_partitions_at_once() -> None:
    world = World({"t0": 4})
    a, b = settle(world, [world.join(), world.join()])
    assert len(a.assignment) == len(b.assignment) == 2
    left = world.leave(b)
    assert (left.member_epoch, left.assignment) == (-1, frozenset())
    a = world.beat(a)
    assert a.assignment == all_of("t0", 4)
    assert world.state() == "Stable"


def test_leave_of_an_unknown_member_is_a_no_op() -> None:
    world = World()
    response = world.coordinator.heartbeat(HeartbeatRequest("nobody", "ghost", -1))
    assert (response.member_id, response.member_epoch) == ("ghost", -1)
    assert world.coordinator.list_groups() == []


def test_a_client_chosen_member_id_is_kept_and_a_repeated_join_leaves_no_orphan() -> None:
    world = World()
    first = world.join(member_id="5f0c-uuid")
    assert first.member_id == "5f0c-uuid"
    # the answer to that join was lost: the client joins again under the same id
    again = world.join(member_id="5f0c-uuid")
    assert again.member_id == "5f0c-uuid"
    assert [m.member_id for m in world.coordinator.describe(G).members] == ["5f0c-uuid"]
    assert settle(world, [again])[0].assignment == all_of("t0", 4)


@pytest.mark.parametrize("member_id", ["x" * 256, "tab\there", "nl\n"])
def test_an_unusable_member_id_is_refused(member_id: str) -> None:
    with pytest.raises(InvalidRequestError, match="member_id must be at most 255 printable"):
        World().join(member_id=member_id)


def test_more_members_than_partitions_leaves_extras_idle() -> None:
    world = World({"t0": 2})
    members = settle(world, [world.join() for _ in range(4)])
    assert sorted(len(m.assignment) for m in members) == [0, 0, 1, 1]
    description = world.coordinator.describe(G)
    assert description.state == "Stable"
    assert len(description.members) == 4
    assert sum(1 for m in description.members if not m.assigned) == 2


def test_rejoin_with_a_known_id_drops_the_old_incarnation() -> None:
    world = World({"t0": 2})
    a = world.join()
    again = world.coordinator.heartbeat(
        HeartbeatRequest(G, a.member_id, 0, subscribed_topics=("t0",))
    )
    assert again.member_id == a.member_id
    assert again.assignment == all_of("t0", 2)
    assert again.member_epoch > a.member_epoch
    assert world.coordinator.active_member_count(G) == 1


# --- timeouts ------------------------------------------------------------------------------


def test_session_timeout_evicts_and_reassigns() -> None:
    world = World({"t0": 4})
    a, b = settle(world, [world.join(session_timeout_ms=10_000), world.join()])
    for _ in range(4):  # b keeps heartbeating, a falls silent
        world.clock.advance(3_000)
        b = world.beat(b)
    assert world.coordinator.active_member_count(G) == 1  # a expired at 12 s > 10 s
    b = world.beat(b)
    assert b.assignment == all_of("t0", 4)
    with pytest.raises(UnknownMemberIdError, match="rejoin"):
        world.beat(a)


def test_expire_reports_removed_members_and_respects_the_exact_deadline() -> None:
    world = World()
    a = world.join(session_timeout_ms=1_000)  # clamped up to 6000 ms
    world.clock.advance(6_000)
    assert world.coordinator.expire() == []
    world.clock.advance(1)
    assert world.coordinator.expire() == [(G, a.member_id)]
    assert world.state() == "Empty"


def test_rebalance_timeout_evicts_a_member_that_never_acknowledges() -> None:
    world = World({"t0": 4})
    a = world.join(rebalance_timeout_ms=10_000)
    b = world.join()
    stubborn = a.assignment
    a = world.beat(a, owned=stubborn)
    for _ in range(3):  # alive by session, but never releases: 9 s of pending revocation
        world.clock.advance(3_000)
        a = world.beat(a, owned=stubborn)
        b = world.beat(b)
        assert b.assignment == frozenset()
    world.clock.advance(1_001)
    b = world.beat(b)
    assert b.assignment == all_of("t0", 4)
    with pytest.raises(UnknownMemberIdError):
        world.beat(a)


def test_owned_left_unchanged_never_acknowledges_a_revocation() -> None:
    world = World({"t0": 4})
    a = world.join()
    b = world.join()
    a = world.coordinator.heartbeat(HeartbeatRequest(G, a.member_id, a.member_epoch))
    a = world.coordinator.heartbeat(HeartbeatRequest(G, a.member_id, a.member_epoch))
    assert world.beat(b).assignment == frozenset()
    assert max(world.holders().values()) == 1


# --- changes of subscription and partitions -------------------------------------------------


def test_subscription_change_moves_partitions_safely() -> None:
    world = World({"t0": 2, "t1": 2})
    a, b = settle(world, [world.join("t0", "t1"), world.join("t0", "t1")])
    epoch = world.coordinator.describe(G).group_epoch
    b = world.beat(b, subscribed_topics=("t1",))
    assert world.coordinator.describe(G).group_epoch == epoch + 1
    assert all(topic == "t1" for topic, _ in b.assignment)
    a, b = settle(world, [a, b])
    assert b.assignment == all_of("t1", 2)
    assert a.assignment == all_of("t0", 2)


def test_partition_growth_starts_a_new_epoch_and_keeps_old_owners() -> None:
    world = World({"t0": 3})
    a, b = settle(world, [world.join(), world.join()])
    before = {a.member_id: a.assignment, b.member_id: b.assignment}
    epoch = world.coordinator.describe(G).group_epoch
    world.counts["t0"] = 6
    a = world.beat(a)
    assert world.coordinator.describe(G).group_epoch == epoch + 1
    a, b = settle(world, [a, b])
    assert len(a.assignment) == len(b.assignment) == 3
    assert a.assignment | b.assignment == all_of("t0", 6)
    assert a.assignment >= before[a.member_id] and b.assignment >= before[b.member_id]


def test_missing_topic_gives_nothing_until_it_is_created() -> None:
    world = World({})
    a = world.join("later")
    assert a.assignment == frozenset()
    assert world.state() == "Stable"
    world.counts["later"] = 2
    a = world.beat(a)
    assert a.assignment == all_of("later", 2)


# --- heartbeat errors ---------------------------------------------------------------------


def test_heartbeat_epochs_are_fenced() -> None:
    world = World({"t0": 2})
    a = world.join()
    b = world.join()
    b = world.beat(b)
    a = world.beat(a, owned=a.assignment)  # told to release one partition
    a = world.beat(a)  # released: a moves from epoch 1 to 2
    assert a.member_epoch == 2
    with pytest.raises(FencedMemberEpochError, match="newer than"):
        world.coordinator.heartbeat(HeartbeatRequest(G, a.member_id, 7))
    # the answer carrying epoch 2 may have been lost: epoch 1 is still accepted
    world.coordinator.heartbeat(HeartbeatRequest(G, a.member_id, 1))
    c = world.join()
    a = world.beat(a, owned=frozenset())
    world.beat(c)
    a = world.beat(a)
    assert a.member_epoch == 3
    with pytest.raises(FencedMemberEpochError, match="older than"):
        world.coordinator.heartbeat(HeartbeatRequest(G, a.member_id, 1))


def test_unknown_member_heartbeat_is_refused() -> None:
    world = World()
    with pytest.raises(UnknownMemberIdError, match="rejoin with member_epoch 0"):
        world.coordinator.heartbeat(HeartbeatRequest(G, "ghost", 3))


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (HeartbeatRequest(G), "subscribed_topics"),
        (HeartbeatRequest("", subscribed_topics=("t0",)), "group_id"),
        (HeartbeatRequest(G, "", 4), "member_id"),
        (HeartbeatRequest(G, "x", -2), "invalid"),
        (HeartbeatRequest(G, subscribed_topics=("",)), "non-empty"),
        (HeartbeatRequest(G, subscribed_topics=("t0",), assignor="fancy"), "range, roundrobin"),
    ],
)
def test_malformed_heartbeats_are_rejected(request_: HeartbeatRequest, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        World().coordinator.heartbeat(request_)


def test_members_must_agree_on_the_assignor() -> None:
    world = World({"t0": 3, "t1": 3})
    a = world.join("t0", "t1", assignor="range")
    with pytest.raises(InvalidRequestError, match=r"'range'.*'roundrobin'"):
        world.join("t0", "t1", assignor="roundrobin")
    with pytest.raises(InvalidRequestError, match=r"'range'.*'sticky'"):
        world.beat(a, assignor="sticky")
    b = world.join("t0", "t1")  # no preference: the group's assignor
    a, b = settle(world, [a, b])
    first, second = sorted([a, b], key=lambda m: m.member_id)
    assert len(first.assignment) == 4 and len(second.assignment) == 2  # range, as in Kafka
    world.leave(a)
    world.leave(b)
    assert world.join(assignor="roundrobin").assignment == all_of("t0", 3)


# --- commits --------------------------------------------------------------------------------


def test_commit_fencing() -> None:
    world = World({"t0": 4})
    validate = world.coordinator.validate_commit
    a = world.join()
    validate(G, a.member_id, a.member_epoch, sorted(a.assignment))
    with pytest.raises(UnknownMemberIdError):
        validate(G, "ghost", 1, [("t0", 0)])
    with pytest.raises(UnknownMemberIdError):
        validate("other", a.member_id, 1, [("t0", 0)])
    with pytest.raises(FencedMemberEpochError, match="newer"):
        validate(G, a.member_id, a.member_epoch + 1, [("t0", 0)])
    with pytest.raises(CommitFailedError, match="t0-9"):
        validate(G, a.member_id, a.member_epoch, [("t0", 9)])

    b = world.join()
    a = world.beat(a, owned=a.assignment)  # told to revoke two, not yet released
    revoked = sorted(all_of("t0", 4) - a.assignment)
    validate(G, a.member_id, a.member_epoch, revoked)  # commits before acknowledging
    a = world.beat(a)
    b = world.beat(b)
    assert a.member_epoch == 2
    with pytest.raises(CommitFailedError, match=f"t0-{revoked[0][1]}"):
        validate(G, a.member_id, 1, revoked)  # stale epoch, partition now someone else's
    validate(G, a.member_id, 1, sorted(a.assignment))  # stale epoch, still its own
    validate(G, b.member_id, b.member_epoch, revoked)


def test_commit_without_member_only_while_the_group_is_empty() -> None:
    world = World()
    validate = world.coordinator.validate_commit
    validate("unknown-group", "", -1, [("t0", 0)])
    a = world.join()
    b = world.join()
    with pytest.raises(GroupNotEmptyError, match=f"group {G} has 2 active members"):
        validate(G, "", -1, [("t0", 0)])
    with pytest.raises(InvalidRequestError, match="epoch -1"):
        validate(G, "", 3, [])
    world.leave(a)
    world.leave(b)
    validate(G, "", -1, [("t0", 0)])


# --- describe, list, delete -----------------------------------------------------------------


def test_describe_states() -> None:
    world = World({"t0": 4})
    assert world.state() == "Empty"
    unknown = world.coordinator.describe("never-seen")
    assert (unknown.state, unknown.members, unknown.assignor) == ("Empty", [], "")
    a = world.join()
    assert world.state() == "Stable"
    b = world.join()
    assert world.state() == "Rebalancing"
    settle(world, [a, b])
    assert world.state() == "Stable"
    world.leave(a)
    assert world.state() == "Rebalancing"  # the target is recomputed at the next heartbeat
    world.leave(b)
    assert world.state() == "Empty"


def test_list_and_delete_groups() -> None:
    world = World()
    a = world.join()
    world.join(group="other")
    assert world.coordinator.list_groups() == [("orders", "Stable", 1), ("other", "Stable", 1)]
    with pytest.raises(GroupNotEmptyError, match="has 1 active member;"):
        world.coordinator.delete_group(G)
    world.leave(a)
    assert world.coordinator.list_groups()[0] == ("orders", "Empty", 0)
    assert world.coordinator.delete_group(G) is True
    assert world.coordinator.delete_group(G) is False
    assert [g for g, _, _ in world.coordinator.list_groups()] == ["other"]
    assert world.coordinator.active_member_count(G) == 0
    assert world.coordinator.active_member_count("other") == 1


# --- coordinator moves and emptiness ------------------------------------------------------


def test_unload_partition_forgets_the_groups_of_that_partition_in_both_protocols() -> None:
    """Members of an unloaded group do not linger: should this broker coordinate the group
    again, their old epochs and partitions are gone and a new member gets everything."""
    world = World({"t0": 4})
    partition_of = {G: 3, "other": 5, "kafka": 3}.__getitem__
    a = world.join()
    kept = world.join(group="other")
    classic = world.coordinator.classic
    protocols = (("range", b""),)
    classic.join_group(
        JoinRequest("kafka", "", "consumer", protocols, 10_000, require_known_member_id=False)
    )
    assert classic.member_count("kafka") == 1
    assert world.coordinator.unload_partition(3, partition_of) == ["kafka", G]
    assert [g for g, _, _ in world.coordinator.list_groups()] == ["other"]
    assert classic.member_count("kafka") == 0 and classic.protocols.holder("kafka") is None
    with pytest.raises(UnknownMemberIdError):
        world.beat(a)
    assert world.join().assignment == all_of("t0", 4)
    assert world.beat(kept, group="other").member_epoch == kept.member_epoch


def test_empty_for_counts_from_the_last_member_of_either_protocol() -> None:
    world = World()
    world.clock.advance(5_000)
    assert world.coordinator.empty_for_ms(G) == 5_000  # never seen with members: the start
    a = world.join()
    world.clock.advance(1_000)
    assert world.coordinator.empty_for_ms(G) is None
    world.leave(a)
    world.clock.advance(2_000)
    assert world.coordinator.empty_for_ms(G) == 2_000
    classic = world.coordinator.classic
    classic.join_group(
        JoinRequest(G, "", "consumer", (("range", b""),), 10_000, require_known_member_id=False)
    )
    world.clock.advance(classic.initial_rebalance_delay_ms)
    assert world.coordinator.empty_for_ms(G) is None
    world.clock.advance(10_001)  # its session lapses: removed, the group is empty from now
    assert world.coordinator.empty_for_ms(G) == 0
    world.clock.advance(500)
    assert world.coordinator.empty_for_ms(G) == 500


def test_forgetting_old_emptiness_keeps_every_answer_at_least_that_old() -> None:
    world = World()
    world.clock.advance(1_000)
    for group in ("g1", "g2"):
        world.leave(world.join(group=group), group=group)
        world.clock.advance(1_000)
    assert world.coordinator.forget_emptied_longer_than(1_500) == 1  # g1, emptied 2 s ago
    assert world.coordinator.empty_for_ms("g1") == 3_000  # since the start, still >= 1.5 s
    assert world.coordinator.empty_for_ms("g2") == 1_000


def test_concurrent_heartbeats_keep_partitions_exclusive() -> None:
    world = World({"t0": 8, "t1": 8})
    errors: list[BaseException] = []
    last: list[HeartbeatResponse] = []

    def client() -> None:
        try:
            member = world.join("t0", "t1")
            for _ in range(100):
                member = world.beat(member)
                assert max(world.holders().values(), default=1) == 1
            last.append(member)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    settle(world, last)  # clients that finished early may still owe a release


# --- random histories -----------------------------------------------------------------------


@dataclass
class Client:
    """A well-behaved consumer: it owns what it was given until it chooses to release."""

    response: HeartbeatResponse | None = None
    holding: set[TopicPartition] = field(default_factory=set)

    def absorb(self, response: HeartbeatResponse) -> None:
        self.response = response
        self.holding |= response.assignment  # starts fetching new partitions at once

    def owned(self, ack: bool) -> frozenset[TopicPartition]:
        if ack and self.response is not None:
            self.holding &= self.response.assignment  # stops fetching revoked partitions
        return frozenset(self.holding)

    def lost(self) -> None:
        self.response = None
        self.holding = set()


Step = tuple[str, int, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.integers(0, 4), st.integers(0, 1)),
        st.tuples(st.just("beat"), st.integers(0, 4), st.integers(0, 2)),
        st.tuples(st.just("leave"), st.integers(0, 4), st.just(0)),
        st.tuples(st.just("advance"), st.integers(0, 12_000), st.just(0)),
        st.tuples(st.just("grow"), st.integers(0, 1), st.integers(1, 3)),
    ),
    min_size=10,
    max_size=80,
)


class History:
    """Runs steps against a coordinator and checks the safety rule after each."""

    def __init__(self) -> None:
        self.world = World({"t0": 3, "t1": 2})
        self.clients = [Client() for _ in range(5)]

    def run(self, step: Step) -> None:
        kind, a, b = step
        if kind == "advance":
            self.world.clock.advance(a)
            self.world.coordinator.expire()
        elif kind == "grow":
            topic = f"t{a}"
            self.world.counts[topic] = min(8, self.world.counts[topic] + b)
        elif kind == "leave":
            self.leave(self.clients[a])
        elif self.clients[a].response is None:
            self.join(self.clients[a], short_timeouts=bool(b))
        else:
            self.beat(self.clients[a], ack=b != 0, explicit=b != 2)
        self.check_exclusive()

    def join(self, client: Client, short_timeouts: bool = False) -> None:
        timeouts = {"session_timeout_ms": 6_000, "rebalance_timeout_ms": 8_000}
        client.absorb(self.world.join("t0", "t1", **(timeouts if short_timeouts else {})))

    def beat(self, client: Client, ack: bool, explicit: bool = True) -> None:
        assert client.response is not None
        owned = client.owned(ack)
        request = HeartbeatRequest(
            G,
            client.response.member_id,
            client.response.member_epoch,
            owned=owned if explicit else None,
        )
        try:
            client.absorb(self.world.coordinator.heartbeat(request))
        except UnknownMemberIdError:
            client.lost()  # expired: a real consumer treats its partitions as lost

    def leave(self, client: Client) -> None:
        if client.response is not None:
            client.owned(ack=True)
            self.world.leave(client.response)
        client.lost()

    def check_exclusive(self) -> None:
        members = {m.member_id: m for m in self.world.coordinator.describe(G).members}
        held = Counter(tp for m in members.values() for tp in (*m.assigned, *m.pending_revocation))
        assert all(n == 1 for n in held.values()), held
        for client in self.clients:
            member = members.get(client.response.member_id) if client.response else None
            if member is not None:  # a live member holds only what the coordinator says
                assert client.holding <= {*member.assigned, *member.pending_revocation}

    def converge(self) -> None:
        for _ in range(6):
            for client in self.clients:
                if client.response is not None:
                    self.beat(client, ack=True)
                    self.check_exclusive()


@settings(max_examples=300, deadline=None)
@given(history=steps)
def test_random_histories_never_share_a_partition_and_then_settle(history: list[Step]) -> None:
    run = History()
    for step in history:
        run.run(step)
    run.converge()
    description = run.world.coordinator.describe(G)
    members = [c for c in run.clients if c.response is not None]
    assert len(description.members) == len(members)
    if not members:
        assert description.state == "Empty"
        return
    assert description.state == "Stable"
    counts = run.world.counts
    owned = Counter(tp for m in description.members for tp in m.assigned)
    assert set(owned) == all_of("t0", counts["t0"]) | all_of("t1", counts["t1"])
    assert all(n == 1 for n in owned.values())
    loads = [len(m.assigned) for m in description.members]
    assert max(loads) - min(loads) <= 1
    for client in members:
        assert client.response is not None
        assert client.holding == client.response.assignment


# --- helpers --------------------------------------------------------------------------------


def settle(world: World, members: list[HeartbeatResponse]) -> list[HeartbeatResponse]:
    """Heartbeat every member, acknowledging each answer, until the group is Stable."""
    for _ in range(5):
        members = [world.beat(member) for member in members]
        if world.state() == "Stable":
            return members
    raise AssertionError(f"group did not settle: {world.coordinator.describe(G)}")

"""Kafka's classic group protocol coordinator: joins, syncs, heartbeats, leaves, timeouts,
static members, commits and coexistence with LogStore's own groups.

Everything runs on a ManualClock; nothing sleeps (one test waits on the change counter from
a thread, bounded). The state-machine test drives random clients and checks the
invariants of the module docstring after every step, and that every waiting request is
answered by its deadline.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from kafka import errors as kafka_errors

from logstore.clock import ManualClock
from logstore.errors import GroupNotEmptyError
from logstore.server.groups.classic import (
    COMPLETING_REBALANCE,
    EMPTY,
    PREPARING_REBALANCE,
    STABLE,
    ClassicGroupCoordinator,
    GroupError,
    JoinedMember,
    JoinRequest,
    JoinResult,
    MemberIdentity,
    Pending,
    SyncRequest,
    SyncResult,
)
from logstore.server.groups.coordinator import GroupCoordinator, HeartbeatRequest
from logstore.server.groups.protocols import CLASSIC, NATIVE

G = "billing"
SESSION_MS = 10_000
REBALANCE_MS = 30_000
DELAY_MS = 3_000
E = GroupError


class World:
    """A classic coordinator (inside LogStore's own, as the broker has them) on a manual
    clock with predictable member ids."""

    def __init__(self, delay_ms: int = DELAY_MS, **bounds: int) -> None:
        self.clock = ManualClock()
        ids = itertools.count()
        self.classic = ClassicGroupCoordinator(
            self.clock,
            initial_rebalance_delay_ms=delay_ms,
            id_suffix=lambda: str(next(ids)),
            **bounds,
        )
        self.native = GroupCoordinator(lambda _t: 4, self.clock, classic=self.classic)

    def join(
        self,
        member_id: str = "",
        client: str = "c",
        protocols: tuple[tuple[str, bytes], ...] = (("range", b"m"),),
        **fields: object,
    ) -> JoinResult | Pending:
        request = JoinRequest(
            group_id=str(fields.pop("group", G)),
            member_id=member_id,
            protocol_type=str(fields.pop("protocol_type", "consumer")),
            protocols=protocols,
            session_timeout_ms=int(fields.pop("session_timeout_ms", SESSION_MS)),  # type: ignore[call-overload]
            rebalance_timeout_ms=int(fields.pop("rebalance_timeout_ms", REBALANCE_MS)),  # type: ignore[call-overload]
            client_id=client,
            **fields,  # type: ignore[arg-type]
        )
        return self.classic.join_group(request)

    def new_member(self, client: str = "c", **fields: object) -> Pending | JoinResult:
        """KIP-394's two steps: the id, then the join with it."""
        first = self.join(client=client, **fields)
        assert isinstance(first, JoinResult) and first.error == E.MEMBER_ID_REQUIRED
        return self.join(first.member_id, client=client, **fields)

    def answer(self, outcome: JoinResult | SyncResult | Pending) -> JoinResult | SyncResult:
        """The answer of an outcome that must be ready now."""
        if isinstance(outcome, Pending):
            outcome = self.classic.outcome(outcome)
        assert not isinstance(outcome, Pending), f"still waiting: {outcome}"
        return outcome

    def sync(
        self, joined: JoinResult, assignments: dict[str, bytes] | None = None
    ) -> SyncResult | Pending:
        return self.classic.sync_group(
            SyncRequest(
                G, joined.generation_id, joined.member_id, tuple((assignments or {}).items())
            )
        )

    def beat(self, joined: JoinResult) -> GroupError:
        return self.classic.heartbeat(G, joined.generation_id, joined.member_id)

    def state(self) -> str:
        desc = self.classic.describe(G)
        return desc.state if desc is not None else "unknown"

    def stable_pair(self) -> tuple[JoinResult, JoinResult]:
        """Two members, a leader and a follower, Stable at generation 1."""
        a, b = self.new_member("a"), self.new_member("b")
        self.clock.advance(DELAY_MS)
        ja, jb = self.answer(a), self.answer(b)
        assert isinstance(ja, JoinResult) and isinstance(jb, JoinResult)
        leader, follower = (ja, jb) if ja.leader == ja.member_id else (jb, ja)
        self.answer(self.sync(leader, {leader.member_id: b"L", follower.member_id: b"F"}))
        assert self.answer(self.sync(follower)) == SyncResult(E.NONE, b"F", "consumer", "range")
        assert self.state() == STABLE
        return leader, follower


@pytest.fixture
def world() -> World:
    return World()


def test_error_codes_are_kafkas() -> None:
    kafkas = {
        "COORDINATOR_NOT_AVAILABLE": kafka_errors.CoordinatorNotAvailableError,
        "NOT_COORDINATOR": kafka_errors.NotCoordinatorError,
        "ILLEGAL_GENERATION": kafka_errors.IllegalGenerationError,
        "INCONSISTENT_GROUP_PROTOCOL": kafka_errors.InconsistentGroupProtocolError,
        "INVALID_GROUP_ID": kafka_errors.InvalidGroupIdError,
        "UNKNOWN_MEMBER_ID": kafka_errors.UnknownMemberIdError,
        "INVALID_SESSION_TIMEOUT": kafka_errors.InvalidSessionTimeoutError,
        "REBALANCE_IN_PROGRESS": kafka_errors.RebalanceInProgressError,
        "MEMBER_ID_REQUIRED": kafka_errors.MemberIdRequiredError,
        "FENCED_INSTANCE_ID": kafka_errors.FencedInstanceIdError,
    }
    ours = {e.name: int(e) for e in E if e != E.NONE}
    assert ours == {name: cls.errno for name, cls in kafkas.items()}


# --- joining --------------------------------------------------------------------------------


def test_a_new_member_first_gets_an_id_and_is_no_member_until_it_comes_back(world: World) -> None:
    first = world.join(client="kp")
    assert first == JoinResult(E.MEMBER_ID_REQUIRED, "kp-0")
    assert world.classic.member_count(G) == 0
    assert world.classic.protocols.holder(G) is None
    # the id lapses after the session timeout if it never comes back
    world.clock.advance(SESSION_MS)
    world.classic.expire()
    assert world.join("kp-0", client="kp") == JoinResult(E.UNKNOWN_MEMBER_ID, "kp-0")


def test_the_first_join_waits_out_the_initial_delay(world: World) -> None:
    pending = world.new_member("kp")
    assert isinstance(pending, Pending) and pending.deadline_ms == DELAY_MS
    world.clock.advance(DELAY_MS - 1)
    assert isinstance(world.classic.outcome(pending), Pending)
    assert world.state() == PREPARING_REBALANCE
    world.clock.advance(1)
    joined = world.answer(pending)
    assert joined == JoinResult(
        E.NONE,
        "kp-0",
        generation_id=1,
        protocol_type="consumer",
        protocol_name="range",
        leader="kp-0",
        members=joined.members,
    )
    assert [(m.member_id, m.metadata) for m in joined.members] == [("kp-0", b"m")]
    assert world.state() == COMPLETING_REBALANCE
    assert world.classic.protocols.holder(G).protocol == CLASSIC  # type: ignore[union-attr]


def test_members_joining_during_the_delay_extend_it_up_to_the_rebalance_timeout() -> None:
    world = World(delay_ms=3_000)
    a = world.new_member("a", rebalance_timeout_ms=4_000)
    world.clock.advance(2_000)
    b = world.new_member("b", rebalance_timeout_ms=4_000)
    assert isinstance(b, Pending) and b.deadline_ms == 4_000  # not 5000: the timeout caps it
    world.clock.advance(2_000)
    ja, jb = world.answer(a), world.answer(b)
    assert ja.generation_id == jb.generation_id == 1  # type: ignore[union-attr]
    assert len(ja.members) == 2 and jb.members == ()  # type: ignore[union-attr]


def test_no_initial_delay_completes_a_lone_join_at_once() -> None:
    world = World(delay_ms=0)
    joined = world.answer(world.new_member("a"))
    assert isinstance(joined, JoinResult) and joined.generation_id == 1


def test_join_group_v3_and_older_need_no_member_id_round() -> None:
    world = World(delay_ms=0)
    joined = world.answer(world.join(client="old", require_known_member_id=False))
    assert joined.error == E.NONE and joined.member_id == "old-0"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"group": ""}, E.INVALID_GROUP_ID),
        ({"session_timeout_ms": 5_999}, E.INVALID_SESSION_TIMEOUT),
        ({"session_timeout_ms": 1_800_001}, E.INVALID_SESSION_TIMEOUT),
        ({"protocol_type": ""}, E.INCONSISTENT_GROUP_PROTOCOL),
        ({"protocols": ()}, E.INCONSISTENT_GROUP_PROTOCOL),
    ],
)
def test_invalid_joins(world: World, fields: dict[str, object], error: GroupError) -> None:
    outcome = world.join(**fields)  # type: ignore[arg-type]
    assert isinstance(outcome, JoinResult) and outcome.error == error


def test_the_session_timeout_bounds_are_settings() -> None:
    """Kafka's group.min/max.session.timeout.ms: what a join may ask for."""
    world = World(delay_ms=0, min_session_timeout_ms=1_000, max_session_timeout_ms=10_000)
    first = world.join(session_timeout_ms=3_000)
    assert isinstance(first, JoinResult) and first.error == E.MEMBER_ID_REQUIRED
    for refused in (999, 10_001):
        outcome = world.join(session_timeout_ms=refused)
        assert isinstance(outcome, JoinResult) and outcome.error == E.INVALID_SESSION_TIMEOUT
    with pytest.raises(ValueError, match="need 0 < min <= max"):
        ClassicGroupCoordinator(min_session_timeout_ms=5_000, max_session_timeout_ms=4_000)


def test_a_known_member_id_of_an_unknown_group_is_unknown(world: World) -> None:
    assert world.join("ghost") == JoinResult(E.UNKNOWN_MEMBER_ID, "ghost")


def test_members_must_share_the_protocol_type_and_a_protocol(world: World) -> None:
    world.new_member("a", protocols=(("range", b""),))
    other = world.join(client="b", protocols=(("roundrobin", b""),))
    assert other == JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, "")
    connect = world.join(client="b", protocol_type="connect")
    assert connect == JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, "")


def test_the_protocol_is_chosen_by_vote_among_those_every_member_supports() -> None:
    world = World(delay_ms=1_000)
    a = world.new_member("a", protocols=(("range", b"a1"), ("roundrobin", b"a2")))
    world.new_member("b", protocols=(("roundrobin", b"b2"), ("range", b"b1")))
    world.new_member("c", protocols=(("roundrobin", b"c2"), ("range", b"c1"), ("sticky", b"")))
    world.clock.advance(1_000)
    leader = world.answer(a)
    assert leader.protocol_name == "roundrobin"  # type: ignore[union-attr]
    assert [m.metadata for m in leader.members] == [b"a2", b"b2", b"c2"]  # type: ignore[union-attr]


# --- syncing and heartbeats -----------------------------------------------------------------


def test_followers_wait_for_the_leaders_assignment(world: World) -> None:
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    leader, follower = world.answer(a), world.answer(b)
    assert isinstance(leader, JoinResult) and isinstance(follower, JoinResult)
    assert leader.leader == leader.member_id == "a-0" and follower.leader == "a-0"
    waiting = world.sync(follower)
    assert isinstance(waiting, Pending)
    assert world.beat(follower) == E.NONE  # CompletingRebalance: heartbeats are fine
    seen = world.classic.changes.value
    done = world.sync(leader, {"a-0": b"A", "b-1": b"B"})
    assert done == SyncResult(E.NONE, b"A", "consumer", "range")
    assert world.classic.changes.value > seen  # the waiting follower is told
    assert world.answer(waiting) == SyncResult(E.NONE, b"B", "consumer", "range")
    assert world.state() == STABLE
    # a member left out of the assignment gets empty bytes; a later sync gets the same
    assert world.answer(world.sync(follower)).assignment == b"B"  # type: ignore[union-attr]


def test_member_checks_come_before_the_state(world: World) -> None:
    leader, follower = world.stable_pair()
    assert world.classic.heartbeat(G, 1, "nobody") == E.UNKNOWN_MEMBER_ID
    assert world.classic.heartbeat("other", 1, leader.member_id) == E.UNKNOWN_MEMBER_ID
    assert world.classic.heartbeat(G, 0, leader.member_id) == E.ILLEGAL_GENERATION
    stale = SyncRequest(G, 0, follower.member_id)
    assert world.classic.sync_group(stale) == SyncResult(E.ILLEGAL_GENERATION)
    assert world.beat(leader) == E.NONE


def test_a_new_member_makes_the_group_rebalance_and_everyone_rejoin(world: World) -> None:
    leader, follower = world.stable_pair()
    c = world.new_member("c")
    assert isinstance(c, Pending)
    assert world.state() == PREPARING_REBALANCE
    assert world.beat(leader) == E.REBALANCE_IN_PROGRESS
    assert world.beat(follower) == E.REBALANCE_IN_PROGRESS
    assert world.sync(follower) == SyncResult(E.REBALANCE_IN_PROGRESS)
    rejoin_leader = world.join(leader.member_id, client="a")
    assert isinstance(rejoin_leader, Pending)
    # the last one back completes the join at once: no initial delay outside Empty
    last = world.answer(world.join(follower.member_id, client="b"))
    assert last.generation_id == 2  # type: ignore[union-attr]
    assert world.answer(rejoin_leader).members  # type: ignore[union-attr]
    assert world.answer(c).generation_id == 2  # type: ignore[union-attr]


def test_a_member_that_does_not_rejoin_in_time_is_dropped(world: World) -> None:
    leader, follower = world.stable_pair()
    rejoin = world.join(leader.member_id, client="a")  # the leader rejoins: a rebalance
    assert isinstance(rejoin, Pending) and rejoin.deadline_ms <= world.clock.monotonic_ms() + (
        REBALANCE_MS
    )
    for _ in range(4):  # the follower keeps heartbeating but never rejoins
        world.clock.advance(REBALANCE_MS // 4 - 1)
        assert world.beat(follower) == E.REBALANCE_IN_PROGRESS
    world.clock.advance(4)
    joined = world.answer(rejoin)
    assert joined.generation_id == 2 and len(joined.members) == 1  # type: ignore[union-attr]
    assert world.beat(follower) == E.UNKNOWN_MEMBER_ID


def test_a_rejoin_during_completing_rebalance_gets_the_same_generation_again(
    world: World,
) -> None:
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    leader, follower = world.answer(a), world.answer(b)
    again = world.answer(world.join(follower.member_id, client="b"))  # type: ignore[union-attr]
    assert again.generation_id == 1 and world.state() == COMPLETING_REBALANCE  # type: ignore[union-attr]
    again_leader = world.answer(world.join(leader.member_id, client="a"))  # type: ignore[union-attr]
    assert again_leader.members == leader.members  # type: ignore[union-attr]


def test_a_follower_rejoining_a_stable_group_unchanged_keeps_the_generation(
    world: World,
) -> None:
    _, follower = world.stable_pair()
    again = world.answer(world.join(follower.member_id, client="b"))
    assert again.generation_id == 1 and world.state() == STABLE  # type: ignore[union-attr]
    changed = world.join(follower.member_id, client="b", protocols=(("range", b"new"),))
    assert isinstance(changed, Pending) and world.state() == PREPARING_REBALANCE


# --- leaving and timeouts -------------------------------------------------------------------


def test_leaving_rebalances_the_rest_and_the_last_leaves_it_empty(world: World) -> None:
    leader, follower = world.stable_pair()
    leave = world.classic.leave_group(G, [MemberIdentity(leader.member_id)])
    assert leave == [E.NONE]
    assert world.beat(follower) == E.REBALANCE_IN_PROGRESS
    rejoined = world.answer(world.join(follower.member_id, client="b"))
    assert rejoined.leader == follower.member_id and rejoined.generation_id == 2  # type: ignore[union-attr]
    assert world.classic.leave_group(G, [MemberIdentity(follower.member_id)]) == [E.NONE]
    desc = world.classic.describe(G)
    assert desc is not None and desc.state == EMPTY and desc.generation_id == 3
    assert world.classic.protocols.holder(G) is None
    assert world.classic.leave_group(G, [MemberIdentity("nobody")]) == [E.UNKNOWN_MEMBER_ID]
    assert world.classic.leave_group("nowhere", [MemberIdentity("x")]) == [E.UNKNOWN_MEMBER_ID]


def test_a_pending_member_id_can_leave_without_a_rebalance(world: World) -> None:
    world.stable_pair()
    first = world.join(client="c")
    assert isinstance(first, JoinResult)
    assert world.classic.leave_group(G, [MemberIdentity(first.member_id)]) == [E.NONE]
    assert world.state() == STABLE


def test_a_silent_member_is_removed_after_its_session_timeout(world: World) -> None:
    leader, follower = world.stable_pair()
    world.clock.advance(SESSION_MS // 2)
    assert world.beat(leader) == E.NONE
    world.clock.advance(SESSION_MS // 2)
    assert world.classic.expire() == []  # exactly the timeout: not yet
    world.clock.advance(1)
    assert world.classic.expire() == [(G, follower.member_id)]
    assert world.state() == PREPARING_REBALANCE
    assert world.beat(leader) == E.REBALANCE_IN_PROGRESS


def test_a_waiting_join_keeps_its_member_alive_past_the_session_timeout(world: World) -> None:
    leader, follower = world.stable_pair()
    waiting = world.join(leader.member_id, client="a")  # the leader rejoins: a rebalance
    assert isinstance(waiting, Pending)
    for _ in range(3):  # 15 s: the leader sends nothing, the follower heartbeats only
        world.clock.advance(SESSION_MS // 2)
        assert world.beat(follower) == E.REBALANCE_IN_PROGRESS
    assert world.classic.expire() == []
    assert isinstance(world.classic.outcome(waiting), Pending)
    # the join deadline drops the follower, which never rejoined
    world.clock.advance(REBALANCE_MS - 3 * (SESSION_MS // 2))
    joined = world.answer(waiting)
    assert joined.generation_id == 2 and len(joined.members) == 1  # type: ignore[union-attr]


def test_an_abandoned_wait_no_longer_keeps_its_member_alive(world: World) -> None:
    waiting = world.new_member("a", rebalance_timeout_ms=60_000)
    world.new_member("b", rebalance_timeout_ms=60_000)
    assert isinstance(waiting, Pending)
    world.classic.abandon(waiting)
    world.clock.advance(SESSION_MS + 1)
    assert world.classic.expire() == [(G, "a-0")]


def test_an_abandoned_wait_leaves_its_member_a_full_session(world: World) -> None:
    """The client hears of the failure only when the wait is given up: its session
    restarts then, so the next timer does not evict it at once."""
    leader, follower = world.stable_pair()
    waiting = world.new_member("c", rebalance_timeout_ms=60_000)  # waits for a and b
    assert isinstance(waiting, Pending)

    def others_beat_for(ms: int) -> None:
        for _ in range(ms // (SESSION_MS // 2)):
            world.clock.advance(SESSION_MS // 2)
            assert world.beat(leader) == world.beat(follower) == E.REBALANCE_IN_PROGRESS

    others_beat_for(2 * SESSION_MS)  # its waiting keeps "c" alive meanwhile
    assert world.classic.expire() == []
    world.classic.abandon(waiting)
    assert world.classic.expire() == []
    others_beat_for(SESSION_MS)
    assert world.classic.expire() == []
    world.clock.advance(1)
    assert world.classic.expire() == [(G, waiting.member_id)]


def test_a_waiting_join_is_answered_by_the_join_deadline_of_the_largest_timeout(
    world: World,
) -> None:
    """`answer_by_ms` is the group's join deadline, set by its members' largest rebalance
    timeout, however short the waiting member's own."""
    leader, follower = world.stable_pair()
    world.clock.advance(1_000)
    joined_at = world.clock.monotonic_ms()
    waiting = world.join(leader.member_id, client="a", rebalance_timeout_ms=90_000)
    assert isinstance(waiting, Pending)
    assert waiting.answer_by_ms == joined_at + 90_000
    late = world.new_member("c", session_timeout_ms=6_000, rebalance_timeout_ms=6_000)
    assert isinstance(late, Pending) and late.answer_by_ms == joined_at + 90_000
    for _ in range(17):  # the follower heartbeats but never rejoins
        world.clock.advance(5_000)
        late = world.classic.outcome(late)
        assert isinstance(late, Pending), world.clock.monotonic_ms() - joined_at
        assert world.beat(follower) == E.REBALANCE_IN_PROGRESS
    world.clock.advance(5_000)  # the join deadline: the follower is dropped
    answered = world.answer(late)
    assert answered.error == E.NONE and answered.generation_id == 2  # type: ignore[union-attr]
    assert world.answer(waiting).members == (  # type: ignore[union-attr]
        JoinedMember(leader.member_id, None, b"m"),
        JoinedMember(late.member_id, None, b"m"),
    )


def test_a_waiting_sync_is_answered_by_the_sync_deadline(world: World) -> None:
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    completed_at = world.clock.monotonic_ms()
    ja, jb = world.answer(a), world.answer(b)
    follower = jb if ja.member_id == ja.leader else ja  # type: ignore[union-attr]
    waiting = world.sync(follower)  # type: ignore[arg-type]
    assert isinstance(waiting, Pending) and waiting.answer_by_ms == completed_at + REBALANCE_MS
    world.clock.advance(REBALANCE_MS)
    assert world.answer(waiting) == SyncResult(E.REBALANCE_IN_PROGRESS)


# --- coordinator moves ------------------------------------------------------------------------


def test_unload_answers_waiting_requests_not_coordinator_and_forgets_the_group(
    world: World,
) -> None:
    """As Kafka's coordinator resigning a partition: every waiting JoinGroup and SyncGroup
    of the unloaded groups ends NOT_COORDINATOR at once; other groups are untouched."""
    leader, follower = world.stable_pair()
    rejoin = world.join(leader.member_id, client="a")  # a rebalance: waits for the follower
    assert isinstance(rejoin, Pending)
    other = world.join(client="x", group="other", require_known_member_id=False)
    world.clock.advance(DELAY_MS)
    other_joined = world.answer(other)
    assert isinstance(other_joined, JoinResult)
    other_sync = world.classic.sync_group(
        SyncRequest("other", other_joined.generation_id, other_joined.member_id)
    )
    seen = world.classic.changes.value
    assert world.classic.unload(lambda g: g == G) == [G]
    assert world.classic.changes.value > seen  # waiters wake at once
    assert world.answer(rejoin) == JoinResult(E.NOT_COORDINATOR, leader.member_id)
    assert world.classic.describe(G) is None
    assert world.classic.protocols.holder(G) is None
    # back on this broker later: no stale member is left to answer for
    assert world.beat(follower) == E.UNKNOWN_MEMBER_ID
    assert world.classic.leave_group(G, [MemberIdentity(leader.member_id)]) == [E.UNKNOWN_MEMBER_ID]
    assert world.answer(other_sync).error == E.NONE  # type: ignore[union-attr]
    assert world.classic.member_count("other") == 1


def test_unload_answers_a_waiting_sync_not_coordinator(world: World) -> None:
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    ja, jb = world.answer(a), world.answer(b)
    follower = jb if ja.member_id == ja.leader else ja  # type: ignore[union-attr]
    waiting = world.sync(follower)  # type: ignore[arg-type]
    assert isinstance(waiting, Pending)
    world.classic.unload(lambda _g: True)
    assert world.answer(waiting) == SyncResult(E.NOT_COORDINATOR)
    assert world.classic.list_groups() == []


def test_an_unloaded_group_is_free_for_either_protocol(world: World) -> None:
    world.stable_pair()
    world.classic.unload(lambda _g: True)
    joined = world.native.heartbeat(HeartbeatRequest(G, subscribed_topics=("orders",)))
    assert joined.member_epoch > 0
    assert world.classic.protocols.holder(G).protocol == NATIVE  # type: ignore[union-attr]


def test_a_leader_that_never_syncs_is_dropped_and_the_rest_rebalance(world: World) -> None:
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    leader, follower = world.answer(a), world.answer(b)
    waiting = world.sync(follower)  # type: ignore[arg-type]
    assert isinstance(waiting, Pending)
    world.clock.advance(REBALANCE_MS)
    assert world.classic.expire() == [(G, leader.member_id)]
    assert world.answer(waiting) == SyncResult(E.REBALANCE_IN_PROGRESS)
    assert world.state() == PREPARING_REBALANCE


# --- commits --------------------------------------------------------------------------------


def test_commit_checks(world: World) -> None:
    check = world.classic.check_commit
    assert check(G, -1, "") == E.NONE  # simple commit, unknown group
    assert check(G, 3, "x") == E.ILLEGAL_GENERATION  # a generation of a group nobody knows
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    leader, follower = world.answer(a), world.answer(b)
    assert check(G, 1, leader.member_id) == E.REBALANCE_IN_PROGRESS  # type: ignore[union-attr]
    world.sync(leader, {})  # type: ignore[arg-type]
    assert check(G, 1, follower.member_id) == E.NONE  # type: ignore[union-attr]
    assert check(G, 0, follower.member_id) == E.ILLEGAL_GENERATION  # type: ignore[union-attr]
    assert check(G, -1, "") == E.UNKNOWN_MEMBER_ID  # a simple commit while it has members
    assert check(G, 1, "nobody") == E.UNKNOWN_MEMBER_ID
    world.new_member("c")  # PreparingRebalance: commits of the current generation go on
    assert check(G, 1, follower.member_id) == E.NONE  # type: ignore[union-attr]


def test_a_commit_counts_as_a_heartbeat(world: World) -> None:
    leader, follower = world.stable_pair()
    for _ in range(3):
        world.clock.advance(SESSION_MS - 1)
        assert world.beat(leader) == E.NONE
        assert world.classic.check_commit(G, 1, follower.member_id) == E.NONE
    assert world.classic.expire() == []


# --- static membership (KIP-345) --------------------------------------------------------------


def test_a_restarted_static_member_takes_its_slot_without_a_rebalance() -> None:
    world = World(delay_ms=0)
    first = world.answer(world.join(client="s", group_instance_id="host-1"))
    assert isinstance(first, JoinResult) and first.member_id == "host-1-0"
    assert world.answer(world.sync(first, {first.member_id: b"P"})).assignment == b"P"  # type: ignore[union-attr]
    again = world.answer(world.join(client="s", group_instance_id="host-1"))
    assert isinstance(again, JoinResult) and again.member_id == "host-1-1"
    assert again.generation_id == 1 and world.state() == STABLE
    assert again.leader == "host-1-0"  # the old id: it must not assign again
    assert world.answer(world.sync(again)).assignment == b"P"  # type: ignore[union-attr]
    # the old incarnation is fenced
    fenced = world.classic.heartbeat(G, 1, "host-1-0", "host-1")
    assert fenced == E.FENCED_INSTANCE_ID
    # a static member leaves by its instance id
    assert world.classic.leave_group(G, [MemberIdentity("", "host-1")]) == [E.NONE]
    assert world.classic.member_count(G) == 0


def test_leaving_with_another_members_instance_id_is_fenced() -> None:
    world = World(delay_ms=0)
    joined = world.answer(world.join(client="s", group_instance_id="host-1"))
    assert world.classic.leave_group(G, [MemberIdentity("other", "host-1")]) == [
        E.FENCED_INSTANCE_ID
    ]
    assert world.classic.leave_group(G, [MemberIdentity("", "host-9")]) == [E.UNKNOWN_MEMBER_ID]
    assert world.classic.member_count(G) == 1 and isinstance(joined, JoinResult)


# --- admin ------------------------------------------------------------------------------------


def test_describe_list_and_delete(world: World) -> None:
    world.stable_pair()
    desc = world.classic.describe(G)
    assert desc is not None
    assert (desc.state, desc.protocol_type, desc.protocol_name, desc.generation_id) == (
        STABLE,
        "consumer",
        "range",
        1,
    )
    assert [(m.member_id, m.client_id, m.assignment) for m in desc.members] == [
        ("a-0", "a", b"L"),
        ("b-1", "b", b"F"),
    ]
    listed = world.classic.list_groups()
    assert [(g.group_id, g.state, g.members) for g in listed] == [(G, STABLE, 2)]
    with pytest.raises(GroupNotEmptyError):
        world.classic.delete_group(G)
    world.classic.leave_group(G, [MemberIdentity("a-0"), MemberIdentity("b-1")])
    assert world.classic.delete_group(G) is True
    assert world.classic.describe(G) is None
    assert world.classic.delete_group(G) is False


def test_an_empty_group_is_forgotten_after_a_while(world: World) -> None:
    world.stable_pair()
    world.classic.leave_group(G, [MemberIdentity("a-0"), MemberIdentity("b-1")])
    world.clock.advance(599_999)
    assert world.classic.describe(G) is not None
    world.clock.advance(1)
    assert world.classic.describe(G) is None


# --- one protocol at a time -------------------------------------------------------------------


def test_a_group_logstore_consumers_hold_refuses_kafka_joins(world: World) -> None:
    world.native.heartbeat(HeartbeatRequest(G, subscribed_topics=("t",), client_id="ls"))
    holder = world.classic.protocols.holder(G)
    assert holder is not None and holder.protocol == NATIVE
    assert world.join(client="kp") == JoinResult(E.INCONSISTENT_GROUP_PROTOCOL, "")


def test_a_group_kafka_consumers_hold_refuses_logstore_joins_and_commits(world: World) -> None:
    world.stable_pair()
    with pytest.raises(GroupNotEmptyError, match="classic group protocol"):
        world.native.heartbeat(HeartbeatRequest(G, subscribed_topics=("t",)))
    with pytest.raises(GroupNotEmptyError):
        world.native.validate_commit(G, "", -1, [("t", 0)])
    assert world.native.active_member_count(G) == 2


def test_an_empty_group_may_change_protocol(world: World) -> None:
    leader, follower = world.stable_pair()
    world.classic.leave_group(G, [MemberIdentity(leader.member_id)])
    world.classic.leave_group(G, [MemberIdentity(follower.member_id)])
    joined = world.native.heartbeat(HeartbeatRequest(G, subscribed_topics=("t",)))
    assert world.classic.protocols.holder(G).protocol == NATIVE  # type: ignore[union-attr]
    world.native.heartbeat(HeartbeatRequest(G, joined.member_id, -1))
    assert world.classic.protocols.holder(G) is None
    assert isinstance(world.new_member("kp"), Pending)


def test_a_native_member_whose_session_lapses_frees_the_group() -> None:
    world = World(delay_ms=0)
    world.native.heartbeat(HeartbeatRequest(G, subscribed_topics=("t",), session_timeout_ms=6_000))
    world.clock.advance(6_001)
    world.native.expire()
    assert isinstance(world.answer(world.new_member("kp")), JoinResult)


# --- waiting across threads -----------------------------------------------------------------


def test_a_waiter_on_the_change_counter_wakes_when_its_answer_is_ready(world: World) -> None:
    a, b = world.new_member("a"), world.new_member("b")
    world.clock.advance(DELAY_MS)
    leader, follower = world.answer(a), world.answer(b)
    waiting = world.sync(follower)  # type: ignore[arg-type]
    assert isinstance(waiting, Pending)
    woke: list[bool] = []
    waiter = threading.Thread(
        target=lambda: woke.append(world.classic.changes.wait_past(waiting.seen, 10.0))
    )
    waiter.start()
    world.sync(leader, {follower.member_id: b"F"})  # type: ignore[union-attr]
    waiter.join(timeout=10)
    assert woke == [True]
    assert world.answer(waiting).assignment == b"F"  # type: ignore[union-attr]
    # nothing new: a wait times out
    assert world.classic.changes.wait_past(world.classic.changes.value, 0.01) is False


# --- random clients -----------------------------------------------------------------------------


@dataclass
class _Client:
    name: str
    member_id: str = ""
    generation: int = -1
    leader: str = ""
    members: list[str] = field(default_factory=list)
    #: the generation whose assignment it holds (-1: none)
    synced: int = -1
    #: a heartbeat said the group rebalances
    rejoin: bool = False
    #: its waiting requests, each with when it was sent (monotonic ms)
    waiting: list[tuple[Pending, int]] = field(default_factory=list)


class ClassicGroupMachine(RuleBasedStateMachine):
    """Clients that join, sync, heartbeat, leave, stall and come back, in random orders."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World(delay_ms=1_000)
        self.clients = {name: _Client(name) for name in "abcd"}
        #: generation -> (leader, protocol) every successful JoinGroup answer agrees on
        self.generations: dict[int, tuple[str, str | None]] = {}
        #: generation -> member id -> assignment the leader sent
        self.assigned: dict[int, dict[str, bytes]] = {}
        self.highest_generation = 0

    names = st.sampled_from("abcd")

    def _record(self, client: _Client, outcome: JoinResult | SyncResult) -> None:
        if isinstance(outcome, JoinResult):
            if outcome.error == E.MEMBER_ID_REQUIRED:
                client.member_id = outcome.member_id
            elif outcome.error == E.NONE:
                client.rejoin = False
                agreed = self.generations.setdefault(
                    outcome.generation_id, (outcome.leader, outcome.protocol_name)
                )
                assert agreed == (outcome.leader, outcome.protocol_name)
                client.member_id, client.generation = outcome.member_id, outcome.generation_id
                client.leader = outcome.leader
                client.members = [m.member_id for m in outcome.members]
            elif outcome.error == E.UNKNOWN_MEMBER_ID:
                client.member_id, client.generation = "", -1
        elif outcome.error == E.NONE:
            sent = self.assigned.get(client.generation, {})
            assert outcome.assignment == sent.get(client.member_id, b"")
            client.synced = client.generation
        else:
            client.rejoin = True

    def _settle(self, client: _Client, outcome: JoinResult | SyncResult | Pending) -> None:
        if isinstance(outcome, Pending):
            client.waiting.append((outcome, self.world.clock.monotonic_ms()))
        else:
            self._record(client, outcome)

    @rule(name=names)
    def join(self, name: str) -> None:
        client = self.clients[name]
        if not client.waiting:
            self._settle(client, self.world.join(client.member_id, client=name))

    @rule(name=names)
    def sync(self, name: str) -> None:
        client = self.clients[name]
        if client.waiting or client.generation < 0:
            return
        assignments: dict[str, bytes] = {}
        if client.member_id == client.leader:
            assignments = {m: f"{client.generation}:{m}".encode() for m in client.members}
        request = SyncRequest(G, client.generation, client.member_id, tuple(assignments.items()))
        outcome = self.world.classic.sync_group(request)
        if assignments and (isinstance(outcome, Pending) or outcome.error == E.NONE):
            # only an accepted sync assigns: a leader from before a coordinator move is
            # unknown now, and the group's generations started again
            self.assigned.setdefault(client.generation, assignments)
        self._settle(client, outcome)

    @rule(name=names)
    def heartbeat(self, name: str) -> None:
        client = self.clients[name]
        if client.member_id and not client.waiting:
            answer = self.world.classic.heartbeat(G, client.generation, client.member_id)
            if answer == E.UNKNOWN_MEMBER_ID:
                client.member_id, client.generation = "", -1
            elif answer != E.NONE:
                client.rejoin = True

    @rule()
    def everyone_takes_the_next_step(self) -> None:
        """What a live consumer does next: join, rejoin, sync, or heartbeat."""
        self.poll_waiting()
        for name, client in self.clients.items():
            if client.waiting:
                continue
            if not client.member_id or client.generation < 0 or client.rejoin:
                self.join(name)
            elif client.synced != client.generation:
                self.sync(name)
            else:
                self.heartbeat(name)

    @rule(name=names)
    def leave(self, name: str) -> None:
        client = self.clients[name]
        if client.member_id and not client.waiting:
            self.world.classic.leave_group(G, [MemberIdentity(client.member_id)])
            client.member_id, client.generation = "", -1

    @rule(ms=st.sampled_from([1, 500, 1_000, 3_000, 6_000, 11_000]))
    def time_passes(self, ms: int) -> None:
        self.world.clock.advance(ms)
        self.world.classic.expire()
        self.poll_waiting()
        now = self.world.clock.monotonic_ms()
        for client in self.clients.values():
            for pending, sent_ms in client.waiting:
                # no request waits longer than a rebalance timeout, nor past the time the
                # coordinator promised to answer it by
                assert now <= sent_ms + REBALANCE_MS, (client.name, pending)
                assert pending.deadline_ms >= now
                assert now <= pending.answer_by_ms <= sent_ms + REBALANCE_MS + DELAY_MS

    @rule()
    def the_coordinator_moves_away_and_back(self) -> None:
        """Every request still waiting ends NOT_COORDINATOR; the clients find the
        coordinator (this broker again) and rejoin a group that starts from scratch."""
        self.poll_waiting()  # answers already given stand
        self.world.classic.unload(lambda g: g == G)
        self.generations, self.assigned, self.highest_generation = {}, {}, 0
        for client in self.clients.values():
            for pending, _sent_ms in client.waiting:
                outcome = self.world.classic.outcome(pending)
                assert not isinstance(outcome, Pending)
                assert outcome.error == E.NOT_COORDINATOR
                event(f"a waiting {pending.kind} ends NOT_COORDINATOR")
                self._record(client, outcome)
            client.waiting = []
        assert self.world.classic.describe(G) is None

    @rule()
    def poll_waiting(self) -> None:
        for client in self.clients.values():
            still = []
            for pending, sent_ms in client.waiting:
                outcome = self.world.classic.outcome(pending)
                if isinstance(outcome, Pending):
                    still.append((outcome, sent_ms))
                else:
                    self._record(client, outcome)
            client.waiting = still

    @invariant()
    def group_is_consistent(self) -> None:
        desc = self.world.classic.describe(G)
        holder = self.world.classic.protocols.holder(G)
        members = len(desc.members) if desc is not None else 0
        assert (holder is not None) == (members > 0)
        if holder is not None:
            assert (holder.protocol, holder.members) == (CLASSIC, members)
        if desc is None:
            return
        event(f"state {desc.state}")
        if desc.state in (COMPLETING_REBALANCE, STABLE):
            assert desc.members and desc.leader in {m.member_id for m in desc.members}
        assert desc.generation_id >= self.highest_generation
        self.highest_generation = desc.generation_id
        if desc.state == STABLE:
            sent = self.assigned.get(desc.generation_id, {})
            for member in desc.members:
                assert member.assignment == sent.get(member.member_id, b"")


TestClassicGroupMachine = ClassicGroupMachine.TestCase
TestClassicGroupMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)

"""Kafka's classic group protocol: JoinGroup, SyncGroup, Heartbeat and LeaveGroup.

The coordinator of Kafka's GroupCoordinator (before KIP-848), for Kafka clients: members
join with the protocols (assignors) they support and opaque metadata; once every member
has (re)joined, the coordinator bumps the generation, picks the protocol by vote and
answers every JoinGroup, the leader's with all members' metadata; the leader computes the
assignment and sends it in its SyncGroup, and each member's SyncGroup is answered with its
share. Heartbeats keep members alive and tell them when to rejoin. The broker never reads
the metadata or assignments; `consumer_protocol` decodes them only to describe a group.

A group belongs to this protocol or to LogStore's own (`coordinator.GroupCoordinator`),
never both at once: the shared `GroupProtocols` registry is updated before a member is
added, and a group the other protocol holds answers INCONSISTENT_GROUP_PROTOCOL.

States and the answer each request gets (after the checks every member request passes,
in this order: a known group (UNKNOWN_MEMBER_ID), group.instance.id not mapped to another
member (FENCED_INSTANCE_ID), a known member (UNKNOWN_MEMBER_ID), the current generation
(ILLEGAL_GENERATION)):

================= ================ ================== =================== ==================
request           Empty            PreparingRebalance CompletingRebalance Stable
================= ================ ================== =================== ==================
JoinGroup, no id  v4+: MEMBER_ID_REQUIRED with a new id (KIP-394); v0-3 or static: as below
JoinGroup, new    added; ->        added; waits       added; ->           added; ->
member            Preparing, waits                    Preparing, waits    Preparing, waits
                  (initial delay)
JoinGroup, known  UNKNOWN_MEMBER   waits for the      same protocols: the leader or new
member                             generation         generation again;   protocols: ->
                                                      else -> Preparing   Preparing; else
                                                                          the generation
SyncGroup         UNKNOWN_MEMBER   REBALANCE_IN_      leader: stores the  its assignment
                                   PROGRESS           assignment ->
                                                      Stable; others wait
Heartbeat         UNKNOWN_MEMBER   REBALANCE_IN_      NONE                NONE
                                   PROGRESS
LeaveGroup        UNKNOWN_MEMBER   removed; may       removed ->          removed ->
                                   complete the join  Preparing           Preparing
OffsetCommit      generation < 0:  accepted           REBALANCE_IN_       accepted
(check_commit)    accepted                            PROGRESS
join deadline                      drops members not
                                   rejoined; gen + 1;
                                   -> Completing (or
                                   Empty if none)
sync deadline                                         drops members that have not synced
                                                      -> Preparing
session timeout                    drops members not waiting (a waiting request is alive)
unload            the group is forgotten; its waiting requests get NOT_COORDINATOR
================= ================ ================== =================== ==================

`Dead` is Kafka's state of a deleted group: `delete_group` forgets the group, and a group
nobody knows is described as Dead, as Kafka does.

Invariants:
- State CompletingRebalance or Stable => the group has members, `leader` is one of them,
  `protocol_name` is supported by every member, and every member joined this generation.
- `generation` grows by one each time a join completes, never otherwise; a member's
  `assignment` is what the leader sent for the current generation, else empty.
- A group is held in `GroupProtocols` by this protocol exactly when it has members.
- `static` maps each group.instance.id (KIP-345) to the one member that holds it now.
- Every waiting request (`Pending`) gets exactly one answer: its result, or an error when
  the member is removed, the rebalance restarts or the group is unloaded. A pending
  JoinGroup is answered by the join deadline (the members' largest rebalance timeout
  after the rebalance began, the initial delay included); a pending SyncGroup by the sync
  deadline (the same timeout after the join completed); `Pending.answer_by_ms` is that
  deadline. So no request waits longer than a rebalance timeout.

Waiting: the coordinator never blocks. A JoinGroup or SyncGroup that must wait gets a
`Pending` (a ticket, the time by which to ask again, the time by which it is answered,
and the change count it saw); the handler waits on `changes` past that count, bounded by
the deadline, then asks `outcome(pending)`. Answers are published under the
coordinator's lock before `changes` moves, so a waiter never misses one. A waiter that
gives up (`abandon`: the broker stops) leaves its member a full session timeout from then
to come back, as if the answer had gone out.

Time: all timeouts in ms on the injected clock's monotonic reading. The coordinator has no
threads: each request runs its group's timers first, and `expire()` (the broker's timer)
runs every group's. One lock guards all state.

Membership lives in memory: after a broker restart or a coordinator move, members get
UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION and rejoin, as after a Kafka coordinator failover.
A broker that stops coordinating groups (in cluster mode it no longer leads their
partition of `__consumer_offsets`) calls `unload`, as Kafka's coordinator unloads the
groups of a partition it resigns: their waiting requests are answered NOT_COORDINATOR at
once (the clients find the new coordinator), and the groups are forgotten, so no stale
member is left behind should the broker coordinate them again. Committed offsets are
durable (`OffsetStore`).
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import uuid4

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.errors import GroupNotEmptyError
from logstore.server.groups.protocols import CLASSIC, GroupProtocols

EMPTY = "Empty"
PREPARING_REBALANCE = "PreparingRebalance"
COMPLETING_REBALANCE = "CompletingRebalance"
STABLE = "Stable"
DEAD = "Dead"

#: Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms
MIN_SESSION_TIMEOUT_MS = 6_000
MAX_SESSION_TIMEOUT_MS = 1_800_000
#: Kafka's group.initial.rebalance.delay.ms (see `ClassicGroupCoordinator`)
DEFAULT_INITIAL_REBALANCE_DELAY_MS = 3_000
#: an empty group with no committed state left is forgotten after this long (ms)
EMPTY_GROUP_RETENTION_MS = 600_000
#: the generation of a member outside any generation (a "simple" commit)
NO_GENERATION = -1

JOIN = "join"
SYNC = "sync"


class GroupError(enum.IntEnum):
    """The answers of the classic protocol, by their Kafka error codes."""

    NONE = 0
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    MEMBER_ID_REQUIRED = 79
    FENCED_INSTANCE_ID = 82


# --- requests and answers -----------------------------------------------------------------


@dataclass(frozen=True)
class JoinRequest:
    """A JoinGroup. `protocols` are (name, metadata) in the member's order of preference;
    `rebalance_timeout_ms` -1 (JoinGroup v0) means the session timeout;
    `require_known_member_id` is JoinGroup v4+ (KIP-394)."""

    group_id: str
    member_id: str
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    session_timeout_ms: int
    rebalance_timeout_ms: int = -1
    group_instance_id: str | None = None
    client_id: str = ""
    host: str = ""
    require_known_member_id: bool = True


@dataclass(frozen=True)
class SyncRequest:
    """A SyncGroup; only the leader's `assignments` ((member id, bytes)) are used."""

    group_id: str
    generation_id: int
    member_id: str
    assignments: tuple[tuple[str, bytes], ...] = ()
    group_instance_id: str | None = None


@dataclass(frozen=True)
class MemberIdentity:
    """A member named in LeaveGroup (v3+ names several; static members by instance id)."""

    member_id: str
    group_instance_id: str | None = None


@dataclass(frozen=True)
class JoinedMember:
    """One member as the leader's JoinGroup answer lists it."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True)
class JoinResult:
    """The answer to a JoinGroup; `members` is non-empty only in the leader's."""

    error: GroupError
    member_id: str
    generation_id: int = NO_GENERATION
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: tuple[JoinedMember, ...] = ()


@dataclass(frozen=True)
class SyncResult:
    """The answer to a SyncGroup: the member's assignment bytes."""

    error: GroupError
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(frozen=True)
class Pending:
    """A request that waits: ask `outcome(self)` again once `changes` has moved past `seen`
    or the monotonic clock reached `deadline_ms`, whichever comes first.

    `answer_by_ms` is the coordinator's own promise: by then (the group's join deadline for
    a JoinGroup, its sync deadline for a SyncGroup; monotonic ms) asking `outcome` gives
    the answer. A waiter may rely on it to bound its wait."""

    ticket: int
    kind: str
    group_id: str
    member_id: str
    deadline_ms: int
    seen: int
    answer_by_ms: int


Outcome = JoinResult | SyncResult


@dataclass(frozen=True)
class ClassicMemberDescription:
    """A member as `describe` shows it: its metadata for the group's protocol (its first
    protocol's before one is chosen) and its current assignment (empty before Stable)."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True)
class ClassicGroupDescription:
    group_id: str
    state: str
    protocol_type: str
    #: the protocol (assignor) of the current generation; "" while there is none
    protocol_name: str
    generation_id: int
    leader: str
    members: list[ClassicMemberDescription]


@dataclass(frozen=True)
class ClassicGroupListing:
    group_id: str
    state: str
    protocol_type: str
    members: int


class ChangeCounter:
    """Counts answers given to waiting requests; a handler waits for it to move."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._value = 0

    @property
    def value(self) -> int:
        with self._cond:
            return self._value

    def bump(self) -> None:
        with self._cond:
            self._value += 1
            self._cond.notify_all()

    def wait_past(self, seen: int, timeout_s: float) -> bool:
        """Block until the count differs from `seen` (True) or `timeout_s` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._value != seen, max(timeout_s, 0.0))


# --- state ----------------------------------------------------------------------------------


@dataclass
class _Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]
    last_heartbeat_ms: int
    #: sent JoinGroup in the current rebalance
    joined: bool = False
    #: sent SyncGroup in the current generation
    synced: bool = False
    assignment: bytes = b""
    #: its requests waiting for an answer; while any waits, its session cannot lapse
    waiting: int = 0

    def metadata(self, protocol: str | None) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return self.protocols[0][1] if protocol is None and self.protocols else b""


@dataclass(frozen=True)
class _Wait:
    kind: str
    member_id: str


@dataclass
class _Group:
    group_id: str
    state: str = EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    #: in join order: the leader's JoinGroup answer lists them so
    members: dict[str, _Member] = field(default_factory=dict)
    #: ids given with MEMBER_ID_REQUIRED, not yet used -> when they lapse (monotonic ms)
    pending: dict[str, int] = field(default_factory=dict)
    #: group.instance.id -> member id
    static: dict[str, str] = field(default_factory=dict)
    #: the rebalance began from Empty: it waits out the initial delay
    initial: bool = False
    rebalance_started_ms: int = 0
    join_deadline_ms: int | None = None
    sync_deadline_ms: int | None = None
    empty_since_ms: int = 0
    #: requests waiting for an answer, by ticket
    waits: dict[int, _Wait] = field(default_factory=dict)


class ClassicGroupCoordinator:
    """Every classic group of one broker. Thread-safe; pure apart from the injected clock.

    `initial_rebalance_delay_ms` is Kafka's group.initial.rebalance.delay.ms: a rebalance
    of an Empty group waits this long (extended by each member joining meanwhile, up to the
    rebalance timeout) so consumers started together form one generation, not one per
    member. `id_suffix()` makes the random part of new member ids (a UUID, as Kafka).
    """

    def __init__(
        self,
        clock: Clock = SYSTEM_CLOCK,
        *,
        protocols: GroupProtocols | None = None,
        initial_rebalance_delay_ms: int = DEFAULT_INITIAL_REBALANCE_DELAY_MS,
        id_suffix: Callable[[], str] | None = None,
        min_session_timeout_ms: int = MIN_SESSION_TIMEOUT_MS,
        max_session_timeout_ms: int = MAX_SESSION_TIMEOUT_MS,
    ) -> None:
        if initial_rebalance_delay_ms < 0:
            raise ValueError(
                f"initial_rebalance_delay_ms must be >= 0, not {initial_rebalance_delay_ms}"
            )
        if not 0 < min_session_timeout_ms <= max_session_timeout_ms:
            raise ValueError(
                f"session timeout bounds {min_session_timeout_ms}..{max_session_timeout_ms} "
                "ms: need 0 < min <= max"
            )
        #: Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms: a join
        #: asking for a session timeout outside them gets INVALID_SESSION_TIMEOUT
        self.min_session_timeout_ms = min_session_timeout_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.protocols = protocols if protocols is not None else GroupProtocols(clock)
        self.changes = ChangeCounter()
        self.initial_rebalance_delay_ms = initial_rebalance_delay_ms
        self._clock = clock
        self._id_suffix = id_suffix or (lambda: str(uuid4()))
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._answers: dict[int, Outcome] = {}
        self._tickets = itertools.count(1)
        #: completed joins (generation bumps) since start
        self.rebalances = 0

    # --- JoinGroup ------------------------------------------------------------------------

    def join_group(self, request: JoinRequest) -> JoinResult | Pending:
        """Join (or rejoin) a group; see the module docstring."""
        error = _check_join(request, self.min_session_timeout_ms, self.max_session_timeout_ms)
        if error is not None:
            return JoinResult(error, request.member_id)
        with self._lock:
            now = self._clock.monotonic_ms()
            group = self._group(request.group_id, now) or _Group(
                request.group_id, empty_since_ms=now
            )
            if request.member_id and group.group_id not in self._groups:
                return JoinResult(GroupError.UNKNOWN_MEMBER_ID, request.member_id)
            if not self._supports(group, request):
                return JoinResult(GroupError.INCONSISTENT_GROUP_PROTOCOL, request.member_id)
            if not request.member_id:
                return self._join_new(group, request, now)
            return self._join_known(group, request, now)

    def _join_new(self, group: _Group, request: JoinRequest, now: int) -> JoinResult | Pending:
        instance = request.group_instance_id
        if instance is not None:
            old_id = group.static.get(instance)
            if old_id is not None:
                return self._replace_static(group, old_id, request, now)
            return self._add(group, f"{instance}-{self._id_suffix()}", request, now)
        member_id = f"{request.client_id}-{self._id_suffix()}"
        if request.require_known_member_id:
            # KIP-394: the id is only a member's once it comes back with it, so a client
            # that dies before its first answer leaves nothing to wait for
            self._groups[group.group_id] = group
            group.pending[member_id] = now + request.session_timeout_ms
            return JoinResult(GroupError.MEMBER_ID_REQUIRED, member_id)
        return self._add(group, member_id, request, now)

    def _join_known(self, group: _Group, request: JoinRequest, now: int) -> JoinResult | Pending:
        member_id = request.member_id
        fenced = _fenced(group, member_id, request.group_instance_id)
        if fenced is not None:
            return JoinResult(fenced, member_id)
        if group.pending.pop(member_id, None) is not None:
            return self._add(group, member_id, request, now)
        member = group.members.get(member_id)
        if member is None:
            return JoinResult(GroupError.UNKNOWN_MEMBER_ID, member_id)
        changed = member.protocols != request.protocols
        _update(member, request, now)
        if group.state == COMPLETING_REBALANCE and not changed:
            return self._generation_answer(group, member_id)  # its answer was lost: again
        if group.state == STABLE and not changed and group.leader != member_id:
            return self._generation_answer(group, member_id)
        if group.state != PREPARING_REBALANCE:
            # a leader rejoins to have the assignment computed again (e.g. a topic grew)
            self._prepare(group, now)
        return self._await_join(group, member, now)

    def _add(
        self, group: _Group, member_id: str, request: JoinRequest, now: int
    ) -> JoinResult | Pending:
        if self.protocols.update(group.group_id, CLASSIC, len(group.members) + 1) is not None:
            return JoinResult(GroupError.INCONSISTENT_GROUP_PROTOCOL, request.member_id)
        self._groups[group.group_id] = group
        member = _Member(
            member_id=member_id,
            group_instance_id=request.group_instance_id,
            client_id=request.client_id,
            host=request.host,
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=_rebalance_timeout(request),
            protocols=request.protocols,
            last_heartbeat_ms=now,
        )
        group.members[member_id] = member
        if group.leader is None:
            group.leader = member_id
        if group.state == EMPTY:
            group.protocol_type = request.protocol_type
        if request.group_instance_id is not None:
            group.static[request.group_instance_id] = member_id
        if group.state != PREPARING_REBALANCE:
            self._prepare(group, now)
        elif group.initial:
            # each member joining during the initial delay extends it, up to the timeout
            limit = group.rebalance_started_ms + _max_rebalance_timeout(group)
            group.join_deadline_ms = min(now + self.initial_rebalance_delay_ms, limit)
        return self._await_join(group, member, now)

    def _replace_static(
        self, group: _Group, old_id: str, request: JoinRequest, now: int
    ) -> JoinResult | Pending:
        """KIP-345: a static member restarting takes its old slot under a new id; the old
        id is fenced. In a Stable group whose protocol stays, no rebalance happens."""
        old = group.members[old_id]
        new_id = f"{request.group_instance_id}-{self._id_suffix()}"
        previous_leader = group.leader or ""
        self._answer_waits(group, old_id, GroupError.FENCED_INSTANCE_ID)
        member = _Member(
            member_id=new_id,
            group_instance_id=old.group_instance_id,
            client_id=request.client_id,
            host=request.host,
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=_rebalance_timeout(request),
            protocols=request.protocols,
            last_heartbeat_ms=now,
            synced=old.synced,
            assignment=old.assignment,
        )
        group.members = {
            (new_id if mid == old_id else mid): (member if mid == old_id else m)
            for mid, m in group.members.items()
        }
        group.static[request.group_instance_id or ""] = new_id
        if group.leader == old_id:
            group.leader = new_id
        if group.state == STABLE and _select_protocol(group) == group.protocol_name:
            # the old leader id, so a restarted leader does not assign again in a Stable
            # group (its assignment would never reach the others)
            answer = self._generation_answer(group, new_id)
            return JoinResult(
                answer.error,
                new_id,
                answer.generation_id,
                answer.protocol_type,
                answer.protocol_name,
                previous_leader,
            )
        if group.state != PREPARING_REBALANCE:
            self._prepare(group, now)
        return self._await_join(group, member, now)

    def _await_join(self, group: _Group, member: _Member, now: int) -> JoinResult | Pending:
        member.joined = True
        ticket = self._register(group, member, JOIN)
        self._try_complete_join(group, now)
        return self._answer_or_pending(group, ticket, now)  # type: ignore[return-value]

    def _supports(self, group: _Group, request: JoinRequest) -> bool:
        """Kafka's protocol check: the group is not the other protocol's, and a non-empty
        group shares the protocol type and at least one protocol with the member."""
        holder = self.protocols.holder(group.group_id)
        if holder is not None and holder.protocol != CLASSIC:
            return False
        others = [m for m in group.members.values() if m.member_id != request.member_id]
        if not others:
            return True
        if request.protocol_type != group.protocol_type:
            return False
        common = {name for name, _ in request.protocols}
        for member in others:
            common &= {name for name, _ in member.protocols}
        return bool(common)

    # --- the rebalance --------------------------------------------------------------------

    def _prepare(self, group: _Group, now: int) -> None:
        """Start a rebalance: every member must (re)join by the join deadline."""
        if group.state == COMPLETING_REBALANCE:
            for member in group.members.values():
                member.assignment = b""
            for ticket, wait in list(group.waits.items()):
                if wait.kind == SYNC:
                    self._answer(group, ticket, SyncResult(GroupError.REBALANCE_IN_PROGRESS))
        group.initial = group.state == EMPTY
        group.state = PREPARING_REBALANCE
        group.rebalance_started_ms = now
        timeout = _max_rebalance_timeout(group)
        delay = min(self.initial_rebalance_delay_ms, timeout) if group.initial else timeout
        group.join_deadline_ms = now + delay
        group.sync_deadline_ms = None

    def _try_complete_join(self, group: _Group, now: int) -> None:
        if group.state != PREPARING_REBALANCE:
            return
        assert group.join_deadline_ms is not None
        due = now >= group.join_deadline_ms
        if group.initial and not due:
            return
        everyone = not group.pending and all(m.joined for m in group.members.values())
        if due or everyone:
            self._complete_join(group, now)

    def _complete_join(self, group: _Group, now: int) -> None:
        """Drop members that did not rejoin, start the next generation, answer the joins."""
        for member in [m for m in group.members.values() if not m.joined]:
            self._drop(group, member.member_id)
        group.generation += 1
        self.rebalances += 1
        group.initial = False
        group.join_deadline_ms = None
        if not group.members:
            group.state = EMPTY
            group.protocol_name = None
            group.leader = None
            group.sync_deadline_ms = None
            group.empty_since_ms = now
            return
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.protocol_name = _select_protocol(group)
        group.state = COMPLETING_REBALANCE
        group.sync_deadline_ms = now + _max_rebalance_timeout(group)
        for member in group.members.values():
            member.joined = False
            member.synced = False
            member.assignment = b""
            member.last_heartbeat_ms = now
        for ticket, wait in list(group.waits.items()):
            if wait.kind == JOIN:
                self._answer(group, ticket, self._generation_answer(group, wait.member_id))

    def _generation_answer(self, group: _Group, member_id: str) -> JoinResult:
        """The current generation as `member_id` is told it (the leader gets the members)."""
        members: tuple[JoinedMember, ...] = ()
        if member_id == group.leader:
            members = tuple(
                JoinedMember(m.member_id, m.group_instance_id, m.metadata(group.protocol_name))
                for m in group.members.values()
            )
        return JoinResult(
            GroupError.NONE,
            member_id,
            group.generation,
            group.protocol_type,
            group.protocol_name,
            group.leader or "",
            members,
        )

    # --- SyncGroup ------------------------------------------------------------------------

    def sync_group(self, request: SyncRequest) -> SyncResult | Pending:
        """The member's assignment for the generation; waits for the leader's SyncGroup."""
        with self._lock:
            now = self._clock.monotonic_ms()
            group = self._group(request.group_id, now)
            error = _member_error(group, request.member_id, request.group_instance_id)
            if error is not None:
                return SyncResult(error)
            assert group is not None
            if request.generation_id != group.generation:
                return SyncResult(GroupError.ILLEGAL_GENERATION)
            member = group.members[request.member_id]
            member.last_heartbeat_ms = now
            if group.state == PREPARING_REBALANCE:
                return SyncResult(GroupError.REBALANCE_IN_PROGRESS)
            member.synced = True
            if all(m.synced for m in group.members.values()):
                group.sync_deadline_ms = None
            if group.state == STABLE:
                return self._sync_answer(group, member)
            ticket = self._register(group, member, SYNC)
            if request.member_id == group.leader:
                self._assign(group, dict(request.assignments))
            return self._answer_or_pending(group, ticket, now)  # type: ignore[return-value]

    def _assign(self, group: _Group, assignments: dict[str, bytes]) -> None:
        """The leader's assignment: store it, go Stable, answer the waiting members."""
        for member in group.members.values():
            member.assignment = assignments.get(member.member_id, b"")
        group.state = STABLE
        for ticket, wait in list(group.waits.items()):
            if wait.kind == SYNC:
                self._answer(group, ticket, self._sync_answer(group, group.members[wait.member_id]))

    @staticmethod
    def _sync_answer(group: _Group, member: _Member) -> SyncResult:
        return SyncResult(
            GroupError.NONE, member.assignment, group.protocol_type, group.protocol_name
        )

    # --- waiting --------------------------------------------------------------------------

    def outcome(self, pending: Pending) -> Outcome | Pending:
        """The answer to a waiting request, or a fresh `Pending` if it still waits."""
        with self._lock:
            answer = self._answers.pop(pending.ticket, None)
            if answer is not None:
                return answer
            now = self._clock.monotonic_ms()
            group = self._group(pending.group_id, now)
            answer = self._answers.pop(pending.ticket, None)
            if answer is not None:
                return answer
            if group is None or pending.ticket not in group.waits:
                return error_outcome(pending.kind, pending.member_id, GroupError.UNKNOWN_MEMBER_ID)
            return self._answer_or_pending(group, pending.ticket, now)

    def abandon(self, pending: Pending) -> None:
        """The waiting request gave up (the broker is stopping): forget its ticket. Its
        member's session restarts now, as when an answer goes out: the client learns of
        the failure only now, and gets a full session timeout to come back."""
        with self._lock:
            self._answers.pop(pending.ticket, None)
            group = self._groups.get(pending.group_id)
            if group is None:
                return
            wait = group.waits.pop(pending.ticket, None)
            member = group.members.get(wait.member_id) if wait is not None else None
            if member is not None:
                member.waiting -= 1
                member.last_heartbeat_ms = self._clock.monotonic_ms()

    def monotonic_ms(self) -> int:
        """The coordinator's clock (monotonic ms): the time base of `Pending`'s times."""
        return self._clock.monotonic_ms()

    def _register(self, group: _Group, member: _Member, kind: str) -> int:
        ticket = next(self._tickets)
        group.waits[ticket] = _Wait(kind, member.member_id)
        member.waiting += 1
        return ticket

    def _answer(self, group: _Group, ticket: int, outcome: Outcome) -> None:
        wait = group.waits.pop(ticket)
        member = group.members.get(wait.member_id)
        if member is not None:
            member.waiting -= 1
            # as Kafka: its session restarts when the answer goes out, not when it asked
            member.last_heartbeat_ms = self._clock.monotonic_ms()
        self._answers[ticket] = outcome
        self.changes.bump()

    def _answer_waits(self, group: _Group, member_id: str, error: GroupError) -> None:
        for ticket, wait in list(group.waits.items()):
            if wait.member_id == member_id:
                self._answer(group, ticket, error_outcome(wait.kind, member_id, error))

    def _answer_or_pending(self, group: _Group, ticket: int, now: int) -> Outcome | Pending:
        answer = self._answers.pop(ticket, None)
        if answer is not None:
            return answer
        wait = group.waits[ticket]
        return Pending(
            ticket,
            wait.kind,
            group.group_id,
            wait.member_id,
            _next_deadline(group, now),
            self.changes.value,
            _answer_by(group, wait.kind),
        )

    # --- Heartbeat, LeaveGroup, commits -----------------------------------------------------

    def heartbeat(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None = None,
    ) -> GroupError:
        """Keep a member alive; REBALANCE_IN_PROGRESS tells it to rejoin."""
        with self._lock:
            now = self._clock.monotonic_ms()
            group = self._group(group_id, now)
            error = _member_error(group, member_id, group_instance_id)
            if error is not None:
                return error
            assert group is not None
            if generation_id != group.generation:
                return GroupError.ILLEGAL_GENERATION
            group.members[member_id].last_heartbeat_ms = now
            if group.state == PREPARING_REBALANCE:
                return GroupError.REBALANCE_IN_PROGRESS
            return GroupError.NONE

    def leave_group(self, group_id: str, members: Sequence[MemberIdentity]) -> list[GroupError]:
        """Remove members (by id, or static ones by instance id); one answer per member."""
        with self._lock:
            now = self._clock.monotonic_ms()
            group = self._group(group_id, now)
            if group is None:
                return [GroupError.UNKNOWN_MEMBER_ID for _ in members]
            return [self._leave(group, identity, now) for identity in members]

    def _leave(self, group: _Group, identity: MemberIdentity, now: int) -> GroupError:
        member_id = identity.member_id
        if identity.group_instance_id is not None:
            mapped = group.static.get(identity.group_instance_id)
            if mapped is None:
                return GroupError.UNKNOWN_MEMBER_ID
            if member_id and member_id != mapped:
                return GroupError.FENCED_INSTANCE_ID
            member_id = mapped
        if group.pending.pop(member_id, None) is not None:
            self._try_complete_join(group, now)
            return GroupError.NONE
        if member_id not in group.members:
            return GroupError.UNKNOWN_MEMBER_ID
        self._remove(group, member_id, now)
        return GroupError.NONE

    def check_commit(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None = None,
    ) -> GroupError:
        """Whether an OffsetCommit may be stored, as Kafka decides: with a negative
        generation and no members in the group, a "simple" commit (admin tools, consumers
        using assign()); otherwise a member of the current generation, not while the group
        waits for its assignment. A member's commit counts as its heartbeat."""
        with self._lock:
            now = self._clock.monotonic_ms()
            group = self._group(group_id, now)
            if group is None or not group.members:
                if generation_id < 0:
                    return GroupError.NONE
                return (
                    GroupError.ILLEGAL_GENERATION if group is None else GroupError.UNKNOWN_MEMBER_ID
                )
            error = _member_error(group, member_id, group_instance_id)
            if error is not None:
                return error
            if generation_id != group.generation:
                return GroupError.ILLEGAL_GENERATION
            if group.state == COMPLETING_REBALANCE:
                return GroupError.REBALANCE_IN_PROGRESS
            group.members[member_id].last_heartbeat_ms = now
            return GroupError.NONE

    # --- removal and timers -----------------------------------------------------------------

    def _drop(self, group: _Group, member_id: str) -> None:
        """Take a member out (no state change): its waits get UNKNOWN_MEMBER_ID."""
        member = group.members.pop(member_id)
        instance = member.group_instance_id
        if instance is not None and group.static.get(instance) == member_id:
            del group.static[instance]
        self._answer_waits(group, member_id, GroupError.UNKNOWN_MEMBER_ID)
        if group.leader == member_id:
            group.leader = next(iter(group.members), None)
        self.protocols.update(group.group_id, CLASSIC, len(group.members))

    def _remove(self, group: _Group, member_id: str, now: int) -> None:
        """A member left or lapsed: the others rebalance without it."""
        self._drop(group, member_id)
        if group.state in (STABLE, COMPLETING_REBALANCE):
            self._prepare(group, now)
        self._try_complete_join(group, now)

    def expire(self) -> list[tuple[str, str]]:
        """Run every group's timers (session, join, sync, pending ids); return the
        (group, member) pairs removed."""
        with self._lock:
            now = self._clock.monotonic_ms()
            removed: list[tuple[str, str]] = []
            for group in list(self._groups.values()):
                removed.extend((group.group_id, m) for m in self._tick(group, now))
            return removed

    def _group(self, group_id: str, now: int) -> _Group | None:
        """The group after its timers ran (None if unknown or just forgotten)."""
        group = self._groups.get(group_id)
        if group is not None:
            self._tick(group, now)
        return self._groups.get(group_id)

    def _tick(self, group: _Group, now: int) -> list[str]:
        for member_id in [m for m, at in group.pending.items() if at <= now]:
            del group.pending[member_id]
        removed = [
            m.member_id
            for m in list(group.members.values())
            if m.waiting == 0 and now - m.last_heartbeat_ms > m.session_timeout_ms
        ]
        if group.sync_deadline_ms is not None and now >= group.sync_deadline_ms:
            group.sync_deadline_ms = None
            removed.extend(m.member_id for m in group.members.values() if not m.synced)
        removed = list(dict.fromkeys(removed))
        for member_id in removed:
            if member_id in group.members:
                self._remove(group, member_id, now)
        self._try_complete_join(group, now)
        if (
            group.state == EMPTY
            and not group.pending
            and now - group.empty_since_ms >= EMPTY_GROUP_RETENTION_MS
        ):
            del self._groups[group.group_id]
        return removed

    # --- coordinator moves ------------------------------------------------------------------

    def unload(self, owned: Callable[[str], bool]) -> list[str]:
        """Forget every group for which `owned(group_id)` is true (this broker no longer
        coordinates them): their waiting requests are answered NOT_COORDINATOR, their hold
        in `GroupProtocols` is released. Returns the groups forgotten, sorted.
        `owned` is called under the lock and must not call back in."""
        with self._lock:
            unloaded = sorted(g for g in self._groups if owned(g))
            for group_id in unloaded:
                group = self._groups.pop(group_id)
                for ticket, wait in list(group.waits.items()):
                    outcome = error_outcome(wait.kind, wait.member_id, GroupError.NOT_COORDINATOR)
                    self._answer(group, ticket, outcome)
                self.protocols.update(group_id, CLASSIC, 0)
            return unloaded

    # --- admin ------------------------------------------------------------------------------

    def describe(self, group_id: str) -> ClassicGroupDescription | None:
        """The group as it is now; None for a group this coordinator does not know."""
        with self._lock:
            group = self._group(group_id, self._clock.monotonic_ms())
            if group is None:
                return None
            members = [
                ClassicMemberDescription(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.host,
                    m.metadata(group.protocol_name),
                    m.assignment,
                )
                for m in group.members.values()
            ]
            return ClassicGroupDescription(
                group_id=group.group_id,
                state=group.state,
                protocol_type=group.protocol_type or "",
                protocol_name=group.protocol_name or "",
                generation_id=group.generation,
                leader=group.leader or "",
                members=members,
            )

    def list_groups(self) -> list[ClassicGroupListing]:
        """Every group remembered, sorted by id."""
        with self._lock:
            now = self._clock.monotonic_ms()
            for group in list(self._groups.values()):
                self._tick(group, now)
            return [
                ClassicGroupListing(g.group_id, g.state, g.protocol_type or "", len(g.members))
                for _, g in sorted(self._groups.items())
            ]

    def member_count(self, group_id: str) -> int:
        """How many members the group has now (0 for an unknown group)."""
        with self._lock:
            group = self._group(group_id, self._clock.monotonic_ms())
            return 0 if group is None else len(group.members)

    def delete_group(self, group_id: str) -> bool:
        """Forget a group with no members; True if it was remembered. GroupNotEmptyError
        while it has members (committed offsets are the caller's to delete)."""
        with self._lock:
            group = self._group(group_id, self._clock.monotonic_ms())
            if group is None:
                return False
            if group.members:
                noun = "member" if len(group.members) == 1 else "members"
                raise GroupNotEmptyError(
                    f"group {group_id} has {len(group.members)} active {noun} (Kafka "
                    "consumers); stop them (or wait for their sessions to expire) first"
                )
            del self._groups[group_id]
            return True


# --- helpers (pure, called under the lock) --------------------------------------------------


def _check_join(request: JoinRequest, min_ms: int, max_ms: int) -> GroupError | None:
    if not request.group_id:
        return GroupError.INVALID_GROUP_ID
    if not min_ms <= request.session_timeout_ms <= max_ms:
        return GroupError.INVALID_SESSION_TIMEOUT
    if not request.protocol_type or not request.protocols:
        return GroupError.INCONSISTENT_GROUP_PROTOCOL
    return None


def _rebalance_timeout(request: JoinRequest) -> int:
    if request.rebalance_timeout_ms > 0:
        return request.rebalance_timeout_ms
    return request.session_timeout_ms  # JoinGroup v0 has none: Kafka uses the session's


def _update(member: _Member, request: JoinRequest, now: int) -> None:
    member.protocols = request.protocols
    member.session_timeout_ms = request.session_timeout_ms
    member.rebalance_timeout_ms = _rebalance_timeout(request)
    member.client_id = request.client_id
    member.host = request.host
    member.last_heartbeat_ms = now


def _fenced(group: _Group, member_id: str, instance: str | None) -> GroupError | None:
    if instance is None:
        return None
    mapped = group.static.get(instance)
    return GroupError.FENCED_INSTANCE_ID if mapped not in (None, member_id) else None


def _member_error(group: _Group | None, member_id: str, instance: str | None) -> GroupError | None:
    if group is None:
        return GroupError.UNKNOWN_MEMBER_ID
    fenced = _fenced(group, member_id, instance)
    if fenced is not None:
        return fenced
    if member_id not in group.members:
        return GroupError.UNKNOWN_MEMBER_ID
    return None


def _max_rebalance_timeout(group: _Group) -> int:
    return max((m.rebalance_timeout_ms for m in group.members.values()), default=0)


def _select_protocol(group: _Group) -> str:
    """Kafka's vote: among the protocols every member supports, each member votes for its
    most preferred; the most votes win, ties going to the first member's preference."""
    members = list(group.members.values())
    candidates = set.intersection(*({name for name, _ in m.protocols} for m in members))
    first = [name for name, _ in members[0].protocols]
    if not candidates:  # every join checks for a common protocol: cannot happen
        return first[0]
    votes = Counter(next(n for n, _ in m.protocols if n in candidates) for m in members)
    return max(candidates, key=lambda name: (votes[name], -first.index(name)))


def _answer_by(group: _Group, kind: str) -> int:
    """When a waiting request of `kind` is answered at the latest (monotonic ms): the join
    deadline for a JoinGroup, the sync deadline for a SyncGroup. A request waits only while
    its deadline is set; the fallback (one rebalance timeout after the rebalance began)
    only keeps the answer an int."""
    deadline = group.join_deadline_ms if kind == JOIN else group.sync_deadline_ms
    if deadline is not None:
        return deadline
    return group.rebalance_started_ms + _max_rebalance_timeout(group)


def _next_deadline(group: _Group, now: int) -> int:
    """When the group's timers next fire by themselves (monotonic ms)."""
    times: list[int] = [at for at in group.pending.values()]
    times.extend(t for t in (group.join_deadline_ms, group.sync_deadline_ms) if t is not None)
    times.extend(
        m.last_heartbeat_ms + m.session_timeout_ms + 1
        for m in group.members.values()
        if m.waiting == 0
    )
    return max(now, min(times, default=now + MIN_SESSION_TIMEOUT_MS))


def error_outcome(kind: str, member_id: str, error: GroupError) -> Outcome:
    """The answer to a waiting request of `kind` (JOIN or SYNC) that ends with `error`."""
    return JoinResult(error, member_id) if kind == JOIN else SyncResult(error)

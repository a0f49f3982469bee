"""Consumer-group coordinator: membership, epochs and server-side assignment (KIP-848 style).

Members heartbeat with their subscription and the partitions they own; the coordinator
owns epochs and session timeouts, computes a target assignment with the group's assignor
and moves each member toward its target one heartbeat at a time. A member names itself
(KIP-848: a client-chosen UUID, so a join retried after a lost answer replaces its first
incarnation) or, joining with an empty id, is named by the coordinator.

Safety invariant: within a group no partition is ever in two members' ``assigned |
pending_revocation``. A partition leaves a member only when that member reports (with an
explicit `owned` set) that it no longer holds it, or when the member leaves or is expired;
only then may another member be granted it. Clients act only on what a heartbeat answered,
so two live members never fetch or commit the same partition at once.

Epochs: `group_epoch` grows whenever membership, a subscription, the assignor or the
partition count of a subscribed topic changes. The target is recomputed lazily, in the next
heartbeat, at `assignment_epoch` = `group_epoch`. A member's `member_epoch` becomes the
assignment epoch once it has nothing left to revoke (pending empty and assigned ⊆ target);
partitions still held by others are granted later under that same epoch. A joining member
therefore gets a non-zero epoch in its first answer. Epoch 0 means "join", -1 "leave".

States and the answer each request gets (the gRPC server maps the exceptions):

===================== ============= ============================== ====================
request               Empty         Rebalancing / Stable           Dead
===================== ============= ============================== ====================
heartbeat join (0)    creates or    joins, group_epoch + 1         as Empty (a deleted
                      rejoins the   (-> Rebalancing); another      group is forgotten)
                      group; sets   assignor -> InvalidRequest
                      the assignor
heartbeat (epoch > 0) UnknownMember reconcile toward the target;   UnknownMember
                                    unknown id -> UnknownMember,
                                    bad epoch -> FencedMemberEpoch
leave (-1)            no-op         removes the member and frees   no-op
                                    its partitions, group_epoch+1
commit with member    UnknownMember epoch <= member's and every    UnknownMember
                                    partition owned; else Fenced /
                                    CommitFailed
commit without member accepted      GroupNotEmpty                  accepted
describe              "Empty", no   members with assigned,         "Empty"
                      members       pending and target
delete                forgets it    GroupNotEmpty                  no-op
reset offsets         accepted      GroupNotEmpty                  accepted
===================== ============= ============================== ====================

`Rebalancing`: some member's assignment differs from its target, has partitions pending
revocation, or is not yet at the assignment epoch (or the target is stale). `Stable`: every
member owns exactly its target at the assignment epoch. `Dead` is what delete_group leaves
behind; the coordinator forgets the group at once, so nothing ever reports it. Reset offsets
is done by the server, which asks `validate_commit` without a member (or
`active_member_count`) first.

Time: all timeouts are in ms on the injected clock's monotonic reading. The coordinator has
no threads; `expire()` runs at the top of every call and on the server's timer. One lock
guards all state; `partition_counts` is called under it and must not call back in.

Kafka's classic protocol: `classic` is the coordinator of groups whose members are Kafka
clients (JoinGroup/SyncGroup). A group is held by one protocol at a time (the shared
`GroupProtocols` registry, updated under this lock before a member is added): joining a
group the classic protocol holds raises GroupNotEmptyError, a commit without a member is
refused while either protocol has members, and `active_member_count` counts both, so
resets, deletes and offset retention treat classic groups exactly as these.

Coordinator moves: in cluster mode a group is coordinated by the broker leading its
partition of `__consumer_offsets`. When this broker stops leading one,
`unload_partition` forgets the groups of that partition in both protocols (the classic
protocol's waiting requests are answered NOT_COORDINATOR); their members heartbeat to the
new coordinator, and none lingers here should the partition come back.

Retention: `empty_for_ms` says how long a group has had no members of either protocol
(`GroupProtocols` sees both), which is what committed offsets' retention needs (KIP-211).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from uuid import uuid4

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.errors import (
    CommitFailedError,
    FencedMemberEpochError,
    GroupNotEmptyError,
    InvalidRequestError,
    UnknownMemberIdError,
)
from logstore.server.groups.assignors import (
    DEFAULT_ASSIGNOR,
    TopicPartition,
    assign,
    check_assignor_name,
)
from logstore.server.groups.classic import ClassicGroupCoordinator
from logstore.server.groups.protocols import NATIVE, GroupProtocols, Holder

JOIN_EPOCH = 0
LEAVE_EPOCH = -1
#: longest member id accepted (KIP-848 clients send a 36-character UUID)
MAX_MEMBER_ID_LENGTH = 255
#: Kafka's group.consumer.min/max.session.timeout.ms and session.timeout.ms default
MIN_SESSION_TIMEOUT_MS = 6_000
MAX_SESSION_TIMEOUT_MS = 300_000
DEFAULT_SESSION_TIMEOUT_MS = 45_000
DEFAULT_REBALANCE_TIMEOUT_MS = 300_000
DEFAULT_HEARTBEAT_INTERVAL_MS = 3_000

EMPTY = "Empty"
REBALANCING = "Rebalancing"
STABLE = "Stable"
DEAD = "Dead"


@dataclass(frozen=True)
class HeartbeatRequest:
    """One heartbeat; `member_epoch` 0 joins, -1 leaves, else the epoch last received.

    None (and, for the proto's unset values, "" or 0) means "unchanged" / "default":
    `subscribed_topics` is required to join; `assignor` defaults to the group's (sticky for
    a new group); `session_timeout_ms` (ms) defaults to 45000 and is clamped to
    6000..300000; `rebalance_timeout_ms` (ms) defaults to 300000. `owned` is the set of
    partitions the member holds at the time it sends; only an explicit set acknowledges a
    revocation. A heartbeat is accepted with the member's current epoch or the one before
    it (the answer carrying the new one may have been lost); any other epoch is fenced.
    """

    group_id: str
    member_id: str = ""
    member_epoch: int = JOIN_EPOCH
    subscribed_topics: tuple[str, ...] | None = None
    assignor: str | None = None
    session_timeout_ms: int | None = None
    rebalance_timeout_ms: int | None = None
    client_id: str = ""
    host: str = ""
    owned: frozenset[TopicPartition] | None = None


@dataclass(frozen=True)
class HeartbeatResponse:
    """The member's id and epoch, and the partitions it should own now."""

    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: frozenset[TopicPartition]


@dataclass(frozen=True)
class MemberDescription:
    """One member as `describe` shows it; partition lists are sorted."""

    member_id: str
    client_id: str
    host: str
    member_epoch: int
    subscribed_topics: list[str]
    assigned: list[TopicPartition]
    pending_revocation: list[TopicPartition]
    target: list[TopicPartition]


@dataclass(frozen=True)
class GroupDescription:
    """A group's state; `assignor` is "" while the group has no members."""

    group_id: str
    state: str
    assignor: str
    group_epoch: int
    assignment_epoch: int
    members: list[MemberDescription]


@dataclass
class _Member:
    """A member. Invariant: `assigned` and `pending_revocation` are disjoint."""

    member_id: str
    client_id: str
    host: str
    subscribed: frozenset[str]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    last_heartbeat_ms: int
    member_epoch: int = JOIN_EPOCH
    previous_epoch: int = JOIN_EPOCH
    assigned: set[TopicPartition] = field(default_factory=set)
    pending_revocation: set[TopicPartition] = field(default_factory=set)
    #: when the current revocation was asked for (monotonic ms); None when nothing pends
    revocation_started_ms: int | None = None

    def holds(self) -> set[TopicPartition]:
        return self.assigned | self.pending_revocation


@dataclass
class _Group:
    """A group. Invariant: `assignor` is None exactly when `members` is empty."""

    group_id: str
    assignor: str | None = None
    group_epoch: int = 0
    assignment_epoch: int = 0
    target: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    members: dict[str, _Member] = field(default_factory=dict)
    #: partition count of each subscribed topic as last seen (0 = missing)
    counts: dict[str, int] = field(default_factory=dict)


class GroupCoordinator:
    """All consumer groups of one broker. Thread-safe; pure apart from the injected clock.

    `partition_counts(topic)` gives a topic's partition count, None if it does not exist.
    `id_suffix()` gives the random part of new member ids (12 hex characters by default).
    `classic` coordinates the groups of Kafka clients (a default one on the same clock when
    not given); both share its `GroupProtocols` registry.
    """

    def __init__(
        self,
        partition_counts: Callable[[str], int | None],
        clock: Clock = SYSTEM_CLOCK,
        *,
        heartbeat_interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS,
        id_suffix: Callable[[], str] | None = None,
        classic: ClassicGroupCoordinator | None = None,
    ) -> None:
        if heartbeat_interval_ms <= 0:
            raise InvalidRequestError(f"heartbeat_interval_ms must be > 0: {heartbeat_interval_ms}")
        self._partition_counts = partition_counts
        self._clock = clock
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._id_suffix = id_suffix or (lambda: uuid4().hex[:12])
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self.classic = classic if classic is not None else ClassicGroupCoordinator(clock)
        self._protocols: GroupProtocols = self.classic.protocols
        #: group-epoch bumps (joins, leaves, expiries, subscription changes) since start
        self.rebalances = 0

    # --- heartbeats ---------------------------------------------------------------------

    def heartbeat(self, request: HeartbeatRequest) -> HeartbeatResponse:
        """Join (epoch 0), leave (epoch -1) or heartbeat; see the module docstring."""
        _validate(request)
        with self._lock:
            now = self._clock.monotonic_ms()
            self._expire_locked(now)
            if request.member_epoch == LEAVE_EPOCH:
                return self._leave(request)
            if request.member_epoch == JOIN_EPOCH:
                group, member, changed = self._join(request, now)
            else:
                group, member, changed = self._accept(request, now)
            if self._refresh_counts(group) or changed:
                group.group_epoch += 1
                self.rebalances += 1
            self._refresh_target(group)
            self._reconcile(group, member, request.owned, now)
            return HeartbeatResponse(
                member_id=member.member_id,
                member_epoch=member.member_epoch,
                heartbeat_interval_ms=self._heartbeat_interval_ms,
                assignment=frozenset(member.assigned),
            )

    def _leave(self, request: HeartbeatRequest) -> HeartbeatResponse:
        group = self._groups.get(request.group_id)
        if group is not None and request.member_id in group.members:
            self._remove(group, request.member_id)
            self._protocols.update(group.group_id, NATIVE, len(group.members))
        return HeartbeatResponse(
            request.member_id, LEAVE_EPOCH, self._heartbeat_interval_ms, frozenset()
        )

    def _join(self, request: HeartbeatRequest, now: int) -> tuple[_Group, _Member, bool]:
        group = self._groups.get(request.group_id) or _Group(request.group_id)
        wanted = _assignor_of(request)
        if group.assignor is not None and wanted is not None and wanted != group.assignor:
            raise _assignor_mismatch(group, wanted)
        member_id = request.member_id
        joining = 0 if member_id and member_id in group.members else 1
        held = self._protocols.update(group.group_id, NATIVE, len(group.members) + joining)
        if held is not None:
            raise _held_by_other(group.group_id, held)
        self._groups[group.group_id] = group
        if member_id in group.members:
            # a known id rejoining says it lost its partitions (or never heard the answer to
            # its join): drop the old incarnation, so a lost reply leaves no orphan behind
            self._remove(group, member_id)
        elif not member_id:
            member_id = f"{request.client_id or 'consumer'}-{self._id_suffix()}"
        if group.assignor is None:
            group.assignor = wanted or DEFAULT_ASSIGNOR
        assert request.subscribed_topics is not None  # checked by _validate
        member = _Member(
            member_id=member_id,
            client_id=request.client_id,
            host=request.host,
            subscribed=frozenset(request.subscribed_topics),
            session_timeout_ms=_session_timeout(request.session_timeout_ms),
            rebalance_timeout_ms=_rebalance_timeout(request.rebalance_timeout_ms),
            last_heartbeat_ms=now,
        )
        group.members[member_id] = member
        return group, member, True

    def _accept(self, request: HeartbeatRequest, now: int) -> tuple[_Group, _Member, bool]:
        """The existing member after checks; True if its subscription changed."""
        group = self._groups.get(request.group_id)
        member = group.members.get(request.member_id) if group is not None else None
        if group is None or member is None:
            raise UnknownMemberIdError(
                f"group {request.group_id!r} has no member {request.member_id!r} (it left or "
                "its session expired): rejoin with member_epoch 0 and treat its partitions "
                "as lost"
            )
        _check_epoch(group, member, request.member_epoch)
        wanted = _assignor_of(request)
        if wanted is not None and wanted != group.assignor:
            raise _assignor_mismatch(group, wanted)
        member.last_heartbeat_ms = now
        if request.session_timeout_ms:
            member.session_timeout_ms = _session_timeout(request.session_timeout_ms)
        if request.rebalance_timeout_ms and request.rebalance_timeout_ms > 0:
            member.rebalance_timeout_ms = request.rebalance_timeout_ms
        if request.subscribed_topics is None:
            return group, member, False
        subscribed = frozenset(request.subscribed_topics)
        changed = subscribed != member.subscribed
        member.subscribed = subscribed
        return group, member, changed

    def _refresh_counts(self, group: _Group) -> bool:
        """Re-read the partition counts of the subscribed topics; True if any changed."""
        topics = set().union(*(m.subscribed for m in group.members.values()))
        counts = {topic: max(0, self._partition_counts(topic) or 0) for topic in sorted(topics)}
        if counts == group.counts:
            return False
        group.counts = counts
        return True

    def _refresh_target(self, group: _Group) -> None:
        if group.group_epoch <= group.assignment_epoch:
            return
        assert group.assignor is not None  # the group has the member being served
        subscriptions = {mid: m.subscribed for mid, m in group.members.items()}
        # the old target is the sticky assignor's "current": it is where members are heading
        group.target = assign(group.assignor, subscriptions, group.counts, group.target)
        group.assignment_epoch = group.group_epoch

    def _reconcile(
        self,
        group: _Group,
        member: _Member,
        owned: frozenset[TopicPartition] | None,
        now: int,
    ) -> None:
        """Move `member` one step toward its target without ever sharing a partition."""
        target = group.target.get(member.member_id, frozenset())
        # a partition it was asked to release but is back in its target never left it
        kept = member.pending_revocation & target
        member.assigned |= kept
        member.pending_revocation -= kept
        revoke = member.assigned - target
        if revoke:
            member.assigned -= revoke
            member.pending_revocation |= revoke
            member.revocation_started_ms = now
        if member.pending_revocation and owned is not None:
            # what it sent as owned is the truth when it sent it: the rest it has released
            member.pending_revocation &= owned
        if member.pending_revocation:
            return
        member.revocation_started_ms = None
        self._grant(group, member, target)
        if member.member_epoch != group.assignment_epoch:
            member.previous_epoch = member.member_epoch
            member.member_epoch = group.assignment_epoch

    def _grant(self, group: _Group, member: _Member, target: frozenset[TopicPartition]) -> None:
        wanted = target - member.assigned
        if not wanted:
            return
        held = set().union(*(m.holds() for m in group.members.values() if m is not member))
        member.assigned |= wanted - held

    # --- expiry ---------------------------------------------------------------------------

    def expire(self) -> list[tuple[str, str]]:
        """Remove members past their session or rebalance timeout; (group, member) removed.

        A member is expired when its last heartbeat is more than `session_timeout_ms` ago,
        or when it still holds partitions pending revocation more than
        `rebalance_timeout_ms` after the latest revocation it was asked for (each new
        revocation gives it a full rebalance timeout). Removal frees its partitions and
        bumps the group epoch.
        """
        with self._lock:
            return self._expire_locked(self._clock.monotonic_ms())

    def _expire_locked(self, now: int) -> list[tuple[str, str]]:
        removed: list[tuple[str, str]] = []
        for group in self._groups.values():
            for member in list(group.members.values()):
                if _overdue(member, now):
                    self._remove(group, member.member_id)
                    self._protocols.update(group.group_id, NATIVE, len(group.members))
                    removed.append((group.group_id, member.member_id))
        return removed

    def _remove(self, group: _Group, member_id: str) -> None:
        del group.members[member_id]
        group.target.pop(member_id, None)
        group.group_epoch += 1
        self.rebalances += 1
        if not group.members:
            # an empty group starts afresh: the next first member may choose the assignor
            group.assignor = None
            group.target = {}
            group.counts = {}

    # --- commits ----------------------------------------------------------------------------

    def validate_commit(
        self,
        group_id: str,
        member_id: str,
        member_epoch: int,
        partitions: Iterable[TopicPartition],
    ) -> None:
        """Raise unless the commit of `partitions` may be stored; returns None if it may.

        With a member id: the member must exist (UnknownMemberIdError), its epoch must not
        be newer than the coordinator's (FencedMemberEpochError), and every partition must
        be in its assigned | pending_revocation (CommitFailedError). An older epoch is
        accepted for partitions it still holds: a member told to revoke commits those
        partitions before it acknowledges, and may do so with the epoch it had; since no
        one else can hold them meanwhile, the commit cannot overwrite a new owner's.
        Without a member (member_id "" and epoch -1: admin tools, consumers using
        assign()): accepted only while the group has no members (GroupNotEmptyError).
        """
        wanted = sorted(set(partitions))
        with self._lock:
            self._expire_locked(self._clock.monotonic_ms())
            group = self._groups.get(group_id)
            if not member_id:
                _check_memberless_commit(group_id, group, member_epoch)
                held = self._protocols.holder(group_id)
                if held is not None:
                    raise _not_empty(group_id, held.members, "commit from outside the group")
                return
            member = group.members.get(member_id) if group is not None else None
            if member is None:
                raise UnknownMemberIdError(
                    f"commit to group {group_id!r} from unknown member {member_id!r} (it left "
                    "or its session expired): rejoin the group"
                )
            _check_commit(group_id, member, member_epoch, wanted)

    # --- admin ------------------------------------------------------------------------------

    def describe(self, group_id: str) -> GroupDescription:
        """The group's state and members; an unknown group is described as Empty."""
        with self._lock:
            self._expire_locked(self._clock.monotonic_ms())
            group = self._groups.get(group_id)
            if group is None:
                return GroupDescription(group_id, EMPTY, "", 0, 0, [])
            members = [_describe_member(group, group.members[mid]) for mid in sorted(group.members)]
            return GroupDescription(
                group_id=group_id,
                state=_state(group),
                assignor=group.assignor or "",
                group_epoch=group.group_epoch,
                assignment_epoch=group.assignment_epoch,
                members=members,
            )

    def list_groups(self) -> list[tuple[str, str, int]]:
        """(group id, state, member count) of every group remembered, sorted by id."""
        with self._lock:
            self._expire_locked(self._clock.monotonic_ms())
            return [
                (gid, _state(group), len(group.members))
                for gid, group in sorted(self._groups.items())
            ]

    def delete_group(self, group_id: str) -> bool:
        """Forget a group with no members; True if it was remembered.

        GroupNotEmptyError while it has members. Committed offsets are the server's to delete.
        """
        with self._lock:
            self._expire_locked(self._clock.monotonic_ms())
            group = self._groups.get(group_id)
            if group is None:
                return False
            if group.members:
                raise _not_empty(group_id, len(group.members), "delete it")
            del self._groups[group_id]
            return True

    # --- coordinator moves and retention ---------------------------------------------------

    def unload(self, owned: Callable[[str], bool]) -> list[str]:
        """Forget every group of either protocol for which `owned(group_id)` is true (this
        broker no longer coordinates them); return them, sorted. Their members' holds in
        `GroupProtocols` are released; classic requests waiting in them are answered
        NOT_COORDINATOR. `owned` is called under the coordinators' locks and must not call
        back in."""
        with self._lock:
            native = [g for g in self._groups if owned(g)]
            for group_id in native:
                del self._groups[group_id]
                self._protocols.update(group_id, NATIVE, 0)
        # outside this lock: the classic coordinator's lock is never taken under it
        classic = self.classic.unload(owned)
        return sorted(set(native) | set(classic))

    def unload_partition(self, partition: int, partition_of: Callable[[str], int]) -> list[str]:
        """Forget the groups whose commits live in `partition` of `__consumer_offsets`
        (`partition_of(group)` says which: `OffsetStore.partition_of`), after this broker
        stopped leading it; see `unload`."""
        return self.unload(lambda group_id: partition_of(group_id) == partition)

    def empty_for_ms(self, group_id: str) -> int | None:
        """How long the group has had no members of either protocol (ms), None while it
        has some (lapsed sessions are expired first). A group never seen with members
        since this broker started counts as empty since then."""
        if self.active_member_count(group_id):
            return None
        return self._protocols.empty_for_ms(group_id)

    def forget_emptied_longer_than(self, age_ms: int) -> int:
        """Bound the memory of when groups became empty: see
        `GroupProtocols.forget_emptied_longer_than`."""
        return self._protocols.forget_emptied_longer_than(age_ms)

    def active_member_count(self, group_id: str) -> int:
        """How many members the group has now, of either protocol (0 for an unknown group)."""
        with self._lock:
            self._expire_locked(self._clock.monotonic_ms())
            group = self._groups.get(group_id)
            native = 0 if group is None else len(group.members)
        # outside this lock: the classic coordinator's lock is never taken under it
        return native + self.classic.member_count(group_id)


# --- helpers (pure, called under the lock) --------------------------------------------------


def _validate(request: HeartbeatRequest) -> None:
    if not request.group_id:
        raise InvalidRequestError("group_id must not be empty")
    if request.member_epoch < LEAVE_EPOCH:
        raise InvalidRequestError(
            f"member_epoch {request.member_epoch} is invalid: use 0 to join, -1 to leave, "
            "or the epoch last received"
        )
    if request.member_epoch > JOIN_EPOCH and not request.member_id:
        raise InvalidRequestError(
            f"member_epoch {request.member_epoch} needs the member_id the coordinator gave; "
            "to join send member_epoch 0"
        )
    if len(request.member_id) > MAX_MEMBER_ID_LENGTH or not request.member_id.isprintable():
        raise InvalidRequestError(
            f"member_id must be at most {MAX_MEMBER_ID_LENGTH} printable characters "
            "(a client-chosen UUID is the usual choice)"
        )
    if request.member_epoch == JOIN_EPOCH and request.subscribed_topics is None:
        raise InvalidRequestError("joining a group needs subscribed_topics")
    if request.subscribed_topics is not None:
        for topic in request.subscribed_topics:
            if not isinstance(topic, str) or not topic:
                raise InvalidRequestError(f"subscribed topic names must be non-empty: {topic!r}")
    if request.assignor:
        check_assignor_name(request.assignor)


def _assignor_of(request: HeartbeatRequest) -> str | None:
    return request.assignor or None


def _assignor_mismatch(group: _Group, wanted: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"group {group.group_id!r} uses assignor {group.assignor!r} but the member asked for "
        f"{wanted!r}: every member of a group must use the same assignor"
    )


def _session_timeout(requested: int | None) -> int:
    if not requested:
        return DEFAULT_SESSION_TIMEOUT_MS
    return min(MAX_SESSION_TIMEOUT_MS, max(MIN_SESSION_TIMEOUT_MS, requested))


def _rebalance_timeout(requested: int | None) -> int:
    return requested if requested and requested > 0 else DEFAULT_REBALANCE_TIMEOUT_MS


def _check_epoch(group: _Group, member: _Member, epoch: int) -> None:
    # the previous epoch is fine: the answer that carried the new one may have been lost
    if epoch in (member.member_epoch, member.previous_epoch):
        return
    relation = "newer than" if epoch > member.member_epoch else "older than"
    raise FencedMemberEpochError(
        f"member {member.member_id!r} of group {group.group_id!r} sent epoch {epoch}, "
        f"{relation} its epoch {member.member_epoch}: rejoin with member_epoch 0"
    )


def _overdue(member: _Member, now: int) -> bool:
    if now - member.last_heartbeat_ms > member.session_timeout_ms:
        return True
    started = member.revocation_started_ms
    return started is not None and now - started > member.rebalance_timeout_ms


def _check_memberless_commit(group_id: str, group: _Group | None, member_epoch: int) -> None:
    if member_epoch != LEAVE_EPOCH:
        raise InvalidRequestError(
            f"a commit without a member id must carry epoch -1, not {member_epoch}"
        )
    if group is not None and group.members:
        raise _not_empty(group_id, len(group.members), "commit from outside the group")


def _check_commit(
    group_id: str, member: _Member, member_epoch: int, partitions: list[TopicPartition]
) -> None:
    if member_epoch > member.member_epoch:
        raise FencedMemberEpochError(
            f"commit to group {group_id!r} by member {member.member_id!r} carries epoch "
            f"{member_epoch}, newer than its epoch {member.member_epoch}"
        )
    held = member.holds()
    for topic, partition in partitions:
        if (topic, partition) not in held:
            raise CommitFailedError(
                f"member {member.member_id!r} of group {group_id!r} does not own "
                f"{topic}-{partition} (commit at epoch {member_epoch}, member epoch "
                f"{member.member_epoch}); the partition was reassigned: do not commit it"
            )


def _held_by_other(group_id: str, held: Holder) -> GroupNotEmptyError:
    return GroupNotEmptyError(
        f"group {group_id!r} has {held.describe()}; a group uses one protocol at a time: "
        "stop those consumers (or wait for their sessions to expire) or use another group id"
    )


def _not_empty(group_id: str, members: int, action: str) -> GroupNotEmptyError:
    noun = "member" if members == 1 else "members"
    return GroupNotEmptyError(
        f"group {group_id} has {members} active {noun}; stop them (or wait for their sessions "
        f"to expire) before you {action}"
    )


def _state(group: _Group) -> str:
    if not group.members:
        return EMPTY
    if group.group_epoch != group.assignment_epoch:
        return REBALANCING
    for member_id, member in group.members.items():
        if (
            member.pending_revocation
            or member.member_epoch != group.assignment_epoch
            or member.assigned != group.target.get(member_id, frozenset())
        ):
            return REBALANCING
    return STABLE


def _describe_member(group: _Group, member: _Member) -> MemberDescription:
    return MemberDescription(
        member_id=member.member_id,
        client_id=member.client_id,
        host=member.host,
        member_epoch=member.member_epoch,
        subscribed_topics=sorted(member.subscribed),
        assigned=sorted(member.assigned),
        pending_revocation=sorted(member.pending_revocation),
        target=sorted(group.target.get(member.member_id, frozenset())),
    )

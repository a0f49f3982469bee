"""Kafka handlers: consumer groups and their committed offsets.

FindCoordinator (key 10, v0-2), JoinGroup (11, v0-5), Heartbeat (12, v0-3), LeaveGroup
(13, v0-3), SyncGroup (14, v0-3), OffsetCommit (8, v2-7), OffsetFetch (9, v1-5),
DescribeGroups (15, v0-4), ListGroups (16, v0-2) and DeleteGroups (42, v0-1), over the
same groups and committed offsets as the gRPC API:
- Membership is `ctx.broker.coordinator.classic` (Kafka's classic protocol). A group that
  `logstore.Consumer` members hold answers JoinGroup with INCONSISTENT_GROUP_PROTOCOL.
- A JoinGroup or SyncGroup that must wait for the rest of the group blocks its
  connection's thread (the connection serves one request at a time, as Kafka mutes it):
  it sleeps on the coordinator's change counter, waking at the coordinator's next deadline
  or at least every second to notice a stopping broker or a coordinator move, so it never
  spins and never outlives the coordinator's own deadline for it (the group's join or
  sync deadline, from the members' largest rebalance timeout) by more than a margin.
- A broker that finds, while a request waits, that it no longer coordinates the group
  (cluster mode: its partition of `__consumer_offsets` is led elsewhere now) forgets the
  group and answers NOT_COORDINATOR at once, as Kafka does when its coordinator resigns;
  the client finds the new coordinator and rejoins there.
- Commits: a member's commit must be of the current generation (Kafka's checks); a
  "simple" commit (generation < 0) only while neither protocol has members in the group
  (else UNKNOWN_MEMBER_ID, as Kafka answers it). Commit metadata round-trips;
  OffsetCommit v2-4's retention_time_ms is accepted and ignored (a group's offsets expire
  once it has been empty for the broker's offsets.retention.minutes, as since Kafka 2.1);
  committed leader epochs are not kept (OffsetFetch v5 answers -1).
- In cluster mode the broker leading the group's partition of `__consumer_offsets`
  coordinates it; the others answer NOT_COORDINATOR and FindCoordinator names it.
- ACLs as Kafka checks them, with LogStore's operation names: group read for the member
  APIs and commits (and topic consume per committed partition), group describe for
  FindCoordinator, OffsetFetch (and topic describe), DescribeGroups and ListGroups
  (filtering), group delete for DeleteGroups.
Errors are answered in the responses' error fields, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

from kafka import errors as kafka_errors
from kafka.protocol.admin import (
    DeleteGroupsRequest,
    DeleteGroupsResponse,
    DescribeGroupsRequest,
    DescribeGroupsResponse,
    ListGroupsRequest,
    ListGroupsResponse,
)
from kafka.protocol.consumer import (
    HeartbeatRequest,
    HeartbeatResponse,
    JoinGroupRequest,
    JoinGroupResponse,
    LeaveGroupRequest,
    LeaveGroupResponse,
    OffsetCommitRequest,
    OffsetCommitResponse,
    OffsetFetchRequest,
    OffsetFetchResponse,
    SyncGroupRequest,
    SyncGroupResponse,
)
from kafka.protocol.metadata import FindCoordinatorRequest, FindCoordinatorResponse

from logstore.acls import GROUP, TOPIC
from logstore.errors import GroupNotEmptyError, InvalidRequestError, LogStoreError
from logstore.server.groups import classic as cg
from logstore.server.groups import consumer_protocol
from logstore.server.groups.coordinator import EMPTY, REBALANCING
from logstore.server.groups.offsets_store import MAX_METADATA_BYTES
from logstore.server.kafka.context import BrokerEndpoint, RequestContext
from logstore.server.kafka.error_codes import error_code
from logstore.server.kafka.router import handles

log = logging.getLogger(__name__)

NONE: Final = 0
COORDINATOR_NOT_AVAILABLE: Final = kafka_errors.CoordinatorNotAvailableError.errno
GROUP_AUTHORIZATION_FAILED: Final = kafka_errors.GroupAuthorizationFailedError.errno
TOPIC_AUTHORIZATION_FAILED: Final = kafka_errors.TopicAuthorizationFailedError.errno
UNKNOWN_MEMBER_ID: Final = kafka_errors.UnknownMemberIdError.errno
INVALID_GROUP_ID: Final = kafka_errors.InvalidGroupIdError.errno
INVALID_REQUEST: Final = kafka_errors.InvalidRequestError.errno
OFFSET_METADATA_TOO_LARGE: Final = kafka_errors.OffsetMetadataTooLargeError.errno

#: FindCoordinator key types
GROUP_KEY: Final = 0
TRANSACTION_KEY: Final = 1
#: DescribeGroups' authorized_operations when not asked for (kafka-python encodes None as
#: Kafka's INT32_MIN; otherwise the field is the set of allowed operations' bits)
NO_OPERATIONS: Final = None
#: Kafka's AclOperation codes of the group operations, for authorized_operations
_GROUP_OPERATION_BITS: Final = {"read": 3, "delete": 6, "describe": 8}
#: the longest a waiting JoinGroup or SyncGroup sleeps before looking again (s): how soon
#: it notices a stopping broker
_WAIT_SLICE_S: Final = 1.0
#: the shortest sleep, so even a coordinator bug could never make a wait spin (s)
_MIN_WAIT_S: Final = 0.001
#: a waiting request's safety net beyond the coordinator's own deadline for it (ms): the
#: coordinator answers by `Pending.answer_by_ms`, so only a bug would use it
_WAIT_MARGIN_MS = 10_000

_Topic = OffsetCommitResponse.OffsetCommitResponseTopic
_Partition = _Topic.OffsetCommitResponsePartition
_FetchTopic = OffsetFetchResponse.OffsetFetchResponseTopic
_FetchPartition = _FetchTopic.OffsetFetchResponsePartition
_Described = DescribeGroupsResponse.DescribedGroup
_DescribedMember = _Described.DescribedGroupMember


# --- shared checks ----------------------------------------------------------------------------


def _classic(ctx: RequestContext) -> cg.ClassicGroupCoordinator:
    return ctx.broker.coordinator.classic


def _group_error(ctx: RequestContext, group: str, operation: str) -> int:
    """GROUP_AUTHORIZATION_FAILED, NOT_COORDINATOR (another broker coordinates the group in
    cluster mode), or NONE."""
    if not ctx.broker.allowed(ctx.session, GROUP, group, operation):
        return GROUP_AUTHORIZATION_FAILED
    try:
        ctx.broker.servicer.check_coordinator(group)
    except LogStoreError as exc:
        return error_code(exc)
    return NONE


def _host(peer: str) -> str:
    """'127.0.0.1:5555' -> '/127.0.0.1' (Kafka prints client hosts with a leading slash)."""
    return "/" + peer.rsplit(":", 1)[0].strip("[]") if peer else ""


def _await_answer(ctx: RequestContext, outcome: cg.Outcome | cg.Pending) -> cg.Outcome:
    """Wait for a pending JoinGroup/SyncGroup's answer. It comes by the coordinator's own
    deadline (`Pending.answer_by_ms`); past that by `_WAIT_MARGIN_MS` (a coordinator bug)
    or once the broker stops, the request gets COORDINATOR_NOT_AVAILABLE; once this broker
    no longer coordinates the group, NOT_COORDINATOR. Either way the client finds the
    coordinator again, and its member keeps a full session timeout to come back."""
    classic = _classic(ctx)
    while isinstance(outcome, cg.Pending):
        error = _wait_error(ctx, outcome, classic.monotonic_ms())
        if error is not None:
            return _stop_waiting(classic, outcome, error)
        now_ms = classic.monotonic_ms()
        wake_ms = min(outcome.deadline_ms, outcome.answer_by_ms + _WAIT_MARGIN_MS)
        classic.changes.wait_past(
            outcome.seen, max(_MIN_WAIT_S, min(_WAIT_SLICE_S, (wake_ms - now_ms) / 1000))
        )
        outcome = classic.outcome(outcome)
    return outcome


def _wait_error(ctx: RequestContext, pending: cg.Pending, now_ms: int) -> cg.GroupError | None:
    """Why a waiting request must stop waiting now, or None."""
    if ctx.broker.stopping or now_ms > pending.answer_by_ms + _WAIT_MARGIN_MS:
        return cg.GroupError.COORDINATOR_NOT_AVAILABLE
    try:
        ctx.broker.servicer.check_coordinator(pending.group_id)
    except LogStoreError:  # NotCoordinatorError: the group's partition is led elsewhere
        return cg.GroupError.NOT_COORDINATOR
    return None


def _stop_waiting(
    classic: cg.ClassicGroupCoordinator, pending: cg.Pending, error: cg.GroupError
) -> cg.Outcome:
    """Give up a wait with `error`. Off its coordinator, the group's state here is stale:
    it is forgotten, and its other waiting requests get NOT_COORDINATOR as well."""
    classic.abandon(pending)
    if error == cg.GroupError.NOT_COORDINATOR:
        group_id = pending.group_id
        classic.unload(lambda g: g == group_id)
    return cg.error_outcome(pending.kind, pending.member_id, error)


# --- FindCoordinator --------------------------------------------------------------------------


@handles(FindCoordinatorRequest.API_KEY)
def find_coordinator(ctx: RequestContext, request: Any) -> Any:
    key_type = request.key_type if ctx.version >= 1 else GROUP_KEY
    if key_type == TRANSACTION_KEY:
        # Until transactions exist this broker answers as their coordinator, so that the
        # producer's InitProducerId comes here and is refused with a fatal error at once;
        # COORDINATOR_NOT_AVAILABLE would have it retry until its own timeout.
        return _coordinator_response(ctx, NONE, ctx.broker.endpoint(ctx.broker.node_id), None)
    if key_type != GROUP_KEY:
        return _coordinator_response(ctx, INVALID_REQUEST, None, f"unknown key type {key_type}")
    if not ctx.broker.allowed(ctx.session, GROUP, request.key, "describe"):
        return _coordinator_response(ctx, GROUP_AUTHORIZATION_FAILED, None, None)
    found, message = _group_coordinator(ctx, request.key)
    code = NONE if found is not None else COORDINATOR_NOT_AVAILABLE
    return _coordinator_response(ctx, code, found, message)


def _group_coordinator(ctx: RequestContext, group: str) -> tuple[BrokerEndpoint | None, str | None]:
    """The Kafka endpoint of the broker coordinating `group`, or None and why not."""
    broker = ctx.broker
    cluster = broker.cluster
    if cluster is None:
        return broker.endpoint(broker.node_id), None
    try:
        node_id = cluster.group_coordinator(group).broker_id
    except (LogStoreError, OSError) as exc:
        return None, str(exc)
    found = broker.endpoint(node_id)
    if found is None:
        return None, f"broker {node_id} coordinates group {group!r} but has no Kafka listener"
    return found, None


def _coordinator_response(
    ctx: RequestContext, code: int, found: BrokerEndpoint | None, message: str | None
) -> Any:
    return FindCoordinatorResponse(
        version=ctx.version,
        throttle_time_ms=0,
        error_code=code,
        error_message=message if code else None,
        node_id=found.node_id if found is not None else -1,
        host=found.host if found is not None else "",
        port=found.port if found is not None else -1,
    )


# --- JoinGroup, SyncGroup, Heartbeat, LeaveGroup -----------------------------------------------


@handles(JoinGroupRequest.API_KEY)
def join_group(ctx: RequestContext, request: Any) -> Any:
    code = _group_error(ctx, request.group_id, "read")
    if code:
        return _join_response(ctx, cg.JoinResult(cg.GroupError.NONE, request.member_id), code)
    join = cg.JoinRequest(
        group_id=request.group_id,
        member_id=request.member_id,
        protocol_type=request.protocol_type,
        protocols=_protocols(request.protocols),
        session_timeout_ms=request.session_timeout_ms,
        rebalance_timeout_ms=request.rebalance_timeout_ms if ctx.version >= 1 else -1,
        group_instance_id=request.group_instance_id if ctx.version >= 5 else None,
        client_id=ctx.client_id or "",
        host=_host(ctx.session.peer),
        require_known_member_id=ctx.version >= 4,
    )
    result = _await_answer(ctx, _classic(ctx).join_group(join))
    assert isinstance(result, cg.JoinResult)
    return _join_response(ctx, result, int(result.error))


def _protocols(protocols: Iterable[Any]) -> tuple[tuple[str, bytes], ...]:
    """(name, metadata) in the member's order; a repeated name keeps its first entry."""
    chosen: dict[str, bytes] = {}
    for protocol in protocols:
        chosen.setdefault(protocol.name, bytes(protocol.metadata or b""))
    return tuple(chosen.items())


def _join_response(ctx: RequestContext, result: cg.JoinResult, code: int) -> Any:
    member = JoinGroupResponse.JoinGroupResponseMember
    ok = code == NONE
    return JoinGroupResponse(
        version=ctx.version,
        throttle_time_ms=0,
        error_code=code,
        generation_id=result.generation_id if ok else cg.NO_GENERATION,
        protocol_name=(result.protocol_name or "") if ok else "",
        leader=result.leader if ok else "",
        member_id=result.member_id,
        members=[
            member(
                member_id=m.member_id, group_instance_id=m.group_instance_id, metadata=m.metadata
            )
            for m in (result.members if ok else ())
        ],
    )


@handles(SyncGroupRequest.API_KEY)
def sync_group(ctx: RequestContext, request: Any) -> Any:
    code = _group_error(ctx, request.group_id, "read")
    if code:
        return SyncGroupResponse(
            version=ctx.version, throttle_time_ms=0, error_code=code, assignment=b""
        )
    sync = cg.SyncRequest(
        group_id=request.group_id,
        generation_id=request.generation_id,
        member_id=request.member_id,
        assignments=tuple((a.member_id, bytes(a.assignment or b"")) for a in request.assignments),
        group_instance_id=request.group_instance_id if ctx.version >= 3 else None,
    )
    result = _await_answer(ctx, _classic(ctx).sync_group(sync))
    assert isinstance(result, cg.SyncResult)
    return SyncGroupResponse(
        version=ctx.version,
        throttle_time_ms=0,
        error_code=int(result.error),
        assignment=result.assignment,
    )


@handles(HeartbeatRequest.API_KEY)
def heartbeat(ctx: RequestContext, request: Any) -> Any:
    code = _group_error(ctx, request.group_id, "read")
    if not code:
        code = _classic(ctx).heartbeat(
            request.group_id,
            request.generation_id,
            request.member_id,
            request.group_instance_id if ctx.version >= 3 else None,
        )
    return HeartbeatResponse(version=ctx.version, throttle_time_ms=0, error_code=int(code))


@handles(LeaveGroupRequest.API_KEY)
def leave_group(ctx: RequestContext, request: Any) -> Any:
    if ctx.version >= 3:
        leaving = [cg.MemberIdentity(m.member_id, m.group_instance_id) for m in request.members]
    else:
        leaving = [cg.MemberIdentity(request.member_id)]
    code = _group_error(ctx, request.group_id, "read")
    errors = [] if code else _classic(ctx).leave_group(request.group_id, leaving)
    if ctx.version < 3:
        # one member: its answer is the request's (Kafka's LeaveGroupResponse does this)
        code = code or int(errors[0])
        return LeaveGroupResponse(version=ctx.version, throttle_time_ms=0, error_code=code)
    entry = LeaveGroupResponse.MemberResponse
    return LeaveGroupResponse(
        version=ctx.version,
        throttle_time_ms=0,
        error_code=code,
        members=[
            entry(member_id=m.member_id, group_instance_id=m.group_instance_id, error_code=int(e))
            for m, e in zip(leaving, errors, strict=False)  # no answers after a group error
        ],
    )


# --- OffsetCommit, OffsetFetch -----------------------------------------------------------------


@handles(OffsetCommitRequest.API_KEY)
def offset_commit(ctx: RequestContext, request: Any) -> Any:
    group = request.group_id
    codes: dict[tuple[str, int], int] = {}
    offsets: dict[tuple[str, int], tuple[int, str]] = {}
    group_code = _group_error(ctx, group, "read")
    for topic in request.topics:
        for p in topic.partitions:
            tp = (topic.name, p.partition_index)
            codes[tp] = group_code or _partition_error(ctx, tp, p)
            if not codes[tp]:
                offsets[tp] = (p.committed_offset, p.committed_metadata or "")
    if offsets:
        code = _commit(ctx, request, offsets)
        codes.update((tp, code) for tp in offsets)
    return OffsetCommitResponse(
        version=ctx.version,
        throttle_time_ms=0,
        topics=[
            _Topic(
                name=topic.name,
                partitions=[
                    _Partition(
                        partition_index=p.partition_index,
                        error_code=codes[(topic.name, p.partition_index)],
                    )
                    for p in topic.partitions
                ],
            )
            for topic in request.topics
        ],
    )


def _partition_error(ctx: RequestContext, tp: tuple[str, int], partition: Any) -> int:
    """Why one partition's commit cannot be stored, before the group is asked (or NONE)."""
    topic, index = tp
    if not ctx.broker.allowed(ctx.session, TOPIC, topic, "consume"):
        return TOPIC_AUTHORIZATION_FAILED
    metadata = partition.committed_metadata or ""
    if len(metadata.encode("utf-8")) > MAX_METADATA_BYTES:
        return OFFSET_METADATA_TOO_LARGE
    try:
        ctx.broker.manager.partition(topic, index)
        if partition.committed_offset < 0:
            raise InvalidRequestError(f"cannot commit offset {partition.committed_offset}")
    except LogStoreError as exc:
        return error_code(exc)
    return NONE


def _commit(
    ctx: RequestContext, request: Any, offsets: dict[tuple[str, int], tuple[int, str]]
) -> int:
    """Check the committer's membership, then store: one code for every partition."""
    group = request.group_id
    generation = request.generation_id_or_member_epoch
    instance = request.group_instance_id if ctx.version >= 7 else None
    code = int(_classic(ctx).check_commit(group, generation, request.member_id, instance))
    if code:
        return code
    try:
        if generation < 0:
            # a simple commit: refused while LogStore's own consumers hold the group too
            ctx.broker.coordinator.validate_commit(group, "", -1, offsets)
        ctx.broker.offsets.commit(group, offsets)
    except GroupNotEmptyError:
        return UNKNOWN_MEMBER_ID
    except LogStoreError as exc:
        return error_code(exc)
    return NONE


@handles(OffsetFetchRequest.API_KEY)
def offset_fetch(ctx: RequestContext, request: Any) -> Any:
    group = request.group_id
    code = _group_error(ctx, group, "describe")
    if request.topics is None:
        wanted = None
    else:
        wanted = [(t.name, list(t.partition_indexes)) for t in request.topics]
    if code and ctx.version >= 2:
        return OffsetFetchResponse(
            version=ctx.version, throttle_time_ms=0, error_code=code, topics=[]
        )
    committed = {} if code else ctx.broker.offsets.fetch(group)
    if wanted is None:
        by_topic: dict[str, list[int]] = {}
        for topic, partition in sorted(committed):
            by_topic.setdefault(topic, []).append(partition)
        wanted = [
            (t, ps)
            for t, ps in by_topic.items()
            if ctx.broker.allowed(ctx.session, TOPIC, t, "describe")
        ]
    topics = [
        _FetchTopic(
            name=topic,
            partitions=[_fetched(ctx, committed, topic, p, code) for p in partitions],
        )
        for topic, partitions in wanted
    ]
    return OffsetFetchResponse(
        version=ctx.version, throttle_time_ms=0, error_code=NONE, topics=topics
    )


def _fetched(
    ctx: RequestContext, committed: dict[Any, Any], topic: str, partition: int, code: int
) -> Any:
    """One partition of an OffsetFetch answer: -1 and "" when nothing is committed."""
    if not code and not ctx.broker.allowed(ctx.session, TOPIC, topic, "describe"):
        code = TOPIC_AUTHORIZATION_FAILED
    found = None if code else committed.get((topic, partition))
    return _FetchPartition(
        partition_index=partition,
        committed_offset=found.offset if found is not None else -1,
        committed_leader_epoch=-1,
        metadata=found.metadata if found is not None else "",
        error_code=code,
    )


# --- DescribeGroups, ListGroups, DeleteGroups -------------------------------------------------


@handles(DescribeGroupsRequest.API_KEY)
def describe_groups(ctx: RequestContext, request: Any) -> Any:
    operations = ctx.version >= 3 and bool(request.include_authorized_operations)
    return DescribeGroupsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        groups=[_describe(ctx, group, operations) for group in request.groups],
    )


def _describe(ctx: RequestContext, group: str, operations: bool) -> Any:
    code = _group_error(ctx, group, "describe")
    if code:
        return _group_entry(group, code, "", "", "", [])
    described = _describe_classic(ctx, group) or _describe_native(ctx, group)
    if operations:
        described.authorized_operations = {
            bit
            for op, bit in _GROUP_OPERATION_BITS.items()
            if ctx.broker.allowed(ctx.session, GROUP, group, op)
        }
    return described


def _group_entry(
    group: str, code: int, state: str, protocol_type: str, protocol: str, members: list[Any]
) -> Any:
    """One DescribeGroups entry (authorized operations not given)."""
    return _Described(
        error_code=code,
        group_id=group,
        group_state=state,
        protocol_type=protocol_type,
        protocol_data=protocol,
        members=members,
        authorized_operations=NO_OPERATIONS,
    )


def _describe_classic(ctx: RequestContext, group: str) -> Any | None:
    """A group of Kafka clients as Kafka describes it: metadata, assignments and the
    protocol only once Stable. None when the classic coordinator does not know it."""
    desc = _classic(ctx).describe(group)
    if desc is None:
        return None
    stable = desc.state == cg.STABLE
    members = [
        _DescribedMember(
            member_id=m.member_id,
            group_instance_id=m.group_instance_id,
            client_id=m.client_id,
            client_host=m.host,
            member_metadata=m.metadata if stable else b"",
            member_assignment=m.assignment if stable else b"",
        )
        for m in desc.members
    ]
    if not members and _native_members(ctx, group):
        return None  # an old empty classic record: LogStore's consumers hold it now
    protocol = desc.protocol_name if stable else ""
    return _group_entry(group, NONE, desc.state, desc.protocol_type, protocol, members)


def _native_members(ctx: RequestContext, group: str) -> bool:
    return bool(ctx.broker.coordinator.describe(group).members)


#: LogStore's group states in Kafka's words for consumer groups (KIP-848)
_NATIVE_STATES: Final = {REBALANCING: "Reconciling"}


def _describe_native(ctx: RequestContext, group: str) -> Any:
    """A group of `logstore.Consumer`s (or one with only commits) in Kafka's terms: the
    members' subscriptions and assignments as ConsumerProtocol bytes, as Kafka 4 shows
    its KIP-848 groups; a group with neither members nor commits is Dead, as in Kafka."""
    desc = ctx.broker.coordinator.describe(group)
    if not desc.members:
        if not ctx.broker.offsets.fetch(group):
            return _group_entry(group, NONE, cg.DEAD, "", "", [])
        return _group_entry(group, NONE, EMPTY, consumer_protocol.PROTOCOL_TYPE, "", [])
    members = [
        _DescribedMember(
            member_id=m.member_id,
            group_instance_id=None,
            client_id=m.client_id,
            client_host=m.host,
            member_metadata=consumer_protocol.encode_subscription(m.subscribed_topics),
            member_assignment=consumer_protocol.encode_assignment([(t, p) for t, p in m.assigned]),
        )
        for m in desc.members
    ]
    state = _NATIVE_STATES.get(desc.state, desc.state)
    return _group_entry(group, NONE, state, consumer_protocol.PROTOCOL_TYPE, desc.assignor, members)


@handles(ListGroupsRequest.API_KEY)
def list_groups(ctx: RequestContext, request: Any) -> Any:
    """The groups this broker coordinates, of either protocol, and those with only
    committed offsets; each as "consumer" unless its Kafka clients chose another type."""
    broker = ctx.broker
    listed: dict[str, str] = {}
    for group, _state, _members in broker.coordinator.list_groups():
        listed[group] = consumer_protocol.PROTOCOL_TYPE
    for c in _classic(ctx).list_groups():
        if c.members or c.group_id not in listed:
            listed[c.group_id] = c.protocol_type or consumer_protocol.PROTOCOL_TYPE
    for group in broker.offsets.groups():
        listed.setdefault(group, consumer_protocol.PROTOCOL_TYPE)
    entry = ListGroupsResponse.ListedGroup
    return ListGroupsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        error_code=NONE,
        groups=[
            entry(group_id=group, protocol_type=protocol_type)
            for group, protocol_type in sorted(listed.items())
            if _coordinated_here(ctx, group)
            and broker.allowed(ctx.session, GROUP, group, "describe")
        ],
    )


def _coordinated_here(ctx: RequestContext, group: str) -> bool:
    offsets = ctx.broker.offsets
    return not offsets.replicated or offsets.holds(group)


@handles(DeleteGroupsRequest.API_KEY)
def delete_groups(ctx: RequestContext, request: Any) -> Any:
    entry = DeleteGroupsResponse.DeletableGroupResult
    return DeleteGroupsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        results=[
            entry(group_id=group, error_code=_delete(ctx, group)) for group in request.groups_names
        ],
    )


def _delete(ctx: RequestContext, group: str) -> int:
    if not ctx.broker.allowed(ctx.session, GROUP, group, "delete"):
        return GROUP_AUTHORIZATION_FAILED
    try:
        deleted = ctx.broker.servicer.delete_group(group)
    except InvalidRequestError:
        return INVALID_GROUP_ID
    except LogStoreError as exc:
        return error_code(exc)
    log.info("deleted group %s and its %d committed offsets (Kafka DeleteGroups)", group, deleted)
    return NONE

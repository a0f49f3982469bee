"""Consumer-group RPCs: heartbeat (join / leave), list, describe, delete, reset offsets.

A mixin of `LogStoreServicer`; it maps requests onto the core's `GroupCoordinator`,
`OffsetStore` and `offset_reset` planner and back. Groups of Kafka clients (the classic
protocol, `coordinator.classic`) are listed, described, deleted and reset here too: their
members' subscriptions and assignments are read from Kafka's ConsumerProtocol bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from logstore.clock import SYSTEM_CLOCK
from logstore.errors import (
    GroupNotEmptyError,
    InvalidRequestError,
    LogStoreError,
    NotCoordinatorError,
    UnknownGroupError,
)
from logstore.server.errors import handles_errors
from logstore.server.groups import consumer_protocol, offset_reset
from logstore.server.groups.classic import ClassicGroupDescription, ClassicMemberDescription
from logstore.server.groups.coordinator import GroupCoordinator, HeartbeatRequest
from logstore.server.groups.offsets_store import OffsetStore
from logstore.storage.log_manager import LogManager
from logstore.v1 import logstore_pb2 as pb

TopicPartition = tuple[str, int]

_SPEC_KINDS = {
    "to_earliest": offset_reset.ResetKind.EARLIEST,
    "to_latest": offset_reset.ResetKind.LATEST,
    "to_offset": offset_reset.ResetKind.OFFSET,
    "to_datetime_ms": offset_reset.ResetKind.DATETIME,
    "by_duration_ms": offset_reset.ResetKind.DURATION,
    "shift_by": offset_reset.ResetKind.SHIFT,
}


def assignment_to_proto(partitions: Iterable[TopicPartition]) -> pb.Assignment:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return pb.Assignment(
        topics=[pb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]
    )


def assignment_from_proto(assignment: pb.Assignment) -> frozenset[TopicPartition]:
    return frozenset((t.topic, p) for t in assignment.topics for p in t.partitions)


class GroupHandlers:
    """The group RPCs; expects `manager`, `offsets` and `coordinator` attributes."""

    manager: LogManager
    offsets: OffsetStore
    coordinator: GroupCoordinator
    #: log start and high watermark of partitions, from their leaders
    partition_offsets: offset_reset.PartitionOffsets

    def check_coordinator(self, group: str) -> None:
        """In cluster mode, refuse a group this broker does not coordinate (the client finds
        the coordinator again); a standalone broker coordinates every group."""
        if self.offsets.replicated and not self.offsets.holds(group):
            raise NotCoordinatorError(
                f"this broker does not coordinate group {group!r}: ask FindCoordinator"
            )

    # --- membership --------------------------------------------------------------------------

    def _heartbeat(
        self, request: pb.GroupHeartbeatRequest, context: Any, epoch: int | None = None
    ) -> pb.GroupHeartbeatResponse:
        if not request.group_id:
            raise InvalidRequestError("group_id must not be empty")
        self.check_coordinator(request.group_id)
        peer = context.peer() if context is not None else ""
        response = self.coordinator.heartbeat(
            HeartbeatRequest(
                group_id=request.group_id,
                member_id=request.member_id,
                member_epoch=request.member_epoch if epoch is None else epoch,
                subscribed_topics=(
                    tuple(request.subscription.topics) if request.HasField("subscription") else None
                ),
                assignor=request.assignor or None,
                session_timeout_ms=request.session_timeout_ms or None,
                rebalance_timeout_ms=request.rebalance_timeout_ms or None,
                client_id=request.client_id,
                host=_host_of(peer),
                owned=assignment_from_proto(request.owned) if request.HasField("owned") else None,
            )
        )
        return pb.GroupHeartbeatResponse(
            member_id=response.member_id,
            member_epoch=response.member_epoch,
            heartbeat_interval_ms=response.heartbeat_interval_ms,
            assignment=assignment_to_proto(response.assignment),
        )

    @handles_errors
    def JoinGroup(
        self, request: pb.GroupHeartbeatRequest, context: Any
    ) -> pb.GroupHeartbeatResponse:
        return self._heartbeat(request, context, epoch=0)

    @handles_errors
    def Heartbeat(
        self, request: pb.GroupHeartbeatRequest, context: Any
    ) -> pb.GroupHeartbeatResponse:
        return self._heartbeat(request, context)

    @handles_errors
    def LeaveGroup(
        self, request: pb.GroupHeartbeatRequest, context: Any
    ) -> pb.GroupHeartbeatResponse:
        return self._heartbeat(request, context, epoch=-1)

    # --- inspection --------------------------------------------------------------------------

    @handles_errors
    def ListGroups(self, request: pb.ListGroupsRequest, context: Any) -> pb.ListGroupsResponse:
        listed = {
            g: (state, n)
            for g, state, n in self.coordinator.list_groups()
            if not self.offsets.replicated or self.offsets.holds(g)
        }
        for c in self.coordinator.classic.list_groups():
            if self.offsets.replicated and not self.offsets.holds(c.group_id):
                continue
            if c.members or c.group_id not in listed:
                listed[c.group_id] = (c.state, c.members)
        for group in self.offsets.groups():
            listed.setdefault(group, ("Empty", 0))
        return pb.ListGroupsResponse(
            groups=[
                pb.GroupListing(group_id=g, state=state, members=n)
                for g, (state, n) in sorted(listed.items())
            ]
        )

    @handles_errors
    def DescribeGroup(
        self, request: pb.DescribeGroupRequest, context: Any
    ) -> pb.DescribeGroupResponse:
        self.check_coordinator(request.group_id)
        classic = self.coordinator.classic.describe(request.group_id)
        if classic is not None and classic.members:
            return self._describe_classic(classic)
        desc = self.coordinator.describe(request.group_id)
        owners: dict[TopicPartition, Any] = {}
        members = []
        for m in desc.members:
            for tp in m.assigned:
                owners[tuple(tp)] = m  # type: ignore[index]
            members.append(
                pb.GroupMember(
                    member_id=m.member_id,
                    client_id=m.client_id,
                    host=m.host,
                    member_epoch=m.member_epoch,
                    subscribed_topics=sorted(m.subscribed_topics),
                    assignment=assignment_to_proto(m.assigned),
                )
            )
        committed = self.offsets.fetch(request.group_id)
        partitions = set(committed) | set(owners)
        for m in desc.members:
            partitions |= set(self._topic_partitions(m.subscribed_topics))
        return pb.DescribeGroupResponse(
            group_id=request.group_id,
            state=desc.state,
            assignor=desc.assignor or "",
            group_epoch=desc.group_epoch,
            members=members,
            offsets=[self._partition_offset(tp, committed, owners) for tp in sorted(partitions)],
        )

    def _describe_classic(self, desc: ClassicGroupDescription) -> pb.DescribeGroupResponse:
        """A group of Kafka clients: the generation as its epoch, the chosen protocol as its
        assignor, and each member's topics and partitions from its ConsumerProtocol bytes."""
        owners: dict[TopicPartition, Any] = {}
        members = []
        subscribed: set[str] = set()
        for m in desc.members:
            topics, assigned = _consumer_view(desc.protocol_type, m)
            subscribed.update(topics)
            member = pb.GroupMember(
                member_id=m.member_id,
                client_id=m.client_id,
                host=m.host,
                member_epoch=desc.generation_id,
                subscribed_topics=sorted(topics),
                assignment=assignment_to_proto(assigned),
            )
            members.append(member)
            for tp in assigned:
                owners[tp] = member
        committed = self.offsets.fetch(desc.group_id)
        partitions = set(committed) | set(owners) | set(self._topic_partitions(subscribed))
        return pb.DescribeGroupResponse(
            group_id=desc.group_id,
            state=desc.state,
            assignor=desc.protocol_name,
            group_epoch=desc.generation_id,
            members=members,
            offsets=[self._partition_offset(tp, committed, owners) for tp in sorted(partitions)],
        )

    def _topic_partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        result = []
        for topic in topics:
            if topic in self.manager.topic_names():
                count = len(self.manager.topic(topic).partitions)
                result.extend((topic, p) for p in range(count))
        return result

    def _partition_offset(
        self, tp: TopicPartition, committed: dict[TopicPartition, Any], owners: dict[Any, Any]
    ) -> pb.GroupPartitionOffset:
        topic, partition = tp
        try:
            end = self.partition_offsets.offset_range(topic, partition)[1]
        except LogStoreError:
            end = -1
        c = committed.get(tp)
        owner = owners.get(tp)
        return pb.GroupPartitionOffset(
            topic=topic,
            partition=partition,
            committed_offset=c.offset if c else -1,
            log_end_offset=end,
            lag=max(end - c.offset, 0) if c and end >= 0 else -1,
            member_id=owner.member_id if owner else "",
            client_id=owner.client_id if owner else "",
            host=owner.host if owner else "",
            metadata=c.metadata if c else "",
        )

    @handles_errors
    def DeleteGroup(self, request: pb.DeleteGroupRequest, context: Any) -> pb.DeleteGroupResponse:
        """Forget an inactive group and its committed offsets. A group neither the
        coordinator remembers nor with any commit does not exist: NOT_FOUND, as Kafka's
        GROUP_ID_NOT_FOUND, so a mistyped name is not reported as deleted."""
        return pb.DeleteGroupResponse(deleted_offsets=self.delete_group(request.group_id))

    def delete_group(self, group: str) -> int:
        """Forget an inactive group, of either protocol, and its committed offsets; return
        how many offsets were deleted. NotCoordinatorError, GroupNotEmptyError while it has
        members, UnknownGroupError when there was nothing to delete."""
        if not group:
            raise InvalidRequestError("group_id must not be empty")
        self.check_coordinator(group)
        self._require_inactive(group, "delete it")
        remembered = self.coordinator.delete_group(group)
        remembered = self.coordinator.classic.delete_group(group) or remembered
        deleted_offsets = self.offsets.delete_group(group)
        if not remembered and not deleted_offsets:
            raise UnknownGroupError(
                f"consumer group {group!r} does not exist (no members, no committed offsets)"
            )
        return deleted_offsets

    def _require_inactive(self, group: str, action: str) -> None:
        active = self.coordinator.active_member_count(group)
        if active:
            raise GroupNotEmptyError(
                f"group {group!r} has {active} active member(s); stop its consumers "
                f"(or wait for their sessions to expire) before you {action}"
            )

    # --- replay ------------------------------------------------------------------------------

    @handles_errors
    def ResetOffsets(
        self, request: pb.ResetOffsetsRequest, context: Any
    ) -> pb.ResetOffsetsResponse:
        which = request.WhichOneof("spec")
        if which is None:
            raise InvalidRequestError(
                "say where to reset to: to_earliest, to_latest, to_offset, to_datetime_ms, "
                "by_duration_ms or shift_by"
            )
        spec = offset_reset.ResetSpec(_SPEC_KINDS[which], int(getattr(request, which)))
        self.check_coordinator(request.group_id)
        if not request.dry_run:
            self._require_inactive(request.group_id, "reset its offsets")
        partitions = offset_reset.resolve_targets(
            self.manager,
            self.offsets,
            request.group_id,
            [(t.topic, list(t.partitions)) for t in request.targets],
        )
        plan = offset_reset.plan_reset(
            self.partition_offsets,
            self.offsets,
            request.group_id,
            partitions,
            spec,
            SYSTEM_CLOCK.now_ms(),
        )
        if not request.dry_run:
            offset_reset.execute_plan(self.offsets, request.group_id, plan)
        return pb.ResetOffsetsResponse(
            plan=[
                pb.OffsetResetPlan(
                    topic=e.topic,
                    partition=e.partition,
                    current_offset=e.current_offset,
                    new_offset=e.new_offset,
                )
                for e in plan
            ],
            executed=not request.dry_run,
        )


def _consumer_view(
    protocol_type: str, member: ClassicMemberDescription
) -> tuple[list[str], list[TopicPartition]]:
    """A classic member's subscribed topics and assigned partitions; none when the group
    is not a consumer group or the bytes cannot be read (they are the clients' own)."""
    if protocol_type != consumer_protocol.PROTOCOL_TYPE:
        return [], []
    try:
        topics = consumer_protocol.decode_subscription(member.metadata).topics
    except ValueError:
        topics = []
    try:
        assigned = consumer_protocol.decode_assignment(member.assignment)
    except ValueError:
        assigned = []
    return topics, assigned


def _host_of(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> '/127.0.0.1' (Kafka prints hosts with a leading slash)."""
    if not peer:
        return ""
    address = peer.split(":", 1)[1] if ":" in peer else peer
    host = address.rsplit(":", 1)[0].strip("[]")
    return f"/{host}"

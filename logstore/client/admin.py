"""`Admin`: topics, offsets, committed offsets and the cluster, over gRPC.

`Admin` talks to one broker of its bootstrap list at a time and moves to the next only
when the current one cannot be reached: whatever a broker answers, an error included, is
the answer. A consumer group's requests go to the group's coordinator instead (found with
FindCoordinator, and found again while it refuses with NotCoordinatorError or cannot be
reached; with a standalone broker, the current broker), and `list_groups` asks every live
broker, as each lists only the groups it coordinates.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Unpack

import grpc

from logstore.acls import AclBinding, AclFilter
from logstore.addresses import parse_host_port
from logstore.client._connection import (
    CoordinatorRouter,
    SecurityOptions,
    client_security,
    coordinator_of,
    make_stub,
    open_channel,
    parse_bootstrap,
    partition_error,
    resolve_bootstrap,
    rpc_code,
    translate,
)
from logstore.client.coordinators import HOME, CoordinatorAnswer, CoordinatorCache
from logstore.client.metadata import format_address
from logstore.codec.wire import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from logstore.errors import (
    BrokerUnavailableError,
    ClientClosedError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    LogStoreError,
    NotLeaderOrFollowerError,
)
from logstore.timeparse import parse_datetime_ms, parse_duration_ms
from logstore.types import (
    BrokerInfo,
    ClusterDescription,
    GroupDescription,
    GroupListing,
    MemberInfo,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    OffsetResetEntry,
    PartitionInfo,
    PartitionLag,
    PartitionReassignment,
    TopicDescription,
    TopicPartition,
)
from logstore.v1 import logstore_pb2 as pb

#: tries of list_offsets while leadership moves
_LIST_OFFSETS_ATTEMPTS = 5


def describe_from_proto(topic: pb.TopicDescription) -> TopicDescription:
    return TopicDescription(
        name=topic.name,
        topic_id=topic.topic_id,
        internal=topic.internal,
        partitions=[
            PartitionInfo(
                p.partition,
                p.log_start_offset,
                p.log_end_offset,
                p.high_watermark,
                p.size_bytes,
                p.segment_count,
                leader=p.leader,
                replicas=list(p.replicas),
                isr=list(p.isr),
                leader_epoch=p.leader_epoch,
            )
            for p in topic.partitions
        ],
        config=dict(topic.config),
        config_overrides=dict(topic.config_overrides),
    )


def cluster_from_proto(
    response: pb.DescribeClusterResponse, answered_by: str
) -> ClusterDescription:
    """The description in `response`, from the broker reached at `answered_by` (HOST:PORT).
    A broker listed without a host is that one, "the address you reached me at", as a
    standalone broker lists itself."""
    reached = parse_host_port(answered_by)

    def broker(b: pb.BrokerDescription) -> BrokerInfo:
        host, port = (b.host, b.port) if b.host else reached
        return BrokerInfo(b.broker_id, host, port)

    return ClusterDescription(
        cluster_id=response.cluster_id,
        controller=response.controller_id,
        brokers=sorted(map(broker, response.brokers), key=lambda b: b.broker_id),
        cluster_mode=response.cluster_mode,
        broker_id=response.broker_id,
        etcd_endpoints=[e for e in response.etcd_endpoints.split(",") if e],
        etcd_healthy=response.etcd_healthy,
        etcd_status=response.etcd_status,
    )


def offset_spec(spec: str | int) -> int:
    """ "earliest" -> -2, "latest" -> -1, a timestamp in ms -> itself."""
    if spec == "earliest":
        return EARLIEST_TIMESTAMP
    if spec == "latest":
        return LATEST_TIMESTAMP
    if isinstance(spec, int) and spec >= 0:
        return spec
    raise InvalidRequestError(f"offset spec {spec!r}: use 'earliest', 'latest' or a ms timestamp")


#: the topic whose partitions' leaders coordinate the groups (asking Metadata about it
#: alone is the cheapest way to learn the live brokers)
OFFSETS_TOPIC = "__consumer_offsets"
#: the most partitions a topic may have: the broker's limit (DEFAULT_MAX_PARTITIONS in
#: logstore.storage.log_config, which the client may not import; a test keeps them equal)
MAX_PARTITIONS = 10_000
#: partition counts travel in int32 fields
_INT32_RANGE = range(-(2**31), 2**31)
#: how much of a refused value a message quotes (characters)
_SHOWN_CHARS = 64


def _wire_replication_factor(factor: int | None) -> int:
    """The request's replication_factor: 0 asks for the broker's default.replication.factor."""
    if factor is None:
        return 0
    if isinstance(factor, bool) or not isinstance(factor, int) or factor not in _INT32_RANGE:
        raise InvalidReplicationFactorError(
            f"invalid replication factor {factor!r}: expected an integer >= 1"
        )
    if factor < 1:
        raise InvalidReplicationFactorError(
            f"invalid replication factor {factor}: expected an integer >= 1"
        )
    return factor


def _wire_partition_count(count: int) -> int:
    """`count`, if the request's int32 field can carry it. A count it cannot carry is far
    beyond any broker's limit: refused here with the broker's own wording for an
    out-of-range count, instead of the protobuf library's bare "Value out of range"."""
    if isinstance(count, bool) or not isinstance(count, int) or count in _INT32_RANGE:
        return count
    text = str(count)
    shown = repr(text)
    if len(text) > _SHOWN_CHARS:
        shown = f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"
    raise InvalidPartitionsError(
        f"invalid partition count {shown}: expected an integer in 1..{MAX_PARTITIONS}"
    )


class Admin:
    """Topic administration, offset queries and the cluster's description.

    >>> with Admin("127.0.0.1:9092,127.0.0.1:9093") as admin:          # doctest: +SKIP
    ...     admin.create_topic("orders", partitions=3, replication_factor=3)

    `bootstrap` is one HOST:PORT or a comma-separated list; requests go to one broker at a
    time, starting with the first, and move along the list (once round) only when the
    current broker cannot be reached. `address` is the broker in use. A group's requests
    go to its coordinator, found through the broker in use.

    Security: the keyword arguments of `SecurityOptions` (`ssl_cafile`, `ssl_certfile`,
    `ssl_keyfile`, `token`), each falling back to its environment variable.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        request_timeout_ms: int = 30_000,
        **security: Unpack[SecurityOptions],
    ) -> None:
        #: every address of the bootstrap list, in the order given
        self.bootstrap_servers = tuple(parse_bootstrap(resolve_bootstrap(bootstrap)))
        self._timeout_s = request_timeout_ms / 1000
        self._security = client_security("Admin", security)
        self._lock = threading.Lock()
        self._current = 0
        self.address = self.bootstrap_servers[0]
        self._channel = open_channel(self.address, self._security)
        self._stub = make_stub(self._channel)
        self._closed = False
        #: channels to the brokers named by address (coordinators, brokers listing groups)
        self._others: dict[str, tuple[Any, Any]] = {}
        self._coordinators = CoordinatorRouter(
            CoordinatorCache(), self._find_coordinator, self._stub_at, self._describe
        )

    def _call(self, method: str, request: Any) -> Any:
        return self._call_at(method, request)[0]

    def _call_at(
        self,
        method: str,
        request: Any,
        *,
        timeout_s: float | None = None,
        missing_ok: bool = False,
    ) -> tuple[Any, str]:
        """`method` at the current broker, then at each other one in turn while the broker
        asked cannot be reached; returns the answer and the address that gave it. Only
        unreachable brokers are skipped: any answer, an error included, is the cluster's
        answer (a request that timed out may have been carried out: it is not sent again).
        Each attempt may take `timeout_s` (None: request_timeout_ms); with `missing_ok`, a
        broker without the RPC answers None."""
        for attempt in range(len(self.bootstrap_servers)):
            if self._closed:
                raise ClientClosedError("the admin client is closed")
            stub, address = self._stub, self.address
            try:
                answer = getattr(stub, method)(request, timeout=timeout_s or self._timeout_s)
                return answer, address
            except grpc.RpcError as exc:
                if missing_ok and rpc_code(exc) == grpc.StatusCode.UNIMPLEMENTED:
                    return None, address
                error = translate(exc, address)
                if not isinstance(error, BrokerUnavailableError):
                    raise error from None
                if attempt == len(self.bootstrap_servers) - 1:
                    raise translate(exc, ",".join(self.bootstrap_servers)) from None
                self._move_on_from(address)
        raise AssertionError("unreachable: the bootstrap list is never empty")

    def _move_on_from(self, address: str) -> None:
        """Switch to the next bootstrap broker, unless another thread already moved on."""
        with self._lock:
            if self._closed or self.address != address:
                return
            self._current = (self._current + 1) % len(self.bootstrap_servers)
            self.address = self.bootstrap_servers[self._current]
            old, self._channel = self._channel, open_channel(self.address, self._security)
            self._stub = make_stub(self._channel)
        old.close()

    # --- brokers named by address ------------------------------------------------------------

    def _stub_at(self, address: str) -> Any:
        """The stub of the broker at `address` (`HOME`: the current broker, moving along the
        bootstrap list as every other request does)."""
        if address == HOME:
            return _CurrentBroker(self)
        with self._lock:
            if self._closed:
                raise ClientClosedError("the admin client is closed")
            found = self._others.get(address)
            if found is None:
                channel = open_channel(address, self._security)
                found = self._others[address] = (channel, make_stub(channel))
        return found[1]

    def _describe(self, address: str) -> str:
        return self.address if address == HOME else address

    def _find_coordinator(self, group: str, timeout_s: float) -> CoordinatorAnswer | None:
        request = pb.FindCoordinatorRequest(group_id=group)
        answer, _ = self._call_at("FindCoordinator", request, timeout_s=timeout_s, missing_ok=True)
        return coordinator_of(answer)

    def _group_call(self, group: str, method: str, request: Any) -> Any:
        """`method` at `group`'s coordinator (see the module docstring)."""
        if self._closed:
            raise ClientClosedError("the admin client is closed")
        return self._coordinators.call(group, method, request, self._timeout_s)

    def _live_brokers(self, timeout_s: float) -> list[str]:
        """The addresses of the live brokers as the current broker knows them; [`HOME`] for
        a standalone broker (it lists itself without a host) or one without Metadata."""
        request = pb.MetadataRequest(topics=[OFFSETS_TOPIC])
        answer, _ = self._call_at("Metadata", request, timeout_s=timeout_s, missing_ok=True)
        if answer is None:
            return [HOME]
        brokers = sorted(answer.brokers, key=lambda b: b.broker_id)
        return [format_address(b.host, b.port) if b.host else HOME for b in brokers] or [HOME]

    # --- topics ------------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        config: Mapping[str, str | int] | None = None,
        *,
        replication_factor: int | None = None,
    ) -> TopicDescription:
        """Create topic `name` with `partitions` partitions of `replication_factor` copies
        each (None: the broker's default.replication.factor; 1 on a standalone broker).
        Raises InvalidReplicationFactorError when there are fewer live brokers."""
        request = pb.CreateTopicRequest(
            name=name,
            partitions=_wire_partition_count(partitions),
            config={k: str(v) for k, v in (config or {}).items()},
            replication_factor=_wire_replication_factor(replication_factor),
        )
        return describe_from_proto(self._call("CreateTopic", request).topic)

    def delete_topic(self, name: str) -> None:
        self._call("DeleteTopic", pb.DeleteTopicRequest(name=name))

    def list_topics(self, include_internal: bool = False) -> list[str]:
        response = self._call("ListTopics", pb.ListTopicsRequest(include_internal=include_internal))
        return [t.name for t in response.topics]

    def describe_topic(self, name: str) -> TopicDescription:
        return describe_from_proto(
            self._call("DescribeTopic", pb.DescribeTopicRequest(name=name)).topic
        )

    def alter_topic_config(
        self,
        name: str,
        set: Mapping[str, str | int] | None = None,
        delete: Iterable[str] = (),
    ) -> TopicDescription:
        request = pb.AlterTopicConfigRequest(
            name=name, set={k: str(v) for k, v in (set or {}).items()}, delete=list(delete)
        )
        return describe_from_proto(self._call("AlterTopicConfig", request).topic)

    def add_partitions(self, name: str, total: int) -> TopicDescription:
        request = pb.AddPartitionsRequest(name=name, total_count=_wire_partition_count(total))
        return describe_from_proto(self._call("AddPartitions", request).topic)

    # --- the cluster ---------------------------------------------------------------------------

    def describe_cluster(self) -> ClusterDescription:
        """Cluster id, controller, live brokers and the answering broker's view of etcd."""
        return cluster_from_proto(*self._call_at("DescribeCluster", pb.DescribeClusterRequest()))

    def alter_partition_reassignments(
        self,
        reassignments: Mapping[TopicPartition, Sequence[int] | None],
        *,
        throttle_bytes_per_s: int | None = None,
    ) -> None:
        """Start moving each partition to the replicas given (the preferred leader first),
        as Kafka's AlterPartitionReassignments; None cancels a partition's reassignment.

        `throttle_bytes_per_s` (Kafka's `--throttle`) sets the cluster's reassignment
        throttle before any move starts: the replicas being added fetch at most that many
        bytes per second per broker, all such replicas of a broker together; other
        replication is not limited. 0 removes the throttle; None leaves it as it is (with
        no reassignments given, only the throttle changes). A throttle below the produce
        rate of a moved partition means its new replicas never catch up, and the move never
        completes until the throttle is raised. Remove it once the moves are done
        (`replication_throttle`, `logstore partitions reassign --verify`).

        Returns once the controller has accepted every target; the data moves in the
        background (see `list_partition_reassignments`). A refused partition raises its
        error, naming the partition.
        """
        _require_rpc("AlterPartitionReassignments")
        if throttle_bytes_per_s is not None and throttle_bytes_per_s < 0:
            raise InvalidRequestError(
                f"a throttle is a rate >= 0 bytes/s, not {throttle_bytes_per_s}"
            )
        by_topic: dict[str, list[Any]] = {}
        for (topic, partition), replicas in reassignments.items():
            by_topic.setdefault(topic, []).append(
                # no replicas: cancel (a real target is never empty)
                pb.ReassignablePartition(  # type: ignore[attr-defined]
                    partition=partition, replicas=list(replicas or ())
                )
            )
        request = pb.AlterPartitionReassignmentsRequest(  # type: ignore[attr-defined]
            topics=[
                pb.ReassignableTopic(topic=t, partitions=ps)  # type: ignore[attr-defined]
                for t, ps in by_topic.items()
            ],
            throttle_bytes_per_s=throttle_bytes_per_s,
        )
        for topic in self._call("AlterPartitionReassignments", request).topics:
            for p in topic.partitions:
                error = partition_error(p.error)
                if error is not None:
                    error.args = (f"{topic.topic}-{p.partition}: {error}",)
                    raise error

    def list_partition_reassignments(
        self, partitions: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, PartitionReassignment]:
        """The reassignments still running, of `partitions` (None: all of them)."""
        return {
            (t.topic, p.partition): PartitionReassignment(
                list(p.replicas), list(p.adding_replicas), list(p.removing_replicas)
            )
            for t in self._list_reassignments(partitions).topics
            for p in t.partitions
        }

    def replication_throttle(self) -> int:
        """The cluster's reassignment throttle in bytes/s (0: none), as set by
        `alter_partition_reassignments(..., throttle_bytes_per_s=...)`."""
        return int(self._list_reassignments(None).throttle_bytes_per_s)

    def _list_reassignments(self, partitions: Iterable[TopicPartition] | None) -> Any:
        _require_rpc("ListPartitionReassignments")
        by_topic: dict[str, list[int]] = {}
        for topic, partition in partitions or ():
            by_topic.setdefault(topic, []).append(partition)
        request = pb.ListPartitionReassignmentsRequest(  # type: ignore[attr-defined]
            topics=[pb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]
        )
        return self._call("ListPartitionReassignments", request)

    # --- offsets -----------------------------------------------------------------------------

    def list_offsets(
        self, topic: str, spec: str | int = "latest", partitions: Iterable[int] | None = None
    ) -> dict[int, OffsetAndTimestamp]:
        """Per partition: the earliest or latest offset, or the first at/after a timestamp
        (offset -1 when no record is that new)."""
        if partitions is None:
            partitions = range(len(self.describe_topic(topic).partitions))
        ts = offset_spec(spec)
        wanted = list(partitions)
        result: dict[int, OffsetAndTimestamp] = {}
        # In a cluster only each partition's leader knows its high watermark: ask the
        # leaders (again after a leadership change), as Kafka's admin client does.
        for attempt in range(_LIST_OFFSETS_ATTEMPTS):
            try:
                for address, chosen in self._leaders_of(topic, wanted).items():
                    result.update(self._list_offsets_at(address, topic, chosen, ts))
                return result
            except NotLeaderOrFollowerError:
                if attempt == _LIST_OFFSETS_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _leaders_of(self, topic: str, partitions: list[int]) -> dict[str, list[int]]:
        """Leader address -> its partitions of `topic` (`HOME` for a standalone broker,
        one without Metadata, or a partition without a leader now)."""
        request = pb.MetadataRequest(topics=[topic])
        answer, _ = self._call_at("Metadata", request, missing_ok=True)
        addresses: dict[int, str] = {}
        if answer is not None:
            brokers = {b.broker_id: b for b in answer.brokers}
            for t in answer.topics:
                for p in t.partitions:
                    leader = brokers.get(p.leader)
                    if leader is not None and leader.host:
                        addresses[p.partition] = format_address(leader.host, leader.port)
        by_leader: dict[str, list[int]] = {}
        for partition in partitions:
            by_leader.setdefault(addresses.get(partition, HOME), []).append(partition)
        return by_leader

    def _list_offsets_at(
        self, address: str, topic: str, partitions: list[int], timestamp: int
    ) -> dict[int, OffsetAndTimestamp]:
        request = pb.ListOffsetsRequest(
            topics=[
                pb.ListOffsetsTopic(
                    topic=topic,
                    partitions=[
                        pb.ListOffsetsPartition(partition=p, timestamp=timestamp)
                        for p in partitions
                    ],
                )
            ]
        )
        if address == HOME:
            answer = self._call("ListOffsets", request)
        else:
            try:
                answer = self._stub_at(address).ListOffsets(request, timeout=self._timeout_s)
            except grpc.RpcError as exc:
                raise translate(exc, address) from None
        result: dict[int, OffsetAndTimestamp] = {}
        for p in answer.topics[0].partitions:
            error = partition_error(p.error)
            if error is not None:
                raise error
            result[p.partition] = OffsetAndTimestamp(p.offset, p.timestamp)
        return result

    def committed_offsets(
        self, group: str, topics: Iterable[str] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """What `group` has committed (only partitions with a commit)."""
        request = pb.FetchCommittedOffsetsRequest(
            group_id=group, topics=[pb.TopicPartitions(topic=t) for t in topics or ()]
        )
        return {
            (o.topic, o.partition): OffsetAndMetadata(o.offset, o.metadata, o.commit_timestamp)
            for o in self._group_call(group, "FetchCommittedOffsets", request).offsets
            if o.offset >= 0
        }

    def commit_offsets(
        self, group: str, offsets: Mapping[TopicPartition, int | OffsetAndMetadata]
    ) -> None:
        """Commit offsets for a group from outside the group (admin/standalone commits)."""
        by_topic: dict[str, list[pb.CommitPartition]] = {}
        for (topic, partition), value in offsets.items():
            om = value if isinstance(value, OffsetAndMetadata) else OffsetAndMetadata(value)
            by_topic.setdefault(topic, []).append(
                pb.CommitPartition(partition=partition, offset=om.offset, metadata=om.metadata)
            )
        request = pb.CommitOffsetsRequest(
            group_id=group,
            generation_id=-1,
            topics=[pb.CommitTopic(topic=t, partitions=ps) for t, ps in by_topic.items()],
        )
        for topic in self._group_call(group, "CommitOffsets", request).topics:
            for p in topic.partitions:
                error = partition_error(p.error)
                if error is not None:
                    raise error

    # --- consumer groups ---------------------------------------------------------------------

    def list_groups(self) -> list[GroupListing]:
        """Every group, by group id. Each broker lists the groups it coordinates, so every
        live broker is asked, as Kafka's admin does, and the answers are merged (a group
        two brokers list while its coordinator moves is listed once). While some broker
        cannot be reached, every live broker is asked again (a dead one leaves the list
        once its session lapses, and its groups move to new coordinators) until all of one
        round answered; after request_timeout_ms, BrokerUnavailableError names the
        brokers that did not answer."""
        deadline = time.monotonic() + self._timeout_s
        for round_no in itertools.count(1):
            brokers = self._live_brokers(_left(deadline))
            listed, failed = self._list_groups_once(brokers, deadline)
            if not failed:
                return sorted(listed.values(), key=lambda g: g.group_id)
            delay = self._coordinators.cache.delay_ms(round_no) / 1000
            if time.monotonic() + delay >= deadline:
                raise BrokerUnavailableError(
                    "cannot list every group: "
                    + "; ".join(f"{self._describe(a)}: {e}" for a, e in failed.items())
                )
            time.sleep(delay)
        raise AssertionError("unreachable: the loop above returns or raises")

    def _list_groups_once(
        self, brokers: list[str], deadline: float
    ) -> tuple[dict[str, GroupListing], dict[str, BrokerUnavailableError]]:
        """ListGroups at each of `brokers`, each answering before `deadline` (monotonic
        s): the groups listed, and the brokers that could not be reached."""
        listed: dict[str, GroupListing] = {}
        failed: dict[str, BrokerUnavailableError] = {}
        for address in brokers:
            try:
                response = self._stub_at(address).ListGroups(
                    pb.ListGroupsRequest(), timeout=_left(deadline)
                )
            except grpc.RpcError as exc:
                error = translate(exc, self._describe(address))
                if not isinstance(error, BrokerUnavailableError):
                    raise error from None
                failed[address] = error
                continue
            except BrokerUnavailableError as exc:  # the current broker and every other one
                failed[address] = exc
                continue
            for g in response.groups:
                listed.setdefault(g.group_id, GroupListing(g.group_id, g.state, g.members))
        return listed, failed

    def describe_group(self, group: str) -> GroupDescription:
        """State, assignor, members and, per partition, committed offset, log end and lag."""
        r = self._group_call(group, "DescribeGroup", pb.DescribeGroupRequest(group_id=group))
        members = [
            MemberInfo(
                m.member_id,
                m.client_id,
                m.host,
                m.member_epoch,
                list(m.subscribed_topics),
                [(t.topic, p) for t in m.assignment.topics for p in t.partitions],
            )
            for m in r.members
        ]
        lags = [
            PartitionLag(
                o.topic,
                o.partition,
                o.committed_offset,
                o.log_end_offset,
                o.lag,
                o.member_id,
                o.client_id,
                o.host,
            )
            for o in r.offsets
        ]
        return GroupDescription(r.group_id, r.state, r.assignor, r.group_epoch, members, lags)

    def delete_group(self, group: str) -> int:
        """Delete a group with no active members and its committed offsets; return how many
        offsets went. Raises UnknownGroupError for a group with neither members nor
        commits, GroupNotEmptyError while it has active members."""
        request = pb.DeleteGroupRequest(group_id=group)
        return self._group_call(group, "DeleteGroup", request).deleted_offsets

    def reset_offsets(
        self,
        group: str,
        topics: Mapping[str, Iterable[int] | None] | Iterable[str] | None = None,
        *,
        to_earliest: bool = False,
        to_latest: bool = False,
        to_offset: int | None = None,
        to_datetime: str | int | None = None,
        by_duration: str | int | None = None,
        shift_by: int | None = None,
        dry_run: bool = True,
    ) -> list[OffsetResetEntry]:
        """Plan (dry_run, the default) or execute a reset, like kafka-consumer-groups.

        `topics`: names, or name -> partitions (None = all); None = everything the group
        has committed. Exactly one target: `to_datetime` is ISO 8601 or ms since the epoch,
        `by_duration` an ISO 8601 duration (e.g. "PT1H") or ms back from now. The broker
        refuses to execute while the group has active members.
        """
        request = pb.ResetOffsetsRequest(group_id=group, dry_run=dry_run)
        items = topics.items() if isinstance(topics, Mapping) else ((t, None) for t in topics or ())
        for topic, partitions in items:
            request.targets.append(pb.TopicPartitions(topic=topic, partitions=partitions or []))
        chosen = _reset_spec(to_earliest, to_latest, to_offset, to_datetime, by_duration, shift_by)
        setattr(request, *chosen)
        response = self._group_call(group, "ResetOffsets", request)
        return [
            OffsetResetEntry(e.topic, e.partition, e.current_offset, e.new_offset)
            for e in response.plan
        ]

    # --- access control lists ----------------------------------------------------------------

    def create_acls(self, bindings: Iterable[AclBinding]) -> list[AclBinding]:
        """Add ACL bindings (needs alter on the cluster); return those that were new."""
        request = pb.CreateAclsRequest(acls=[_binding_to_proto(b) for b in bindings])
        return [_binding_from_proto(b) for b in self._call("CreateAcls", request).created]

    def delete_acls(self, selector: AclFilter) -> list[AclBinding]:
        """Remove every binding `selector` matches (at least one field must be set)."""
        request = pb.DeleteAclsRequest(filter=_filter_to_proto(selector))
        return [_binding_from_proto(b) for b in self._call("DeleteAcls", request).deleted]

    def describe_acls(self, selector: AclFilter | None = None) -> list[AclBinding]:
        """The bindings `selector` matches (all without one); needs describe on the cluster."""
        request = pb.DescribeAclsRequest(filter=_filter_to_proto(selector or AclFilter()))
        return [_binding_from_proto(b) for b in self._call("DescribeAcls", request).acls]

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            channels = [self._channel, *(channel for channel, _ in self._others.values())]
            self._others.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _left(deadline: float) -> float:
    """Seconds until `deadline` (monotonic s); a call past it still gets a moment, so it
    fails as a timeout rather than not being made."""
    return max(deadline - time.monotonic(), 0.001)


class _CurrentBroker:
    """A stub whose calls go to the `Admin`'s current broker, moving along the bootstrap
    list while it cannot be reached (`Admin._call_at`); failures are LogStore errors."""

    __slots__ = ("_admin",)

    def __init__(self, admin: Admin) -> None:
        self._admin = admin

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, timeout: float) -> Any:
            return self._admin._call_at(method, request, timeout_s=timeout)[0]

        return call


def _require_rpc(method: str) -> None:
    """Refuse, in one clear line, an RPC this build's API (logstore.v1) does not have."""
    if not hasattr(pb, f"{method}Request"):
        raise LogStoreError(
            f"this LogStore build has no {method} RPC: partition reassignment is not available yet"
        )


def _reset_spec(
    to_earliest: bool,
    to_latest: bool,
    to_offset: int | None,
    to_datetime: str | int | None,
    by_duration: str | int | None,
    shift_by: int | None,
) -> tuple[str, bool | int]:
    """The one ResetOffsetsRequest `spec` field to set, and its value."""
    chosen: list[tuple[str, bool | int]] = []
    if to_earliest:
        chosen.append(("to_earliest", True))
    if to_latest:
        chosen.append(("to_latest", True))
    if to_offset is not None:
        chosen.append(("to_offset", to_offset))
    if to_datetime is not None:
        ms = to_datetime if isinstance(to_datetime, int) else parse_datetime_ms(to_datetime)
        chosen.append(("to_datetime_ms", ms))
    if by_duration is not None:
        ms = by_duration if isinstance(by_duration, int) else parse_duration_ms(by_duration)
        chosen.append(("by_duration_ms", ms))
    if shift_by is not None:
        chosen.append(("shift_by", shift_by))
    if len(chosen) != 1:
        raise InvalidRequestError(
            "give exactly one of to_earliest, to_latest, to_offset, to_datetime, "
            "by_duration, shift_by"
        )
    return chosen[0]


def _binding_to_proto(binding: AclBinding) -> pb.AclBinding:
    return pb.AclBinding(**binding.to_dict())


def _binding_from_proto(message: pb.AclBinding) -> AclBinding:
    return AclBinding(
        message.principal,
        message.resource_type,
        message.resource_name,
        message.operation,
        message.permission or "allow",
    )


def _filter_to_proto(selector: AclFilter) -> pb.AclFilter:
    return pb.AclFilter(
        principal=selector.principal or "",
        resource_type=selector.resource_type or "",
        resource_name=selector.resource_name or "",
        operation=selector.operation or "",
        permission=selector.permission or "",
    )

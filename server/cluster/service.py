"""Cluster RPCs: Metadata, DescribeCluster, FindCoordinator, the followers' ReplicaFetch and
OffsetForLeaderEpoch, and partition reassignment (Alter, List).

A mixin of `LogStoreServicer`; it maps requests onto the broker's `ClusterNode` (its
replicas, its view of the cluster, the controller's records in etcd) and back. Produce and
Fetch serve both modes and stay with the servicer.

Invariants:
- A standalone broker answers as the one broker of a cluster of one: broker 0, leader and
  only replica of every partition, coordinator of every group. The RPCs that need replicas
  (ReplicaFetch, OffsetForLeaderEpoch) refuse it with INVALID_ARGUMENT.
- Only the leader answers a follower, and only at the follower's leader epoch (older:
  fenced, newer: unknown), and only a registered broker, at its current broker epoch,
  that holds a replica of the partition.
- A follower's fetch reads past the high watermark but never past the log end. Its fetch
  offset is recorded once per request, before the first read, so the high watermark
  advances as soon as it can while the fetch long-polls (at most `MAX_WAIT_CAP_MS`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from logstore.errors import (
    InvalidReplicationFactorError,
    InvalidRequestError,
    LogStoreError,
    OffsetOutOfRangeError,
)
from logstore.server.errors import error_message, handles_errors
from logstore.server.fetch_path import MAX_WAIT_CAP_MS
from logstore.storage.log_config import is_internal_topic
from logstore.storage.log_manager import LogManager
from logstore.v1 import logstore_pb2 as pb

if TYPE_CHECKING:
    from logstore.server.cluster.node import ClusterNode

#: the broker id a standalone broker answers Metadata and DescribeCluster with
STANDALONE_BROKER_ID = 0


def _check_standalone_target(target: list[int] | None) -> None:
    """A standalone broker's only replica set is [0]: moving there changes nothing."""
    if target is None:
        raise InvalidRequestError("no reassignment is running: this broker runs standalone")
    if target != [STANDALONE_BROKER_ID]:
        raise InvalidReplicationFactorError(
            f"replicas {target}: this broker runs standalone, as broker "
            f"{STANDALONE_BROKER_ID}, the only replica of every partition"
        )


class ClusterHandlers:
    """The cluster RPCs; expects `manager`, `cluster`, `max_fetch_bytes` and `stopping`
    attributes and a `_refuse_internal` check. `_leadership` also serves the servicer's
    topic descriptions."""

    manager: LogManager
    #: None for a standalone broker
    cluster: ClusterNode | None
    #: the most a single fetch response may carry (bytes)
    max_fetch_bytes: int
    #: set when the broker starts shutting down: long polls return at once
    stopping: bool
    #: raises InvalidRequestError if (topic name, action) would touch an internal topic
    _refuse_internal: Callable[[str, str], None]

    def _leadership(self, topic: str, partition: int) -> tuple[int, list[int], list[int], int]:
        """(leader, replicas, isr, leader_epoch) of a partition; standalone: broker 0 alone."""
        if self.cluster is None:
            own = STANDALONE_BROKER_ID
            return own, [own], [own], 0
        state = self.cluster.partition_state(topic, partition)
        if state is None:
            return -1, [], [], -1
        return state.leader, list(state.replicas), list(state.isr), state.leader_epoch

    @handles_errors
    def Metadata(self, request: pb.MetadataRequest, context: Any) -> pb.MetadataResponse:
        wanted = list(request.topics)
        names = wanted or [
            n
            for n in self.manager.topic_names()
            if request.include_internal or not is_internal_topic(n)
        ]
        topics = []
        for name in names:
            result = pb.TopicMetadata(topic=name)
            try:
                count = len(self.manager.topic(name).partitions)
            except LogStoreError as exc:
                result.error.CopyFrom(error_message(exc))
                topics.append(result)
                continue
            for partition in range(count):
                leader, replicas, isr, epoch = self._leadership(name, partition)
                result.partitions.add(
                    partition=partition,
                    leader=leader,
                    leader_epoch=epoch,
                    replicas=replicas,
                    isr=isr,
                )
            topics.append(result)
        cluster_id, controller, brokers = self._cluster_summary()
        return pb.MetadataResponse(
            cluster_id=cluster_id, controller_id=controller, brokers=brokers, topics=topics
        )

    def _cluster_summary(self) -> tuple[str, int, list[pb.BrokerDescription]]:
        """(cluster id, controller id, live brokers); a standalone broker is broker 0 with
        no address: clients reach it where they reached it."""
        if self.cluster is None:
            return "", STANDALONE_BROKER_ID, [pb.BrokerDescription(broker_id=STANDALONE_BROKER_ID)]
        view = self.cluster.view
        brokers = [
            pb.BrokerDescription(broker_id=b.broker_id, host=b.host, port=b.port)
            for b in sorted(view.brokers.values(), key=lambda r: r.broker_id)
        ]
        return view.cluster_id, view.controller, brokers

    @handles_errors
    def DescribeCluster(
        self, request: pb.DescribeClusterRequest, context: Any
    ) -> pb.DescribeClusterResponse:
        cluster_id, controller, brokers = self._cluster_summary()
        if self.cluster is None:
            return pb.DescribeClusterResponse(
                cluster_id=cluster_id,
                controller_id=controller,
                brokers=brokers,
                cluster_mode=False,
                broker_id=STANDALONE_BROKER_ID,
            )
        healthy, status = self.cluster.health()
        return pb.DescribeClusterResponse(
            cluster_id=cluster_id,
            controller_id=controller,
            brokers=brokers,
            cluster_mode=True,
            broker_id=self.cluster.broker_id,
            etcd_endpoints=",".join(self.cluster.settings.etcd_endpoints),
            etcd_healthy=healthy,
            etcd_status=status,
        )

    def _require_cluster(self) -> ClusterNode:
        if self.cluster is None:
            raise InvalidRequestError("this broker runs standalone: it has no replicas")
        return self.cluster

    @handles_errors
    def OffsetForLeaderEpoch(
        self, request: pb.OffsetForLeaderEpochRequest, context: Any
    ) -> pb.OffsetForLeaderEpochResponse:
        cluster = self._require_cluster()
        topics = []
        for query_topic in request.topics:
            answers = []
            for query in query_topic.partitions:
                answer = pb.EpochEndOffset(
                    partition=query.partition, leader_epoch=-1, end_offset=-1
                )
                try:
                    replica = cluster.replicas.leader(
                        query_topic.topic, query.partition, query.current_leader_epoch
                    )
                    epoch, end = replica.log.end_offset_for_leader_epoch(query.leader_epoch)
                    answer.leader_epoch, answer.end_offset = epoch, end
                except LogStoreError as exc:
                    answer.error.CopyFrom(error_message(exc))
                answers.append(answer)
            topics.append(
                pb.OffsetForLeaderEpochTopicResult(topic=query_topic.topic, partitions=answers)
            )
        return pb.OffsetForLeaderEpochResponse(topics=topics)

    @handles_errors
    def ReplicaFetch(self, request: pb.ReplicaFetchRequest, context: Any) -> pb.FetchResponse:
        return self.replica_fetch(request, context.is_active)

    def replica_fetch(
        self, request: pb.ReplicaFetchRequest, is_active: Callable[[], bool]
    ) -> pb.FetchResponse:
        """A follower's fetch (over gRPC or the replication stream): no high-watermark cap;
        the fetch offset is the follower's log end, recorded before reading so the high
        watermark advances as soon as it can. Long-polls up to `max_wait_ms` while
        `is_active()` (the caller is still there)."""
        cluster = self._require_cluster()
        max_bytes = min(request.max_bytes or self.max_fetch_bytes, self.max_fetch_bytes)
        wait_ms = min(max(request.max_wait_ms, 0), MAX_WAIT_CAP_MS)
        deadline = time.monotonic() + wait_ms / 1000
        first = True
        while True:
            version = self.manager.appends.version
            response, total = self._replica_read(cluster, request, max_bytes, record=first)
            first = False
            remaining_s = deadline - time.monotonic()
            errors = any(r.error.code for t in response.topics for r in t.partitions)
            if total >= max(request.min_bytes, 1) or remaining_s <= 0 or errors:
                return response
            if self.stopping or not is_active():
                return response
            self.manager.appends.wait_for_change(version, remaining_s)

    def _replica_read(
        self, cluster: ClusterNode, request: pb.ReplicaFetchRequest, max_bytes: int, record: bool
    ) -> tuple[pb.FetchResponse, int]:
        response = pb.FetchResponse()
        remaining = max_bytes
        total = 0
        for fetch_topic in request.topics:
            results = response.topics.add(topic=fetch_topic.topic).partitions
            for fp in fetch_topic.partitions:
                result = results.add(partition=fp.partition)
                try:
                    replica = cluster.replicas.leader(
                        fetch_topic.topic, fp.partition, fp.leader_epoch
                    )
                    part = replica.log
                    result.log_start_offset = part.log_start_offset
                    if fp.fetch_offset > part.log_end_offset:
                        raise OffsetOutOfRangeError(
                            part.name, fp.fetch_offset, part.log_start_offset, part.log_end_offset
                        )
                    if record:
                        cluster.replicas.record_follower_fetch(
                            replica, request.replica_id, request.broker_epoch, fp.fetch_offset
                        )
                    fetched = part.read(fp.fetch_offset, min(remaining, max_bytes))
                except LogStoreError as exc:
                    result.error.CopyFrom(error_message(exc))
                    continue
                result.high_watermark = part.high_watermark
                result.records = fetched.data
                total += len(fetched.data)
                remaining = max(0, remaining - len(fetched.data))
        return response, total

    @handles_errors
    def AlterPartitionReassignments(
        self, request: pb.AlterPartitionReassignmentsRequest, context: Any
    ) -> pb.AlterPartitionReassignmentsResponse:
        if request.HasField("throttle_bytes_per_s"):
            # Before any move starts, so no added replica fetches unthrottled.
            rate = request.throttle_bytes_per_s
            if rate < 0:
                raise InvalidRequestError(f"a throttle is a rate >= 0 bytes/s, not {rate}")
            if self.cluster is not None:
                self.cluster.set_replication_throttle(rate)
            elif rate > 0:
                raise InvalidRequestError(
                    "this broker runs standalone: it replicates nothing, so there is no "
                    "reassignment traffic to throttle"
                )
        topics = []
        for topic in request.topics:
            results = []
            for wanted in topic.partitions:
                result = pb.ReassignablePartitionResult(partition=wanted.partition)
                try:
                    self._refuse_internal(topic.topic, "reassign")
                    self.manager.partition(topic.topic, wanted.partition)
                    target = list(wanted.replicas) or None
                    if self.cluster is None:
                        _check_standalone_target(target)
                    else:
                        self.cluster.reassign(topic.topic, wanted.partition, target)
                except LogStoreError as exc:
                    result.error.CopyFrom(error_message(exc))
                results.append(result)
            topics.append(pb.ReassignableTopicResult(topic=topic.topic, partitions=results))
        return pb.AlterPartitionReassignmentsResponse(topics=topics)

    @handles_errors
    def ListPartitionReassignments(
        self, request: pb.ListPartitionReassignmentsRequest, context: Any
    ) -> pb.ListPartitionReassignmentsResponse:
        if self.cluster is None:
            return pb.ListPartitionReassignmentsResponse()
        wanted = {(t.topic, p) for t in request.topics for p in t.partitions} or None
        wanted_topics = {t.topic for t in request.topics if not t.partitions}
        by_topic: dict[str, list[pb.OngoingPartitionReassignment]] = {}
        for (topic, partition), state in sorted(self.cluster.reassignments().items()):
            if (wanted is not None or wanted_topics) and not (
                (wanted is not None and (topic, partition) in wanted) or topic in wanted_topics
            ):
                continue
            by_topic.setdefault(topic, []).append(
                pb.OngoingPartitionReassignment(
                    partition=partition,
                    replicas=list(state.replicas),
                    adding_replicas=list(state.adding),
                    removing_replicas=list(state.removing),
                )
            )
        return pb.ListPartitionReassignmentsResponse(
            topics=[
                pb.OngoingTopicReassignment(topic=t, partitions=p) for t, p in by_topic.items()
            ],
            throttle_bytes_per_s=self.cluster.replication_throttle(),
        )

    @handles_errors
    def FindCoordinator(
        self, request: pb.FindCoordinatorRequest, context: Any
    ) -> pb.FindCoordinatorResponse:
        if not request.group_id:
            raise InvalidRequestError("group_id must not be empty")
        if self.cluster is None:
            return pb.FindCoordinatorResponse(
                coordinator=pb.BrokerDescription(broker_id=STANDALONE_BROKER_ID)
            )
        found = self.cluster.group_coordinator(request.group_id)
        return pb.FindCoordinatorResponse(
            coordinator=pb.BrokerDescription(
                broker_id=found.broker_id, host=found.host, port=found.port
            )
        )

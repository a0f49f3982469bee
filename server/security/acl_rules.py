"""The ACL rule table: which resources and operations each LogStore RPC needs.

An RPC without a rule is refused, so new RPCs fail closed. List RPCs answer only
what the principal may describe (`RESPONSE_FILTERS`). Pure: no gRPC.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from logstore.acls import (
    CLUSTER,
    CLUSTER_NAME,
    GROUP,
    TOPIC,
)
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)


#: (resource type, resource name, operation) one request needs
Need = tuple[str, str, str]
#: may the caller perform (resource type, name, operation)?
Allowed = Callable[[str, str, str], bool]


def _topic_names(entries: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(e.topic for e in entries))


def _each_topic(operation: str, field: str = "topics") -> Callable[[Any], list[Need]]:
    def needs(request: Any) -> list[Need]:
        return [(TOPIC, t, operation) for t in _topic_names(getattr(request, field))]

    return needs


def _named_topic(operation: str) -> Callable[[Any], list[Need]]:
    return lambda request: [(TOPIC, request.name, operation)]


def _group(operation: str) -> Callable[[Any], list[Need]]:
    return lambda request: [(GROUP, request.group_id, operation)]


def _cluster(operation: str) -> Callable[[Any], list[Need]]:
    return lambda _request: [(CLUSTER, CLUSTER_NAME, operation)]


def _nothing(_request: Any) -> list[Need]:
    return []


def _commit_offsets(request: pb.CommitOffsetsRequest) -> list[Need]:
    return [(GROUP, request.group_id, "read"), *_each_topic("consume")(request)]


def _group_member(request: pb.GroupHeartbeatRequest) -> list[Need]:
    """A member acts for the group and names the topics it subscribes to: as in Kafka, it
    must see them, so a principal cannot learn a hidden topic's partitions from its
    assignment, nor take those partitions from members that may read them."""
    topics = dict.fromkeys(request.subscription.topics)
    return [(GROUP, request.group_id, "read"), *((TOPIC, t, "describe") for t in topics)]


def _fetch_committed(request: pb.FetchCommittedOffsetsRequest) -> list[Need]:
    return [(GROUP, request.group_id, "describe"), *_each_topic("describe")(request)]


def _reset_offsets(request: pb.ResetOffsetsRequest) -> list[Need]:
    # A dry run only reads; executing rewrites the group's position, as a commit does.
    group_op, topic_op = ("describe", "describe") if request.dry_run else ("read", "consume")
    return [(GROUP, request.group_id, group_op), *_each_topic(topic_op, "targets")(request)]


#: LogStore RPC name -> the (resource type, name, operation) triples a request needs.
#: InitProducerId only hands out an id: any authenticated principal may ask (each
#: produce is still checked per topic). ListTopics and ListGroups filter their answers.
RULES: dict[str, Callable[[Any], list[Need]]] = {
    "CreateTopic": _cluster("create"),
    "DeleteTopic": _named_topic("delete"),
    "ListTopics": _nothing,
    "DescribeTopic": _named_topic("describe"),
    "AlterTopicConfig": _named_topic("alter"),
    "AddPartitions": _named_topic("alter"),
    "InitProducerId": _nothing,
    "Produce": _each_topic("produce"),
    "ProduceStream": _each_topic("produce"),
    "Fetch": _each_topic("consume"),
    "FetchStream": _each_topic("consume"),
    "ListOffsets": _each_topic("describe"),
    "CommitOffsets": _commit_offsets,
    "FetchCommittedOffsets": _fetch_committed,
    "JoinGroup": _group_member,
    "Heartbeat": _group_member,
    "LeaveGroup": _group("read"),
    "ListGroups": _nothing,
    "DescribeGroup": _group("describe"),
    "DeleteGroup": _group("delete"),
    "ResetOffsets": _reset_offsets,
    "CreateAcls": _cluster("alter"),
    "DeleteAcls": _cluster("alter"),
    "DescribeAcls": _cluster("describe"),
    # Metadata answers only the topics the caller may describe (see RESPONSE_FILTERS);
    # DescribeCluster lists brokers, which every client needs to find leaders.
    "Metadata": _nothing,
    "DescribeCluster": _nothing,
    # Broker to broker: replication reads every record and reveals log layout, so only a
    # principal allowed cluster_action on the cluster (Kafka's ClusterAction: the brokers,
    # or a super user) may call them; it is apart from alter (managing ACLs). A broker's
    # ListOffsets to a partition's leader is the client RPC (describe on the topic), which
    # the broker principal passes as a super user.
    "ReplicaFetch": _cluster("cluster_action"),
    "OffsetForLeaderEpoch": _cluster("cluster_action"),
    "AlterPartitionReassignments": _cluster("alter"),
    "ListPartitionReassignments": _cluster("describe"),
    "FindCoordinator": _group("describe"),
}


def _keep(repeated: Any, wanted: Callable[[Any], bool]) -> None:
    kept = [item for item in repeated if wanted(item)]
    del repeated[:]
    repeated.extend(kept)


def _filter_topics(response: pb.ListTopicsResponse, allowed: Allowed) -> None:
    _keep(response.topics, lambda t: allowed(TOPIC, t.name, "describe"))


def _filter_groups(response: pb.ListGroupsResponse, allowed: Allowed) -> None:
    _keep(response.groups, lambda g: allowed(GROUP, g.group_id, "describe"))


def _filter_metadata(response: pb.MetadataResponse, allowed: Allowed) -> None:
    _keep(response.topics, lambda t: allowed(TOPIC, t.topic, "describe"))


def _filter_committed(response: pb.FetchCommittedOffsetsResponse, allowed: Allowed) -> None:
    # "Everything the group committed" must not reveal topics the caller may not see.
    _keep(response.offsets, lambda o: allowed(TOPIC, o.topic, "describe"))


#: RPC name -> trims its response to what the principal may describe
RESPONSE_FILTERS: dict[str, Callable[[Any, Allowed], None]] = {
    "ListTopics": _filter_topics,
    "ListGroups": _filter_groups,
    "FetchCommittedOffsets": _filter_committed,
    "Metadata": _filter_metadata,
}

_VERB = {"produce": "produce to", "consume": "consume from"}
#: what a refused request on the cluster resource was for, by RPC (default: by operation)
_CLUSTER_ACTS = {
    "ReplicaFetch": "fetch as a replica",
    "OffsetForLeaderEpoch": "fetch as a replica",
    "AlterPartitionReassignments": "reassign partitions",
    "ListPartitionReassignments": "list partition reassignments",
}


def denial(principal: str, resource_type: str, name: str, operation: str, rpc: str = "") -> str:
    """The PERMISSION_DENIED message: who may not do what to which resource (`rpc`, the
    request's RPC name, says what a cluster operation was for)."""
    if resource_type == CLUSTER:
        what = _CLUSTER_ACTS.get(rpc) or (
            "create topics" if operation == "create" else f"{operation} ACLs"
        )
        return f"{principal} may not {what} ({operation} on the cluster)"
    return f"{principal} may not {_VERB.get(operation, operation)} {resource_type} {name}"

"""Metadata (key 3): live brokers, the controller, and each partition's leader and replicas.

- Topics: v0 with an empty list, or v1+ with a null list, means every topic the principal
  may describe (internal ones flagged `is_internal`); otherwise the named topics.
- Names are answered once each; an invalid name (Kafka's rule: 1-249 of
  ``[a-zA-Z0-9._-]``) answers INVALID_TOPIC_EXCEPTION and is never created.
- An unknown named topic is created with `num.partitions` partitions when the listener
  has `auto.create.topics.enable`, the request allows it (v4+; always before), and the
  principal may create topics, as Kafka does; else UNKNOWN_TOPIC_OR_PARTITION.
- A partition without a live leader answers LEADER_NOT_AVAILABLE and leader -1; replicas
  on brokers that are not live are listed in `offline_replicas` (v5+).
- Leader epochs are the cluster's (standalone: 0), the same that Fetch, ListOffsets and
  OffsetForLeaderEpoch answer with, so clients never see them go backwards.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import errors as kafka_errors
from kafka.protocol.metadata import MetadataRequest, MetadataResponse

from logstore.acls import CLUSTER, CLUSTER_NAME, TOPIC
from logstore.errors import InvalidTopicError, LogStoreError, TopicExistsError
from logstore.server.kafka.context import RequestContext
from logstore.server.kafka.error_codes import error_code
from logstore.server.kafka.router import handles
from logstore.storage.log_config import is_internal_topic, validate_topic_name

log = logging.getLogger(__name__)

_Broker = MetadataResponse.MetadataResponseBroker
_Topic = MetadataResponse.MetadataResponseTopic
_Partition = _Topic.MetadataResponsePartition


@handles(MetadataRequest.API_KEY)
def metadata(ctx: RequestContext, request: Any) -> Any:
    broker = ctx.broker
    brokers = broker.brokers()
    live = {b.node_id for b in brokers}
    topics = [_describe(ctx, name, live) for name in _wanted(ctx, request)]
    return MetadataResponse(
        version=ctx.version,
        throttle_time_ms=0,
        brokers=[_Broker(node_id=b.node_id, host=b.host, port=b.port, rack=None) for b in brokers],
        cluster_id=broker.cluster_id(),
        controller_id=broker.controller_id(),
        topics=topics,
    )


def _wanted(ctx: RequestContext, request: Any) -> list[str]:
    """The topic names to answer for, auto-creating unknown ones where allowed."""
    requested = request.topics
    if requested is None or (ctx.version == 0 and not requested):
        return [
            name
            for name in ctx.broker.manager.topic_names()
            if ctx.broker.allowed(ctx.session, TOPIC, name, "describe")
        ]
    # As Kafka: each name once, however often it was asked for.
    names = list(dict.fromkeys(t.name for t in requested if t.name is not None))
    allow_create = ctx.version < 4 or bool(request.allow_auto_topic_creation)
    if allow_create and ctx.broker.settings.auto_create_topics:
        existing = set(ctx.broker.manager.topic_names())
        for name in names:
            if name not in existing and _valid_name(name):
                _maybe_create(ctx, name)
    return names


def _valid_name(name: str) -> bool:
    try:
        validate_topic_name(name)
    except InvalidTopicError:
        return False
    return True


def _maybe_create(ctx: RequestContext, name: str) -> None:
    broker = ctx.broker
    # As Kafka: never create what the principal could not then see.
    if not broker.allowed(ctx.session, CLUSTER, CLUSTER_NAME, "create"):
        return
    if not broker.allowed(ctx.session, TOPIC, name, "describe"):
        return
    try:
        broker.servicer.create_topic(name, broker.settings.num_partitions, 0, {})
        log.info("created topic %s on a Kafka client's Metadata request", name)
    except TopicExistsError:
        pass  # another client's Metadata created it first
    except LogStoreError as exc:  # e.g. an internal name: the topic's error code says so
        log.debug("did not auto-create topic %r: %s", name, exc)


def _describe(ctx: RequestContext, name: str, live: set[int]) -> Any:
    broker = ctx.broker
    internal = is_internal_topic(name)
    if not _valid_name(name):  # Kafka answers INVALID_TOPIC_EXCEPTION, whoever asks
        return _error_topic(name, kafka_errors.InvalidTopicError.errno, internal)
    if not broker.allowed(ctx.session, TOPIC, name, "describe"):
        return _error_topic(name, kafka_errors.TopicAuthorizationFailedError.errno, internal)
    try:
        count = len(broker.manager.topic(name).partitions)
    except LogStoreError as exc:
        return _error_topic(name, error_code(exc), internal)
    partitions = [_partition(ctx, name, index, live) for index in range(count)]
    return _Topic(
        error_code=0,
        name=name,
        is_internal=internal,
        partitions=partitions,
    )


def _partition(ctx: RequestContext, topic: str, index: int, live: set[int]) -> Any:
    leader, replicas, isr, leader_epoch = ctx.broker.servicer._leadership(topic, index)
    code = 0
    if leader < 0 or leader not in live:
        code = kafka_errors.LeaderNotAvailableError.errno
        leader = -1
    return _Partition(
        error_code=code,
        partition_index=index,
        leader_id=leader,
        leader_epoch=leader_epoch,
        replica_nodes=replicas,
        isr_nodes=isr,
        offline_replicas=[r for r in replicas if r not in live],
    )


def _error_topic(name: str, code: int, internal: bool) -> Any:
    return _Topic(
        error_code=code,
        name=name,
        is_internal=internal,
        partitions=[],
    )

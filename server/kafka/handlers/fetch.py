"""Fetch (key 1, v4-11): Kafka consumers read over the core's fetch path
(`logstore.server.fetch_path`), the same reads, limits and long polling as the gRPC API.

- Consumers only (replica_id -1): LogStore's followers replicate over their own
  protocol, so a replica's fetch is answered NOT_LEADER_OR_FOLLOWER, which Kafka answers a
  fetch from a broker that is not one of the partition's replicas.
- Sessionless (KIP-227): every answer has session_id 0, so clients keep sending full
  requests; an incremental one (session epoch > 0) is answered FETCH_SESSION_ID_NOT_FOUND,
  after which a client starts over with a full request.
- Records are the segment's bytes, whole batches from the one holding the fetch offset
  (a client skips the records before its position), below the high watermark; never
  decoded. read_committed reads to the last stable offset, which is the high watermark
  until transactions exist; aborted_transactions is therefore always empty.
- current_leader_epoch (v9+): older than the leader's is FENCED_LEADER_EPOCH, newer is
  UNKNOWN_LEADER_EPOCH; -1 is not checked. OFFSET_OUT_OF_RANGE carries the partition's
  log start offset and high watermark. A topic the principal may not consume is
  TOPIC_AUTHORIZATION_FAILED.
- Long poll (max_wait_ms, min_bytes) ends when data arrives, an error is to be reported,
  the wait is over, or the broker stops.
"""

from __future__ import annotations

from typing import Any, Final

from kafka import errors as kafka_errors
from kafka.protocol.consumer import FetchRequest, FetchResponse

from logstore.acls import TOPIC
from logstore.server import fetch_path
from logstore.server.fetch_path import FetchParams, FetchPartition, PartitionRead
from logstore.server.kafka.context import RequestContext
from logstore.server.kafka.error_codes import NONE, error_code
from logstore.server.kafka.router import handles

_TopicResponse = FetchResponse.FetchableTopicResponse
_PartitionResponse = _TopicResponse.PartitionData

#: Kafka's replica_id of a consumer; >= 0 is a broker's
CONSUMER_REPLICA_ID: Final = -1
#: isolation_level of a read_committed consumer
READ_COMMITTED: Final = 1
#: session epochs of a full (sessionless) request: 0 asks for a session, -1 for none
_FULL_REQUEST_EPOCHS: Final = (0, -1)
#: no preferred read replica (KIP-392): consumers read from the leader
_NO_READ_REPLICA: Final = -1

#: (topic, partition) -> the answer to give it without reading
_Refusals = dict[tuple[str, int], int]


@handles(FetchRequest.API_KEY)
def fetch(ctx: RequestContext, request: Any) -> Any:
    if ctx.version >= 7 and request.session_epoch not in _FULL_REQUEST_EPOCHS:
        return _response(ctx, [], kafka_errors.FetchSessionIdNotFoundError.errno)
    refused = _refusals(ctx, request)
    params = _params(request, refused)
    broker = ctx.broker
    reads = fetch_path.fetch(
        broker.manager,
        broker.cluster,
        params,
        broker.servicer.max_fetch_bytes,
        keep_waiting=lambda: not broker.stopping,
    )
    found = {(topic, read.partition): read for topic, answers in reads for read in answers}
    committed = request.isolation_level == READ_COMMITTED
    topics = []
    for fetch_topic in request.topics:
        partitions = []
        for fp in fetch_topic.partitions:
            key = (fetch_topic.topic, fp.partition)
            read = found.get(key)
            if read is None:
                read = PartitionRead(fp.partition, None, -1, -1, b"")
                partitions.append(_partition(ctx, read, refused[key], committed))
            else:
                code = NONE if read.error is None else error_code(read.error)
                partitions.append(_partition(ctx, read, code, committed))
        topics.append(_TopicResponse(topic=fetch_topic.topic, partitions=partitions))
    return _response(ctx, topics, NONE)


def _refusals(ctx: RequestContext, request: Any) -> _Refusals:
    """The partitions answered without a read: a replica's fetch, topics the principal
    may not consume."""
    refused: _Refusals = {}
    replica = request.replica_id >= 0
    for fetch_topic in request.topics:
        name = fetch_topic.topic
        code = NONE
        if replica:
            code = kafka_errors.NotLeaderForPartitionError.errno
        elif not ctx.broker.allowed(ctx.session, TOPIC, name, "consume"):
            code = kafka_errors.TopicAuthorizationFailedError.errno
        if code != NONE:
            refused.update({(name, fp.partition): code for fp in fetch_topic.partitions})
    return refused


def _params(request: Any, refused: _Refusals) -> FetchParams:
    """The fetch the core serves: the request without its refused partitions; an error to
    report answers at once, as the core does for its own errors."""
    topics = []
    for fetch_topic in request.topics:
        partitions = [
            FetchPartition(
                fp.partition,
                fp.fetch_offset,
                fp.partition_max_bytes,
                current_leader_epoch=fp.current_leader_epoch,
            )
            for fp in fetch_topic.partitions
            if (fetch_topic.topic, fp.partition) not in refused
        ]
        if partitions:
            topics.append((fetch_topic.topic, partitions))
    # min_bytes 0 asks for no wait at all (Kafka answers at once); the core reads 0 as 1.
    max_wait_ms = 0 if refused or request.min_bytes <= 0 else request.max_wait_ms
    return FetchParams(topics, max_wait_ms, request.min_bytes, request.max_bytes)


def _partition(ctx: RequestContext, read: PartitionRead, code: int, committed: bool) -> Any:
    fields: dict[str, Any] = {
        "partition_index": read.partition,
        "error_code": code,
        "high_watermark": read.high_watermark,
        # no transactions yet: the last stable offset is the high watermark
        "last_stable_offset": read.high_watermark,
        # Kafka sends a list to read_committed consumers only
        "aborted_transactions": [] if committed else None,
        "records": read.records,
    }
    if ctx.version >= 5:
        fields["log_start_offset"] = read.log_start_offset
    if ctx.version >= 11:
        fields["preferred_read_replica"] = _NO_READ_REPLICA
    return _PartitionResponse(**fields)


def _response(ctx: RequestContext, topics: list[Any], code: int) -> Any:
    fields: dict[str, Any] = {"throttle_time_ms": 0, "responses": topics}
    if ctx.version >= 7:
        fields["error_code"] = code
        fields["session_id"] = 0
    return FetchResponse(version=ctx.version, **fields)

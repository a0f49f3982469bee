"""ListOffsets (key 2, v1-5) and OffsetForLeaderEpoch (key 23, v2-3): where a consumer
starts, and whether its position survived a change of leader (KIP-320).

ListOffsets, per partition (`logstore.server.fetch_path.list_offset`):
- -1 (latest): the high watermark, the offset a consumer at the end reads next; for
  read_committed the last stable offset, which is the high watermark until transactions
  exist. -2 (earliest): the log start offset. A timestamp >= 0 (ms): the first offset
  whose record timestamp is at or after it, with that timestamp; -1/-1 when no readable
  record is that new.
- v1 answers one offset (never v0's old_style_offsets); v4+ adds the leader epoch of the
  batch holding the offset (latest: the leader's current one, the epoch Metadata
  reports) and checks current_leader_epoch (older: FENCED_LEADER_EPOCH, newer:
  UNKNOWN_LEADER_EPOCH).

OffsetForLeaderEpoch, for consumers: the end offset of the requested epoch (the largest
epoch <= it, and the offset where it ends), as the cluster's followers are answered;
standalone every partition stays at epoch 0, which ends at the log end offset.

Both are consumers' requests: replica_id >= 0 (a broker's) is answered
NOT_LEADER_OR_FOLLOWER, since LogStore's followers use their own protocol. Both need
describe on the topic (else TOPIC_AUTHORIZATION_FAILED); only the partition's leader
answers (NOT_LEADER_OR_FOLLOWER elsewhere).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

from kafka import errors as kafka_errors
from kafka.protocol.consumer import (
    ListOffsetsRequest,
    ListOffsetsResponse,
    OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse,
)

from logstore.acls import TOPIC
from logstore.errors import LogStoreError
from logstore.server import fetch_path
from logstore.server.kafka.context import RequestContext
from logstore.server.kafka.error_codes import NONE, error_code
from logstore.server.kafka.router import handles

_OffsetsTopic = ListOffsetsResponse.ListOffsetsTopicResponse
_OffsetsPartition = _OffsetsTopic.ListOffsetsPartitionResponse
_EpochTopic = OffsetForLeaderEpochResponse.OffsetForLeaderTopicResult
_EpochPartition = _EpochTopic.EpochEndOffset

_NOT_LEADER: Final = kafka_errors.NotLeaderForPartitionError.errno
_NOT_AUTHORIZED: Final = kafka_errors.TopicAuthorizationFailedError.errno
INVALID_REQUEST: Final = kafka_errors.InvalidRequestError.errno


def _topic_refusal(ctx: RequestContext, replica_id: int, name: str) -> int:
    """The error code every partition of the topic gets before any lookup, or NONE."""
    if replica_id >= 0:
        return _NOT_LEADER
    if not ctx.broker.allowed(ctx.session, TOPIC, name, "describe"):
        return _NOT_AUTHORIZED
    return NONE


@handles(ListOffsetsRequest.API_KEY)
def list_offsets(ctx: RequestContext, request: Any) -> Any:
    topics = []
    # As Kafka: a partition named twice is answered INVALID_REQUEST, both times, and not
    # looked up (a lookup by time may decode a whole batch: repeats would multiply it).
    named = Counter((t.name, p.partition_index) for t in request.topics for p in t.partitions)
    for topic in request.topics:
        refusal = _topic_refusal(ctx, request.replica_id, topic.name)
        partitions = [
            _listed(ctx, topic.name, p, INVALID_REQUEST)
            if named[(topic.name, p.partition_index)] > 1
            else _listed(ctx, topic.name, p, refusal)
            for p in topic.partitions
        ]
        topics.append(_OffsetsTopic(name=topic.name, partitions=partitions))
    fields: dict[str, Any] = {"topics": topics}
    if ctx.version >= 2:
        fields["throttle_time_ms"] = 0
    return ListOffsetsResponse(version=ctx.version, **fields)


def _listed(ctx: RequestContext, topic: str, request: Any, refusal: int) -> Any:
    code = refusal
    found = fetch_path.ListedOffset(-1, -1, fetch_path.NO_LEADER_EPOCH)
    if code == NONE:
        broker = ctx.broker
        try:
            # read_committed would stop at the last stable offset: the high watermark
            # while there are no transactions, which is where latest stops anyway.
            found = fetch_path.list_offset(
                broker.manager,
                broker.cluster,
                topic,
                request.partition_index,
                request.timestamp,
                request.current_leader_epoch,
            )
        except LogStoreError as exc:
            code = error_code(exc)
    fields: dict[str, Any] = {
        "partition_index": request.partition_index,
        "error_code": code,
        "timestamp": found.timestamp,
        "offset": found.offset,
    }
    if ctx.version >= 4:
        fields["leader_epoch"] = found.leader_epoch
    return _OffsetsPartition(**fields)


@handles(OffsetForLeaderEpochRequest.API_KEY)
def offset_for_leader_epoch(ctx: RequestContext, request: Any) -> Any:
    # v2 has no replica_id: only consumers sent it (the schema's default, -2, is theirs)
    replica_id = request.replica_id
    topics = []
    for topic in request.topics:
        refusal = _topic_refusal(ctx, replica_id, topic.topic)
        partitions = [_epoch_end(ctx, topic.topic, p, refusal) for p in topic.partitions]
        topics.append(_EpochTopic(topic=topic.topic, partitions=partitions))
    return OffsetForLeaderEpochResponse(version=ctx.version, throttle_time_ms=0, topics=topics)


def _epoch_end(ctx: RequestContext, topic: str, request: Any, refusal: int) -> Any:
    code = refusal
    epoch, end = fetch_path.NO_LEADER_EPOCH, -1
    if code == NONE:
        broker = ctx.broker
        try:
            epoch, end = fetch_path.end_offset_for_epoch(
                broker.manager,
                broker.cluster,
                topic,
                request.partition,
                request.leader_epoch,
                request.current_leader_epoch,
            )
        except LogStoreError as exc:
            code = error_code(exc)
    return _EpochPartition(
        error_code=code, partition=request.partition, leader_epoch=epoch, end_offset=end
    )

"""Produce (key 0) and InitProducerId (key 22): Kafka producers append over the core's
produce path (`logstore.server.produce_path`), the same validation, append and acks as
the gRPC API.

- Produce v0-2 are advertised (librdkafka's feature check needs the range to start at 0)
  but answered UNSUPPORTED_VERSION per partition, as Kafka 4 does: they predate record
  batches (magic 2).
- acks 0, 1 or -1 (all); any other value is INVALID_REQUIRED_ACKS for every partition and
  nothing is written. acks=0 gets no response; when such a produce fails the connection
  is closed, as Kafka does, so that the producer notices (it refreshes its metadata).
- Per partition: base_offset, log_append_time_ms (-1 unless the topic uses
  LogAppendTime), log_start_offset (v5+), error_message (v8+). A partition whose topic
  the principal may not produce to is TOPIC_AUTHORIZATION_FAILED; the core's errors map
  through `error_codes` (an internal topic such as `__consumer_offsets` is
  INVALID_TOPIC_EXCEPTION; a bad batch is refused on its own, the other partitions are
  appended, as Kafka does).
- Record batches go from the request to the segment as bytes: never decoded here.
- Transactions do not exist yet: a request with a transactional id, or with a
  transactional batch, is refused whole (see `_TRANSACTIONS_REFUSED`), nothing written.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from kafka import errors as kafka_errors
from kafka.protocol.producer import (
    InitProducerIdRequest,
    InitProducerIdResponse,
    ProduceRequest,
    ProduceResponse,
)

from logstore.acls import TOPIC
from logstore.codec import record_batch as rb
from logstore.errors import AuthorizationError, LogStoreError
from logstore.server import produce_path
from logstore.server.kafka.context import RequestContext
from logstore.server.kafka.error_codes import NONE, error_code, error_message
from logstore.server.kafka.router import NotServed, handles
from logstore.server.produce_path import PartitionAppend, PartitionBatches

log = logging.getLogger(__name__)

_TopicResponse = ProduceResponse.TopicProduceResponse
_PartitionResponse = _TopicResponse.PartitionProduceResponse

#: the first Produce version served: v3 brought record batches (magic 2)
FIRST_SERVED_VERSION: Final = 3
#: Kafka answers a transactional produce whose transactional id it will not let the
#: principal use with this code, for every partition (KafkaApis.handleProduceRequest).
#: Until LogStore has transactions no principal may use one, and the code is fatal in
#: every client: a retriable one (COORDINATOR_NOT_AVAILABLE) would have them retry for
#: ever.
_TRANSACTIONS_REFUSED: Final = kafka_errors.TransactionalIdAuthorizationFailedError.errno
_TRANSACTIONS_MESSAGE: Final = "transactions are not supported by this broker yet"
_COORDINATOR_NOT_AVAILABLE: Final = kafka_errors.CoordinatorNotAvailableError.errno


@handles(ProduceRequest.API_KEY)
def produce(ctx: RequestContext, request: Any) -> Any:
    whole = _whole_request_refusal(ctx, request)
    if whole is not None:
        code, message = whole
        if request.acks == 0:
            raise NotServed(f"acks=0 produce refused: {message}")
        return _response(ctx, request, {}, (code, message))
    batches, refused = _admitted(ctx, request)
    appended = produce_path.append(
        ctx.broker.manager, ctx.broker.cluster, request.acks, batches, strict=False
    )
    if request.acks == 0:
        _close_if_failed(refused, appended.results)
        return None
    try:
        produce_path.await_acks(ctx.broker.cluster, appended)
    except (LogStoreError, OSError) as exc:  # e.g. a full disk: answered, not a bug
        log.warning("a Kafka produce could not be made durable: %s", exc)
        produce_path.fail_awaiting(appended, exc)
    return _response(ctx, request, _by_key(refused + appended.results), None)


def _whole_request_refusal(ctx: RequestContext, request: Any) -> tuple[int, str] | None:
    """(error code, message) every partition gets when the request as a whole cannot be
    served; None when each partition is judged on its own."""
    if ctx.version < FIRST_SERVED_VERSION:
        return (
            kafka_errors.UnsupportedVersionError.errno,
            f"Produce v{ctx.version} is not served: use v{FIRST_SERVED_VERSION} or later",
        )
    if request.acks not in produce_path.ACKS_VALUES:
        return (
            kafka_errors.InvalidRequiredAcksError.errno,
            f"acks must be 0, 1 or -1 (all), got {request.acks}",
        )
    if request.transactional_id is not None or _has_transactional_batch(request):
        return _TRANSACTIONS_REFUSED, _TRANSACTIONS_MESSAGE
    named = [(t.name, p.index) for t in request.topic_data for p in t.partition_data]
    if len(set(named)) != len(named):
        # Kafka keeps one batch set per partition; appending both would answer each entry
        # with one offset and leave the producer unable to tell which was which.
        return kafka_errors.InvalidRequestError.errno, "a partition appears twice in the request"
    return None


def _has_transactional_batch(request: Any) -> bool:
    """Whether any batch has the transactional bit (headers only; framing that does not
    parse is left to the core's validation, which refuses it)."""
    for topic_data in request.topic_data:
        for part_data in topic_data.partition_data:
            records = part_data.records or b""
            if any(header.is_transactional for _, header in rb.iter_batches(records)):
                return True
    return False


def _admitted(
    ctx: RequestContext, request: Any
) -> tuple[list[PartitionBatches], list[PartitionAppend]]:
    """(partitions for the core, partitions refused here: not authorized)."""
    batches: list[PartitionBatches] = []
    refused: list[PartitionAppend] = []
    for topic_data in request.topic_data:
        name = topic_data.name
        denied = _topic_refusal(ctx, name)
        for part_data in topic_data.partition_data:
            if denied is not None:
                refused.append(PartitionAppend(name, part_data.index, error=denied))
                continue
            # null records: no batch, which the core's validation refuses as corrupt
            records = part_data.records if part_data.records is not None else b""
            batches.append(PartitionBatches(name, part_data.index, records))
    return batches, refused


def _topic_refusal(ctx: RequestContext, name: str) -> AuthorizationError | None:
    if ctx.broker.allowed(ctx.session, TOPIC, name, "produce"):
        return None
    return AuthorizationError(f"{ctx.session.principal} may not produce to topic {name!r}")


def _close_if_failed(refused: list[PartitionAppend], results: list[PartitionAppend]) -> None:
    """acks=0 has no response to carry an error: close the connection instead."""
    for result in refused + results:
        if result.error is not None:
            raise NotServed(
                f"acks=0 produce to {result.topic}-{result.partition} failed: {result.error}"
            )


def _by_key(results: list[PartitionAppend]) -> dict[tuple[str, int], PartitionAppend]:
    return {(r.topic, r.partition): r for r in results}


def _response(
    ctx: RequestContext,
    request: Any,
    results: dict[tuple[str, int], PartitionAppend],
    whole: tuple[int, str] | None,
) -> Any:
    """The response in the request's order; `whole`: the (code, message) of every
    partition when the request was refused as a whole."""
    topics = []
    for topic_data in request.topic_data:
        partitions = []
        for part_data in topic_data.partition_data:
            result = results.get((topic_data.name, part_data.index))
            partitions.append(_partition(ctx, part_data.index, result, whole))
        topics.append(_TopicResponse(name=topic_data.name, partition_responses=partitions))
    fields: dict[str, Any] = {"responses": topics}
    if ctx.version >= 1:
        fields["throttle_time_ms"] = 0
    return ProduceResponse(version=ctx.version, **fields)


def _partition(
    ctx: RequestContext,
    index: int,
    result: PartitionAppend | None,
    whole: tuple[int, str] | None,
) -> Any:
    code, message = NONE, None
    base_offset, append_time, log_start = -1, -1, -1
    if whole is not None:
        code, message = whole
    elif result is None:
        raise AssertionError(f"partition {index} has no result")
    elif result.error is not None:
        code, message = error_code(result.error), error_message(result.error)
        log_start = result.log_start_offset
    else:
        base_offset, append_time = result.base_offset, result.log_append_time
        log_start = result.log_start_offset
    fields: dict[str, Any] = {"index": index, "error_code": code, "base_offset": base_offset}
    if ctx.version >= 2:
        fields["log_append_time_ms"] = append_time
    if ctx.version >= 5:
        fields["log_start_offset"] = log_start
    if ctx.version >= 8:
        fields["record_errors"] = []
        fields["error_message"] = message
    return _PartitionResponse(**fields)


@handles(InitProducerIdRequest.API_KEY)
def init_producer_id(ctx: RequestContext, request: Any) -> Any:
    """A new idempotent producer id at epoch 0, as the gRPC InitProducerId hands out
    (cluster mode: from this broker's block of the cluster's ids). Any principal may ask:
    an id lets it write nothing by itself (produce checks the topic's ACL)."""
    if request.transactional_id is not None:
        # Kafka refuses an empty transactional id as INVALID_REQUEST; any other one is
        # refused as `produce` refuses it, until transactions exist.
        code = _TRANSACTIONS_REFUSED
        if request.transactional_id == "":
            code = kafka_errors.InvalidRequestError.errno
        return _init_response(ctx, code)
    try:
        producer_id = ctx.broker.servicer.producer_ids.next_id()
    except (LogStoreError, OSError) as exc:
        # E.g. etcd unreachable while reserving a block: every client retries this code.
        log.warning("could not hand out a producer id to a Kafka client: %s", exc)
        return _init_response(ctx, _COORDINATOR_NOT_AVAILABLE)
    return _init_response(ctx, NONE, producer_id, 0)


def _init_response(
    ctx: RequestContext, code: int, producer_id: int = -1, producer_epoch: int = -1
) -> Any:
    return InitProducerIdResponse(
        version=ctx.version,
        throttle_time_ms=0,
        error_code=code,
        producer_id=producer_id,
        producer_epoch=producer_epoch,
    )

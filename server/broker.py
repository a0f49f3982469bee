"""The gRPC servicer: a thin adapter from `logstore.v1` requests to the core.

Each handler decodes a request, calls the log manager or offset store, and encodes the
answer. Record batches travel as bytes from request to segment and from segment to
response; the only per-batch work is validation (header + CRC) and the offset patch.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from logstore.codec.wire import (
    NO_ERROR,
    PartitionAnswer,
    TopicAnswers,
    decode_produce_request,
    encode_response,
    passthrough,
)
from logstore.errors import (
    InvalidConfigError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    LogStoreError,
)
from logstore.server import fetch_path, produce_path
from logstore.server.cluster.service import ClusterHandlers
from logstore.server.errors import abort, error_message, handles_errors
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offset_reset import LocalOffsets, PartitionOffsets
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.groups.service import GroupHandlers
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage.log_config import is_internal_topic
from logstore.storage.log_manager import LogManager, Topic
from logstore.storage.meta_properties import load_or_create_cluster_id
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from logstore.server.cluster.node import ClusterNode

log = logging.getLogger(__name__)

ACKS_ALL = produce_path.ACKS_ALL
#: the most a single fetch response may carry (Kafka's fetch.max.bytes default)
DEFAULT_MAX_FETCH_BYTES = 50 * 1024 * 1024
#: the largest gRPC request the broker accepts by default (BrokerSettings.max_request_bytes)
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: room in a produce request for everything but the batch: topic name, field tags (bytes)
_REQUEST_FRAMING_BYTES = 4096
#: requests a cluster-mode produce stream appends ahead of the answer it is waiting on
_PIPELINE_DEPTH = 8
#: FetchPartition.fetch_offset on a FetchStream: where the stream's last answer ended
CONTINUE_OFFSET = -1

#: (topic, partition)
_Key = fetch_path.Key

SERVICE = pb.DESCRIPTOR.services_by_name["LogStore"]
#: methods whose handlers yield responses already serialized (see `logstore.codec.wire`)
_PRESERIALIZED = frozenset({"FetchStream"})
#: methods whose requests are read by hand, leaving record batches in the received bytes
_HAND_PARSED: dict[str, Callable[[bytes], Any]] = {"ProduceStream": decode_produce_request}


class MalformedRequest:
    """Stands in for request bytes that do not parse as the RPC's message, so the handler
    answers INVALID_ARGUMENT: a deserializer that raises makes gRPC answer INTERNAL."""

    def __init__(self, message_name: str, error: str) -> None:
        self.message = f"malformed {message_name}: {error or 'the bytes do not parse'}"


def lenient_parser(
    message_cls: Any, decode: Callable[[bytes], Any] | None = None
) -> Callable[[bytes], Any]:
    """Parse with `decode` (default: the message class) into a request or MalformedRequest."""
    decode = decode or message_cls.FromString

    def parse(data: bytes) -> Any:
        try:
            return decode(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return MalformedRequest(message_cls.DESCRIPTOR.full_name, str(exc))

    return parse


def rejecting_malformed(method: Callable[..., Any], streaming_request: bool) -> Callable[..., Any]:
    """Wrap a servicer method so a MalformedRequest ends the RPC with INVALID_ARGUMENT."""

    def check(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return request

    if streaming_request:

        @functools.wraps(method)
        def streaming(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return method((check(r, context) for r in request_iterator), context)

        return streaming

    @functools.wraps(method)
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        return method(check(request, context), context)

    return unary


def add_servicer_to_server(servicer: pb_grpc.LogStoreServicer, server: grpc.Server) -> None:
    """Register `servicer` like the generated `add_LogStoreServicer_to_server`, except that
    request bytes which do not parse get INVALID_ARGUMENT instead of INTERNAL."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for method in SERVICE.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        factory = factories[(method.client_streaming, method.server_streaming)]
        serialize = response_cls.SerializeToString
        if method.name in _PRESERIALIZED:
            serialize = passthrough
        handlers[method.name] = factory(
            rejecting_malformed(getattr(servicer, method.name), method.client_streaming),
            request_deserializer=lenient_parser(request_cls, _HAND_PARSED.get(method.name)),
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _as_proto(topics: TopicAnswers) -> pb.FetchResponse:
    """The FetchResponse message of `topics`."""
    # Built in place: passing finished messages to a constructor deep-copies them, and
    # with them every record byte (that was half the broker's time on 1 MiB fetches).
    response = pb.FetchResponse()
    for topic, answers in topics:
        results = response.topics.add(topic=topic).partitions
        for answer in answers:
            result = results.add(partition=answer.partition)
            if answer.error.code:
                result.error.CopyFrom(answer.error)
                continue
            result.records = answer.records
            result.high_watermark = answer.high_watermark
            result.log_start_offset = answer.log_start_offset
    return response


def _produce_result(result: produce_path.PartitionAppend) -> pb.ProducePartitionResult:
    """The ProducePartitionResult message of one partition's append."""
    answer = pb.ProducePartitionResult(partition=result.partition, base_offset=result.base_offset)
    if result.log_start_offset >= 0:
        answer.log_start_offset = result.log_start_offset
    if result.error is not None:
        answer.error.CopyFrom(error_message(result.error))
    else:
        answer.log_append_time = result.log_append_time
        answer.duplicate = result.duplicate
    return answer


def _fetch_params(request: pb.FetchRequest) -> fetch_path.FetchParams:
    """The protocol-neutral form of a FetchRequest."""
    topics = [
        (
            fetch_topic.topic,
            [
                fetch_path.FetchPartition(
                    fp.partition, fp.fetch_offset, fp.partition_max_bytes, fp.skip_bytes
                )
                for fp in fetch_topic.partitions
            ],
        )
        for fetch_topic in request.topics
    ]
    return fetch_path.FetchParams(topics, request.max_wait_ms, request.min_bytes, request.max_bytes)


def _fetch_answers(reads: fetch_path.ReadTopics) -> TopicAnswers:
    """`reads` as the answers FetchResponse encodes (an error answer has no offsets)."""
    answers: TopicAnswers = []
    for topic, partitions in reads:
        answers.append(
            (
                topic,
                [
                    PartitionAnswer(r.partition, error_message(r.error), 0, 0, b"")
                    if r.error is not None
                    else PartitionAnswer(
                        r.partition, NO_ERROR, r.high_watermark, r.log_start_offset, r.records
                    )
                    for r in partitions
                ],
            )
        )
    return answers


class _RequestQueue:
    """Reads a request stream in a thread of its own, so that the handler can notice the
    next request while it is long-polling for the current one.

    `on_arrival` is called after each request is queued and when the stream ends. An
    exception from the stream (e.g. an abort by a per-message check) is raised by `take`.
    """

    def __init__(self, requests: Iterator[Any], on_arrival: Callable[[], None]) -> None:
        self._cond = threading.Condition()
        self._items: deque[Any] = deque()
        self._ended = False
        self._error: BaseException | None = None
        self._on_arrival = on_arrival
        self._thread = threading.Thread(
            target=self._pump, args=(requests,), name="logstore-fetch-stream", daemon=True
        )
        self._thread.start()

    def _pump(self, requests: Iterator[Any]) -> None:
        try:
            for request in requests:
                with self._cond:
                    self._items.append(request)
                    self._cond.notify_all()
                self._on_arrival()
        except BaseException as exc:  # handed to the handler thread, which raises it
            self._error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._on_arrival()

    def pending(self) -> bool:
        """Whether a request is waiting or the stream has ended (a long poll should stop)."""
        return bool(self._items) or self._ended

    def take(self) -> Any | None:
        """The next request, or None when the stream has ended."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._ended)
            if self._items:
                return self._items.popleft()
            if self._error is not None:
                raise self._error
            return None


class LogStoreServicer(ClusterHandlers, GroupHandlers, pb_grpc.LogStoreServicer):
    """Serves the LogStore API over one log manager."""

    def __init__(
        self,
        manager: LogManager,
        offsets: OffsetStore,
        producer_ids: ProducerIdManager,
        coordinator: GroupCoordinator,
        *,
        max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        cluster: ClusterNode | None = None,
    ) -> None:
        self.manager = manager
        #: see `standalone_cluster_id`
        self._cluster_id: str | None = None
        #: None for a standalone broker
        self.cluster = cluster
        #: partition offset ranges for group lag and offset resets: the leaders' in a cluster
        self.partition_offsets: PartitionOffsets = LocalOffsets(manager)
        self.offsets = offsets
        self.producer_ids = producer_ids
        self.coordinator = coordinator
        #: set when the broker starts shutting down: long polls return at once
        self.stopping = False
        self._streams: set[grpc.ServicerContext] = set()
        self._streams_lock = threading.Lock()
        self.max_fetch_bytes = max_fetch_bytes
        #: max.message.bytes may not exceed this (bytes): a larger batch could never arrive
        self.max_message_bytes_limit = max_request_bytes - _REQUEST_FRAMING_BYTES

    # --- topics ------------------------------------------------------------------------------

    def _describe(self, topic: Topic) -> pb.TopicDescription:
        partitions = []
        for i, p in enumerate(topic.partitions):
            leader, replicas, isr, leader_epoch = self._leadership(topic.name, i)
            partitions.append(
                pb.PartitionDescription(
                    partition=i,
                    log_start_offset=p.log_start_offset,
                    log_end_offset=p.log_end_offset,
                    high_watermark=p.high_watermark,
                    size_bytes=p.size_bytes,
                    segment_count=p.segment_count,
                    leader=leader,
                    replicas=replicas,
                    isr=isr,
                    leader_epoch=leader_epoch,
                )
            )
        return pb.TopicDescription(
            name=topic.name,
            topic_id=topic.topic_id,
            internal=is_internal_topic(topic.name),
            partitions=partitions,
            config=topic.config.to_properties(),
            config_overrides=topic.config_overrides,
        )

    def standalone_cluster_id(self) -> str:
        """A standalone broker's cluster id, made once per data directory and kept in its
        meta.properties (Kafka's file): Kafka clients expect one in Metadata."""
        if self._cluster_id is None:
            self._cluster_id = load_or_create_cluster_id(self.manager.data_dir)
        return self._cluster_id

    @staticmethod
    def _refuse_internal(name: str, action: str) -> None:
        if is_internal_topic(name):
            raise InvalidRequestError(f"cannot {action} internal topic {name!r}")

    def _check_message_limit(self, overrides: dict[str, str]) -> None:
        """Refuse a max.message.bytes that no produce request could carry."""
        config = self.manager.default_config.with_overrides(overrides)
        if config.max_message_bytes > self.max_message_bytes_limit:
            raise InvalidConfigError(
                f"invalid value {config.max_message_bytes} for max.message.bytes: the broker "
                f"accepts requests of at most {self.max_message_bytes_limit} bytes of batches"
            )

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, config: dict[str, str]
    ) -> Topic:
        """Create a topic (through the controller's records in cluster mode); raises the
        core's errors. Shared by the gRPC and Kafka APIs. `replication_factor` 0: the
        cluster's default (standalone: 1)."""
        self._refuse_internal(name, "create")
        self._check_message_limit(config)
        if self.cluster is not None:
            self.cluster.create_topic(name, partitions, replication_factor, config)
            return self.manager.topic(name)
        if replication_factor > 1:
            raise InvalidReplicationFactorError(
                f"replication factor {replication_factor} needs a cluster: this "
                "broker runs standalone, with one copy of each partition"
            )
        return self.manager.create_topic(name, partitions, config)

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its groups' committed offsets for it; raises the core's errors."""
        self._refuse_internal(name, "delete")
        if self.cluster is not None:
            self.cluster.delete_topic(name)
            return
        self.manager.delete_topic(name)
        self.offsets.delete_topic(name)

    @handles_errors
    def CreateTopic(self, request: pb.CreateTopicRequest, context: Any) -> pb.CreateTopicResponse:
        topic = self.create_topic(
            request.name, request.partitions, request.replication_factor, dict(request.config)
        )
        return pb.CreateTopicResponse(topic=self._describe(topic))

    @handles_errors
    def DeleteTopic(self, request: pb.DeleteTopicRequest, context: Any) -> pb.DeleteTopicResponse:
        self.delete_topic(request.name)
        return pb.DeleteTopicResponse()

    @handles_errors
    def ListTopics(self, request: pb.ListTopicsRequest, context: Any) -> pb.ListTopicsResponse:
        listings = []
        for name in self.manager.topic_names():
            internal = is_internal_topic(name)
            if internal and not request.include_internal:
                continue
            topic = self.manager.topic(name)
            listings.append(
                pb.TopicListing(name=name, partitions=len(topic.partitions), internal=internal)
            )
        return pb.ListTopicsResponse(topics=listings)

    @handles_errors
    def DescribeTopic(
        self, request: pb.DescribeTopicRequest, context: Any
    ) -> pb.DescribeTopicResponse:
        return pb.DescribeTopicResponse(topic=self._describe(self.manager.topic(request.name)))

    def alter_topic_config(self, name: str, changes: dict[str, str | None]) -> Topic:
        """Set (value) or remove (None) a topic's config overrides; raises the core's errors."""
        self._refuse_internal(name, "alter")
        overrides = dict(self.manager.topic(name).config_overrides)
        overrides.update({k: v for k, v in changes.items() if v is not None})
        for key, value in changes.items():
            if value is None:
                overrides.pop(key, None)
        self._check_message_limit(overrides)
        if self.cluster is not None:
            self.cluster.alter_topic_config(name, overrides)
            return self.manager.topic(name)
        return self.manager.alter_config(name, changes)

    def add_partitions(self, name: str, total_count: int) -> Topic:
        """Grow a topic to `total_count` partitions; raises the core's errors."""
        self._refuse_internal(name, "add partitions to")
        if self.cluster is not None:
            self.cluster.add_partitions(name, total_count)
            return self.manager.topic(name)
        return self.manager.add_partitions(name, total_count)

    @handles_errors
    def AlterTopicConfig(
        self, request: pb.AlterTopicConfigRequest, context: Any
    ) -> pb.AlterTopicConfigResponse:
        changes: dict[str, str | None] = dict(request.set)
        changes.update({key: None for key in request.delete})
        topic = self.alter_topic_config(request.name, changes)
        return pb.AlterTopicConfigResponse(topic=self._describe(topic))

    @handles_errors
    def AddPartitions(
        self, request: pb.AddPartitionsRequest, context: Any
    ) -> pb.AddPartitionsResponse:
        topic = self.add_partitions(request.name, request.total_count)
        return pb.AddPartitionsResponse(topic=self._describe(topic))

    # --- produce -----------------------------------------------------------------------------

    @handles_errors
    def InitProducerId(
        self, request: pb.InitProducerIdRequest, context: Any
    ) -> pb.InitProducerIdResponse:
        return pb.InitProducerIdResponse(producer_id=self.producer_ids.next_id(), producer_epoch=0)

    def _produce(self, request: pb.ProduceRequest, strict: bool = True) -> pb.ProduceResponse:
        return self._answer(request, self._append_request(request, strict))

    def _answer(
        self, request: pb.ProduceRequest, appended: produce_path.AppendedRequest
    ) -> pb.ProduceResponse:
        """Wait until the acks=all batches are durable, then build the response."""
        produce_path.await_acks(self.cluster, appended)
        by_topic: dict[str, list[pb.ProducePartitionResult]] = {}
        for result in appended.results:
            by_topic.setdefault(result.topic, []).append(_produce_result(result))
        return pb.ProduceResponse(
            topics=[pb.ProduceTopicResult(topic=t, partitions=r) for t, r in by_topic.items()],
            correlation_id=request.correlation_id,
        )

    def _append_request(
        self, request: pb.ProduceRequest, strict: bool
    ) -> produce_path.AppendedRequest:
        """Append a produce request's batches (`produce_path.append`). `strict` (unary
        Produce): the first bad partition fails the whole request, so nothing is
        appended. Otherwise (ProduceStream) a bad partition gets its own error and the
        others proceed, so one bad batch does not cost the requests pipelined behind it."""
        partitions = [
            # ProduceStream: views of the received bytes; Produce: each access copies, so once
            produce_path.PartitionBatches(topic_data.topic, part_data.partition, part_data.records)
            for topic_data in request.topics
            for part_data in topic_data.partitions
        ]
        return produce_path.append(self.manager, self.cluster, request.acks, partitions, strict)

    @handles_errors
    def Produce(self, request: pb.ProduceRequest, context: Any) -> pb.ProduceResponse:
        return self._produce(request)

    def ProduceStream(
        self, request_iterator: Iterator[pb.ProduceRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProduceResponse]:
        """Answer each request in order, with per-partition errors for bad batches. Only a
        request that is wrong as a whole (e.g. bad acks) ends the stream with a status."""
        with self._streams_lock:
            self._streams.add(context)
        if self.cluster is not None:
            try:
                yield from self._pipelined_produce(request_iterator, context)
            finally:
                with self._streams_lock:
                    self._streams.discard(context)
            return
        try:
            for request in request_iterator:
                try:
                    yield self._produce(request, strict=False)
                except (LogStoreError, OSError) as exc:
                    exc.args = (f"request {request.correlation_id}: {exc}",)
                    abort(context, exc)
        finally:
            with self._streams_lock:
                self._streams.discard(context)

    def _pipelined_produce(
        self, request_iterator: Iterator[pb.ProduceRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ProduceResponse]:
        """ProduceStream in cluster mode: a reader thread appends each request as it
        arrives while the answers wait, in order, for the ISR; so an acks=all request does
        not hold back the append of the ones behind it (replication of several requests
        overlaps). Answers and errors keep the order of the requests."""
        appended: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=_PIPELINE_DEPTH)
        done = threading.Event()

        def put(item: tuple[str, Any]) -> bool:
            while not done.is_set():
                try:
                    appended.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def pump() -> None:
            try:
                for request in request_iterator:
                    try:
                        item = (request, self._append_request(request, strict=False))
                    except (LogStoreError, OSError) as exc:
                        exc.args = (f"request {request.correlation_id}: {exc}",)
                        put(("refused", exc))
                        return
                    if not put(("appended", item)):
                        return
            except BaseException as exc:  # the stream failed: raised by the handler
                put(("failed", exc))
                return
            put(("ended", None))

        reader = threading.Thread(target=pump, name="logstore-produce-stream", daemon=True)
        reader.start()
        try:
            while True:
                kind, item = appended.get()
                if kind == "ended":
                    return
                if kind == "refused":
                    abort(context, item)
                if kind == "failed":
                    raise item
                request, appended_request = item
                yield self._answer(request, appended_request)
        finally:
            done.set()

    def begin_shutdown(self) -> None:
        """Wake long polls and end open produce streams, so a graceful stop does not wait
        out its grace period for clients that would keep them open forever. A request being
        appended completes first; its producer retries an unanswered one (idempotently)."""
        self.stopping = True
        self.manager.appends.notify()
        with self._streams_lock:
            streams = list(self._streams)
        for context in streams:
            context.cancel()

    # --- fetch -------------------------------------------------------------------------------

    @handles_errors
    def Fetch(self, request: pb.FetchRequest, context: grpc.ServicerContext) -> pb.FetchResponse:
        return _as_proto(self._fetch(request, context))

    def _fetch(
        self,
        request: pb.FetchRequest,
        context: grpc.ServicerContext,
        resolve: fetch_path.Resolver | None = None,
        ends: dict[_Key, int] | None = None,
        interrupted: Callable[[], bool] | None = None,
    ) -> TopicAnswers:
        """Answer one fetch, long-polling as it asks (`fetch_path.fetch`: `resolve`, `ends`
        and `interrupted` are its)."""

        def keep_waiting() -> bool:
            return not self.stopping and context.is_active()

        reads = fetch_path.fetch(
            self.manager,
            self.cluster,
            _fetch_params(request),
            self.max_fetch_bytes,
            keep_waiting,
            resolve,
            ends,
            interrupted,
        )
        return _fetch_answers(reads)

    def FetchStream(
        self, request_iterator: Iterator[pb.FetchRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Answer each fetch in order, as Fetch would (encoded FetchResponse bytes, see
        `logstore.codec.wire`); fetch_offset -1 continues where this
        stream's previous answer for the partition ended. A long poll ends early when the
        next request arrives. Only a failure of the whole stream ends it with a status."""
        with self._streams_lock:
            self._streams.add(context)
        requests = _RequestQueue(request_iterator, self.manager.appends.poke)
        #: where the last answer for each partition ended: what fetch_offset -1 reads from
        positions: dict[_Key, int] = {}

        def resolve(topic: str, partition: int, offset: int) -> int:
            if offset != CONTINUE_OFFSET:
                return offset
            found = positions.get((topic, partition))
            if found is None:
                raise InvalidRequestError(
                    f"{topic}-{partition}: fetch_offset -1 continues an earlier fetch of the "
                    "partition on this stream, and there is none: send an offset first"
                )
            return found

        try:
            while not self.stopping:
                request = requests.take()
                if request is None:
                    return
                ends: dict[_Key, int] = {}
                try:
                    answers = self._fetch(request, context, resolve, ends, requests.pending)
                except (LogStoreError, OSError) as exc:
                    abort(context, exc)
                positions.update(ends)
                yield encode_response(answers)
        finally:
            with self._streams_lock:
                self._streams.discard(context)

    # --- offsets -----------------------------------------------------------------------------

    @handles_errors
    def ListOffsets(self, request: pb.ListOffsetsRequest, context: Any) -> pb.ListOffsetsResponse:
        topics = []
        for lt in request.topics:
            results = []
            for lp in lt.partitions:
                result = pb.ListOffsetsPartitionResult(partition=lp.partition, timestamp=-1)
                try:
                    found = fetch_path.list_offset(
                        self.manager, self.cluster, lt.topic, lp.partition, lp.timestamp
                    )
                    result.offset, result.timestamp = found.offset, found.timestamp
                except LogStoreError as exc:
                    result.error.CopyFrom(error_message(exc))
                results.append(result)
            topics.append(pb.ListOffsetsTopicResult(topic=lt.topic, partitions=results))
        return pb.ListOffsetsResponse(topics=topics)

    @handles_errors
    def CommitOffsets(
        self, request: pb.CommitOffsetsRequest, context: Any
    ) -> pb.CommitOffsetsResponse:
        if not request.group_id:
            raise InvalidRequestError("group_id must not be empty")
        offsets: dict[tuple[str, int], tuple[int, str]] = {}
        topics = []
        for ct in request.topics:
            results = []
            for cp in ct.partitions:
                result = pb.CommitPartitionResult(partition=cp.partition)
                try:
                    self.manager.partition(ct.topic, cp.partition)
                    if cp.offset < 0:
                        raise InvalidRequestError(
                            f"cannot commit offset {cp.offset} for {ct.topic}-{cp.partition}"
                        )
                    offsets[(ct.topic, cp.partition)] = (cp.offset, cp.metadata)
                except LogStoreError as exc:
                    result.error.CopyFrom(error_message(exc))
                results.append(result)
            topics.append(pb.CommitTopicResult(topic=ct.topic, partitions=results))
        self.check_coordinator(request.group_id)
        if offsets:
            member_id = request.member_id
            epoch = request.generation_id if member_id else -1
            self.coordinator.validate_commit(request.group_id, member_id, epoch, offsets)
            self.offsets.commit(request.group_id, offsets)
        return pb.CommitOffsetsResponse(topics=topics)

    @handles_errors
    def FetchCommittedOffsets(
        self, request: pb.FetchCommittedOffsetsRequest, context: Any
    ) -> pb.FetchCommittedOffsetsResponse:
        wanted: list[tuple[str, int]] | None = None
        if request.topics:
            wanted = []
            for tp in request.topics:
                partitions = list(tp.partitions)
                if not partitions:
                    partitions = list(range(len(self.manager.topic(tp.topic).partitions)))
                wanted.extend((tp.topic, p) for p in partitions)
        self.check_coordinator(request.group_id)
        committed = self.offsets.fetch(request.group_id, wanted)
        keys = wanted if wanted is not None else sorted(committed)
        entries = []
        for topic, partition in keys:
            c = committed.get((topic, partition))
            entries.append(
                pb.CommittedOffset(
                    topic=topic,
                    partition=partition,
                    offset=c.offset if c else -1,
                    metadata=c.metadata if c else "",
                    commit_timestamp=c.commit_timestamp if c else -1,
                )
            )
        return pb.FetchCommittedOffsetsResponse(offsets=entries)

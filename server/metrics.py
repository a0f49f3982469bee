"""Prometheus metrics for the broker, served as text at ``http://HOST:PORT/metrics``.

Three sources feed one registry per broker (never the process-global one, so several
brokers can live in one process, as the tests do):

- `LogStoreCollector` reads the log manager, offset store and coordinator at scrape time:
  per-partition offsets and sizes, consumer-group lag, members and state, rebalances,
  retention deletions, records removed by compaction, what recovery repaired at start,
  and the depth of dead letter queues and retry topics (named as `logstore.patterns`
  names them). Nothing is counted on the
  append path, so these cost nothing between scrapes.
- `MetricsInterceptor`, a gRPC server interceptor, counts every RPC by method and final
  status code and times it. A streaming RPC (ProduceStream, reflection, health Watch)
  counts as one request whose duration is the life of the stream. The code is the one the
  handler ended with, as in other gRPC metrics middleware; a client that cancelled or ran
  out of time before the handler finished counts as CANCELLED. (A stream whose client
  cancels between messages may instead see its requests simply end, and count as OK.)
- The same interceptor counts produced and fetched records and bytes per topic from the
  request and response bytes, reading only batch headers (record counts), never records.
  ProduceStream is counted per message, like Produce.

- `KafkaMetrics`, the Kafka listener's observer (`server.kafka.observer`), counts its
  connections (open, accepted, refused at the limit, closed for a protocol violation) and
  its requests by API and version, with durations, request and response bytes, and the
  requests after which a connection was closed. Kafka produce and fetch traffic goes into
  the same per-topic record and byte counters as gRPC's (no protocol label: a topic's
  series stay one whichever protocol its clients speak; `logstore_kafka_*` and
  `logstore_rpc_*` tell the protocols apart), counted the same way, from batch headers.
  The Kafka series exist only on a broker with a Kafka listener.

RPCs gRPC refuses itself (over `max_concurrent_rpcs`, unknown methods) are not counted:
they never run the handler the interceptor wraps.

Groups of both protocols are reported alike: LogStore's own (states Empty, Rebalancing,
Stable) and Kafka clients' classic groups (Empty, PreparingRebalance,
CompletingRebalance, Stable); every group gets a `logstore_group_state` sample for each
of these names. Committed offsets are one table, so lag covers both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from logstore import __version__
from logstore.addresses import parse_host_port
from logstore.codec import record_batch as rb
from logstore.codec.wire import decode_response
from logstore.errors import LogStoreError, UnknownTopicOrPartitionError
from logstore.patterns import headers as patterns
from logstore.server.groups import classic
from logstore.server.groups.coordinator import EMPTY, REBALANCING, STABLE, GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.kafka import observer as kafka_observer
from logstore.storage.log_manager import LogManager
from logstore.v1 import logstore_pb2 as pb

if TYPE_CHECKING:
    from logstore.server.kafka.connection import Request

log = logging.getLogger(__name__)

#: the states `GroupCoordinator` and the classic coordinator of Kafka clients' groups report
#: (Dead groups are forgotten at once, never listed); each group gets a sample for each
GROUP_STATES = (
    EMPTY,
    REBALANCING,
    classic.PREPARING_REBALANCE,
    classic.COMPLETING_REBALANCE,
    STABLE,
)
#: latency buckets (s): sub-millisecond metadata calls up to 30 s long-poll fetches
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_LOGSTORE_SERVICE = pb.DESCRIPTOR.services_by_name["LogStore"].full_name
_PRODUCE_METHODS = frozenset(
    f"/{_LOGSTORE_SERVICE}/{name}" for name in ("Produce", "ProduceStream")
)
_FETCH_METHOD = f"/{_LOGSTORE_SERVICE}/Fetch"
#: answers already encoded by the servicer (see `logstore.codec.wire`)
_FETCH_STREAM_METHOD = f"/{_LOGSTORE_SERVICE}/FetchStream"


def _batch_stats(records: bytes) -> tuple[int, int]:
    """(records, bytes) in a run of whole batches, from their headers alone."""
    count = sum(header.record_count for _, header in rb.iter_batches(records))
    return count, len(records)


# --- scrape-time state ---------------------------------------------------------------------


class LogStoreCollector(Collector):
    """Reads the broker's core objects on every scrape; holds no per-request state."""

    def __init__(
        self, manager: LogManager, offsets: OffsetStore, coordinator: GroupCoordinator
    ) -> None:
        self._manager = manager
        self._offsets = offsets
        self._coordinator = coordinator
        # Recovery happens once, while the manager opens the logs; snapshot it now so that
        # deleting a topic later does not rewrite what this start repaired.
        reports = [part.recovery_report for part in manager.all_partitions()]
        self._repaired_partitions = sum(1 for r in reports if r.repaired_anything)
        self._truncated_bytes = sum(r.truncated_bytes for r in reports)
        # The log manager's own verdict, so the metric and the start-up log line agree (a
        # brand-new data directory has no clean-shutdown marker, yet recovered nothing).
        self._unclean_start = manager.recovered_after_unclean_shutdown

    def collect(self) -> Iterator[Metric]:
        yield from self._broker_metrics()
        yield from self._partition_metrics()
        yield from self._group_metrics()
        yield from self._queue_metrics()

    def _broker_metrics(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "logstore_build_info", "LogStore version of this broker (always 1)", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "logstore_recovery_unclean_shutdown",
            "1 if this broker found logs left by an unclean shutdown and validated their tails",
            value=int(self._unclean_start),
        )
        yield GaugeMetricFamily(
            "logstore_recovery_repaired_partitions",
            "Partitions whose log recovery repaired something (truncated bytes, dropped "
            "segments, rebuilt indexes, stray files) when this broker started",
            value=self._repaired_partitions,
        )
        yield GaugeMetricFamily(
            "logstore_recovery_truncated_bytes",
            "Invalid bytes cut from the ends of logs by recovery when this broker started",
            value=self._truncated_bytes,
        )

    def _partition_metrics(self) -> Iterator[Metric]:
        labels = ["topic", "partition"]
        start = GaugeMetricFamily(
            "logstore_partition_log_start_offset", "First offset still stored", labels=labels
        )
        end = GaugeMetricFamily(
            "logstore_partition_log_end_offset",
            "Offset the next appended record will get",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "logstore_partition_size_bytes", "Bytes in the partition's segments", labels=labels
        )
        segments = GaugeMetricFamily(
            "logstore_partition_segments", "Segments in the partition's log", labels=labels
        )
        retention = CounterMetricFamily(
            "logstore_partition_retention_deleted_segments",
            "Segments deleted by retention.ms or retention.bytes since the broker started",
            labels=labels,
        )
        compacted = CounterMetricFamily(
            "logstore_partition_compacted_records",
            "Records removed by compaction (cleanup.policy=compact) since the broker started",
            labels=labels,
        )
        for topic, index, part in self._partitions():
            values = [topic, str(index)]
            try:
                start.add_metric(values, part.log_start_offset)
                end.add_metric(values, part.log_end_offset)
                size.add_metric(values, part.size_bytes)
                segments.add_metric(values, part.segment_count)
                retention.add_metric(values, part.retention_deleted_segments)
                compacted.add_metric(values, part.compacted_records)
            except (LogStoreError, OSError) as exc:
                # A partition being deleted mid-scrape: skip it rather than fail the scrape.
                log.debug("metrics: skipping %s: %s", part.name, exc)
        yield from (start, end, size, segments, retention, compacted)

    def _partitions(self) -> Iterator[tuple[str, int, Any]]:
        for name in self._manager.topic_names():
            try:
                topic = self._manager.topic(name)
            except UnknownTopicOrPartitionError:
                continue  # deleted since topic_names()
            for index, part in enumerate(list(topic.partitions)):
                yield name, index, part

    def _queue_metrics(self) -> Iterator[Metric]:
        """Dead letter queue depth and retry topic records and backlog, by topic name
        (`<source>.dlq`, `<source>.retry.<n>`, as `logstore.patterns` names them)."""
        dlq_depth = GaugeMetricFamily(
            "logstore_dlq_depth_records",
            "Records stored in a dead letter queue partition (log end - log start)",
            labels=["topic", "partition", "source_topic"],
        )
        retry_records = GaugeMetricFamily(
            "logstore_retry_topic_records",
            "Records stored in a retry topic partition (log end - log start)",
            labels=["topic", "partition", "source_topic", "level"],
        )
        retry_backlog = GaugeMetricFamily(
            "logstore_retry_backlog_records",
            "Records of a retry topic partition a group has not consumed yet "
            "(log end - committed offset)",
            labels=["group", "topic", "partition", "source_topic", "level"],
        )
        bounds: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, index, part in self._partitions():
            level = patterns.retry_level(topic)
            if level is None and not patterns.is_dlq_topic(topic):
                continue
            try:
                start, end = part.log_start_offset, part.log_end_offset
            except (LogStoreError, OSError) as exc:
                log.debug("metrics: skipping %s: %s", part.name, exc)
                continue
            values = [topic, str(index), patterns.source_of(topic)]
            if level is None:
                dlq_depth.add_metric(values, max(end - start, 0))
            else:
                retry_records.add_metric([*values, str(level)], max(end - start, 0))
                bounds[(topic, index)] = (start, end)
        if bounds:
            for group in sorted(self._offsets.groups()):
                for tp, committed in sorted(self._offsets.fetch(group).items()):
                    if tp not in bounds:
                        continue
                    start, end = bounds[tp]
                    level_label = str(patterns.retry_level(tp[0]))
                    labels = [group, tp[0], str(tp[1]), patterns.source_of(tp[0]), level_label]
                    retry_backlog.add_metric(labels, max(end - max(committed.offset, start), 0))
        yield from (dlq_depth, retry_records, retry_backlog)

    def _group_metrics(self) -> Iterator[Metric]:
        members = GaugeMetricFamily(
            "logstore_group_members",
            "Active members of the consumer group (LogStore's or Kafka clients')",
            labels=["group"],
        )
        state = GaugeMetricFamily(
            "logstore_group_state",
            "1 for the group's current state, 0 for the others",
            labels=["group", "state"],
        )
        tp_labels = ["group", "topic", "partition"]
        committed_offset = GaugeMetricFamily(
            "logstore_group_committed_offset",
            "Next offset the group will read, as last committed",
            labels=tp_labels,
        )
        lag = GaugeMetricFamily(
            "logstore_group_lag_records",
            "Records between the group's committed offset and the log end offset",
            labels=tp_labels,
        )
        for group, (group_state, count) in sorted(self._group_listing().items()):
            members.add_metric([group], count)
            for candidate in GROUP_STATES:
                state.add_metric([group, candidate], int(candidate == group_state))
            for (topic, partition), committed in sorted(self._offsets.fetch(group).items()):
                try:
                    log_end = self._manager.partition(topic, partition).log_end_offset
                except UnknownTopicOrPartitionError:
                    continue
                values = [group, topic, str(partition)]
                committed_offset.add_metric(values, committed.offset)
                # A commit past the end (the log was truncated by recovery) is no lag.
                lag.add_metric(values, max(log_end - committed.offset, 0))
        yield from (members, state, committed_offset, lag)
        yield CounterMetricFamily(
            "logstore_group_rebalances",
            "Rebalances since the broker started: group epoch bumps of LogStore's groups (a "
            "member joined, left, expired or changed its subscription, or a subscribed topic "
            "grew) and completed joins (generations) of Kafka clients' groups",
            value=self._coordinator.rebalances + self._coordinator.classic.rebalances,
        )

    def _group_listing(self) -> dict[str, tuple[str, int]]:
        """group -> (state, members) for every group either protocol's coordinator remembers,
        and every group with committed offsets (Empty, no members, as ListGroups lists it).
        A group has members in one protocol at most, so that protocol names its state."""
        listed = {g: (s, n) for g, s, n in self._coordinator.list_groups()}
        for kafka_group in self._coordinator.classic.list_groups():
            native = listed.get(kafka_group.group_id)
            if native is None or native[1] == 0:
                listed[kafka_group.group_id] = (kafka_group.state, kafka_group.members)
        for group in self._offsets.groups():
            listed.setdefault(group, (EMPTY, 0))
        return listed


# --- per-request counting ------------------------------------------------------------------


@dataclass
class _MethodMetrics:
    """One RPC method's series; its latency child is looked up once, not per call."""

    service: str
    method: str
    duration: Histogram
    requests: Counter

    def finish(self, context: grpc.ServicerContext, failed: bool, elapsed_s: float) -> None:
        code = context.code()
        if code is None:
            # No code set: the handler returned or raised without aborting. A client that
            # went away (cancel, deadline) never sees the answer, so it is not OK.
            if not context.is_active():
                code = grpc.StatusCode.CANCELLED
            elif failed:
                code = grpc.StatusCode.UNKNOWN  # what gRPC answers for an uncaught exception
            else:
                code = grpc.StatusCode.OK
        self.requests.labels(self.service, self.method, code.name).inc()
        self.duration.observe(elapsed_s)


class _LastRequest:
    """Passes a request stream through, remembering the latest request taken from it."""

    def __init__(self, requests: Iterator[Any]) -> None:
        self._requests = requests
        self.last: Any = None

    def __iter__(self) -> _LastRequest:
        return self

    def __next__(self) -> Any:
        self.last = next(self._requests)
        return self.last


ResponseHook = Callable[[Any, Any], None]


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC; counts produced and fetched records and bytes."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self._metrics = metrics
        self._by_method: dict[str, _MethodMetrics] = {}
        self._lock = threading.Lock()

    def _method_metrics(self, full_method: str) -> _MethodMetrics:
        found = self._by_method.get(full_method)
        if found is None:
            service, _, method = full_method.lstrip("/").rpartition("/")
            with self._lock:
                found = self._by_method.setdefault(
                    full_method,
                    _MethodMetrics(
                        service,
                        method,
                        self._metrics.rpc_duration.labels(service, method),
                        self._metrics.rpc_requests,
                    ),
                )
        return found

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        full_method = handler_call_details.method
        metrics = self._method_metrics(full_method)
        hook: ResponseHook | None = None
        if full_method in _PRODUCE_METHODS:
            hook = self._metrics.count_produce
        elif full_method == _FETCH_METHOD:
            hook = self._metrics.count_fetch
        elif full_method == _FETCH_STREAM_METHOD:
            hook = self._metrics.count_fetch_stream
        return _wrap(handler, metrics, hook)


def _wrap(
    handler: grpc.RpcMethodHandler, metrics: _MethodMetrics, hook: ResponseHook | None
) -> grpc.RpcMethodHandler:
    """The same handler, timed and counted, with `hook(request, response)` per response."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }

    def safe_hook(request: Any, response: Any) -> None:
        if hook is None or request is None:
            return
        try:
            hook(request, response)
        except Exception:  # a counting bug must never fail the RPC it counts
            log.exception("metrics: counting %s failed", metrics.method)

    def unary_response(call: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            response = call()
            failed = False
        finally:
            metrics.finish(context, failed, time.perf_counter() - started)
        return response

    def stream_response(
        call: Callable[[], Iterable[Any]],
        context: grpc.ServicerContext,
        request_of: Callable[[], Any],
    ) -> Iterator[Any]:
        started = time.perf_counter()
        failed = True
        try:
            for response in call():
                safe_hook(request_of(), response)
                yield response
            failed = False
        finally:
            # Also reached through GeneratorExit when gRPC drops a cancelled stream.
            metrics.finish(context, failed, time.perf_counter() - started)

    if handler.request_streaming and handler.response_streaming:
        inner_ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            # The servicer answers each request before taking the next, so the latest
            # request taken is the one a response answers.
            tracked = _LastRequest(requests)
            return stream_response(
                lambda: inner_ss(tracked, context), context, lambda: tracked.last
            )

        return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)

    if handler.request_streaming:
        inner_su = handler.stream_unary

        def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return unary_response(lambda: inner_su(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)

    if handler.response_streaming:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            return stream_response(lambda: inner_us(request, context), context, lambda: request)

        return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)

    inner_uu = handler.unary_unary

    def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
        response = unary_response(lambda: inner_uu(request, context), context)
        safe_hook(request, response)
        return response

    return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)


# --- the Kafka listener --------------------------------------------------------------------

#: Kafka's API keys of the requests whose records are counted, and of ApiVersions
_KAFKA_PRODUCE_KEY: Final = 0
_KAFKA_FETCH_KEY: Final = 1
_KAFKA_API_VERSIONS_KEY: Final = 18
#: bytes of the size prefix of every Kafka frame
_SIZE_PREFIX_BYTES: Final = 4
#: Kafka's error code NONE
_KAFKA_NO_ERROR: Final = 0
#: the `version` label of ApiVersions asked at a version above the served range, which the
#: connection answers by itself (KIP-511)
UNSERVED_VERSION: Final = "unserved"


def kafka_api_name(request_class_name: str) -> str:
    """Kafka's name of an API ("Produce"), from its request class's ("ProduceRequest")."""
    return request_class_name.removesuffix("Request")


@dataclass
class _KafkaApiMetrics:
    """One (API, version)'s series; its children are looked up once, not per request."""

    api: str
    requests: Counter
    duration: Histogram
    request_bytes: Counter
    response_bytes: Counter


class KafkaMetrics:
    """The Kafka listener's series: a `KafkaObserver`. Per request it does a dictionary
    look-up and a few counter increments; only Produce and Fetch read their batches'
    61-byte headers (records are never decoded)."""

    def __init__(self, registry: CollectorRegistry, traffic: BrokerMetrics) -> None:
        self._traffic = traffic
        self._by_api: dict[tuple[int, int | str], _KafkaApiMetrics] = {}
        self._lock = threading.Lock()
        self.connections = Gauge(
            "logstore_kafka_connections",
            "Open connections of the Kafka listener",
            registry=registry,
        )
        self.connections_accepted = Counter(
            "logstore_kafka_connections_accepted",
            "Connections the Kafka listener accepted",
            registry=registry,
        )
        self.connections_refused = Counter(
            "logstore_kafka_connections_refused",
            "Connections the Kafka listener closed at once: a connection limit was reached "
            "(listener-wide or per address)",
            registry=registry,
        )
        self.protocol_violations = Counter(
            "logstore_kafka_protocol_violations",
            "Kafka connections closed for a protocol violation: a bad frame size, an unknown "
            "API key, an unserved version or an undecodable request",
            registry=registry,
        )
        self.requests = Counter(
            "logstore_kafka_requests",
            "Kafka requests by API and version (version=unserved: ApiVersions at a version "
            "above the served range, answered with the served range)",
            ["api", "version"],
            registry=registry,
        )
        self.duration = Histogram(
            "logstore_kafka_request_duration_seconds",
            "Time from a Kafka request's handler start to its response encoded (a long-poll "
            "fetch: its wait included)",
            ["api"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Counter(
            "logstore_kafka_request_bytes",
            "Bytes of Kafka requests handed to a handler, size prefix included",
            ["api"],
            registry=registry,
        )
        self.response_bytes = Counter(
            "logstore_kafka_response_bytes",
            "Bytes of Kafka responses written, size prefix included",
            ["api"],
            registry=registry,
        )
        self.closing_requests = Counter(
            "logstore_kafka_closing_requests",
            "Kafka requests after which the broker closed the connection, by API and reason: "
            "not_served (not allowed on the connection: before SASL authentication, a failed "
            "acks=0 produce, a revoked token), handler_error (a broker bug, logged), "
            "last_answer (the answer ended the connection: a SASL refusal)",
            ["api", "reason"],
            registry=registry,
        )

    # --- connections -----------------------------------------------------------------------

    def connection_accepted(self) -> None:
        self.connections_accepted.inc()
        self.connections.inc()

    def connection_refused(self) -> None:
        self.connections_refused.inc()

    def connection_closed(self) -> None:
        self.connections.dec()

    def protocol_violation(self, reason: str) -> None:
        self.protocol_violations.inc()

    # --- requests --------------------------------------------------------------------------

    def unserved_version_answered(self, response_bytes: int) -> None:
        series = self._api_metrics(_KAFKA_API_VERSIONS_KEY, "ApiVersionsRequest", UNSERVED_VERSION)
        series.requests.inc()
        series.response_bytes.inc(response_bytes)

    def request_done(
        self,
        request: Request,
        response: Any,
        outcome: str,
        elapsed_s: float,
        response_bytes: int,
    ) -> None:
        series = self._api_metrics(request.api.key, request.api.name, request.version)
        series.requests.inc()
        series.duration.observe(elapsed_s)
        series.request_bytes.inc(request.size + _SIZE_PREFIX_BYTES)
        if response_bytes:
            series.response_bytes.inc(response_bytes)
        if outcome != kafka_observer.SERVED:
            self.closing_requests.labels(series.api, outcome).inc()
            return
        if request.api.key == _KAFKA_PRODUCE_KEY:
            self._count_produce(request.body, response)
        elif request.api.key == _KAFKA_FETCH_KEY and response is not None:
            self._count_fetch(response)

    def _api_metrics(self, key: int, class_name: str, version: int | str) -> _KafkaApiMetrics:
        found = self._by_api.get((key, version))
        if found is None:
            api = kafka_api_name(class_name)
            with self._lock:
                found = self._by_api.setdefault(
                    (key, version),
                    _KafkaApiMetrics(
                        api,
                        self.requests.labels(api, str(version)),
                        self.duration.labels(api),
                        self.request_bytes.labels(api),
                        self.response_bytes.labels(api),
                    ),
                )
        return found

    # --- traffic ---------------------------------------------------------------------------

    def _count_produce(self, body: Any, response: Any) -> None:
        """Count what a served Produce appended: the partitions answered without error.

        acks=0 has no response; served, every partition was appended (a failed one closes
        the connection instead, and then nothing is counted). Kafka's answer does not say
        whether a batch was an idempotent producer's duplicate retry (it gets its first
        offsets, no error), so, unlike gRPC's, a retried batch counts again.
        """
        answered: dict[tuple[str, int], int] | None = None
        if response is not None:
            answered = {
                (topic.name, part.index): part.error_code
                for topic in response.responses
                for part in topic.partition_responses
            }
        for topic_data in body.topic_data:
            for part_data in topic_data.partition_data:
                key = (topic_data.name, part_data.index)
                if answered is not None and answered.get(key) != _KAFKA_NO_ERROR:
                    continue
                if part_data.records:
                    self._traffic.count_appended(topic_data.name, part_data.records)

    def _count_fetch(self, response: Any) -> None:
        """Count the records and bytes a Fetch response carries (partitions without
        error; an error's partition carries none)."""
        for topic in response.responses:
            self._traffic.count_fetched(
                topic.topic,
                (p.records for p in topic.partitions if p.error_code == _KAFKA_NO_ERROR),
            )


# --- the whole -----------------------------------------------------------------------------


class BrokerMetrics:
    """One broker's registry, its request counters and the HTTP server that exposes them."""

    def __init__(
        self, manager: LogManager, offsets: OffsetStore, coordinator: GroupCoordinator
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(LogStoreCollector(manager, offsets, coordinator))
        self.rpc_requests = Counter(
            "logstore_rpc_requests",
            "RPCs handled, by method and final gRPC status code (a stream counts once)",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_duration = Histogram(
            "logstore_rpc_request_duration_seconds",
            "Time from handler start to the last response (a stream: its whole life)",
            ["service", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.produced_records = Counter(
            "logstore_produced_records",
            "Records appended by gRPC's Produce and ProduceStream (duplicate retries "
            "excluded) and Kafka's Produce",
            ["topic"],
            registry=self.registry,
        )
        self.produced_bytes = Counter(
            "logstore_produced_bytes",
            "Record batch bytes appended by gRPC's Produce and ProduceStream and Kafka's Produce",
            ["topic"],
            registry=self.registry,
        )
        self.fetched_records = Counter(
            "logstore_fetched_records",
            "Records sent in gRPC and Kafka Fetch responses (whole batches, so a batch "
            "straddling the fetch offset counts all its records)",
            ["topic"],
            registry=self.registry,
        )
        self.fetched_bytes = Counter(
            "logstore_fetched_bytes",
            "Record batch bytes sent in gRPC and Kafka Fetch responses",
            ["topic"],
            registry=self.registry,
        )
        self.interceptor = MetricsInterceptor(self)
        self._kafka: KafkaMetrics | None = None
        self._kafka_lock = threading.Lock()
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        #: ``host:port`` actually bound (the port is resolved when 0 was asked for)
        self.address = ""

    def kafka_observer(self) -> KafkaMetrics:
        """The Kafka listener's observer; its series are registered on the first call, so a
        broker without a Kafka listener exports none."""
        with self._kafka_lock:
            if self._kafka is None:
                self._kafka = KafkaMetrics(self.registry, self)
            return self._kafka

    # --- traffic ---------------------------------------------------------------------------

    def count_produce(self, request: pb.ProduceRequest, response: pb.ProduceResponse) -> None:
        """Count what a produce request appended: partitions without error or duplicate."""
        # The servicer answers a topic's partitions in request order (a topic named twice is
        # merged into one result list), so results pair with requests by position per topic.
        results = {t.topic: iter(t.partitions) for t in response.topics}
        for topic_data in request.topics:
            topic_results = results.get(topic_data.topic)
            if topic_results is None:
                continue
            for part_data in topic_data.partitions:
                result = next(topic_results, None)
                if result is None or result.HasField("error") or result.duplicate:
                    continue
                self.count_appended(topic_data.topic, part_data.records)

    def count_appended(self, topic: str, records: bytes | memoryview) -> None:
        """Count a run of whole batches appended to `topic` (from their headers alone)."""
        count, size = _batch_stats(records)
        self.produced_records.labels(topic).inc(count)
        self.produced_bytes.labels(topic).inc(size)

    def count_fetch(self, request: pb.FetchRequest, response: pb.FetchResponse) -> None:
        """Count the records and bytes a fetch response carries."""
        for topic_result in response.topics:
            self.count_fetched(topic_result.topic, (r.records for r in topic_result.partitions))

    def count_fetch_stream(self, request: pb.FetchRequest, response: bytes) -> None:
        """Count a FetchStream answer: FetchResponse bytes, read without copying records."""
        for topic, answers in decode_response(response):
            self.count_fetched(topic, (a.records for a in answers))

    def count_fetched(self, topic: str, records: Iterable[bytes | memoryview | None]) -> None:
        """Count runs of whole batches sent from `topic` (from their headers alone)."""
        for data in records:
            if data:
                count, size = _batch_stats(data)
                self.fetched_records.labels(topic).inc(count)
                self.fetched_bytes.labels(topic).inc(size)

    # --- serving ---------------------------------------------------------------------------

    def serve(self, listen: str) -> str:
        """Serve ``/metrics`` on ``HOST:PORT`` in a daemon thread; return the bound address."""
        host, port = parse_host_port(listen, port_zero=True)
        self._httpd, self._thread = start_http_server(port, host, registry=self.registry)
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{self._httpd.server_port}"
        log.info("serving Prometheus metrics at http://%s/metrics", self.address)
        return self.address

    def close(self) -> None:
        """Stop the HTTP server and wait for its thread; safe to call more than once."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=10)

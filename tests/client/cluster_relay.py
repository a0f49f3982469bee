"""A cluster of relays in front of one real broker, to see clients route by leader.

Each relay is a gRPC server that plays one broker of a cluster: it passes every call to the
real broker behind it, bytes unchanged, and answers Metadata with the cluster the test
describes (`RelayCluster.leaders`: which relay leads which partition, at which leader
epoch). A relay refuses a ProduceStream or FetchStream request naming a partition it does
not lead, as a deposed leader does: every partition of that request gets
NotLeaderOrFollowerError. Stopping a relay is a leader dying. All relays share the one log
behind them, so records a client sends twice (a retry through another leader) show up as
duplicates only if the client's idempotence fails, exactly as in a real cluster.

Streaming requests are passed on one at a time (the next waits for the previous answer),
so a refusal is answered in its place; each relay records which partitions it was sent.
Produce requests with acks=0 are not relayed (the broker does not answer them).

Groups: while `RelayCluster.coordinator` is None, FindCoordinator is passed on (a
standalone broker names itself without a host: the relay asked). Once a test names a
coordinator relay, every relay answers FindCoordinator with its address, and the others
refuse group requests with NotCoordinatorError as a cluster broker does, passing nothing
on; `refusals` more group requests are refused by the coordinator itself too (one just
elected that has not taken up the role yet). Methods in `missing` are answered
UNIMPLEMENTED, as by a broker that predates them.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from logstore.types import TopicPartition
from logstore.v1 import logstore_pb2 as pb

METADATA = "/logstore.v1.LogStore/Metadata"
FIND_COORDINATOR = "/logstore.v1.LogStore/FindCoordinator"
#: the requests only a group's coordinator answers (ListGroups: any broker, its own groups)
GROUP_METHODS = frozenset(
    f"/logstore.v1.LogStore/{name}"
    for name in (
        "JoinGroup",
        "Heartbeat",
        "LeaveGroup",
        "CommitOffsets",
        "FetchCommittedOffsets",
        "DescribeGroup",
        "DeleteGroup",
        "ResetOffsets",
    )
)
ERROR_KIND_KEY = "logstore-error-kind"
PRODUCE_STREAM = "/logstore.v1.LogStore/ProduceStream"
FETCH_STREAM = "/logstore.v1.LogStore/FetchStream"
#: what a relay allows a forwarded call when the caller set no deadline (s)
RELAY_TIMEOUT_S = 30.0
#: gRPC FAILED_PRECONDITION, the code a broker gives NotLeaderOrFollowerError
_NOT_LEADER_CODE = 9


def _raw(data: bytes) -> bytes:
    return data


def _not_leader(broker_id: int) -> pb.Error:
    return pb.Error(
        code=_NOT_LEADER_CODE,
        kind="NotLeaderOrFollowerError",
        message=f"broker {broker_id} is not the leader",
    )


class RelayCluster:
    """The relays and the leadership they answer Metadata with (guarded by `lock`).

    `leaders` maps a partition to (broker id, leader epoch); partitions not in it are led
    by broker 1. Relays are broker ids 1, 2, ...; a stopped relay is left out of the
    answer's live brokers. With `standalone`, Metadata too is passed to the broker behind,
    so a one-relay cluster is that standalone broker, only counted.
    """

    def __init__(self, target: str, count: int, *, standalone: bool = False) -> None:
        self.standalone = standalone
        self.lock = threading.Lock()
        self.leaders: dict[TopicPartition, tuple[int, int]] = {}
        #: the relay coordinating every group (None: ask the broker behind)
        self.coordinator: int | None = None
        #: group requests the coordinator still refuses before answering
        self.refusals = 0
        #: methods answered UNIMPLEMENTED
        self.missing: set[str] = set()
        #: the channel to the real broker
        self.upstream = grpc.insecure_channel(target)
        self.relays = [Relay(self, broker_id) for broker_id in range(1, count + 1)]

    def address(self, broker_id: int) -> str:
        return self.relays[broker_id - 1].address

    def leader_of(self, tp: TopicPartition) -> int:
        with self.lock:
            return self.leaders.get(tp, (1, 0))[0]

    def move(self, tp: TopicPartition, broker_id: int) -> None:
        """Elect `broker_id` leader of `tp`, one epoch up."""
        with self.lock:
            epoch = self.leaders.get(tp, (1, 0))[1]
            self.leaders[tp] = (broker_id, epoch + 1)

    def move_coordinator(self, broker_id: int, refusals: int = 0) -> None:
        """Make `broker_id` every group's coordinator; it refuses `refusals` group requests
        first."""
        with self.lock:
            self.coordinator = broker_id
            self.refusals = refusals

    def refuses_group(self, broker_id: int) -> bool:
        """Whether relay `broker_id` refuses the group request it was just sent (counting
        the coordinator's refusals down)."""
        with self.lock:
            if self.coordinator is None:
                return False
            if self.coordinator != broker_id:
                return True
            if self.refusals > 0:
                self.refusals -= 1
                return True
            return False

    def find_coordinator(self) -> pb.FindCoordinatorResponse:
        with self.lock:
            coordinator = self.coordinator
        assert coordinator is not None
        host, _, port = self.address(coordinator).rpartition(":")
        return pb.FindCoordinatorResponse(
            coordinator=pb.BrokerDescription(broker_id=coordinator, host=host, port=int(port))
        )

    def metadata(self, request: pb.MetadataRequest) -> pb.MetadataResponse:
        """The answer of any live relay: the live relays, and the topics asked about as
        the real broker describes them, led as `leaders` says."""
        stub_call = self.upstream.unary_unary(
            "/logstore.v1.LogStore/ListTopics",
            pb.ListTopicsRequest.SerializeToString,
            pb.ListTopicsResponse.FromString,
        )
        listing = stub_call(pb.ListTopicsRequest(), timeout=RELAY_TIMEOUT_S)
        counts = {t.name: t.partitions for t in listing.topics}
        response = pb.MetadataResponse(cluster_id="relays", controller_id=1)
        for relay in self.relays:
            if relay.alive:
                host, _, port = relay.address.rpartition(":")
                response.brokers.append(
                    pb.BrokerDescription(broker_id=relay.broker_id, host=host, port=int(port))
                )
        with self.lock:
            for name in request.topics or sorted(counts):
                topic = response.topics.add(topic=name)
                if name not in counts:
                    topic.error.CopyFrom(
                        pb.Error(
                            code=5,
                            kind="UnknownTopicOrPartitionError",
                            message=f"topic {name!r} does not exist",
                        )
                    )
                    continue
                for p in range(counts[name]):
                    leader, epoch = self.leaders.get((name, p), (1, 0))
                    topic.partitions.add(
                        partition=p, leader=leader, leader_epoch=epoch, replicas=[1], isr=[1]
                    )
        return response

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        self.upstream.close()


class Relay(grpc.GenericRpcHandler):
    """One broker of a `RelayCluster` (see the module docstring)."""

    def __init__(self, cluster: RelayCluster, broker_id: int) -> None:
        self.cluster = cluster
        self.broker_id = broker_id
        self.calls: collections.Counter[str] = collections.Counter()
        #: partitions sent to this relay in produce and fetch requests it passed on
        self.produced: set[TopicPartition] = set()
        self.fetched: set[TopicPartition] = set()
        #: partitions of requests this relay refused
        self.refused: set[TopicPartition] = set()
        #: group requests refused with NotCoordinatorError, by method
        self.not_coordinator: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self._server.add_generic_rpc_handlers((self,))
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.alive = True
        self._server.start()

    def stop(self) -> None:
        """The broker dies: every call on it ends, new ones cannot connect."""
        self.alive = False
        self._server.stop(0).wait()

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] += 1

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        self._count(method)
        if method in self.cluster.missing:
            return None
        if method == FIND_COORDINATOR and self.cluster.coordinator is not None:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: self.cluster.find_coordinator(),
                pb.FindCoordinatorRequest.FromString,
                pb.FindCoordinatorResponse.SerializeToString,
            )
        if method in GROUP_METHODS and self.cluster.refuses_group(self.broker_id):
            with self._lock:
                self.not_coordinator[method] += 1
            return grpc.unary_unary_rpc_method_handler(self._not_coordinator, _raw, _raw)
        if method == METADATA and not self.cluster.standalone:
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: self.cluster.metadata(request),
                pb.MetadataRequest.FromString,
                pb.MetadataResponse.SerializeToString,
            )
        if method == PRODUCE_STREAM:
            return grpc.stream_stream_rpc_method_handler(
                self._produce_stream, pb.ProduceRequest.FromString, _raw
            )
        if method == FETCH_STREAM:
            return grpc.stream_stream_rpc_method_handler(
                self._fetch_stream, pb.FetchRequest.FromString, _raw
            )
        if method.endswith("Stream"):
            return None
        return grpc.unary_unary_rpc_method_handler(self._unary(method), _raw, _raw)

    # --- unary calls ------------------------------------------------------------------------

    def _not_coordinator(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(((ERROR_KIND_KEY, "NotCoordinatorError"),))
        context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"broker {self.broker_id} does not coordinate this group: ask FindCoordinator",
        )
        raise AssertionError("unreachable: abort raises")

    def _unary(self, method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        forward = self.cluster.upstream.unary_unary(method, _raw, _raw)

        def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
            remaining = context.time_remaining()
            try:
                return forward(
                    request,
                    metadata=context.invocation_metadata(),
                    timeout=RELAY_TIMEOUT_S if remaining is None else remaining,
                )
            except grpc.RpcError as exc:
                _abort_as(context, exc)
                raise

        return relay

    # --- streams, one request at a time -----------------------------------------------------

    def _refuses(self, tps: list[TopicPartition]) -> bool:
        refused = [tp for tp in tps if self.cluster.leader_of(tp) != self.broker_id]
        if refused:
            with self._lock:
                self.refused.update(refused)
        return bool(refused)

    def _produce_stream(
        self, requests: Iterator[pb.ProduceRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        upstream = _Upstream(self.cluster.upstream, PRODUCE_STREAM, context)
        try:
            for request in requests:
                tps = [(t.topic, p.partition) for t in request.topics for p in t.partitions]
                if self._refuses(tps):
                    yield _refused_produce(request, self.broker_id).SerializeToString()
                    continue
                with self._lock:
                    self.produced.update(tps)
                yield upstream.send(request.SerializeToString())
        finally:
            upstream.close()

    def _fetch_stream(
        self, requests: Iterator[pb.FetchRequest], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        upstream = _Upstream(self.cluster.upstream, FETCH_STREAM, context)
        try:
            for request in requests:
                tps = [(t.topic, p.partition) for t in request.topics for p in t.partitions]
                if self._refuses(tps):
                    yield _refused_fetch(request, self.broker_id).SerializeToString()
                    continue
                with self._lock:
                    self.fetched.update(tps)
                yield upstream.send(request.SerializeToString())
        finally:
            upstream.close()


class _Upstream:
    """A stream to the real broker fed one request at a time."""

    def __init__(self, channel: grpc.Channel, method: str, context: grpc.ServicerContext) -> None:
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._context = context
        self._call = channel.stream_stream(method, _raw, _raw)(
            iter(self._outbox.get, None), metadata=context.invocation_metadata()
        )
        self._answers = iter(self._call)

    def send(self, request: bytes) -> bytes:
        """Pass `request` on and return the broker's answer to it."""
        self._outbox.put(request)
        try:
            return next(self._answers)
        except grpc.RpcError as exc:
            _abort_as(self._context, exc)
            raise
        except StopIteration:
            self._context.abort(grpc.StatusCode.UNAVAILABLE, "the broker ended the stream")
            raise

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()


def _abort_as(context: grpc.ServicerContext, exc: grpc.RpcError) -> None:
    """End the relayed call as the broker ended it, error kind included."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    if trailing:
        context.set_trailing_metadata(tuple(trailing))
    context.abort(exc.code(), exc.details() or "")  # type: ignore[attr-defined]


def _refused_produce(request: pb.ProduceRequest, broker_id: int) -> pb.ProduceResponse:
    response = pb.ProduceResponse(correlation_id=request.correlation_id)
    for topic in request.topics:
        result = response.topics.add(topic=topic.topic)
        for p in topic.partitions:
            result.partitions.add(partition=p.partition, error=_not_leader(broker_id))
    return response


def _refused_fetch(request: pb.FetchRequest, broker_id: int) -> pb.FetchResponse:
    response = pb.FetchResponse()
    for topic in request.topics:
        result = response.topics.add(topic=topic.topic)
        for p in topic.partitions:
            result.partitions.add(partition=p.partition, error=_not_leader(broker_id))
    return response

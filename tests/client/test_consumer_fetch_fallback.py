"""A consumer talking to a broker without FetchStream falls back to unary Fetch.

Brokers from before FetchStream answer it UNIMPLEMENTED. Such a broker is played here by a
relay in front of a real broker that passes every unary call through, bytes unchanged,
and knows no streaming method; the consumer keeps its default (`fetch_stream=True`) and
must still read every record, in order, and commit.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from logstore.client.consumer import Consumer
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.client.test_consumer import (
    by_partition,
    check_values,
    committed_offset,
    create,
    poll_until,
    produce,
)
from tests.server.conftest import BrokerProcess

FETCH_STREAM = "/logstore.v1.LogStore/FetchStream"
FETCH = "/logstore.v1.LogStore/Fetch"
#: what the relay allows a forwarded call when the caller set no deadline (s)
RELAY_TIMEOUT_S = 30.0


def _raw(data: bytes) -> bytes:
    return data


class _UnaryRelay(grpc.GenericRpcHandler):
    """Passes unary calls to `channel` as raw bytes; streaming methods are unknown here, so
    gRPC answers them UNIMPLEMENTED. Counts every method asked for."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        with self._lock:
            self.calls[method] += 1
        if method.endswith("Stream"):
            return None
        forward = self._channel.unary_unary(method, _raw, _raw)

        def relay(request: bytes, context: grpc.ServicerContext) -> bytes:
            remaining = context.time_remaining()
            try:
                return forward(
                    request,
                    metadata=context.invocation_metadata(),
                    timeout=RELAY_TIMEOUT_S if remaining is None else remaining,
                )
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details() or "")
                raise  # abort raises; this keeps type checkers sure nothing is returned

        return grpc.unary_unary_rpc_method_handler(relay, _raw, _raw)


@pytest.fixture
def relay(broker: BrokerProcess) -> Iterator[tuple[str, _UnaryRelay]]:
    """(address, handler) of a broker that has no FetchStream."""
    with grpc.insecure_channel(broker.address) as channel:
        handler = _UnaryRelay(channel)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}", handler
        finally:
            server.stop(0).wait()


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def consumer_of(address: str, **options: Any) -> Consumer:
    return Consumer(address, auto_offset_reset="earliest", **options)


def test_the_relay_refuses_fetch_stream(relay: tuple[str, _UnaryRelay]) -> None:
    """The premise: through the relay FetchStream is UNIMPLEMENTED (as on an older broker)."""
    address, _ = relay
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(FETCH_STREAM, _raw, _raw)(iter([b""]), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_group_reads_everything_in_order_with_unary_fetch_and_commits(
    relay: tuple[str, _UnaryRelay], stub: pb_grpc.LogStoreStub
) -> None:
    address, handler = relay
    create(stub, "legacy", partitions=3)
    counts = {0: 400, 1: 7, 2: 1234}
    for partition, count in counts.items():
        produce(stub, "legacy", partition, 0, count, batch_size=50)

    consumer = consumer_of(address, group_id="legacy-readers", enable_auto_commit=False)
    try:
        consumer.subscribe(["legacy"])
        records = poll_until(consumer, sum(counts.values()))
        consumer.commit()
        committed = {p: committed_offset(consumer, ("legacy", p)) for p in counts}
    finally:
        consumer.close()

    check_values(records)
    assert by_partition(records) == {p: list(range(n)) for p, n in counts.items()}
    assert committed == counts
    assert handler.calls[FETCH_STREAM] >= 1, "the consumer never tried FetchStream"
    assert handler.calls[FETCH] >= 1, "the consumer did not fall back to unary Fetch"


def test_records_produced_after_the_fallback_arrive(
    relay: tuple[str, _UnaryRelay], stub: pb_grpc.LogStoreStub
) -> None:
    """The unary fetcher keeps long-polling after the switch: later records arrive."""
    address, _ = relay
    create(stub, "later")
    produce(stub, "later", 0, 0, 10)
    consumer = consumer_of(address)
    try:
        consumer.assign([("later", 0)])
        first = poll_until(consumer, 10)
        produce(stub, "later", 0, 10, 90)
        rest = poll_until(consumer, 90)
    finally:
        consumer.close()
    check_values(first + rest)
    assert [r.offset for r in first + rest] == list(range(100))

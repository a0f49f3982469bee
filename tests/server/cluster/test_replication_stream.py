"""The replication stream over real sockets on 127.0.0.1: answers arrive whole and in
order, failures close the connection and are reported, bad peers are turned away."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from logstore.errors import NotLeaderOrFollowerError
from logstore.server.cluster import replication_stream
from logstore.server.cluster import replication_wire as wire
from logstore.server.cluster.replication_stream import (
    ReplicationClient,
    ReplicationListener,
    ReplicationStreamError,
)
from logstore.v1 import logstore_pb2 as pb
from tests.helpers import wait_until


def _request(offset: int, partitions: int = 1) -> pb.ReplicaFetchRequest:
    return pb.ReplicaFetchRequest(
        replica_id=2,
        topics=[
            pb.ReplicaFetchTopic(
                topic="t",
                partitions=[
                    pb.ReplicaFetchPartition(partition=p, fetch_offset=offset)
                    for p in range(partitions)
                ],
            )
        ],
    )


def _echo(request: pb.ReplicaFetchRequest, is_active: Callable[[], bool]) -> pb.FetchResponse:
    """Answers each partition with records derived from its fetch offset."""
    topics = []
    for topic in request.topics:
        results = [
            pb.FetchPartitionResult(
                partition=p.partition,
                high_watermark=p.fetch_offset,
                records=bytes([p.partition % 256]) * (p.fetch_offset % 3_000_000),
            )
            for p in topic.partitions
        ]
        topics.append(pb.FetchTopicResult(topic=topic.topic, partitions=results))
    return pb.FetchResponse(topics=topics)


@pytest.fixture
def serve() -> Iterator[Callable[..., ReplicationListener]]:
    started: list[ReplicationListener] = []

    def start(handler: Callable[..., pb.FetchResponse] = _echo) -> ReplicationListener:
        listener = ReplicationListener("127.0.0.1:0", handler)
        listener.start()
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.stop()


def test_answers_arrive_whole_and_in_order(serve: Callable[..., ReplicationListener]) -> None:
    listener = serve()
    client = ReplicationClient(f"127.0.0.1:{listener.port}")
    try:
        for offset in (0, 5, 2_500_000, 17):
            response = client.fetch(_request(offset, partitions=3), timeout_s=10)
            assert response == _echo(_request(offset, partitions=3), lambda: True)
    finally:
        client.close()


def test_a_refused_request_is_an_error_and_the_stream_goes_on(
    serve: Callable[..., ReplicationListener],
) -> None:
    def refuse_odd(
        request: pb.ReplicaFetchRequest, is_active: Callable[[], bool]
    ) -> pb.FetchResponse:
        if request.topics[0].partitions[0].fetch_offset % 2:
            raise NotLeaderOrFollowerError("broker 1 is no longer the leader")
        return _echo(request, is_active)

    listener = serve(refuse_odd)
    client = ReplicationClient(f"127.0.0.1:{listener.port}")
    try:
        with pytest.raises(ReplicationStreamError, match="NotLeaderOrFollowerError: broker 1"):
            client.fetch(_request(1), timeout_s=10)
        assert client.fetch(_request(4), timeout_s=10) == _echo(_request(4), lambda: True)
    finally:
        client.close()


def test_a_timeout_closes_the_connection_and_the_next_fetch_reconnects(
    serve: Callable[..., ReplicationListener],
) -> None:
    release = threading.Event()

    def slow_once(
        request: pb.ReplicaFetchRequest, is_active: Callable[[], bool]
    ) -> pb.FetchResponse:
        if request.topics[0].partitions[0].fetch_offset == 99:
            release.wait(5)
        return _echo(request, is_active)

    listener = serve(slow_once)
    client = ReplicationClient(f"127.0.0.1:{listener.port}")
    try:
        with pytest.raises(ReplicationStreamError):
            client.fetch(_request(99), timeout_s=0.2)
        release.set()
        # The late answer to offset 99 must not be read as the answer to offset 6.
        assert client.fetch(_request(6), timeout_s=10) == _echo(_request(6), lambda: True)
    finally:
        client.close()


def _closed_without_answer(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_a_peer_that_is_not_a_replica_is_turned_away_and_others_are_served(
    serve: Callable[..., ReplicationListener],
) -> None:
    listener = serve()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as stranger:
        stranger.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert _closed_without_answer(stranger)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as liar:
        # a request length far over any fetch's: refused before anything is allocated
        liar.sendall(wire.HANDSHAKE + (wire.MAX_REQUEST_BYTES + 1).to_bytes(4, "big"))
        assert liar.recv(100) == wire.HANDSHAKE
        assert _closed_without_answer(liar)  # an oversized request closes the stream
    client = ReplicationClient(f"127.0.0.1:{listener.port}")
    try:
        assert client.fetch(_request(3), timeout_s=10) == _echo(_request(3), lambda: True)
    finally:
        client.close()


def test_stopping_the_listener_fails_open_streams_promptly(
    serve: Callable[..., ReplicationListener],
) -> None:
    listener = serve()
    client = ReplicationClient(f"127.0.0.1:{listener.port}")
    try:
        client.fetch(_request(1), timeout_s=10)
        listener.stop()
        started = time.monotonic()
        with pytest.raises(ReplicationStreamError):
            client.fetch(_request(2), timeout_s=10)
        assert time.monotonic() - started < 5
    finally:
        client.close()


def test_streams_over_the_cap_are_closed_and_served_again_once_one_ends(
    serve: Callable[..., ReplicationListener], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replication_stream, "MAX_CONNECTIONS", 2)
    listener = serve()
    address = f"127.0.0.1:{listener.port}"
    first, second, third = (ReplicationClient(address) for _ in range(3))
    try:
        first.fetch(_request(1), timeout_s=10)
        second.fetch(_request(2), timeout_s=10)
        with pytest.raises(ReplicationStreamError):
            third.fetch(_request(3), timeout_s=10)
        first.close()

        def third_served() -> bool:
            try:
                return third.fetch(_request(3), timeout_s=10) == _echo(_request(3), lambda: True)
            except ReplicationStreamError:
                return False

        wait_until(third_served, "a stream to be served once another ended", timeout_s=10)
    finally:
        for client in (first, second, third):
            client.close()


def test_closing_wakes_a_fetch_stuck_in_the_handshake_and_it_never_reconnects() -> None:
    """A paused leader's kernel still accepts connections but nothing answers: a
    stopping fetcher must not wait out its timeout (it stops on the control thread)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        client = ReplicationClient(f"127.0.0.1:{silent.getsockname()[1]}")
        failed: list[BaseException] = []

        def fetch() -> None:
            try:
                client.fetch(_request(1), timeout_s=30)
            except ReplicationStreamError as exc:
                failed.append(exc)

        fetching = threading.Thread(target=fetch)
        fetching.start()
        time.sleep(0.3)  # connected, waiting for the handshake
        started = time.monotonic()
        client.close()
        fetching.join(timeout=10)
        assert not fetching.is_alive() and failed
        assert time.monotonic() - started < 1.5
        with pytest.raises(ReplicationStreamError, match="closed"):
            client.fetch(_request(2), timeout_s=1)

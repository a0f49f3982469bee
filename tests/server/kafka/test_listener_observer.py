"""The Kafka listener's observer, in-process over real sockets on 127.0.0.1: each
connection and request is reported once, with its outcome and sizes, and an observer
that raises costs no connection."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

from logstore.server.kafka.connection import Request
from logstore.server.kafka.context import Session
from logstore.server.kafka.listener import KafkaListener
from logstore.server.kafka.observer import HANDLER_ERROR, NOT_SERVED, SERVED
from logstore.server.kafka.router import NotServed
from tests.helpers import wait_until

#: how long a read waits for an answer or the close (s)
READ_TIMEOUT_S = 5.0


class Recorder:
    """A `KafkaObserver` that remembers what it heard, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[Any, ...]] = []

    def _add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def names(self) -> list[str]:
        with self._lock:
            return [e[0] for e in self.events]

    def connection_accepted(self) -> None:
        self._add("accepted")

    def connection_refused(self) -> None:
        self._add("refused")

    def connection_closed(self) -> None:
        self._add("closed")

    def protocol_violation(self, reason: str) -> None:
        self._add("violation", reason)

    def unserved_version_answered(self, response_bytes: int) -> None:
        self._add("unserved", response_bytes)

    def request_done(
        self, request: Request, response: Any, outcome: str, elapsed_s: float, response_bytes: int
    ) -> None:
        self._add("request", request, response, outcome, elapsed_s, response_bytes)


class Raising(Recorder):
    """Records, then raises: a broken observer."""

    def _add(self, *event: Any) -> None:
        super()._add(*event)
        raise RuntimeError("observer bug")


def answer_v0(session: Session, request: Request) -> Any:
    return ApiVersionsResponse(version=0, error_code=0, api_keys=[])


def refuse(session: Session, request: Request) -> Any:
    raise NotServed("not on this connection")


def crash(session: Session, request: Request) -> Any:
    raise RuntimeError("a handler bug")


@pytest.fixture
def listen() -> Iterator[Callable[..., KafkaListener]]:
    listeners: list[KafkaListener] = []

    def start(serve: Callable[[Session, Request], Any], observer: Any, **kw: Any) -> KafkaListener:
        listener = KafkaListener(
            "127.0.0.1:0", serve, max_request_bytes=1024 * 1024, observer=observer, **kw
        )
        listeners.append(listener)
        listener.start()
        return listener

    yield start
    for listener in listeners:
        listener.stop()


def connect(listener: KafkaListener) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=READ_TIMEOUT_S)
    sock.settimeout(READ_TIMEOUT_S)
    return sock


def api_versions_frame(correlation_id: int) -> bytes:
    request = ApiVersionsRequest(version=0)
    request.with_header(correlation_id=correlation_id, client_id="observer-test")
    return bytes(request.encode(header=True, framed=True))


def read_frame(sock: socket.socket) -> bytes | None:
    """A whole response frame, size prefix included; None when the listener closed."""
    data = b""
    for _ in range(1_000):
        if len(data) >= 4 and len(data) >= 4 + struct.unpack(">i", data[:4])[0]:
            return data
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    raise AssertionError("no whole response frame")


def test_each_connection_and_request_is_reported_once(
    listen: Callable[..., KafkaListener],
) -> None:
    recorder = Recorder()
    listener = listen(answer_v0, recorder)
    frame = api_versions_frame(1)
    with connect(listener) as sock:
        sock.sendall(frame)
        answer = read_frame(sock)
    assert answer is not None
    wait_until(lambda: recorder.names()[-1:] == ["closed"], "the close to be reported")
    assert recorder.names() == ["accepted", "request", "closed"]
    _, request, response, outcome, elapsed_s, response_bytes = recorder.events[1]
    assert request.api.key == 18 and request.version == 0
    assert request.size + 4 == len(frame)  # the frame, size prefix included
    assert isinstance(response, ApiVersionsResponse)
    assert outcome == SERVED
    assert 0 <= elapsed_s < READ_TIMEOUT_S
    assert response_bytes == len(answer)


@pytest.mark.parametrize(("serve", "outcome"), [(refuse, NOT_SERVED), (crash, HANDLER_ERROR)])
def test_a_request_that_closes_its_connection_is_reported_with_why(
    listen: Callable[..., KafkaListener],
    serve: Callable[[Session, Request], Any],
    outcome: str,
) -> None:
    recorder = Recorder()
    listener = listen(serve, recorder)
    with connect(listener) as sock:
        sock.sendall(api_versions_frame(2))
        assert read_frame(sock) is None
    wait_until(lambda: recorder.names()[-1:] == ["closed"], "the close to be reported")
    assert recorder.names() == ["accepted", "request", "closed"]
    _, _, response, reported, _, response_bytes = recorder.events[1]
    assert (response, reported, response_bytes) == (None, outcome, 0)


def test_violations_refusals_and_unserved_versions_are_reported(
    listen: Callable[..., KafkaListener],
) -> None:
    recorder = Recorder()
    listener = listen(answer_v0, recorder, max_connections=1)
    with connect(listener) as first:
        # ApiVersions v9: above the served range, answered by the connection itself
        header = struct.pack(">hhih", 18, 9, 7, -1)
        first.sendall(struct.pack(">i", len(header)) + header)
        answer = read_frame(first)
        assert answer is not None
        with connect(listener) as second:  # one over the limit
            assert read_frame(second) is None
        first.sendall(struct.pack(">i", 3))  # too small for a request header
        assert read_frame(first) is None
    wait_until(lambda: recorder.names().count("closed") == 1, "the close to be reported")
    names = recorder.names()
    assert sorted(names) == sorted(["accepted", "unserved", "refused", "violation", "closed"])
    assert names.index("accepted") < names.index("unserved") < names.index("violation")
    assert names.index("violation") < names.index("closed")
    assert ("unserved", len(answer)) in recorder.events
    (violation,) = [e for e in recorder.events if e[0] == "violation"]
    assert "too small" in violation[1]


def test_an_observer_that_raises_costs_no_connection(
    listen: Callable[..., KafkaListener],
) -> None:
    observer = Raising()
    listener = listen(answer_v0, observer)
    with connect(listener) as sock:
        for correlation_id in (1, 2, 3):
            sock.sendall(api_versions_frame(correlation_id))
            answer = read_frame(sock)
            assert answer is not None
            response = ApiVersionsResponse.decode(answer[4:], version=0, header=True)
            assert response.header.correlation_id == correlation_id
    wait_until(lambda: observer.names()[-1:] == ["closed"], "the close to be reported")
    assert observer.names() == ["accepted", "request", "request", "request", "closed"]

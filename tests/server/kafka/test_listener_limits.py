"""The Kafka listener's limits, in-process over real sockets on 127.0.0.1: how long a request
may take to arrive and a connection to authenticate, how many connections one address may
hold, which APIs a connection may use before it authenticates, and an accept loop that
backs off when the process is out of descriptors.

Deadlines here are a second or two; every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from logstore.server.kafka.connection import Request
from logstore.server.kafka.context import Session
from logstore.server.kafka.listener import KafkaListener
from tests.helpers import wait_until
from tests.server.kafka.test_listener_observer import (
    Recorder,
    answer_v0,
    api_versions_frame,
    read_frame,
)

#: how long a read waits for an answer or the close (s)
READ_TIMEOUT_S = 5.0
#: how late a deadline may be enforced on a busy machine (s)
SLACK_S = 1.0
LISTENER_LOG = "logstore.server.kafka.listener"

Serve = Callable[[Session, Request], Any]


def unauthenticated(peer: str, tls: bool, certificate_principal: str | None) -> Session:
    """The session of a listener that requires SASL, before the client authenticates."""
    return Session(peer=peer, tls=tls, authenticated=False)


@pytest.fixture
def listen() -> Iterator[Callable[..., KafkaListener]]:
    listeners: list[KafkaListener] = []

    def start(serve: Serve = answer_v0, **kw: Any) -> KafkaListener:
        listener = KafkaListener("127.0.0.1:0", serve, max_request_bytes=1024 * 1024, **kw)
        listeners.append(listener)
        listener.start()
        return listener

    yield start
    for listener in listeners:
        listener.stop()


def connect(listener: KafkaListener, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(
        ("127.0.0.1", listener.port), timeout=READ_TIMEOUT_S, source_address=(source, 0)
    )
    sock.settimeout(READ_TIMEOUT_S)
    return sock


def closed_by_listener(sock: socket.socket) -> bool:
    """Whether the listener has closed `sock` (without waiting)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def seconds_until_closed(sock: socket.socket, send: Callable[[], None], every_s: float) -> float:
    """Call `send` every `every_s` seconds until the listener closes `sock`; how long that
    took. Fails after 6 s."""
    started = time.monotonic()
    for _ in range(int(6 / every_s)):
        time.sleep(every_s)
        if closed_by_listener(sock):
            return time.monotonic() - started
        try:
            send()
        except OSError:  # closed while we wrote
            return time.monotonic() - started
    raise AssertionError("the listener kept the connection open")


def closes(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


# --- how long a request may take to arrive ------------------------------------------------


def test_a_request_trickled_a_byte_at_a_time_is_closed_at_the_bound(
    listen: Callable[..., KafkaListener], caplog: pytest.LogCaptureFixture
) -> None:
    """Each byte comes well within the idle timeout, so only the bound on a whole
    request's arrival closes the connection."""
    caplog.set_level(logging.INFO, LISTENER_LOG)
    listener = listen(idle_timeout_s=1.0, request_timeout_s=1.5)
    with connect(listener) as sock:
        sock.sendall(api_versions_frame(1))
        assert read_frame(sock) is not None
        sock.sendall(struct.pack(">i", 1000))  # a 1000-byte frame, then a byte at a time
        took = seconds_until_closed(sock, lambda: sock.sendall(b"\x00"), every_s=0.25)
    assert 1.5 - 0.3 <= took <= 1.5 + SLACK_S
    assert closes(caplog, "no whole request within 1500 ms of its first byte")
    wait_until(lambda: listener.connection_count == 0, "the connection to be released")


def test_a_silent_connection_is_closed_at_the_bound_from_connecting(
    listen: Callable[..., KafkaListener], caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka clients send their first request at once: a connection that sends nothing
    holds its slot only until the bound, not the 10-minute idle timeout."""
    caplog.set_level(logging.INFO, LISTENER_LOG)
    listener = listen(idle_timeout_s=30.0, request_timeout_s=1.0)
    with connect(listener) as sock:
        took = seconds_until_closed(sock, lambda: None, every_s=0.1)
    assert 1.0 - 0.3 <= took <= 1.0 + SLACK_S
    assert closes(caplog, "no whole request within 1000 ms of connecting")


def test_a_connection_quiet_between_requests_is_kept(
    listen: Callable[..., KafkaListener],
) -> None:
    listener = listen(idle_timeout_s=5.0, request_timeout_s=0.5)
    with connect(listener) as sock:
        for correlation_id in (1, 2):
            sock.sendall(api_versions_frame(correlation_id))
            assert read_frame(sock) is not None
            time.sleep(1.2)  # more than the request bound, less than the idle timeout
        assert not closed_by_listener(sock)


def test_the_time_spent_serving_does_not_count_against_the_next_request(
    listen: Callable[..., KafkaListener],
) -> None:
    """A client pipelines: request B starts arriving while A is served (for longer than
    the bound); B's clock starts once the listener can read again."""

    def slow(session: Session, request: Request) -> Any:
        time.sleep(1.0)
        return answer_v0(session, request)

    listener = listen(slow, request_timeout_s=0.6)
    first, second = api_versions_frame(1), api_versions_frame(2)
    with connect(listener) as sock:
        sock.sendall(first + second[:5])
        assert read_frame(sock) is not None
        sock.sendall(second[5:])
        assert read_frame(sock) is not None


# --- authentication -----------------------------------------------------------------------


def test_a_connection_that_never_authenticates_is_closed_at_the_bound(
    listen: Callable[..., KafkaListener], caplog: pytest.LogCaptureFixture
) -> None:
    """Busy with what it may ask before SASL (ApiVersions), and still closed."""
    caplog.set_level(logging.INFO, LISTENER_LOG)
    listener = listen(open_session=unauthenticated, authentication_timeout_s=1.0)
    asked = iter(range(100))

    def ask() -> None:
        sock.sendall(api_versions_frame(next(asked)))
        assert read_frame(sock) is not None

    with connect(listener) as sock:
        took = seconds_until_closed(sock, ask, every_s=0.2)
    assert 1.0 - 0.3 <= took <= 1.0 + SLACK_S
    assert closes(caplog, "not authenticated within 1000 ms")


def test_an_authenticated_connection_outlives_the_authentication_bound(
    listen: Callable[..., KafkaListener],
) -> None:
    def authenticate(session: Session, request: Request) -> Any:
        session.authenticated = True  # what a successful SaslAuthenticate does
        return answer_v0(session, request)

    listener = listen(authenticate, open_session=unauthenticated, authentication_timeout_s=0.5)
    with connect(listener) as sock:
        sock.sendall(api_versions_frame(1))
        assert read_frame(sock) is not None
        time.sleep(1.2)
        sock.sendall(api_versions_frame(2))
        assert read_frame(sock) is not None


def test_before_authentication_other_apis_are_refused_undecoded(
    listen: Callable[..., KafkaListener],
) -> None:
    """A 512 KiB Metadata frame (about a second to decode) from a connection that has not
    authenticated: closed from its API key, nothing handed to a handler."""
    served: list[Request] = []

    def record(session: Session, request: Request) -> Any:
        served.append(request)
        return answer_v0(session, request)

    recorder = Recorder()
    listener = listen(record, open_session=unauthenticated, observer=recorder)
    names = (512 * 1024 - 64) // 2
    payload = struct.pack(">hhih", 3, 4, 9, 1) + b"x" + struct.pack(">i", names)
    payload += struct.pack(">h", 0) * names + b"\x00"
    with connect(listener) as sock:
        started = time.monotonic()
        with contextlib.suppress(OSError):  # closed while we wrote: refused early
            sock.sendall(struct.pack(">i", len(payload)) + payload)
        assert read_frame(sock) is None
        took = time.monotonic() - started
    wait_until(lambda: "closed" in recorder.names(), "the close to be reported")
    assert served == []
    violations = [e[1] for e in recorder.events if e[0] == "violation"]
    assert violations == ["MetadataRequest (API key 3) before SASL authentication completed"]
    assert took < 0.5


# --- connections per address ----------------------------------------------------------------


def test_the_per_address_limit_refuses_the_next_connection_and_logs_once(
    listen: Callable[..., KafkaListener], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LISTENER_LOG)
    recorder = Recorder()
    listener = listen(max_connections_per_ip=2, observer=recorder)
    held = [connect(listener) for _ in range(2)]
    try:
        for sock in held:  # both served: accepted
            sock.sendall(api_versions_frame(1))
            assert read_frame(sock) is not None
        for _ in range(3):
            with connect(listener) as refused:
                assert read_frame(refused) is None
        with connect(listener, source="127.0.0.2") as other:  # another address gets in
            other.sendall(api_versions_frame(2))
            assert read_frame(other) is not None
        refusals = closes(caplog, "limit per address")
        assert len(refusals) == 1 and "2 connections from 127.0.0.1 are open" in refusals[0]
        assert recorder.names().count("refused") == 3
        held.pop().close()  # a slot of 127.0.0.1 frees
        wait_until(
            lambda: closes(caplog, "refused 2 more Kafka connections from 127.0.0.1"),
            "the burst's count to be logged",
        )
        with connect(listener) as again:
            again.sendall(api_versions_frame(3))
            assert read_frame(again) is not None
    finally:
        for sock in held:
            sock.close()


def test_the_listener_wide_limit_still_applies(
    listen: Callable[..., KafkaListener], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LISTENER_LOG)
    listener = listen(max_connections=1, max_connections_per_ip=5)
    with connect(listener) as first:
        first.sendall(api_versions_frame(1))
        assert read_frame(first) is not None
        for source in ("127.0.0.1", "127.0.0.3"):
            with connect(listener, source=source) as refused:
                assert read_frame(refused) is None
    assert len(closes(caplog, "(--kafka-max-connections)")) == 1


# --- out of descriptors -----------------------------------------------------------------------


def test_out_of_descriptors_the_accept_loop_backs_off_and_logs_once(
    listen: Callable[..., KafkaListener], caplog: pytest.LogCaptureFixture
) -> None:
    """With the descriptor table full, accept() fails with EMFILE at once, pending
    connection or not (Linux takes the descriptor before it waits): the acceptor must not
    spin a core, and must serve the waiting connection once a descriptor is free."""
    caplog.set_level(logging.INFO, LISTENER_LOG)
    listener = listen()
    # Their descriptors are taken before the table is full. The acceptor, already blocked
    # in accept() with a descriptor of its own, takes the first; the second waits.
    first, second = socket.socket(), socket.socket()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        limit = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 16
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        for _ in range(limit):  # every free descriptor below the limit
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        for sock in (first, second):
            sock.settimeout(READ_TIMEOUT_S)
            sock.connect(("127.0.0.1", listener.port))
        wait_until(
            lambda: closes(caplog, "cannot accept connections"), "accept() to fail", timeout_s=5
        )
        cpu_before = time.process_time()
        time.sleep(1.0)
        cpu_s = time.process_time() - cpu_before
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    for correlation_id, sock in enumerate((first, second)):
        with sock:
            sock.sendall(api_versions_frame(correlation_id))
            assert read_frame(sock) is not None  # both served
    assert cpu_s < 0.3, f"{cpu_s:.2f} s of CPU in 1 s while accept() failed"
    assert len(closes(caplog, "cannot accept connections")) == 1
    assert closes(caplog, "accepts connections again")

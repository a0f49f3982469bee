"""The Kafka listener's socket shell: accept, read, hand bytes to `KafkaConnection`, write.

All protocol decisions are in `connection` (framing, decoding, refusals) and the handlers;
this module only moves bytes. One thread per connection serves its requests in arrival
order, one at a time (Kafka's own broker mutes a connection while a request is in flight),
so a long-poll fetch holds only its own connection. Invariants:
- At most `max_connections` connections are open; one more is closed at once.
- A connection silent for `connections_max_idle_ms` is closed (Kafka's default, 10 min).
- TLS: each connection's handshake uses the context `tls()` returns at that moment (a
  reload applies to new connections), bounded by `_HANDSHAKE_TIMEOUT_S`; a verified client
  certificate's principal goes to `open_session`.
- Until its session is authenticated a connection's requests may be at most
  `MAX_UNAUTHENTICATED_REQUEST_BYTES` (Kafka's sasl.server.max.receive.size): a client
  that has not shown a credential cannot make the broker buffer a large frame.
- A response sent with `session.closing` set is the connection's last (SASL refusals).
- `stop()` closes the listening socket and every connection; their threads end on their
  own (a handler running when `stop` is called finishes first, bounded by its long poll).
- Nothing a client sends can end the listener: a bad stream closes its own connection.
- An optional `KafkaObserver` (the broker's metrics) hears of every connection accepted,
  refused and closed, every protocol violation and every request handed to a handler,
  once each; an observer that raises is logged and ignored, so counting can never cost
  a connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from logstore.addresses import parse_host_port
from logstore.server.kafka import security
from logstore.server.kafka.connection import Close, KafkaConnection, Reply, Request
from logstore.server.kafka.context import Session
from logstore.server.kafka.observer import (
    HANDLER_ERROR,
    LAST_ANSWER,
    NOT_SERVED,
    SERVED,
    KafkaObserver,
)
from logstore.server.kafka.router import NotServed

log = logging.getLogger(__name__)

#: bytes read per recv() call
_READ_BYTES = 256 * 1024
#: how long a TLS handshake may take before the connection is dropped (s)
_HANDSHAKE_TIMEOUT_S = 10.0
#: the largest request of a connection that has not authenticated (bytes): Kafka's
#: sasl.server.max.receive.size default
MAX_UNAUTHENTICATED_REQUEST_BYTES = 512 * 1024

#: serve one request of a session: its response object, or None (no answer); raising
#: `NotServed` (or anything else) closes the connection
Serve = Callable[[Session, Request], Any]
#: a new connection's session, from its peer ("host:port"), whether it is TLS, and the
#: principal of its verified client certificate (None: none)
OpenSession = Callable[[str, bool, str | None], Session]


def _plain_session(peer: str, tls: bool, certificate_principal: str | None) -> Session:
    return Session(peer=peer, tls=tls)


class KafkaListener:
    """A bound Kafka listener; `start()` begins accepting."""

    def __init__(
        self,
        listen: str,
        serve: Serve,
        *,
        max_request_bytes: int,
        max_connections: int = 1024,
        idle_timeout_s: float = 600.0,
        tls: Callable[[], ssl.SSLContext] | None = None,
        open_session: OpenSession = _plain_session,
        observer: KafkaObserver | None = None,
    ) -> None:
        host, port = parse_host_port(listen, port_zero=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # As gRPC's listener: a broker restarted after a crash rebinds its port while
            # the connections it dropped linger in TIME_WAIT (a live listener still
            # refuses the bind; check_can_listen says so first).
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self.port: int = self._sock.getsockname()[1]
        self._serve = serve
        self._max_request_bytes = max_request_bytes
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._tls = tls
        self._open_session = open_session
        self._observer = observer
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="logstore-kafka-accept", daemon=True
        )

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def start(self) -> None:
        self._acceptor.start()

    def stop(self) -> None:
        """Close the listening socket and every connection."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            _shutdown(conn)
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                continue
            with self._lock:
                full = len(self._connections) >= self._max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                log.warning(
                    "refused a Kafka connection from %s: %d connections are open (the limit)",
                    _peer_name(peer),
                    self._max_connections,
                )
                conn.close()
                self._notify(lambda o: o.connection_refused())
                continue
            self._notify(lambda o: o.connection_accepted())
            threading.Thread(
                target=self._run_connection,
                args=(conn, _peer_name(peer)),
                name="logstore-kafka-conn",
                daemon=True,
            ).start()

    def _run_connection(self, conn: socket.socket, peer: str) -> None:
        stream = conn
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self._idle_timeout_s)
            certificate_principal = None
            if self._tls is not None:
                stream = tls = self._wrap(conn)
                tls.do_handshake()
                tls.settimeout(self._idle_timeout_s)
                certificate_principal = security.certificate_principal(tls.getpeercert())
            session = self._open_session(peer, self._tls is not None, certificate_principal)
            self._converse(stream, session)
        except (OSError, ssl.SSLError) as exc:
            if not self._stopped.is_set():
                log.debug("Kafka connection from %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._connections.discard(stream)
            _shutdown(stream)
            self._notify(lambda o: o.connection_closed())

    def _wrap(self, conn: socket.socket) -> ssl.SSLSocket:
        """`conn` as a TLS stream with the current context, before its handshake (bounded by
        `_HANDSHAKE_TIMEOUT_S`). The TLS socket takes over the descriptor (`conn` is
        detached), so it replaces `conn` among the connections `stop` closes."""
        assert self._tls is not None
        conn.settimeout(_HANDSHAKE_TIMEOUT_S)
        with self._lock:
            if self._stopped.is_set():  # `stop` may have closed the connections already
                raise OSError("the listener is stopping")
            self._connections.discard(conn)
            stream = self._tls().wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            self._connections.add(stream)
        return stream

    def _converse(self, stream: socket.socket, session: Session) -> None:
        """Serve requests until the client leaves, idles out or breaks a rule."""
        protocol = KafkaConnection(self._max_request_bytes)
        protocol.limit_request_bytes(self._request_limit(session))
        while not self._stopped.is_set():
            try:
                data = stream.recv(_READ_BYTES)
            except TimeoutError:
                log.debug("closed an idle Kafka connection from %s", session.peer)
                return
            if not data:
                return
            protocol.receive_data(data)
            while (event := protocol.next_event()) is not None:
                if isinstance(event, Close):
                    log.info("closed a Kafka connection from %s: %s", session.peer, event.reason)
                    self._notify(lambda o, reason=event.reason: o.protocol_violation(reason))
                    return
                if isinstance(event, Reply):
                    stream.sendall(event.data)
                    self._notify(
                        lambda o, reply=event: o.unserved_version_answered(len(reply.data))
                    )
                    continue
                if not self._serve_request(stream, protocol, session, event):
                    return
                protocol.limit_request_bytes(self._request_limit(session))

    def _serve_request(
        self, stream: socket.socket, protocol: KafkaConnection, session: Session, request: Request
    ) -> bool:
        """Serve one request and send its answer; False when the connection must close."""
        started = time.perf_counter()
        response: Any = None
        data = b""
        outcome = SERVED
        try:
            response = self._serve(session, request)
            if response is not None:
                data = protocol.encode_response(request, response)
        except NotServed as exc:
            log.info("closed a Kafka connection from %s: %s", session.peer, exc)
            outcome = NOT_SERVED
        except Exception:  # a handler's bug must cost one connection, not the listener
            log.exception(
                "Kafka %s v%d from %s failed; closing the connection",
                request.api.name,
                request.version,
                session.peer,
            )
            outcome, response = HANDLER_ERROR, None
        elapsed_s = time.perf_counter() - started
        if outcome == SERVED and session.closing is not None:
            outcome = LAST_ANSWER
        sent = 0
        try:
            if data:
                stream.sendall(data)
                sent = len(data)
        finally:  # a client gone mid-write still made a request
            self._notify(lambda o: o.request_done(request, response, outcome, elapsed_s, sent))
        if outcome == LAST_ANSWER:
            log.info("closed a Kafka connection from %s: %s", session.peer, session.closing)
        return outcome == SERVED

    def _notify(self, tell: Callable[[KafkaObserver], None]) -> None:
        """`tell(observer)`, if there is one; its failure is logged, never the connection's."""
        if self._observer is None:
            return
        try:
            tell(self._observer)
        except Exception:
            log.exception("the Kafka listener's observer failed")

    def _request_limit(self, session: Session) -> int:
        """The largest request `session` may send now (bytes)."""
        if session.authenticated:
            return self._max_request_bytes
        return min(self._max_request_bytes, MAX_UNAUTHENTICATED_REQUEST_BYTES)


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)

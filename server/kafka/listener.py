"""The Kafka listener's socket shell: accept, read, hand bytes to `KafkaConnection`, write.

All protocol decisions are in `connection` (framing, decoding, refusals) and the handlers;
this module only moves bytes. One thread per connection serves its requests in arrival
order, one at a time (Kafka's own broker mutes a connection while a request is in flight),
so a long-poll fetch holds only its own connection. Invariants:
- At most `max_connections` connections are open; one more is closed at once.
- A connection silent for `connections_max_idle_ms` is closed (Kafka's default, 10 min).
- `stop()` closes the listening socket and every connection; their threads end on their
  own (a handler running when `stop` is called finishes first, bounded by its long poll).
- Nothing a client sends can end the listener: a bad stream closes its own connection.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from logstore.addresses import parse_host_port
from logstore.server.kafka.connection import Close, KafkaConnection, Reply, Request
from logstore.server.kafka.context import Session
from logstore.server.kafka.router import NotServed

log = logging.getLogger(__name__)

#: bytes read per recv() call
_READ_BYTES = 256 * 1024
#: how long a TLS handshake may take before the connection is dropped (s)
_HANDSHAKE_TIMEOUT_S = 10.0

#: serve one request of a session: its response object, or None (no answer); raising
#: `NotServed` (or anything else) closes the connection
Serve = Callable[[Session, Request], Any]


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
        ssl_context: ssl.SSLContext | None = None,
        on_session: Callable[[Session], None] = lambda session: None,
    ) -> None:
        host, port = parse_host_port(listen, port_zero=True)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
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
        self._ssl_context = ssl_context
        self._on_session = on_session
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
                continue
            threading.Thread(
                target=self._run_connection,
                args=(conn, _peer_name(peer)),
                name="logstore-kafka-conn",
                daemon=True,
            ).start()

    def _run_connection(self, conn: socket.socket, peer: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(self._idle_timeout_s)
            stream: socket.socket = conn
            if self._ssl_context is not None:
                conn.settimeout(_HANDSHAKE_TIMEOUT_S)
                stream = self._ssl_context.wrap_socket(conn, server_side=True)
                stream.settimeout(self._idle_timeout_s)
            session = Session(peer=peer, tls=self._ssl_context is not None)
            self._on_session(session)
            self._converse(stream, session)
        except (OSError, ssl.SSLError) as exc:
            if not self._stopped.is_set():
                log.debug("Kafka connection from %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            _shutdown(conn)

    def _converse(self, stream: socket.socket, session: Session) -> None:
        """Serve requests until the client leaves, idles out or breaks a rule."""
        protocol = KafkaConnection(self._max_request_bytes)
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
                    return
                if isinstance(event, Reply):
                    stream.sendall(event.data)
                    continue
                try:
                    response = self._serve(session, event)
                except NotServed as exc:
                    log.info("closed a Kafka connection from %s: %s", session.peer, exc)
                    return
                except Exception:  # a handler's bug must cost one connection, not the listener
                    log.exception(
                        "Kafka %s v%d from %s failed; closing the connection",
                        event.api.name,
                        event.version,
                        session.peer,
                    )
                    return
                if response is not None:
                    stream.sendall(protocol.encode_response(event, response))


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)

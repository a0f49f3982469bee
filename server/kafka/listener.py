"""The Kafka listener's socket shell: accept, read, hand bytes to `KafkaConnection`, write.

All protocol decisions are in `connection` (framing, decoding, refusals) and the handlers;
this module only moves bytes. One thread per connection serves its requests in arrival
order, one at a time (Kafka's own broker mutes a connection while a request is in flight),
so a long-poll fetch holds only its own connection. Invariants:
- At most `max_connections` connections are open, and at most `max_connections_per_ip`
  from one peer address (Kafka's max.connections.per.ip; None: no per-address limit, as
  Kafka's default); one more is closed at once. A refusal is logged once per burst: the
  first refusal of a limit is logged, the rest are counted until a connection of that limit
  closes, then the count is logged.
- A connection silent for `idle_timeout_s` is closed (connections.max.idle.ms; Kafka's
  default, 10 min).
- A request must arrive whole within `request_timeout_s` of its first byte, and a
  connection's first request within `request_timeout_s` of connecting; else the connection
  is closed. Each connection holds a thread, so without this bound a client trickling one
  byte per idle period, or many silent connections, would hold threads and connection slots
  for ever. The time a request spends being served does not count against the next one.
- A connection that is not authenticated (on a listener that requires SASL) is closed once
  it has been so for `authentication_timeout_s`.
- Until its session is authenticated, a connection's frames of any API other than SASL's
  and ApiVersions are refused from their API key, before the rest is buffered or decoded.
- The accept loop backs off `_ACCEPT_RETRY_S` when accept() fails (out of descriptors:
  EMFILE), logging once per run of failures, instead of spinning on the pending connection.
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
from dataclasses import dataclass
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
from logstore.server.kafka.router import BEFORE_AUTHENTICATION, NotServed

log = logging.getLogger(__name__)

#: bytes read per recv() call
_READ_BYTES = 256 * 1024
#: how long a TLS handshake may take before the connection is dropped (s)
_HANDSHAKE_TIMEOUT_S = 10.0
#: how long the accept loop waits after accept() failed before it tries again (s): out of
#: descriptors (EMFILE) the pending connection stays queued and accept() fails at once, so
#: retrying without a pause would spin a core until a descriptor is freed
_ACCEPT_RETRY_S = 0.1
#: the key of the listener-wide connection limit among the per-address ones
_ALL_PEERS = ""
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
        max_connections_per_ip: int | None = None,
        idle_timeout_s: float = 600.0,
        request_timeout_s: float = 60.0,
        authentication_timeout_s: float = 30.0,
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
        self._max_connections_per_ip = max_connections_per_ip
        self._idle_timeout_s = idle_timeout_s
        self._request_timeout_s = request_timeout_s
        self._authentication_timeout_s = authentication_timeout_s
        self._tls = tls
        self._open_session = open_session
        self._observer = observer
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        #: open connections by peer address
        self._per_ip: dict[str, int] = {}
        #: refusals in the current burst, by limit (a peer address, or `_ALL_PEERS`)
        self._refusals: dict[str, int] = {}
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
        failing = False
        while not self._stopped.is_set():
            try:
                conn, peer = self._sock.accept()
            except OSError as exc:
                if self._stopped.is_set():
                    return
                if not failing:
                    log.warning(
                        "the Kafka listener cannot accept connections (%s); retrying every "
                        "%d ms, logged again once it can",
                        exc,
                        _ACCEPT_RETRY_S * 1000,
                    )
                    failing = True
                self._stopped.wait(_ACCEPT_RETRY_S)
                continue
            if failing:
                log.warning("the Kafka listener accepts connections again")
                failing = False
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        """Serve `conn` on a thread of its own, or close it at once when a limit is
        reached."""
        host, name = _peer_host(peer), _peer_name(peer)
        with self._lock:
            limit = self._limit_reached(host)
            if limit is None:
                self._connections.add(conn)
                self._per_ip[host] = self._per_ip.get(host, 0) + 1
            else:
                first = limit not in self._refusals
                self._refusals[limit] = self._refusals.get(limit, 0) + 1
        if limit is not None:
            conn.close()
            if first:
                self._log_refusal(limit, name)
            self._notify(lambda o: o.connection_refused())
            return
        self._notify(lambda o: o.connection_accepted())
        threading.Thread(
            target=self._run_connection,
            args=(conn, host, name),
            name="logstore-kafka-conn",
            daemon=True,
        ).start()

    def _limit_reached(self, host: str) -> str | None:
        """The limit a new connection from `host` would exceed (`_ALL_PEERS` or `host`),
        or None. Called with the lock held."""
        if len(self._connections) >= self._max_connections:
            return _ALL_PEERS
        per_ip = self._max_connections_per_ip
        if per_ip is not None and self._per_ip.get(host, 0) >= per_ip:
            return host
        return None

    def _log_refusal(self, limit: str, peer: str) -> None:
        if limit == _ALL_PEERS:
            log.warning(
                "refused a Kafka connection from %s: %d connections are open, the limit "
                "(--kafka-max-connections); further refusals are logged once one closes",
                peer,
                self._max_connections,
            )
        else:
            log.warning(
                "refused a Kafka connection from %s: %d connections from %s are open, the "
                "limit per address (--kafka-max-connections-per-ip); further refusals are "
                "logged once one closes",
                peer,
                self._max_connections_per_ip,
                limit,
            )

    def _release(self, stream: socket.socket, host: str) -> None:
        """Free the slots `stream` held; a burst of refusals of those limits ends."""
        with self._lock:
            self._connections.discard(stream)
            left = self._per_ip.pop(host, 0) - 1
            if left > 0:
                self._per_ip[host] = left
            ended = [(k, self._refusals.pop(k)) for k in (_ALL_PEERS, host) if k in self._refusals]
        for limit, count in ended:
            if count > 1:  # the first was logged as it happened
                log.warning(
                    "refused %d more Kafka connections%s before one closed",
                    count - 1,
                    f" from {limit}" if limit != _ALL_PEERS else "",
                )

    def _run_connection(self, conn: socket.socket, host: str, peer: str) -> None:
        stream = conn
        opened_at = time.monotonic()
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
            self._converse(stream, session, opened_at)
        except (OSError, ssl.SSLError) as exc:
            if not self._stopped.is_set():
                log.debug("Kafka connection from %s ended: %s", peer, exc)
        finally:
            self._release(stream, host)
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

    def _converse(self, stream: socket.socket, session: Session, opened_at: float) -> None:
        """Serve requests until the client leaves, breaks a rule or a deadline passes."""
        protocol = KafkaConnection(self._max_request_bytes)
        self._apply_session(protocol, session)
        deadlines = _Deadlines(
            self._idle_timeout_s,
            self._request_timeout_s,
            self._authentication_timeout_s,
            request_by=opened_at + self._request_timeout_s,
        )
        deadlines.note_session(opened_at, session.authenticated)
        while not self._stopped.is_set():
            wait_s, why, level = deadlines.next_wait(time.monotonic())
            try:
                if wait_s <= 0:
                    raise TimeoutError
                stream.settimeout(wait_s)
                data = stream.recv(_READ_BYTES)
            except TimeoutError:
                log.log(level, "closed a Kafka connection from %s: %s", session.peer, why)
                return
            if not data:
                return
            stream.settimeout(self._idle_timeout_s)  # what a response's write may take
            protocol.receive_data(data)
            served = self._serve_events(stream, protocol, session)
            if served is None:
                return
            now = time.monotonic()
            deadlines.after_read(now, served > 0, protocol.receiving)
            deadlines.note_session(now, session.authenticated)

    def _serve_events(
        self, stream: socket.socket, protocol: KafkaConnection, session: Session
    ) -> int | None:
        """Answer every whole request received: how many, or None when the connection
        must close."""
        served = 0
        while (event := protocol.next_event()) is not None:
            if isinstance(event, Close):
                log.info("closed a Kafka connection from %s: %s", session.peer, event.reason)
                self._notify(lambda o, reason=event.reason: o.protocol_violation(reason))
                return None
            served += 1
            if isinstance(event, Reply):
                stream.sendall(event.data)
                self._notify(lambda o, reply=event: o.unserved_version_answered(len(reply.data)))
                continue
            if not self._serve_request(stream, protocol, session, event):
                return None
            self._apply_session(protocol, session)
        return served

    def _apply_session(self, protocol: KafkaConnection, session: Session) -> None:
        """What `session` may send next: until it authenticates, small frames of SASL's
        APIs (and ApiVersions) only."""
        protocol.limit_request_bytes(self._request_limit(session))
        if session.authenticated:
            protocol.restrict_apis(None)
        else:
            protocol.restrict_apis(BEFORE_AUTHENTICATION, "before SASL authentication completed")

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


def _peer_host(peer: Any) -> str:
    """The address part of an accepted peer: what the per-address limit counts."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


def _peer_name(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


@dataclass
class _Deadlines:
    """When a connection's wait for bytes must end (`time.monotonic()` seconds)."""

    idle_s: float
    request_s: float
    authentication_s: float
    #: when the request being received must be whole; None while none is. A connection's
    #: first request counts from connecting: Kafka clients send ApiVersions (or
    #: SaslHandshake) at once, so a silent connection holds its slot no longer than a slow one
    request_by: float | None
    first_request: bool = True
    #: when the connection must have authenticated; None while it is authenticated
    authenticate_by: float | None = None

    def next_wait(self, now: float) -> tuple[float, str, int]:
        """(how long the next read may wait (s), why the connection closes if it waits
        that long in vain, the log level that deserves)."""
        waits = [(self.idle_s, f"idle for {_ms(self.idle_s)} ms", logging.DEBUG)]
        if self.request_by is not None:
            since = "connecting" if self.first_request else "its first byte"
            why = f"no whole request within {_ms(self.request_s)} ms of {since}"
            waits.append((self.request_by - now, why, logging.INFO))
        if self.authenticate_by is not None:
            why = f"not authenticated within {_ms(self.authentication_s)} ms"
            waits.append((self.authenticate_by - now, why, logging.INFO))
        return min(waits, key=lambda wait: wait[0])

    def after_read(self, now: float, completed: bool, receiving: bool) -> None:
        """Bytes were read at `now`: `completed` requests whole (and served), and whether a
        request is now part-way in."""
        if completed:
            self.first_request = False
        if not receiving:
            self.request_by = None
        elif completed or self.request_by is None:
            self.request_by = now + self.request_s

    def note_session(self, now: float, authenticated: bool) -> None:
        if authenticated:
            self.authenticate_by = None
        elif self.authenticate_by is None:
            self.authenticate_by = now + self.authentication_s


def _ms(seconds: float) -> int:
    return round(seconds * 1000)

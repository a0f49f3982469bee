"""The replication stream's sockets: a listener on the leader, a client on each follower.

The format and its invariants are in `replication_wire`; this module only moves its
bytes. `ReplicationListener` serves each connection on its own thread, one request at a
time, by calling the broker's replica-fetch logic (the same that answers the gRPC
`ReplicaFetch`). `ReplicationClient` is what a follower's fetcher calls instead of the
gRPC stub; any failure closes its connection (the next call reconnects) and raises
`ReplicationStreamError`, so a half-read answer can never be taken for the next one.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

from logstore.addresses import parse_host_port
from logstore.errors import LogStoreError
from logstore.server.cluster import replication_wire as wire
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)

#: answers a replica fetch; the callable tells whether the connection is still wanted
FetchHandler = Callable[[pb.ReplicaFetchRequest, Callable[[], bool]], pb.FetchResponse]

#: how long a connection may take to send its handshake (s)
_HANDSHAKE_TIMEOUT_S = 10.0
#: a follower asks again within its fetch wait (500 ms by default); one silent for this
#: long is gone, and its thread is freed (s)
_IDLE_TIMEOUT_S = 120.0
#: longest `ReplicationListener.stop` waits for the threads serving streams (s)
_STOP_WAIT_S = 5.0
#: longest a follower's connect and handshake may take (s): a leader that does not
#: answer this soon counts as down, and a stopping fetcher never waits longer on one
CONNECT_TIMEOUT_S = 2.0
#: most connections served at once: a few per follower broker; more are closed at once
MAX_CONNECTIONS = 256
#: socket buffers sized for a whole fetch of a few batches, so one answer is a few writes
_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


class ReplicationStreamError(LogStoreError):
    """The replication stream to a leader failed (connection, timeout, or the leader
    refused the request as a whole); the fetcher backs off and retries."""


class ReplicationRefusedError(ReplicationStreamError):
    """The leader answered, refusing the request as a whole: the stream itself works."""


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    """`size` bytes from `sock`; ConnectionError if it closes first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("the peer closed the replication stream")
        got += n
    return buffer


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER_BYTES)


class ReplicationListener:
    """Accepts followers' replication streams on `listen` ("host:port"; port 0 picks a
    free one, read back from `port`)."""

    def __init__(self, listen: str, handler: FetchHandler) -> None:
        host, port = parse_host_port(listen, port_zero=True)
        self._handler = handler
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = socket.create_server((host, port), family=family)
        self.host = host
        self.port: int = self._server.getsockname()[1]
        self._stopped = threading.Event()
        self._connections: set[socket.socket] = set()
        self._serving: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._accept_loop, name="logstore-replication-listener", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close every connection, and wait (up to _STOP_WAIT_S) for
        the threads serving them, so no answer is still being read from the logs once the
        broker closes them."""
        self._stopped.set()
        # shutdown, not just close: it wakes the thread blocked in accept()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + _STOP_WAIT_S
        with self._lock:
            threads = [self._thread, *self._serving]
        for thread in threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, peer = self._server.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                full = len(self._connections) >= MAX_CONNECTIONS
                if not full:
                    self._connections.add(connection)
            if full:
                log.warning(
                    "replication stream from %s refused: %d streams open already",
                    peer,
                    MAX_CONNECTIONS,
                )
                connection.close()
                continue
            thread = threading.Thread(
                target=self._serve,
                args=(connection, peer),
                name="logstore-replication-stream",
                daemon=True,
            )
            with self._lock:
                self._serving.add(thread)
            thread.start()

    def _serve(self, connection: socket.socket, peer: object) -> None:
        try:
            with connection:
                _tune(connection)
                connection.settimeout(_HANDSHAKE_TIMEOUT_S)
                wire.check_handshake(bytes(_recv_exactly(connection, len(wire.HANDSHAKE))))
                connection.sendall(wire.HANDSHAKE)
                connection.settimeout(_IDLE_TIMEOUT_S)
                while not self._stopped.is_set():
                    self._answer_one(connection)
        except (ConnectionError, TimeoutError):
            pass  # the follower went away or stopped fetching from us
        except OSError as exc:
            if not self._stopped.is_set():
                log.debug("replication stream from %s ended: %s", peer, exc)
        except wire.ReplicationWireError as exc:
            log.warning("replication stream from %s refused: %s", peer, exc)
        finally:
            with self._lock:
                self._connections.discard(connection)
                self._serving.discard(threading.current_thread())

    def _answer_one(self, connection: socket.socket) -> None:
        head = _recv_exactly(connection, wire.U32_SIZE)
        length = wire.decode_length(head, "request", wire.MAX_REQUEST_BYTES)
        request = wire.decode_request(bytes(_recv_exactly(connection, length)))
        try:
            response = self._handler(request, lambda: not self._stopped.is_set())
        except LogStoreError as exc:
            connection.sendall(wire.encode_error(exc))
            return
        except Exception as exc:  # a bug must not end the stream without an answer
            log.exception("replica fetch over the replication stream failed")
            connection.sendall(wire.encode_error(exc))
            return
        pieces = wire.encode_answer(response)
        # One buffer per answer keeps it to a few sendall calls; the copy costs far less
        # than the system calls it saves.
        connection.sendall(b"".join(pieces))


class ReplicationClient:
    """A follower's replication stream to one leader at `address` ("host:port").

    `close()` may be called from another thread at any time, a connect or handshake in
    progress included: the socket is published before the handshake, so shutting it down
    wakes the fetch at once, and a closed client never connects again.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False

    def fetch(self, request: pb.ReplicaFetchRequest, timeout_s: float) -> pb.FetchResponse:
        """The leader's answer to `request` within `timeout_s` (ReplicationStreamError
        otherwise, with the connection closed)."""
        try:
            sock = self._connected(timeout_s)
            sock.settimeout(timeout_s)
            sock.sendall(wire.encode_request(request))
            return self._read_answer(sock)
        except (OSError, wire.ReplicationWireError) as exc:
            self._disconnect()
            raise ReplicationStreamError(
                f"replication stream to {self.address}: {exc or type(exc).__name__}"
            ) from exc

    def _connected(self, timeout_s: float) -> socket.socket:
        with self._lock:
            if self._closed:
                raise ReplicationStreamError(f"replication stream to {self.address} is closed")
            if self._sock is not None:
                return self._sock
        host, port = parse_host_port(self.address)
        sock = socket.create_connection((host, port), timeout=min(timeout_s, CONNECT_TIMEOUT_S))
        with self._lock:
            if self._closed:
                sock.close()
                raise ReplicationStreamError(f"replication stream to {self.address} is closed")
            self._sock = sock
        _tune(sock)
        sock.settimeout(min(timeout_s, CONNECT_TIMEOUT_S))
        sock.sendall(wire.HANDSHAKE)
        wire.check_handshake(bytes(_recv_exactly(sock, len(wire.HANDSHAKE))))
        return sock

    def _read_answer(self, sock: socket.socket) -> pb.FetchResponse:
        status, length = wire.decode_answer_head(_recv_exactly(sock, wire.ANSWER_HEAD_SIZE))
        body = bytes(_recv_exactly(sock, length))
        if status == wire.STATUS_ERROR:
            raise ReplicationRefusedError(
                f"leader at {self.address} refused the fetch: {body.decode(errors='replace')}"
            )
        response, results = wire.decode_answer_header(body)
        for result in results:
            size = wire.decode_length(_recv_exactly(sock, wire.U32_SIZE), "records")
            if size:
                result.records = bytes(_recv_exactly(sock, size))
        return response

    def _disconnect(self) -> None:
        """Drop the connection (the next fetch connects again); a fetch blocked on it in
        another thread fails at once (shutdown wakes a blocked read, close alone may not)."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Close for good: a fetch in progress fails at once, later ones at their start."""
        with self._lock:
            self._closed = True
        self._disconnect()

"""The Kafka listener's TLS shell in-process: the certificate's principal reaches the
session, a reloaded certificate serves new connections, and `stop()` closes TLS
connections too (the TLS socket, not the detached raw one)."""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.protocol.metadata import ApiVersionsRequest, ApiVersionsResponse

from logstore.server.broker import LogStoreServicer
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.kafka.connection import Request
from logstore.server.kafka.context import Session
from logstore.server.kafka.security import KafkaSecurity, ReloadableSslContext
from logstore.server.kafka.service import KafkaService
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.producer_ids import ProducerIdManager
from logstore.server.security.settings import SecurityConfigError, SecuritySettings
from logstore.storage.log_manager import LogManager
from tests.helpers import wait_until
from tests.server.security.pki import make_ca, make_leaf, require_openssl

#: how long a read waits for an answer or the close (s)
READ_TIMEOUT_S = 5.0
SERVER_EXTENSIONS = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_openssl()
    d = tmp_path_factory.mktemp("listener-pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "server", "ca", "logstore-broker", SERVER_EXTENSIONS)
    make_leaf(d, "rotated", "other-ca", "logstore-broker", SERVER_EXTENSIONS)
    make_leaf(d, "alice", "ca", "alice", "extendedKeyUsage=clientAuth\n")
    return d


@pytest.fixture
def servicer(tmp_path: Path) -> Iterator[LogStoreServicer]:
    manager = LogManager(tmp_path / "data")
    try:
        yield LogStoreServicer(
            manager,
            OffsetStore(manager),
            ProducerIdManager(tmp_path / "producer-id-block"),
            GroupCoordinator(partition_counts=lambda _topic: None),
        )
    finally:
        manager.close()


class RecordingService(KafkaService):
    """The real service, remembering the sessions it served (what the listener built)."""

    sessions: list[Session]

    def serve(self, session: Session, request: Request) -> object:
        self.sessions.append(session)
        return super().serve(session, request)


def started(servicer: LogStoreServicer, settings: SecuritySettings) -> RecordingService:
    security = KafkaSecurity(settings, tls=ReloadableSslContext(settings))
    service = RecordingService(
        servicer,
        KafkaSettings("127.0.0.1:0", auto_create_topics=False),
        max_request_bytes=1024 * 1024,
        security=security,
    )
    service.sessions = []
    service.start()
    return service


def tls_client(pki: Path, ca: str = "ca", cert: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / f"{ca}.pem"))
    if cert is not None:
        context.load_cert_chain(pki / f"{cert}.pem", pki / f"{cert}.key")
    return context


def connect(service: KafkaService, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=READ_TIMEOUT_S)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def api_versions(sock: ssl.SSLSocket) -> int | None:
    """Ask ApiVersions v0: its error code, or None when the listener closed instead."""
    request = ApiVersionsRequest(version=0)
    request.with_header(correlation_id=1, client_id="tls-test")
    try:
        sock.sendall(bytes(request.encode(header=True, framed=True)))
        size = read_exact(sock, 4)
        body = None if size is None else read_exact(sock, struct.unpack(">i", size)[0])
    except (ConnectionResetError, ssl.SSLError):  # closed without a TLS close_notify
        return None
    if body is None:
        return None
    return int(ApiVersionsResponse.decode(io.BytesIO(body), version=0, header=True).error_code)


def read_exact(sock: ssl.SSLSocket, n: int) -> bytes | None:
    """`n` bytes, or None if the listener closed the connection first."""
    out = bytearray()
    for _ in range(n):
        if len(out) >= n:
            break
        chunk = sock.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def refused(service: KafkaService, context: ssl.SSLContext) -> bool:
    """Whether the listener refuses a client with `context`: in the handshake (TLS 1.2),
    or by closing at the first request (TLS 1.3 sends its verdict after the handshake)."""
    try:
        sock = connect(service, context)
    except (ssl.SSLError, ConnectionResetError):
        return True
    with sock:
        return api_versions(sock) is None


def test_stop_closes_open_tls_connections(pki: Path, servicer: LogStoreServicer) -> None:
    settings = SecuritySettings(tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    service = started(servicer, settings)
    with connect(service, tls_client(pki)) as sock:
        assert api_versions(sock) == 0
        assert service.listener.connection_count == 1
        began = time.monotonic()
        service.stop()
        # closed without a TLS close_notify (a reset or an SSL error) is as good as EOF
        with contextlib.suppress(ConnectionResetError, ssl.SSLError):
            assert sock.recv(1) == b""
        assert time.monotonic() - began < READ_TIMEOUT_S
    wait_until(lambda: service.listener.connection_count == 0, "the connection's thread to end")


def test_a_client_certificate_names_the_session(pki: Path, servicer: LogStoreServicer) -> None:
    settings = SecuritySettings(
        tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem"
    )
    service = started(servicer, settings)
    try:
        with connect(service, tls_client(pki, cert="alice")) as sock:
            assert api_versions(sock) == 0
        (session,) = service.sessions
        assert (session.principal, session.tls, session.authenticated) == ("User:alice", True, True)
        assert refused(service, tls_client(pki))  # no certificate
    finally:
        service.stop()


def test_a_reloaded_certificate_serves_new_connections(
    pki: Path, servicer: LogStoreServicer, tmp_path: Path
) -> None:
    cert, key = tmp_path / "broker.pem", tmp_path / "broker.key"
    shutil.copy(pki / "server.pem", cert)
    shutil.copy(pki / "server.key", key)
    service = started(servicer, SecuritySettings(tls_cert=cert, tls_key=key))
    try:
        with connect(service, tls_client(pki)) as before:
            shutil.copy(pki / "rotated.pem", cert)  # its key is not yet the rotated one
            with pytest.raises(SecurityConfigError, match="TLS files"):
                service.reload_security()
            assert api_versions(before) == 0
            shutil.copy(pki / "rotated.key", key)
            assert service.reload_security() == "TLS certificate"
            with pytest.raises(ssl.SSLCertVerificationError):
                connect(service, tls_client(pki))
            with connect(service, tls_client(pki, ca="other-ca")) as after:
                assert api_versions(after) == 0
            assert api_versions(before) == 0  # opened before the rotation: goes on
    finally:
        service.stop()

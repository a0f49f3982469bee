"""TLS on the gRPC listener: certificate, key and optional client CA (mutual TLS),
replaceable at run time (SIGHUP) without a restart: new files apply from the next
handshake."""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from logstore.server.security.settings import SecurityConfigError, SecuritySettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes the listener serves: certificate chain, private key, client CA."""

    chain: bytes
    key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.chain)], root_certificates=self.client_ca
        )


def read_tls_files(settings: SecuritySettings) -> TlsFiles | None:
    """The listener's TLS files, checked as OpenSSL will use them (the key must match the
    certificate); None for plaintext. Raises SecurityConfigError naming what is wrong."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    cert, key, ca = Path(settings.tls_cert), Path(settings.tls_key), settings.tls_client_ca

    def read() -> TlsFiles:
        return TlsFiles(cert.read_bytes(), key.read_bytes(), Path(ca).read_bytes() if ca else None)

    try:
        files = read()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key, password="")  # an encrypted key fails, no prompt
        if ca is not None:
            context.load_verify_locations(cafile=ca)
        again = read()  # what was checked must be what is served, not a file replaced since
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"TLS files: {exc}") from exc
    if again != files:
        raise SecurityConfigError("TLS files changed while they were read; try again")
    return files


class ReloadableTls:
    """Server credentials whose certificate, key and client CA can be replaced while the
    broker runs: gRPC asks `_next` before each new connection's handshake, and keeps the
    previous configuration when it answers None. Open connections are not affected."""

    def __init__(self, files: TlsFiles) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            files.configuration(),
            self._next,
            require_client_authentication=files.client_ca is not None,
        )

    def replace(self, files: TlsFiles) -> None:
        with self._lock:
            self._pending = files.configuration()

    def _next(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

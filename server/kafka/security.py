"""The Kafka listener's security: TLS, SASL on the token principals, and the ACLs' decisions.

The same settings and the same principals as the gRPC listener (`logstore.server.security`):
- TLS: with `--tls-cert/--tls-key` the listener serves TLS 1.2+ with the same certificate;
  with `--tls-client-ca` it requires a client certificate that chains to that CA (mutual
  TLS), and the connection's principal is ``User:<subject CN>``, as over gRPC.
- SASL: with `--auth-tokens` the listener offers SASL/PLAIN, whose password is a token of
  the token file; the connection's principal is that token's. Until it authenticates (by
  SASL, or by a verified client certificate on a mutual-TLS listener) a connection may send
  only ApiVersions, SaslHandshake and SaslAuthenticate. Without a token file SASL is not
  offered (Kafka's PLAINTEXT and SSL listeners).
- ACLs: the broker's `Authorizer` (its own file, or the cluster's ACLs in etcd), super
  users included, decides every check a handler makes through `KafkaBroker.allowed`.

PLAIN's username must name the token's principal: ``alice`` (or ``User:alice``) for a
token of ``User:alice``. The token alone decides who the client is; requiring the name too
turns a token pasted into the wrong client's configuration into a clear refusal instead of
a connection that silently acts as someone else.

Secrets: tokens are looked up by their SHA-256 digest (`auth.token_digest`), and no
message, log line or exception names a token.

Rotation (SIGHUP, `KafkaSecurity.reload`): new connections use the re-read certificate and
tokens. A connection that authenticated with a token that has since been revoked, or that
now names another principal, is closed at its next request, as gRPC ends such streams at
their next message.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from logstore.server.kafka.context import ANONYMOUS, Authorize, Session
from logstore.server.security.auth import load_tokens, token_digest
from logstore.server.security.settings import SecurityConfigError, SecuritySettings

if TYPE_CHECKING:
    from logstore.server.security.broker_security import BrokerSecurity

log = logging.getLogger(__name__)

PLAIN: Final = "PLAIN"
#: the mechanisms offered, in the order SaslHandshake lists them
MECHANISMS: Final = (PLAIN,)


class SaslFailure(Exception):
    """The client's SASL bytes do not authenticate it. The message goes to the client
    (Kafka's SASL_AUTHENTICATION_FAILED): it must name no secret."""


class SaslExchange(Protocol):
    """One SASL authentication in progress on one connection.

    `evaluate` takes each SaslAuthenticate's bytes and returns the server's answer;
    once `principal` is set the exchange is complete.
    """

    principal: str | None
    #: SHA-256 digest of the token the client proved it holds (set with `principal`)
    credential: bytes | None

    def evaluate(self, client_bytes: bytes) -> bytes: ...


# --- tokens --------------------------------------------------------------------------------------


class TokenPrincipals:
    """The token file as SASL sees it: token digest -> principal, replaceable on reload.

    Thread-safe. `generation` grows with every `replace`, so a connection can tell that the
    tokens changed since it authenticated.
    """

    def __init__(self, digests: Mapping[bytes, str]) -> None:
        self._lock = threading.Lock()
        self._digests = dict(digests)
        self.generation = 0

    def replace(self, digests: Mapping[bytes, str]) -> None:
        with self._lock:
            self._digests = dict(digests)
            self.generation += 1

    def principal(self, digest: bytes) -> str | None:
        with self._lock:
            return self._digests.get(digest)

    def __len__(self) -> int:
        with self._lock:
            return len(self._digests)


def principal_name(principal: str) -> str:
    """The name part of ``Type:name`` (``alice`` for ``User:alice``)."""
    return principal.partition(":")[2]


class PlainExchange:
    """SASL/PLAIN (RFC 4616) over the token file: one message, ``authzid NUL username NUL
    password``, where the password is a token and the username names its principal.

    Refusals word Kafka's `PlainSaslServer`, and name neither the token nor the username.
    """

    def __init__(self, tokens: TokenPrincipals) -> None:
        self._tokens = tokens
        self.principal: str | None = None
        self.credential: bytes | None = None

    def evaluate(self, client_bytes: bytes) -> bytes:
        if self.principal is not None:
            raise SaslFailure("Authentication failed: SASL/PLAIN takes one message")
        authzid, username, password = _plain_fields(client_bytes)
        if authzid and authzid != username:
            raise SaslFailure(
                "Authentication failed: Client requested an authorization id that is "
                "different from username"
            )
        digest = token_digest(password)
        principal = self._tokens.principal(digest)
        if principal is None:
            raise SaslFailure("Authentication failed: Invalid username or password")
        if username not in (principal_name(principal), principal):
            raise SaslFailure(
                "Authentication failed: the username is not the name of the token's "
                "principal (for a token of User:alice, the username is alice)"
            )
        self.principal, self.credential = principal, digest
        return b""


def _plain_fields(client_bytes: bytes) -> tuple[str, str, str]:
    """(authzid, username, password) of a PLAIN message; SaslFailure when malformed."""
    try:
        text = client_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslFailure("Invalid SASL/PLAIN response: not UTF-8") from None
    fields = text.split("\0")
    if len(fields) != 3:
        raise SaslFailure(f"Invalid SASL/PLAIN response: expected 3 tokens, got {len(fields)}")
    authzid, username, password = fields
    if not username:
        raise SaslFailure("Authentication failed: username not specified")
    if not password:
        raise SaslFailure("Authentication failed: password not specified")
    return authzid, username, password


class SaslAuthenticator:
    """The SASL mechanisms a listener offers, over its token file."""

    def __init__(self, tokens: TokenPrincipals) -> None:
        self.tokens = tokens
        self.mechanisms: tuple[str, ...] = MECHANISMS

    def begin(self, mechanism: str) -> SaslExchange | None:
        """A new exchange of `mechanism`; None when it is not offered."""
        if mechanism == PLAIN:
            return PlainExchange(self.tokens)
        return None

    def still_valid(self, credential: bytes, principal: str) -> bool:
        """Whether the token with digest `credential` still names `principal`."""
        return self.tokens.principal(credential) == principal


# --- TLS -----------------------------------------------------------------------------------------


def server_ssl_context(settings: SecuritySettings) -> ssl.SSLContext:
    """The listener's TLS context (TLS 1.2+) from the broker's certificate and key, requiring
    client certificates that chain to `tls_client_ca` when it is set. Raises
    SecurityConfigError naming the file problem (never a key's contents)."""
    if settings.tls_cert is None or settings.tls_key is None:
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(
            Path(settings.tls_cert), Path(settings.tls_key), password=""
        )  # an encrypted key fails here, never prompts
        if settings.tls_client_ca is not None:
            context.load_verify_locations(cafile=Path(settings.tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"TLS files: {exc}") from exc
    return context


class ReloadableSslContext:
    """The listener's TLS context, rebuilt from the files on `reload`: each new connection's
    handshake uses the latest one; open connections keep theirs."""

    def __init__(self, settings: SecuritySettings) -> None:
        self._settings = settings
        self._context = server_ssl_context(settings)
        self.requires_client_certificate = settings.tls_client_ca is not None

    def __call__(self) -> ssl.SSLContext:
        return self._context

    def build(self) -> ssl.SSLContext:
        """A context from the files as they are now (not yet served)."""
        return server_ssl_context(self._settings)

    def replace(self, context: ssl.SSLContext) -> None:
        """Serve `context` from the next handshake on."""
        self._context = context


def certificate_principal(certificate: dict[str, Any] | None) -> str | None:
    """``User:<CN>`` of a verified peer certificate (`ssl.SSLSocket.getpeercert()`), as
    the gRPC listener names it; None without a certificate or a common name."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return f"User:{value}"
    return None


# --- the listener's security, assembled -----------------------------------------------------


@dataclass
class KafkaSecurity:
    """What secures one broker's Kafka listener; built by `kafka_security`."""

    settings: SecuritySettings
    #: None: plaintext
    tls: ReloadableSslContext | None = None
    #: None: SASL is not offered, and connections need no authentication
    sasl: SaslAuthenticator | None = None
    #: None: no ACLs, every principal may do everything
    authorize: Authorize | None = None

    def open_session(self, peer: str, tls: bool, certificate_principal: str | None) -> Session:
        """A new connection's session: a verified client certificate authenticates it;
        otherwise, with a token file, it must authenticate by SASL first."""
        if certificate_principal is not None:
            return Session(peer=peer, tls=tls, principal=certificate_principal)
        return Session(peer=peer, tls=tls, principal=ANONYMOUS, authenticated=self.sasl is None)

    def reload(self) -> str:
        """Re-read the token file and the TLS files, all or nothing (raises
        SecurityConfigError and changes nothing when one is bad); they apply from the next
        connection, and a revoked token ends its connections at their next request.
        Returns what was reloaded, for the log."""
        digests = None
        if self.sasl is not None and self.settings.auth_tokens:
            digests = load_tokens(Path(self.settings.auth_tokens))
        context = self.tls.build() if self.tls is not None else None
        done = []
        if digests is not None and self.sasl is not None:
            self.sasl.tokens.replace(digests)
            done.append(f"{len(digests)} tokens")
        if context is not None and self.tls is not None:
            self.tls.replace(context)
            ca = " and client CA" if self.settings.tls_client_ca else ""
            done.append(f"TLS certificate{ca}")
        return ", ".join(done) or "nothing (no token or TLS files configured)"

    def describe(self) -> str:
        """One line for the log: what protects the listener (no secrets)."""
        s = self.settings
        transport = "mutual TLS" if s.tls_client_ca else "TLS" if self.tls else "plaintext"
        sasl = f"SASL {'/'.join(self.sasl.mechanisms)}" if self.sasl else "no SASL"
        acls = "ACLs" if self.authorize is not None else "no ACLs"
        return f"{transport}, {sasl}, {acls}"


def kafka_security(security: BrokerSecurity) -> KafkaSecurity:
    """The Kafka listener's security from the broker's (the same files, principals and
    ACLs as its gRPC listener). Raises SecurityConfigError when a file cannot be read."""
    s = security.settings
    tls = ReloadableSslContext(s) if s.tls_cert and s.tls_key else None
    sasl = None
    if s.auth_tokens:
        sasl = SaslAuthenticator(TokenPrincipals(load_tokens(Path(s.auth_tokens))))
    authorizer = security.authorizer
    return KafkaSecurity(
        settings=s,
        tls=tls,
        sasl=sasl,
        authorize=None if authorizer is None else authorizer.authorize,
    )

"""How a broker proves who it is to the other brokers of its cluster, and checks them.

Kafka's model (security.inter.broker.protocol; the broker principal is a super user):

- Transport: brokers whose listeners serve TLS reach each other over TLS, and check each
  peer's certificate, and that it names the host the peer advertises, against
  `--inter-broker-tls-ca` (Kafka: the truststore of the inter-broker listener). It defaults
  to `--tls-client-ca`: with mutual TLS every broker presents its certificate to its peers
  as a client certificate, so the CA that signs client certificates already signs the
  brokers'. With TLS but no client CA it must be given.
- Identity: with mutual TLS a broker presents its own certificate and key (`--tls-cert`,
  `--tls-key`) as its client certificate, so its principal is ``User:<subject CN>``; with
  `--auth-tokens` it also sends the token of `--inter-broker-token-file` on every call,
  which the peers' token files map to its principal (a token wins over a certificate).
- Authorization: with ACLs, the inter-broker RPCs need `cluster_action` on the cluster
  (`acl_rules`); the broker principal should be listed in `--super-users`.

`check_inter_broker_settings` refuses combinations that cannot work, and
`read_peer_credentials` files that cannot be used, each in one line naming the option
(SecurityConfigError), before the broker opens anything.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from logstore.server.security.auth import token_digest
from logstore.server.security.settings import SecurityConfigError, SecuritySettings
from logstore.server.security.tls import TlsFiles

log = logging.getLogger(__name__)

PEER_CA_FLAG = "--inter-broker-tls-ca"
TOKEN_FILE_FLAG = "--inter-broker-token-file"


@dataclass(frozen=True)
class PeerCredentials:
    """What one broker uses with its peers: PEM bytes, and its token (the token and the
    private key never in `repr`).

    Invariant: TLS is on exactly when `root_ca` is set; a client certificate
    (`certificate_chain` and `private_key`, both or neither) only with TLS.
    """

    #: CA bundle the peers' certificates must chain to; None: plaintext
    root_ca: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    certificate_chain: bytes | None = None
    token: str | None = field(default=None, repr=False)
    #: the principal this broker's own token file maps `token` to (for the log)
    principal: str | None = None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a channel to a peer; None for plaintext."""
        if self.root_ca is None:
            return None
        return grpc.ssl_channel_credentials(self.root_ca, self.private_key, self.certificate_chain)

    def same_transport(self, other: PeerCredentials) -> bool:
        """Whether `other` opens the same TLS channels (only the token may differ)."""
        return (self.root_ca, self.private_key, self.certificate_chain) == (
            other.root_ca,
            other.private_key,
            other.certificate_chain,
        )

    def describe(self) -> str:
        """One line for the log (no secrets)."""
        if self.root_ca is None:
            transport = "plaintext"
        elif self.certificate_chain is not None:
            transport = "mutual TLS"
        else:
            transport = "TLS"
        if self.token is None:
            identity = "certificate" if self.certificate_chain is not None else "anonymous"
        else:
            identity = f"token of {self.principal}" if self.principal else "token"
        return f"{transport}, as {identity}"


#: a broker with no security settings
PLAINTEXT = PeerCredentials()


def check_inter_broker_settings(settings: SecuritySettings, cluster: bool) -> None:
    """Refuse security settings a cluster cannot run with (reads no file).

    Raises SecurityConfigError, one line naming the option to give or drop.
    """
    peer_ca, token_file = settings.inter_broker_tls_ca, settings.inter_broker_token_file
    if not cluster:
        for flag, value in ((PEER_CA_FLAG, peer_ca), (TOKEN_FILE_FLAG, token_file)):
            if value is not None:
                raise SecurityConfigError(
                    f"{flag} is a cluster setting: give --broker-id and --etcd-endpoints "
                    "for cluster mode, or drop it for a standalone broker"
                )
        return
    if peer_ca is not None and settings.tls_cert is None:
        raise SecurityConfigError(
            f"{PEER_CA_FLAG} needs --tls-cert: brokers use TLS with each other exactly "
            "when their listeners serve it"
        )
    if settings.tls_cert is not None and peer_ca is None and settings.tls_client_ca is None:
        raise SecurityConfigError(
            f"cluster mode with --tls-cert needs a CA to check the other brokers' "
            f"certificates: give {PEER_CA_FLAG} PATH (or --tls-client-ca for mutual TLS)"
        )
    if settings.auth_tokens is not None and token_file is None:
        raise SecurityConfigError(
            f"cluster mode with --auth-tokens needs {TOKEN_FILE_FLAG} PATH: the token this "
            "broker presents to the others, which their --auth-tokens map to its principal"
        )
    if settings.acls_enabled and settings.auth_tokens is None and settings.tls_client_ca is None:
        raise SecurityConfigError(
            f"--acls-enabled in cluster mode needs brokers that authenticate: give "
            f"--auth-tokens with {TOKEN_FILE_FLAG}, or --tls-client-ca (mutual TLS); "
            "without either every broker and every client is User:ANONYMOUS"
        )


def read_token_file(path: Path) -> str:
    """The one token held by `path` (surrounding blank lines and spaces ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"cannot read {TOKEN_FILE_FLAG} {path}: {exc}") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or len(lines[0].split()) != 1:
        # Never quote the file: it is a secret.
        raise SecurityConfigError(f"{TOKEN_FILE_FLAG} {path} must hold one token on one line")
    return lines[0]


def _read_ca(path: Path) -> bytes:
    try:
        raw = Path(path).read_bytes()
        ssl.create_default_context(cafile=str(path))  # a PEM bundle with a certificate
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"{PEER_CA_FLAG} {path}: {exc}") from exc
    return raw


def read_peer_credentials(
    settings: SecuritySettings,
    tls: TlsFiles | None,
    tokens: dict[bytes, str] | None,
) -> PeerCredentials:
    """The credentials a cluster broker uses with its peers, from its settings (checked by
    `check_inter_broker_settings`), its listener's TLS files and its token table.

    The inter-broker token must be in this broker's own token table: brokers share one
    table as a rule, so a token missing from it is a mistake the peers would refuse.
    Raises SecurityConfigError naming the file at fault.
    """
    token = principal = None
    if settings.inter_broker_token_file is not None:
        token = read_token_file(settings.inter_broker_token_file)
        if tokens is not None:
            principal = tokens.get(token_digest(token))
            if principal is None:
                raise SecurityConfigError(
                    f"the token in {TOKEN_FILE_FLAG} {settings.inter_broker_token_file} is "
                    f"not in --auth-tokens {settings.auth_tokens}: brokers sharing that "
                    "table would refuse this broker"
                )
    if tls is None:
        return PeerCredentials(token=token, principal=principal)
    if settings.inter_broker_tls_ca is not None:
        root_ca = _read_ca(settings.inter_broker_tls_ca)
    else:
        assert tls.client_ca is not None, "check_inter_broker_settings requires a CA"
        root_ca = tls.client_ca
    mutual = tls.client_ca is not None
    return PeerCredentials(
        root_ca,
        tls.key if mutual else None,
        tls.chain if mutual else None,
        token,
        principal,
    )


def check_own_certificate(settings: SecuritySettings, root_ca: bytes, host: str) -> None:
    """Refuse a certificate the other brokers would refuse: one TLS handshake in memory
    between this broker's listener (verifying a client certificate with mutual TLS) and
    this broker as a peer dials it at `host` (its advertised host), checked against
    `root_ca`. Catches, at start, a certificate that does not name the advertised host,
    does not chain to the inter-broker CA, or may not serve as a client certificate.

    Peers are assumed to be configured like this broker (the same CAs).
    """
    assert settings.tls_cert is not None and settings.tls_key is not None
    try:
        listener = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        listener.load_cert_chain(settings.tls_cert, settings.tls_key, password="")
        peer = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the chain and the host
        peer.load_verify_locations(cadata=root_ca.decode("ascii", errors="replace"))
        if settings.tls_client_ca is not None:
            listener.verify_mode = ssl.CERT_REQUIRED
            listener.load_verify_locations(cafile=str(settings.tls_client_ca))
            peer.load_cert_chain(settings.tls_cert, settings.tls_key, password="")
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"TLS files: {exc}") from exc
    _handshake(listener, peer, host)


def _handshake(listener: ssl.SSLContext, peer: ssl.SSLContext, host: str) -> None:
    """Complete a handshake in memory; SecurityConfigError saying which side refused."""
    to_listener, to_peer = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = listener.wrap_bio(to_listener, to_peer, server_side=True)
    client = peer.wrap_bio(to_peer, to_listener, server_hostname=host)
    done = {"peer": False, "listener": False}
    for _ in range(20):  # a handshake takes a handful of round trips
        for side, end in (("peer", client), ("listener", server)):
            if done[side]:
                continue
            try:
                end.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise SecurityConfigError(_refused_by(side, host, exc)) from exc
        if all(done.values()):
            return
    raise SecurityConfigError("TLS self-check: the handshake did not complete")


def _refused_by(side: str, host: str, exc: ssl.SSLError) -> str:
    reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if side == "peer":
        return (
            f"the other brokers would refuse this broker's certificate when they connect "
            f"to {host}: {reason} (check --tls-cert names {host} and chains to "
            f"{PEER_CA_FLAG})"
        )
    return (
        f"the other brokers would refuse this broker's certificate as its client "
        f"certificate: {reason} (with mutual TLS it must chain to --tls-client-ca and "
        "allow client authentication: extendedKeyUsage clientAuth)"
    )


def warn_about(credentials: PeerCredentials, settings: SecuritySettings) -> None:
    """Log (once, at start) what would let the cluster run but not as intended."""
    if credentials.token is not None and credentials.root_ca is None:
        log.warning(
            "the inter-broker token crosses the network in clear text: serve TLS "
            "(--tls-cert) so that no one on the path can read it"
        )
    principal = credentials.principal
    if settings.acls_enabled and principal is not None and principal not in settings.super_users:
        log.warning(
            "the broker principal %s is not in --super-users: replication needs an ACL "
            "allowing it cluster_action on the cluster",
            principal,
        )

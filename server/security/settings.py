"""What secures a broker: the TLS, token and ACL settings `logstore serve` takes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from logstore.errors import LogStoreError

log = logging.getLogger(__name__)


@dataclass
class SecuritySettings:
    """How `logstore serve` secures its listener (paths to PEM and TOML files)."""

    #: server certificate chain and private key (PEM); both or neither
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle (PEM) that client certificates must chain to; requires them (mutual TLS)
    tls_client_ca: Path | None = None
    #: TOML file with a [tokens] table mapping bearer tokens to principals
    auth_tokens: Path | None = None
    #: deny every request no ACL allows
    acls_enabled: bool = False
    #: principals that bypass ACLs (e.g. "User:admin")
    super_users: tuple[str, ...] = ()
    #: cluster mode: CA bundle (PEM) the other brokers' certificates must chain to when
    #: this broker connects to them; None: `tls_client_ca` (see `inter_broker`)
    inter_broker_tls_ca: Path | None = None
    #: cluster mode: file holding the one bearer token this broker presents to the others
    inter_broker_token_file: Path | None = None


class SecurityConfigError(LogStoreError):
    """The broker's TLS, token or ACL settings are unreadable or inconsistent."""

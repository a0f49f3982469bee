"""A broker's security, assembled: credentials, ACL store, interceptor, reload."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from logstore.server.security.acl_service import AclService
from logstore.server.security.acl_store import AclStore, Authorizer
from logstore.server.security.auth import load_tokens
from logstore.server.security.interceptor import SecurityInterceptor
from logstore.server.security.settings import SecurityConfigError, SecuritySettings
from logstore.server.security.tls import ReloadableTls, read_tls_files

log = logging.getLogger(__name__)


class BrokerSecurity:
    """A broker's credentials, ACL store and interceptor, built from its settings.

    Raises `SecurityConfigError` (unreadable or inconsistent files) or `InvalidAclError` before
    anything is bound, so a misconfigured broker never starts open.
    """

    def __init__(self, settings: SecuritySettings, data_dir: Path) -> None:
        self.settings = settings
        tls = read_tls_files(settings)
        self._tls = None if tls is None else ReloadableTls(tls)
        self.credentials = None if self._tls is None else self._tls.credentials
        tokens = load_tokens(Path(settings.auth_tokens)) if settings.auth_tokens else None
        self.acl_store = AclStore(Path(data_dir))
        self.authorizer: Authorizer | None = None
        if settings.acls_enabled:
            self.authorizer = Authorizer(self.acl_store, settings.super_users)
        elif settings.super_users:
            raise SecurityConfigError("--super-users only means something with --acls-enabled")
        self.interceptor = SecurityInterceptor(
            AclService(self.acl_store, settings.acls_enabled), tokens, self.authorizer
        )

    def reload(self) -> str:
        """Re-read the token file and the TLS files (what `logstore serve` does on SIGHUP),
        all or nothing: if any file is unreadable or invalid this raises
        SecurityConfigError and the broker keeps serving what it had. Returns what was
        reloaded, for the log. New tokens apply from the next call; new TLS files from
        the next connection."""
        s = self.settings
        tokens = load_tokens(Path(s.auth_tokens)) if s.auth_tokens else None
        tls = read_tls_files(s) if self._tls is not None else None
        done = []
        if tokens is not None:
            self.interceptor.replace_tokens(tokens)
            done.append(f"{len(tokens)} tokens")
        if self._tls is not None and tls is not None:
            self._tls.replace(tls)
            done.append("TLS certificate" + (" and client CA" if tls.client_ca else ""))
        return ", ".join(done) or "nothing (no token or TLS files configured)"

    def add_port(self, server: grpc.Server, listen: str) -> int:
        """Bind `listen` with TLS when configured; the port bound (0 on failure)."""
        if self.credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self.credentials)

    def describe(self) -> str:
        """One line for the log: what protects the listener (no secrets)."""
        s = self.settings
        tls = "mutual TLS" if s.tls_client_ca else "TLS" if self.credentials else "plaintext"
        auth = "bearer tokens" if s.auth_tokens else "none"
        if s.tls_client_ca:
            auth = f"{auth} + client certificates" if s.auth_tokens else "client certificates"
        acl = f"ACLs ({len(self.acl_store.bindings())} bindings)" if s.acls_enabled else "off"
        return f"transport {tls}, authentication {auth}, authorization {acl}"

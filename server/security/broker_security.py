"""A broker's security, assembled: credentials, ACL store, interceptor, peers, reload."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from logstore.server.security.acl_service import AclService
from logstore.server.security.acl_store import ACL_FILE, AclBindings, AclStore, Authorizer
from logstore.server.security.auth import load_tokens
from logstore.server.security.inter_broker import (
    PeerCredentials,
    check_inter_broker_settings,
    check_own_certificate,
    read_peer_credentials,
    warn_about,
)
from logstore.server.security.interceptor import SecurityInterceptor
from logstore.server.security.settings import SecurityConfigError, SecuritySettings
from logstore.server.security.tls import ReloadableTls, TlsFiles, read_tls_files

if TYPE_CHECKING:
    from logstore.server.cluster.peer_channels import PeerChannels
    from logstore.server.cluster.settings import ClusterSettings
    from logstore.server.security.cluster_acl_store import ClusterAclStore

log = logging.getLogger(__name__)


class BrokerSecurity:
    """A broker's credentials, ACL store and interceptor, built from its settings; in
    cluster mode also how it reaches its peers (`peers`), and ACLs kept in etcd.

    Raises `SecurityConfigError` (unreadable or inconsistent files) or `InvalidAclError` before
    anything is bound, so a misconfigured broker never starts open. `peer_host` is the
    host the other brokers dial (its advertised host), which its certificate must name.
    """

    def __init__(
        self,
        settings: SecuritySettings,
        data_dir: Path,
        cluster: ClusterSettings | None = None,
        peer_host: str | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self._peer_host = peer_host
        check_inter_broker_settings(settings, cluster is not None)
        tls = read_tls_files(settings)
        self._tls = None if tls is None else ReloadableTls(tls)
        self.credentials = None if self._tls is None else self._tls.credentials
        tokens = load_tokens(Path(settings.auth_tokens)) if settings.auth_tokens else None
        #: how this broker reaches the others of its cluster (None: standalone)
        self.peers: PeerChannels | None = None
        if cluster is not None:
            from logstore.server.cluster.peer_channels import PeerChannels

            peer_credentials = self._peer_credentials(tls, tokens)
            warn_about(peer_credentials, settings)
            self.peers = PeerChannels(peer_credentials)
        self._cluster_acls: ClusterAclStore | None = None
        self.acl_store: AclBindings
        if cluster is not None and settings.acls_enabled:
            self._cluster_acls = _cluster_acl_store(cluster)
            self.acl_store = self._cluster_acls
        else:
            self.acl_store = AclStore(self.data_dir)
        self.authorizer: Authorizer | None = None
        if settings.acls_enabled:
            self.authorizer = Authorizer(self.acl_store, settings.super_users)
        elif settings.super_users:
            raise SecurityConfigError("--super-users only means something with --acls-enabled")
        self.interceptor = SecurityInterceptor(
            AclService(self.acl_store, settings.acls_enabled), tokens, self.authorizer
        )

    def _peer_credentials(
        self, tls: TlsFiles | None, tokens: dict[bytes, str] | None
    ) -> PeerCredentials:
        credentials = read_peer_credentials(self.settings, tls, tokens)
        if credentials.root_ca is not None and self._peer_host is not None:
            check_own_certificate(self.settings, credentials.root_ca, self._peer_host)
        return credentials

    def start(self) -> None:
        """Before serving: in cluster mode with ACLs, read the cluster's ACLs from etcd
        (adopting a local ``__acls.json``, see `cluster_acl_store`) and follow them.
        Raises ClusterMetadataUnavailableError when etcd cannot be reached."""
        if self._cluster_acls is not None:
            self._cluster_acls.start(self.data_dir / ACL_FILE)

    def close(self) -> None:
        if self._cluster_acls is not None:
            self._cluster_acls.close()

    def reload(self) -> str:
        """Re-read the token file, the TLS files and, in cluster mode, the inter-broker
        token and CA (what `logstore serve` does on SIGHUP), all or nothing: if any file
        is unreadable or invalid this raises SecurityConfigError and the broker keeps
        serving what it had. Returns what was reloaded, for the log. New tokens apply from
        the next call; new TLS files from the next connection to this broker, and from the
        next call to a peer."""
        s = self.settings
        tokens = load_tokens(Path(s.auth_tokens)) if s.auth_tokens else None
        tls = read_tls_files(s) if self._tls is not None else None
        peer_credentials = self._peer_credentials(tls, tokens) if self.peers else None
        done = []
        if tokens is not None:
            self.interceptor.replace_tokens(tokens)
            done.append(f"{len(tokens)} tokens")
        if self._tls is not None and tls is not None:
            self._tls.replace(tls)
            done.append("TLS certificate" + (" and client CA" if tls.client_ca else ""))
        if self.peers is not None and peer_credentials is not None:
            self.peers.replace(peer_credentials)
            done.append(f"inter-broker credentials ({peer_credentials.describe()})")
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
        acl = "off"
        if s.acls_enabled:
            where = "the cluster's, in etcd" if self._cluster_acls is not None else "local"
            acl = f"ACLs ({len(self.acl_store.bindings())} bindings, {where})"
        line = f"transport {tls}, authentication {auth}, authorization {acl}"
        if self.peers is not None:
            line += f"; to other brokers: {self.peers.describe()}"
        return line


def _cluster_acl_store(cluster: ClusterSettings) -> ClusterAclStore:
    from logstore.server.cluster.metadata_store import ClusterMetadataStore
    from logstore.server.security.cluster_acl_store import ClusterAclStore

    store = ClusterMetadataStore(cluster.etcd_endpoints, cluster.etcd_prefix)
    return ClusterAclStore(store, where=f"etcd at {', '.join(cluster.etcd_endpoints)}")

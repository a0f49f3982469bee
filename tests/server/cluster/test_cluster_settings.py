"""Cluster mode refuses settings it cannot honour, before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from logstore.errors import InvalidConfigError
from logstore.server.app import BrokerSettings, check_cluster_security
from logstore.server.cluster.settings import ClusterSettings
from logstore.server.security import SecuritySettings

CLUSTER = ClusterSettings(broker_id=1, etcd_endpoints=("127.0.0.1:2379",))


@pytest.mark.parametrize(
    "security",
    [
        SecuritySettings(acls_enabled=True),
        SecuritySettings(auth_tokens=Path("tokens.toml")),
        SecuritySettings(tls_cert=Path("broker.pem"), tls_key=Path("broker.key")),
    ],
)
def test_cluster_mode_with_security_is_refused(security: SecuritySettings) -> None:
    with pytest.raises(InvalidConfigError, match="cluster mode cannot be combined"):
        check_cluster_security(BrokerSettings(cluster=CLUSTER, security=security))


def test_either_alone_is_accepted() -> None:
    check_cluster_security(BrokerSettings(cluster=CLUSTER))
    check_cluster_security(BrokerSettings(security=SecuritySettings(acls_enabled=True)))

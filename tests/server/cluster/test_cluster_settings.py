"""Cluster mode refuses security settings it cannot honour, before anything is opened."""

from __future__ import annotations

from pathlib import Path

import pytest

from logstore.server.security import SecuritySettings
from logstore.server.security.inter_broker import check_inter_broker_settings
from logstore.server.security.settings import SecurityConfigError

TLS = {"tls_cert": Path("broker.pem"), "tls_key": Path("broker.key")}
TOKENS = {"auth_tokens": Path("tokens.toml"), "inter_broker_token_file": Path("broker.token")}


@pytest.mark.parametrize(
    ("security", "refusal"),
    [
        (SecuritySettings(**TLS), "needs a CA to check the other brokers' certificates"),
        (
            SecuritySettings(inter_broker_tls_ca=Path("ca.pem")),
            "--inter-broker-tls-ca needs --tls-cert",
        ),
        (
            SecuritySettings(auth_tokens=Path("tokens.toml")),
            "needs --inter-broker-token-file PATH",
        ),
        (SecuritySettings(acls_enabled=True), "needs brokers that authenticate"),
        (
            SecuritySettings(**TLS, inter_broker_tls_ca=Path("ca.pem"), acls_enabled=True),
            "needs brokers that authenticate",
        ),
    ],
)
def test_inconsistent_cluster_security_is_refused_in_one_line(
    security: SecuritySettings, refusal: str
) -> None:
    with pytest.raises(SecurityConfigError, match=refusal) as refused:
        check_inter_broker_settings(security, cluster=True)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "security",
    [
        SecuritySettings(),
        SecuritySettings(**TLS, inter_broker_tls_ca=Path("ca.pem")),
        SecuritySettings(**TLS, tls_client_ca=Path("ca.pem"), acls_enabled=True),
        SecuritySettings(**TLS, tls_client_ca=Path("ca.pem"), **TOKENS, acls_enabled=True),
        SecuritySettings(**TOKENS, acls_enabled=True),
        # A token sent before the peers check tokens: enabling them one broker at a time.
        SecuritySettings(inter_broker_token_file=Path("broker.token")),
    ],
)
def test_consistent_cluster_security_is_accepted(security: SecuritySettings) -> None:
    check_inter_broker_settings(security, cluster=True)


@pytest.mark.parametrize("flag", ["inter_broker_tls_ca", "inter_broker_token_file"])
def test_inter_broker_settings_need_cluster_mode(flag: str) -> None:
    security = SecuritySettings(**TLS, **{flag: Path("file")})  # type: ignore[arg-type]
    with pytest.raises(SecurityConfigError, match="is a cluster setting"):
        check_inter_broker_settings(security, cluster=False)
    check_inter_broker_settings(SecuritySettings(acls_enabled=True), cluster=False)

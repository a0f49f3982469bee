"""How brokers authenticate to each other: the inter-broker token and CA are checked at
start (and on SIGHUP, all or nothing), a certificate the peers would refuse is refused
first, and `PeerChannels` carries TLS and the token to a real secured broker, says in one
line when a peer refuses it, and picks up new credentials without new channels."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from logstore.server.cluster.peer_channels import PeerChannels
from logstore.server.cluster.settings import ClusterSettings
from logstore.server.security import BrokerSecurity, SecurityConfigError, SecuritySettings
from logstore.server.security.auth import load_tokens
from logstore.server.security.inter_broker import (
    PLAINTEXT,
    PeerCredentials,
    check_own_certificate,
    read_peer_credentials,
    read_token_file,
)
from logstore.server.security.tls import read_tls_files
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess
from tests.server.security.pki import BROKER_EXTENSIONS, make_ca, make_leaf, require_openssl

BROKER_TOKEN = "broker-s3cret"
CLUSTER = ClusterSettings(broker_id=1, etcd_endpoints=("127.0.0.1:2379",))


@dataclass(frozen=True)
class Files:
    dir: Path
    tokens: Path
    broker_token: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    def tls(self, name: str = "broker", mutual: bool = True) -> SecuritySettings:
        return SecuritySettings(
            tls_cert=self.path(f"{name}.pem"),
            tls_key=self.path(f"{name}.key"),
            tls_client_ca=self.path("ca.pem") if mutual else None,
        )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    require_openssl()
    d = tmp_path_factory.mktemp("inter-broker-pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "broker", "ca", "broker-1", BROKER_EXTENSIONS)
    server_only = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    make_leaf(d, "server-only", "ca", "broker-2", server_only)
    make_leaf(d, "elsewhere", "ca", "broker-3", "subjectAltName=DNS:b3.example\n")
    tokens = d / "tokens.toml"
    tokens.write_text(f'[tokens]\n"{BROKER_TOKEN}" = "User:broker"\n"admin" = "User:admin"\n')
    broker_token = d / "broker.token"
    broker_token.write_text(f"\n  {BROKER_TOKEN}  \n\n")
    return Files(d, tokens, broker_token)


# --- the token file -----------------------------------------------------------------------


def test_the_token_file_holds_one_token(files: Files, tmp_path: Path) -> None:
    assert read_token_file(files.broker_token) == BROKER_TOKEN
    for text in ("", "\n\n", "one\ntwo\n", "two words\n"):
        path = tmp_path / "t.token"
        path.write_text(text)
        with pytest.raises(SecurityConfigError, match="must hold one token on one line") as e:
            read_token_file(path)
        assert "two" not in str(e.value)  # a secret is never quoted
    with pytest.raises(SecurityConfigError, match="cannot read --inter-broker-token-file"):
        read_token_file(tmp_path / "missing.token")


def test_the_token_must_be_in_the_brokers_own_table(files: Files, tmp_path: Path) -> None:
    settings = SecuritySettings(
        auth_tokens=files.tokens, inter_broker_token_file=files.broker_token
    )
    credentials = read_peer_credentials(settings, None, load_tokens(files.tokens))
    assert credentials == PeerCredentials(token=BROKER_TOKEN, principal="User:broker")
    assert BROKER_TOKEN not in repr(credentials)
    stranger = tmp_path / "stranger.token"
    stranger.write_text("stranger-s3cret\n")
    settings.inter_broker_token_file = stranger
    with pytest.raises(SecurityConfigError, match="is not in --auth-tokens") as refused:
        read_peer_credentials(settings, None, load_tokens(files.tokens))
    assert "stranger-s3cret" not in str(refused.value)


def test_mutual_tls_presents_the_brokers_certificate(files: Files) -> None:
    settings = files.tls()
    tls = read_tls_files(settings)
    assert tls is not None
    credentials = read_peer_credentials(settings, tls, None)
    assert credentials.root_ca == tls.client_ca
    assert credentials.certificate_chain == tls.chain and credentials.private_key == tls.key
    one_way = files.tls(mutual=False)
    one_way.inter_broker_tls_ca = files.path("ca.pem")
    plain_tls = read_tls_files(one_way)
    credentials = read_peer_credentials(one_way, plain_tls, None)
    assert credentials.root_ca == files.path("ca.pem").read_bytes()
    assert credentials.certificate_chain is None
    one_way.inter_broker_tls_ca = files.path("ca.key")  # not a certificate
    with pytest.raises(SecurityConfigError, match="--inter-broker-tls-ca"):
        read_peer_credentials(one_way, plain_tls, None)


# --- a certificate the peers would refuse ---------------------------------------------------


def test_a_certificate_the_peers_would_refuse_is_refused_at_start(files: Files) -> None:
    ca = files.path("ca.pem").read_bytes()
    check_own_certificate(files.tls(), ca, "127.0.0.1")
    check_own_certificate(files.tls(), ca, "localhost")
    with pytest.raises(
        SecurityConfigError, match=r"when they connect to b3\.example: Hostname mismatch"
    ):
        check_own_certificate(files.tls(), ca, "b3.example")
    with pytest.raises(SecurityConfigError, match=r"connect to 127\.0\.0\.1: .*(issuer|self-si)"):
        check_own_certificate(files.tls(), files.path("other-ca.pem").read_bytes(), "127.0.0.1")
    # Fine as a server certificate, refused as the client certificate of mutual TLS.
    check_own_certificate(files.tls("server-only", mutual=False), ca, "127.0.0.1")
    with pytest.raises(
        SecurityConfigError, match=r"as its client certificate: unsuitable certificate purpose"
    ):
        check_own_certificate(files.tls("server-only"), ca, "127.0.0.1")


def serve(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "logstore.cli.main", "serve", "--data-dir", str(data_dir)),
            *("--listen", "127.0.0.1:0", "--broker-id", "1", "--etcd-endpoints", "127.0.0.1:9"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (["--auth-tokens", "{tokens}"], "needs --inter-broker-token-file PATH"),
        (["--tls-cert", "{dir}/broker.pem", "--tls-key", "{dir}/broker.key"], "needs a CA"),
        (["--acls-enabled"], "needs brokers that authenticate"),
        (
            [
                *("--tls-cert", "{dir}/elsewhere.pem", "--tls-key", "{dir}/elsewhere.key"),
                *("--tls-client-ca", "{dir}/ca.pem"),
            ],
            "would refuse this broker's certificate when they connect to 127.0.0.1",
        ),
    ],
)
def test_serve_refuses_a_cluster_that_cannot_be_secured_in_one_line(
    files: Files, tmp_path: Path, args: list[str], refusal: str
) -> None:
    given = [a.format(dir=files.dir, tokens=files.tokens) for a in args]
    done = serve(*given, data_dir=tmp_path / "data")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and refusal in lines[0], done.stderr
    assert not (tmp_path / "data").exists()  # refused before the data dir was touched


def test_the_config_file_takes_the_inter_broker_settings(files: Files, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.token"
    stranger.write_text("stranger-s3cret\n")
    config = tmp_path / "broker.toml"
    config.write_text(
        f'auth_tokens = "{files.tokens}"\ninter_broker_token_file = "{stranger}"\n'
        f'inter_broker_tls_ca = "{files.path("ca.pem")}"\n'
    )
    done = serve("--config", str(config), data_dir=tmp_path / "data")
    assert done.returncode != 0
    assert "--inter-broker-tls-ca needs --tls-cert" in done.stderr, done.stderr
    config.write_text(f'auth_tokens = "{files.tokens}"\ninter_broker_token_file = "{stranger}"\n')
    done = serve("--config", str(config), data_dir=tmp_path / "data")
    assert done.returncode != 0
    assert f"the token in --inter-broker-token-file {stranger} is not in" in done.stderr


# --- reload ---------------------------------------------------------------------------------


def test_reload_replaces_the_peer_credentials_all_or_nothing(files: Files, tmp_path: Path) -> None:
    token_file = tmp_path / "broker.token"
    token_file.write_text(BROKER_TOKEN)
    settings = files.tls()
    settings.auth_tokens = files.tokens
    settings.inter_broker_token_file = token_file
    security = BrokerSecurity(settings, tmp_path, CLUSTER, "127.0.0.1")
    assert security.peers is not None
    assert security.peers.credentials.token == BROKER_TOKEN
    assert not security.peers.plaintext
    token_file.write_text("admin")
    assert "inter-broker credentials" in security.reload()
    assert security.peers.credentials.principal == "User:admin"
    token_file.write_text("unknown")
    with pytest.raises(SecurityConfigError, match="is not in --auth-tokens"):
        security.reload()
    assert security.peers.credentials.token == "admin"


def test_a_standalone_broker_has_no_peers(tmp_path: Path) -> None:
    assert BrokerSecurity(SecuritySettings(), tmp_path).peers is None
    assert PeerChannels().plaintext
    assert PeerChannels(PLAINTEXT).describe() == "plaintext, as anonymous"


# --- PeerChannels against a real broker -----------------------------------------------------


@pytest.fixture(scope="module")
def secured_broker(files: Files, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A standalone broker with mutual TLS, tokens and ACLs; User:broker a super user."""
    args = [
        *("--tls-cert", str(files.path("broker.pem")), "--tls-key", str(files.path("broker.key"))),
        *("--tls-client-ca", str(files.path("ca.pem")), "--auth-tokens", str(files.tokens)),
        *("--acls-enabled", "--super-users", "User:broker"),
    ]
    process = BrokerProcess(tmp_path_factory.mktemp("peer") / "data", args)
    process.channel_credentials = grpc.ssl_channel_credentials(
        files.path("ca.pem").read_bytes(),
        files.path("broker.key").read_bytes(),
        files.path("broker.pem").read_bytes(),
    )
    process.start()
    try:
        yield process.address
    finally:
        process.close()


def credentials(files: Files, token: str | None, ca: str = "ca.pem") -> PeerCredentials:
    return PeerCredentials(
        files.path(ca).read_bytes(),
        files.path("broker.key").read_bytes(),
        files.path("broker.pem").read_bytes(),
        token,
    )


def describe_topic(channel: grpc.Channel) -> grpc.StatusCode:
    """The status of one DescribeTopic (NOT_FOUND: authorized, the topic is unknown)."""
    try:
        pb_grpc.LogStoreStub(channel).DescribeTopic(pb.DescribeTopicRequest(name="t"), timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_peer_channels_carry_tls_and_the_token(files: Files, secured_broker: str) -> None:
    peers = PeerChannels(credentials(files, BROKER_TOKEN))
    with peers.open(secured_broker) as channel:
        assert describe_topic(channel) == grpc.StatusCode.NOT_FOUND  # a super user's answer
    # Without the token, the certificate names User:broker-1: authenticated, not allowed.
    with PeerChannels(credentials(files, None)).open(secured_broker) as channel:
        assert describe_topic(channel) == grpc.StatusCode.PERMISSION_DENIED


def test_a_refusing_peer_is_named_in_one_line(
    files: Files, secured_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    peers = PeerChannels(credentials(files, "t0ken-never-logged"))
    logger = "logstore.server.cluster.peer_channels"
    with caplog.at_level(logging.INFO, logger), peers.open(secured_broker) as channel:
        codes = {describe_topic(channel) for _ in range(5)}
        assert codes == {grpc.StatusCode.UNAUTHENTICATED}
        peers.replace(credentials(files, BROKER_TOKEN))  # the token file fixed: SIGHUP
        assert describe_topic(channel) == grpc.StatusCode.NOT_FOUND
    messages = [r.getMessage() for r in caplog.records]
    refused = [m for m in messages if "refused" in m]
    assert len(refused) == 1, messages
    assert re.search(
        rf"the broker at {re.escape(secured_broker)} refused DescribeTopic from this broker: "
        r"UNAUTHENTICATED: unknown token \(check --inter-broker-token-file",
        refused[0],
    )
    assert f"the broker at {secured_broker} accepts this broker's calls again" in messages
    assert all("t0ken-never-logged" not in m for m in messages)


def test_new_tls_files_apply_to_channels_already_open(
    files: Files, secured_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    peers = PeerChannels(credentials(files, BROKER_TOKEN, ca="other-ca.pem"))
    logger = "logstore.server.cluster.peer_channels"
    with caplog.at_level(logging.WARNING, logger), peers.open(secured_broker) as channel:
        stub = pb_grpc.LogStoreStub(channel)  # made before the new files: kept
        with pytest.raises(grpc.RpcError) as failed:
            stub.ListTopics(pb.ListTopicsRequest(), timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        peers.replace(credentials(files, BROKER_TOKEN))
        assert stub.ListTopics(pb.ListTopicsRequest(), timeout=5) is not None
    assert any("TLS" in r.getMessage() or "tls" in r.getMessage() for r in caplog.records)

"""Security on the Kafka listener, against real `logstore serve` processes and unmodified
clients: TLS with the broker's certificate (SSL), mutual TLS, SASL/PLAIN on the token
principals (SASL_PLAINTEXT, SASL_SSL), the broker's ACLs, token and certificate rotation on
SIGHUP, and hostile bytes before authentication.

Certificates come from a throwaway CA made with the openssl command line. Brokers are
shared per module where the tests only add their own topics. Raw-socket tests speak the
protocol through kafka-python's request classes; every read has a timeout and every loop a
bound.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import NewTopic as KafkaPythonNewTopic
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

from logstore import Admin
from logstore.acls import AclBinding
from logstore.server.kafka.apis import API_BY_KEY
from tests.cluster.harness import ClientAuth, ClusterHarness
from tests.helpers import wait_until
from tests.kafka.conftest import KafkaBrokerProcess
from tests.server.security.pki import make_ca, make_leaf, require_openssl

TOKENS = {"admin-k4fka": "User:admin", "alice-k4fka": "User:alice", "bob-k4fka": "User:bob"}
ADMIN, ALICE, BOB = "admin-k4fka", "alice-k4fka", "bob-k4fka"
#: every client call here answers at once or not at all (ms)
CLIENT_TIMEOUT_MS = 5_000
#: how long a raw socket waits for an answer or the close (s)
ANSWER_TIMEOUT_S = 10.0
#: how long a test waits for the broker to act on a SIGHUP (s)
RELOAD_WAIT_S = 10.0

SASL_AUTHENTICATION_FAILED = kafka_errors.SaslAuthenticationFailedError.errno
ILLEGAL_SASL_STATE = kafka_errors.IllegalSaslStateError.errno
UNSUPPORTED_SASL_MECHANISM = kafka_errors.UnsupportedSaslMechanismError.errno
UNSUPPORTED_VERSION = kafka_errors.UnsupportedVersionError.errno
TOPIC_AUTHORIZATION_FAILED = kafka_errors.TopicAuthorizationFailedError.errno


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1, alice's client certificate, a
    second CA, and the token file."""

    ca: Path
    server_cert: Path
    server_key: Path
    alice_cert: Path
    alice_key: Path
    other_ca: Path
    tokens: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_openssl()
    d = tmp_path_factory.mktemp("kafka-pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    server_extensions = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    make_leaf(d, "server", "ca", "logstore-broker", server_extensions)
    make_leaf(d, "alice", "ca", "alice", "extendedKeyUsage=clientAuth\n")
    tokens = d / "tokens.toml"
    write_tokens(tokens, TOKENS)
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "alice.pem",
        d / "alice.key",
        d / "other-ca.pem",
        tokens,
    )


def write_tokens(path: Path, tokens: dict[str, str]) -> None:
    path.write_text("[tokens]\n" + "".join(f'"{t}" = "{p}"\n' for t, p in tokens.items()))


def tls_args(pki: Pki, client_ca: bool = False) -> list[str]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    return [*args, "--tls-client-ca", str(pki.ca)] if client_ca else args


def start_broker(
    root: Path, args: list[str], pki: Pki | None = None, client_cert: bool = False
) -> KafkaBrokerProcess:
    """A broker with a Kafka listener; `pki` when its gRPC listener serves TLS (the
    readiness check then trusts the CA, presenting alice's certificate if asked)."""
    process = KafkaBrokerProcess(root / "data", args)
    if pki is not None:
        process.channel_credentials = grpc.ssl_channel_credentials(
            pki.ca.read_bytes(),
            pki.alice_key.read_bytes() if client_cert else None,
            pki.alice_cert.read_bytes() if client_cert else None,
        )
    process.start()
    return process


def grpc_admin(broker: KafkaBrokerProcess, pki: Pki | None = None, **security: str) -> Admin:
    """LogStore's own admin client as User:admin, to set topics and ACLs up."""
    if pki is not None:
        security.setdefault("ssl_cafile", str(pki.ca))
    return Admin(broker.address, token=ADMIN, request_timeout_ms=CLIENT_TIMEOUT_MS, **security)


# --- client configurations, as their users write them ------------------------------------------


def confluent_conf(
    bootstrap: str,
    protocol: str,
    *,
    username: str | None = None,
    token: str | None = None,
    pki: Pki | None = None,
    client_cert: bool = False,
    errors: list[KafkaError] | None = None,
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": protocol,
        "socket.timeout.ms": CLIENT_TIMEOUT_MS,
    }
    if token is not None:
        conf |= {"sasl.mechanism": "PLAIN", "sasl.username": username, "sasl.password": token}
    if pki is not None:
        conf["ssl.ca.location"] = str(pki.ca)
        if client_cert:
            conf["ssl.certificate.location"] = str(pki.alice_cert)
            conf["ssl.key.location"] = str(pki.alice_key)
    if errors is not None:
        conf["error_cb"] = errors.append
    return conf


def kafka_python_kwargs(
    broker: KafkaBrokerProcess,
    protocol: str,
    *,
    username: str | None = None,
    token: str | None = None,
    pki: Pki | None = None,
    client_cert: bool = False,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": protocol,
        "request_timeout_ms": CLIENT_TIMEOUT_MS,
    }
    if token is not None:
        kwargs |= {
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": username,
            "sasl_plain_password": token,
        }
    if pki is not None:
        kwargs["ssl_cafile"] = str(pki.ca)
        if client_cert:
            kwargs |= {"ssl_certfile": str(pki.alice_cert), "ssl_keyfile": str(pki.alice_key)}
    return kwargs


def confluent_topics(conf: dict[str, Any]) -> set[str]:
    """The topics a confluent-kafka admin client with `conf` is shown."""
    return set(AdminClient(conf).list_topics(timeout=CLIENT_TIMEOUT_MS / 1000).topics)


def confluent_create(conf: dict[str, Any], topic: str) -> None:
    """Create `topic` through the Kafka listener's CreateTopics."""
    client = AdminClient(conf)  # kept alive until the answer: its end fails the future
    futures = client.create_topics(
        [NewTopic(topic, num_partitions=1, replication_factor=1)],
        request_timeout=CLIENT_TIMEOUT_MS / 1000,
    )
    futures[topic].result(timeout=CLIENT_TIMEOUT_MS / 1000)


def kafka_python_topics_after_creating(kwargs: dict[str, Any], topic: str) -> set[str]:
    """Create `topic` with kafka-python's admin client, then list what it is shown."""
    client = KafkaAdminClient(**kwargs)
    try:
        client.create_topics([KafkaPythonNewTopic(topic, 1, 1)])
        return set(client.list_topics())
    finally:
        client.close()


def round_trip(conf: dict[str, Any], kwargs: dict[str, Any], topic: str) -> list[bytes]:
    """Produce one record to partition 0 of `topic` with confluent-kafka (`conf`), then read
    the partition from the start with kafka-python (`kwargs`): the values read."""
    producer = Producer(conf | {"message.timeout.ms": 10_000})
    producer.produce(topic, b"secured-record", partition=0)
    assert producer.flush(15) == 0
    consumer = KafkaConsumer(enable_auto_commit=False, **kwargs)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        for _ in range(20):  # 20 polls of at most 0.5 s
            batches = consumer.poll(timeout_ms=500)
            if batches:
                return [r.value for r in batches[partition]]
        return []
    finally:
        consumer.close()


def confluent_auth_errors(conf: dict[str, Any]) -> list[str]:
    """The authentication errors a confluent-kafka client with `conf` reports while its
    metadata request fails."""
    errors: list[KafkaError] = []
    client = AdminClient(conf | {"error_cb": errors.append})
    with pytest.raises(KafkaException):
        client.list_topics(timeout=3)
    client.poll(0.5)  # serves the error callbacks still queued
    return [e.str() for e in errors if e.code() == KafkaError._AUTHENTICATION]


# --- a raw Kafka connection ----------------------------------------------------------------------


class RawConnection:
    """One Kafka connection driven by hand: send any request or bytes, read answers."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.settimeout(ANSWER_TIMEOUT_S)
        self.sock = sock
        self._correlation_id = 0

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, request: Any) -> int:
        self._correlation_id += 1
        request.with_header(correlation_id=self._correlation_id, client_id="raw")
        self.sock.sendall(bytes(request.encode(header=True, framed=True)))
        return self._correlation_id

    def ask(self, request: Any) -> Any | None:
        """The decoded answer to `request`, or None when the broker closed instead."""
        try:
            correlation_id = self.send(request)
        except OSError:  # closed before or while we wrote (TLS errors included)
            return None
        frame = self.read_frame()
        if frame is None:
            return None
        response = API_BY_KEY[request.API_KEY].response.decode(
            io.BytesIO(frame), version=request.API_VERSION, header=True
        )
        assert response.header.correlation_id == correlation_id
        return response

    def read_frame(self) -> bytes | None:
        size = self._read_exact(4)
        if size is None:
            return None
        (n,) = struct.unpack(">i", size)
        assert 0 <= n <= 64 * 1024 * 1024, f"response size {n}"
        return self._read_exact(n)

    def closed_by_broker(self) -> bool:
        """Whether the broker closes the connection without another answer."""
        return self.read_frame() is None

    def _read_exact(self, n: int) -> bytes | None:
        out = bytearray()
        for _ in range(n + 1):  # each recv returns at least one byte or ends the loop
            if len(out) >= n:
                return bytes(out)
            try:
                chunk = self.sock.recv(n - len(out))
            except (ConnectionResetError, ssl.SSLError):
                return None
            if not chunk:
                return None
            out += chunk
        return bytes(out)

    def sasl_plain(self, username: str, token: str) -> Any:
        """SaslHandshake v1 for PLAIN, then SaslAuthenticate v1: the latter's answer."""
        shake = self.ask(SaslHandshakeRequest(version=1, mechanism="PLAIN"))
        assert shake is not None and (shake.error_code, shake.mechanisms) == (0, ["PLAIN"])
        return self.ask(
            SaslAuthenticateRequest(version=1, auth_bytes=f"\0{username}\0{token}".encode())
        )

    def metadata(self, *topics: str) -> Any | None:
        wanted = [MetadataRequest.MetadataRequestTopic(name=t) for t in topics] or None
        return self.ask(MetadataRequest(version=4, topics=wanted, allow_auto_topic_creation=False))


def client_tls(cafile: Path, pki: Pki | None = None) -> ssl.SSLContext:
    """A client TLS context trusting `cafile`, presenting alice's certificate with `pki`."""
    context = ssl.create_default_context(cafile=str(cafile))
    if pki is not None:
        context.load_cert_chain(pki.alice_cert, pki.alice_key)
    return context


# --- SASL_PLAINTEXT, with ACLs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBrokerProcess]:
    """Tokens and ACLs, no TLS. User:admin is a super user; alice may produce to (so also
    describe) `alice-orders` only; `bob-orders` exists but alice may not see it."""
    args = ["--auth-tokens", str(pki.tokens), "--acls-enabled", "--super-users", "User:admin"]
    process = start_broker(tmp_path_factory.mktemp("kafka-sasl"), args)
    try:
        with grpc_admin(process) as admin:
            admin.create_topic("alice-orders")
            admin.create_topic("bob-orders")
            admin.create_acls([AclBinding("User:alice", "topic", "alice-orders", "produce")])
        yield process
    finally:
        process.close()


def test_confluent_authenticates_with_sasl_plain_over_plaintext(
    sasl_broker: KafkaBrokerProcess,
) -> None:
    conf = confluent_conf(sasl_broker.bootstrap, "SASL_PLAINTEXT", username="admin", token=ADMIN)
    confluent_create(conf, "made-by-confluent")
    assert {"alice-orders", "bob-orders", "made-by-confluent"} <= confluent_topics(conf)


def test_kafka_python_authenticates_with_sasl_plain_over_plaintext(
    sasl_broker: KafkaBrokerProcess,
) -> None:
    kwargs = kafka_python_kwargs(sasl_broker, "SASL_PLAINTEXT", username="admin", token=ADMIN)
    topics = kafka_python_topics_after_creating(kwargs, "made-by-kafka-python")
    assert {"alice-orders", "bob-orders", "made-by-kafka-python"} <= topics
    conf = confluent_conf(sasl_broker.bootstrap, "SASL_PLAINTEXT", username="admin", token=ADMIN)
    assert round_trip(conf, kwargs, "made-by-kafka-python") == [b"secured-record"]


def test_a_wrong_token_is_each_clients_authentication_error(
    sasl_broker: KafkaBrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    conf = confluent_conf(
        sasl_broker.bootstrap, "SASL_PLAINTEXT", username="alice", token="guessed"
    )
    refusals = confluent_auth_errors(conf)
    assert refusals and "Authentication failed: Invalid username or password" in refusals[0]

    kwargs = kafka_python_kwargs(sasl_broker, "SASL_PLAINTEXT", username="alice", token="guessed")
    kwargs["request_timeout_ms"] = 3_000
    with (
        caplog.at_level(logging.ERROR, logger="kafka"),
        pytest.raises(kafka_errors.KafkaTimeoutError),
    ):
        KafkaAdminClient(**kwargs)
    logged = [
        r.getMessage() for r in caplog.records if "SaslAuthenticationFailed" in r.getMessage()
    ]
    assert logged and "Invalid username or password" in logged[0]

    async def aiokafka_start() -> None:
        client = AIOKafkaAdminClient(
            bootstrap_servers=sasl_broker.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="alice",
            sasl_plain_password="guessed",
            request_timeout_ms=3_000,
        )
        try:
            await client.start()
        finally:
            await client.close()

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aiokafka"), pytest.raises(KafkaConnectionError):
        asyncio.run(asyncio.wait_for(aiokafka_start(), timeout=30))
    assert any("SaslAuthenticationFailed" in r.getMessage() for r in caplog.records)
    assert "guessed" not in sasl_broker.logs()


def test_the_username_must_name_the_tokens_principal(sasl_broker: KafkaBrokerProcess) -> None:
    conf = confluent_conf(sasl_broker.bootstrap, "SASL_PLAINTEXT", username="bob", token=ALICE)
    refusals = confluent_auth_errors(conf)
    assert refusals and "the username is not the name of the token's principal" in refusals[0]
    assert ALICE not in sasl_broker.logs()


def test_metadata_shows_only_topics_the_principal_may_describe(
    sasl_broker: KafkaBrokerProcess,
) -> None:
    conf = confluent_conf(sasl_broker.bootstrap, "SASL_PLAINTEXT", username="alice", token=ALICE)
    assert confluent_topics(conf) == {"alice-orders"}
    named = AdminClient(conf).list_topics(topic="bob-orders", timeout=CLIENT_TIMEOUT_MS / 1000)
    error = named.topics["bob-orders"].error
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    kwargs = kafka_python_kwargs(sasl_broker, "SASL_PLAINTEXT", username="alice", token=ALICE)
    client = KafkaAdminClient(**kwargs)
    try:
        assert client.list_topics() == ["alice-orders"]
        (described,) = client.describe_topics(["bob-orders"])
        assert described["error_code"] == TOPIC_AUTHORIZATION_FAILED
    finally:
        client.close()


def test_produce_is_allowed_on_one_topic_and_refused_on_another(
    sasl_broker: KafkaBrokerProcess,
) -> None:
    conf = confluent_conf(sasl_broker.bootstrap, "SASL_PLAINTEXT", username="alice", token=ALICE)
    producer = Producer(conf | {"message.timeout.ms": 10_000})
    outcomes: dict[str, KafkaError | None] = {}
    for topic in ("alice-orders", "bob-orders"):
        producer.produce(topic, b"order", on_delivery=lambda e, m: outcomes.update({m.topic(): e}))
    assert producer.flush(15) == 0
    assert outcomes["alice-orders"] is None
    refused = outcomes["bob-orders"]
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    kwargs = kafka_python_kwargs(sasl_broker, "SASL_PLAINTEXT", username="alice", token=ALICE)
    kafka_producer = KafkaProducer(max_block_ms=CLIENT_TIMEOUT_MS, **kwargs)
    try:
        assert kafka_producer.send("alice-orders", b"order").get(timeout=10).offset == 1
        with pytest.raises(kafka_errors.TopicAuthorizationFailedError):
            kafka_producer.send("bob-orders", b"order").get(timeout=10)
    finally:
        kafka_producer.close(timeout=5)

    # produce does not let alice read back what she wrote: consume is another operation
    consumer = KafkaConsumer(enable_auto_commit=False, **kwargs)
    try:
        consumer.assign([TopicPartition("alice-orders", 0)])
        consumer.seek_to_beginning()
        with pytest.raises(kafka_errors.TopicAuthorizationFailedError):
            for _ in range(20):  # 20 polls of at most 0.5 s
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()


def test_kcat_authenticates_with_sasl_plain(sasl_broker: KafkaBrokerProcess) -> None:
    """kcat on librdkafka 2.0.2, the oldest client served: SaslHandshake v1 and
    SaslAuthenticate, its metadata filtered by alice's ACLs."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat is not on PATH: apt-get install kcat (.ci/run installs it)"
    base = [
        *(kcat, "-b", sasl_broker.bootstrap, "-m", "5", "-L", "-J"),
        *("-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN"),
        *("-X", "sasl.username=alice"),
    ]
    ok = subprocess.run(
        [*base, "-X", f"sasl.password={ALICE}"], capture_output=True, text=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    assert [t["topic"] for t in json.loads(ok.stdout)["topics"]] == ["alice-orders"]
    refused = subprocess.run(
        [*base, "-X", "sasl.password=guessed"], capture_output=True, text=True, timeout=30
    )
    assert refused.returncode != 0
    assert "SASL authentication error: Authentication failed: Invalid username" in refused.stderr


def test_a_request_before_authentication_closes_the_connection(
    sasl_broker: KafkaBrokerProcess,
) -> None:
    with RawConnection(sasl_broker.kafka_port) as raw:
        versions = raw.ask(ApiVersionsRequest(version=0))
        assert versions is not None and versions.error_code == 0
        assert raw.metadata() is None
    with RawConnection(sasl_broker.kafka_port) as raw:
        assert raw.sasl_plain("alice", ALICE).error_code == 0
        answer = raw.metadata()
        assert answer is not None and [t.name for t in answer.topics] == ["alice-orders"]


def test_garbage_sasl_bytes_close_only_their_connection(sasl_broker: KafkaBrokerProcess) -> None:
    with RawConnection(sasl_broker.kafka_port) as good:
        assert good.sasl_plain("alice", ALICE).error_code == 0
        garbage = [
            os.urandom(64),
            b"\0" * 10_000,
            b"\xff\xfe\0alice\0" + ALICE.encode(),
            b"alice\0" + ALICE.encode(),
            b"",
        ]
        for auth_bytes in garbage:
            with RawConnection(sasl_broker.kafka_port) as hostile:
                shake = hostile.ask(SaslHandshakeRequest(version=1, mechanism="PLAIN"))
                assert shake is not None and shake.error_code == 0
                answer = hostile.ask(SaslAuthenticateRequest(version=1, auth_bytes=auth_bytes))
                assert answer is not None and answer.error_code == SASL_AUTHENTICATION_FAILED
                assert hostile.closed_by_broker(), auth_bytes[:16]
        # A raw PLAIN token after the handshake (what a SaslHandshake v0 client would send)
        # is not a Kafka request: refused, connection closed.
        with RawConnection(sasl_broker.kafka_port) as hostile:
            hostile.ask(SaslHandshakeRequest(version=1, mechanism="PLAIN"))
            token = f"\0alice\0{ALICE}".encode()
            hostile.sock.sendall(struct.pack(">i", len(token)) + token)
            assert hostile.closed_by_broker()
        still = good.metadata()
        assert still is not None and [t.name for t in still.topics] == ["alice-orders"]


def test_oversized_frames_before_authentication_close(sasl_broker: KafkaBrokerProcess) -> None:
    names = [f"no-such-topic-{i:06d}" for i in range(20_000)]  # a request of about 700 KB
    with RawConnection(sasl_broker.kafka_port) as raw:
        assert raw.ask(ApiVersionsRequest(version=0)) is not None
        assert raw.metadata(*names) is None
    for size in (600 * 1024, 2**31 - 1):
        with RawConnection(sasl_broker.kafka_port) as raw:
            raw.sock.sendall(struct.pack(">i", size) + b"\0" * 64)
            assert raw.closed_by_broker(), size
    with RawConnection(sasl_broker.kafka_port) as raw:
        assert raw.sasl_plain("alice", ALICE).error_code == 0
        answer = raw.metadata(*names)  # the same request, once authenticated
        assert answer is not None and len(answer.topics) == len(names)
        assert {t.error_code for t in answer.topics} == {TOPIC_AUTHORIZATION_FAILED}


def test_handshake_v0_and_unoffered_mechanisms_are_refused(
    sasl_broker: KafkaBrokerProcess,
) -> None:
    with RawConnection(sasl_broker.kafka_port) as raw:
        answer = raw.ask(SaslHandshakeRequest(version=0, mechanism="PLAIN"))
        assert answer is not None and answer.error_code == UNSUPPORTED_VERSION
        assert raw.closed_by_broker()
    with RawConnection(sasl_broker.kafka_port) as raw:
        answer = raw.ask(SaslHandshakeRequest(version=1, mechanism="SCRAM-SHA-256"))
        assert answer is not None
        assert (answer.error_code, answer.mechanisms) == (UNSUPPORTED_SASL_MECHANISM, ["PLAIN"])
        assert raw.closed_by_broker()


# --- SSL: TLS without SASL -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssl_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBrokerProcess]:
    process = start_broker(tmp_path_factory.mktemp("kafka-ssl"), tls_args(pki), pki)
    try:
        yield process
    finally:
        process.close()


def test_confluent_and_kafka_python_over_ssl(ssl_broker: KafkaBrokerProcess, pki: Pki) -> None:
    conf = confluent_conf(ssl_broker.bootstrap, "SSL", pki=pki)
    confluent_create(conf, "ssl-confluent")
    assert "ssl-confluent" in confluent_topics(conf)
    kwargs = kafka_python_kwargs(ssl_broker, "SSL", pki=pki)
    assert "ssl-kafka-python" in kafka_python_topics_after_creating(kwargs, "ssl-kafka-python")
    assert round_trip(conf, kwargs, "ssl-confluent") == [b"secured-record"]


def test_an_ssl_listener_offers_no_sasl_and_refuses_plaintext(
    ssl_broker: KafkaBrokerProcess, pki: Pki
) -> None:
    with RawConnection(ssl_broker.kafka_port, client_tls(pki.ca)) as raw:
        answer = raw.ask(SaslHandshakeRequest(version=1, mechanism="PLAIN"))
        assert answer is not None and (answer.error_code, answer.mechanisms) == (
            ILLEGAL_SASL_STATE,
            [],
        )
        assert raw.metadata() is not None  # the connection goes on, as on Kafka's
    with RawConnection(ssl_broker.kafka_port) as plaintext:
        assert plaintext.ask(ApiVersionsRequest(version=0)) is None
    with pytest.raises(ssl.SSLCertVerificationError):
        RawConnection(ssl_broker.kafka_port, client_tls(pki.other_ca))


# --- SASL_SSL -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sasl_ssl_broker(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaBrokerProcess]:
    args = [*tls_args(pki), "--auth-tokens", str(pki.tokens)]
    process = start_broker(tmp_path_factory.mktemp("kafka-sasl-ssl"), args, pki)
    try:
        yield process
    finally:
        process.close()


def test_confluent_and_kafka_python_over_sasl_ssl(
    sasl_ssl_broker: KafkaBrokerProcess, pki: Pki
) -> None:
    conf = confluent_conf(sasl_ssl_broker.bootstrap, "SASL_SSL", username="bob", token=BOB, pki=pki)
    confluent_create(conf, "sasl-ssl-confluent")
    assert "sasl-ssl-confluent" in confluent_topics(conf)
    kwargs = kafka_python_kwargs(sasl_ssl_broker, "SASL_SSL", username="bob", token=BOB, pki=pki)
    assert "sasl-ssl-kp" in kafka_python_topics_after_creating(kwargs, "sasl-ssl-kp")
    assert round_trip(conf, kwargs, "sasl-ssl-confluent") == [b"secured-record"]
    wrong = confluent_conf(
        sasl_ssl_broker.bootstrap, "SASL_SSL", username="bob", token="guessed", pki=pki
    )
    assert confluent_auth_errors(wrong)


def test_tls_without_sasl_is_not_enough_where_tokens_are_required(
    sasl_ssl_broker: KafkaBrokerProcess, pki: Pki
) -> None:
    with RawConnection(sasl_ssl_broker.kafka_port, client_tls(pki.ca)) as raw:
        assert raw.ask(ApiVersionsRequest(version=0)) is not None
        assert raw.metadata() is None


# --- mutual TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBrokerProcess]:
    """Client certificates required, tokens and ACLs on; alice may describe `alice-certs`."""
    args = [
        *tls_args(pki, client_ca=True),
        *("--auth-tokens", str(pki.tokens), "--acls-enabled", "--super-users", "User:admin"),
    ]
    process = start_broker(tmp_path_factory.mktemp("kafka-mtls"), args, pki, client_cert=True)
    files = {"ssl_certfile": str(pki.alice_cert), "ssl_keyfile": str(pki.alice_key)}
    try:
        with grpc_admin(process, pki, **files) as admin:
            admin.create_topic("alice-certs")
            admin.create_topic("admin-only")
            admin.create_acls([AclBinding("User:alice", "topic", "alice-certs", "describe")])
        yield process
    finally:
        process.close()


def test_a_verified_client_certificate_is_the_principal(
    mtls_broker: KafkaBrokerProcess, pki: Pki
) -> None:
    conf = confluent_conf(mtls_broker.bootstrap, "SSL", pki=pki, client_cert=True)
    assert confluent_topics(conf) == {"alice-certs"}
    kwargs = kafka_python_kwargs(mtls_broker, "SSL", pki=pki, client_cert=True)
    client = KafkaAdminClient(**kwargs)
    try:
        assert client.list_topics() == ["alice-certs"]
    finally:
        client.close()


def test_sasl_over_mutual_tls_takes_the_tokens_principal(
    mtls_broker: KafkaBrokerProcess, pki: Pki
) -> None:
    conf = confluent_conf(
        mtls_broker.bootstrap, "SASL_SSL", username="admin", token=ADMIN, pki=pki, client_cert=True
    )
    assert {"alice-certs", "admin-only"} <= confluent_topics(conf)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_broker: KafkaBrokerProcess, pki: Pki
) -> None:
    try:
        raw = RawConnection(mtls_broker.kafka_port, client_tls(pki.ca))
    except (ssl.SSLError, ConnectionResetError):
        pass  # refused during the handshake (TLS 1.2)
    else:
        with raw:  # TLS 1.3 sends its verdict after the handshake: the first request fails
            assert raw.ask(ApiVersionsRequest(version=0)) is None
    with RawConnection(mtls_broker.kafka_port, client_tls(pki.ca, pki)) as alice:
        answer = alice.metadata()
        assert answer is not None and [t.name for t in answer.topics] == ["alice-certs"]


# --- SIGHUP -------------------------------------------------------------------------------------


def reload_and_wait(broker: KafkaBrokerProcess, line: str) -> None:
    """SIGHUP the broker and wait until its log has one more `line` than before."""
    before = broker.logs().count(line)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: broker.logs().count(line) > before, f"the broker to log {line!r}", RELOAD_WAIT_S
    )


def test_sighup_revokes_tokens_and_rotates_the_certificate(pki: Pki, tmp_path: Path) -> None:
    tokens, cert, key = tmp_path / "tokens.toml", tmp_path / "broker.pem", tmp_path / "broker.key"
    write_tokens(tokens, {ALICE: "User:alice", "carol-k4fka": "User:carol"})
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    args = ["--tls-cert", str(cert), "--tls-key", str(key), "--auth-tokens", str(tokens)]
    broker = start_broker(tmp_path, args, pki)
    old_ca = client_tls(pki.ca)
    try:
        with (
            RawConnection(broker.kafka_port, old_ca) as alice,
            RawConnection(broker.kafka_port, old_ca) as carol,
        ):
            assert alice.sasl_plain("alice", ALICE).error_code == 0
            assert carol.sasl_plain("carol", "carol-k4fka").error_code == 0
            write_tokens(tokens, {ALICE: "User:alice", "dave-k4fka": "User:dave"})
            reload_and_wait(broker, "Kafka listener: 2 tokens")
            assert carol.metadata() is None  # revoked: closed at its next request
            assert alice.metadata() is not None
            with RawConnection(broker.kafka_port, old_ca) as again:
                assert again.sasl_plain("carol", "carol-k4fka").error_code == (
                    SASL_AUTHENTICATION_FAILED
                )
            with RawConnection(broker.kafka_port, old_ca) as dave:
                assert dave.sasl_plain("dave", "dave-k4fka").error_code == 0

            d = pki.ca.parent
            server_extensions = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
            make_leaf(d, "rotated", "other-ca", "logstore-broker", server_extensions)
            shutil.copy(d / "rotated.pem", cert)
            shutil.copy(d / "rotated.key", key)
            reload_and_wait(broker, "Kafka listener: 2 tokens, TLS certificate")
            with pytest.raises(ssl.SSLCertVerificationError):
                RawConnection(broker.kafka_port, old_ca)
            with RawConnection(broker.kafka_port, client_tls(pki.other_ca)) as rotated:
                assert rotated.sasl_plain("alice", ALICE).error_code == 0
            assert alice.metadata() is not None  # opened before the rotation: goes on
        assert "carol-k4fka" not in broker.logs() and ALICE not in broker.logs()
    finally:
        broker.close()


# --- a cluster: the ACLs in etcd decide on every broker's Kafka listener ------------------------


def test_a_clusters_acls_in_etcd_decide_on_every_kafka_listener(pki: Pki, tmp_path: Path) -> None:
    tokens, broker_token = tmp_path / "tokens.toml", tmp_path / "broker.token"
    write_tokens(tokens, {**TOKENS, "broker-k4fka": "User:broker"})
    broker_token.write_text("broker-k4fka\n")
    shared = [
        *("--auth-tokens", str(tokens), "--inter-broker-token-file", str(broker_token)),
        *("--acls-enabled", "--super-users", "User:admin,User:broker"),
        *("--kafka-listen", "127.0.0.1:0"),
    ]
    harness = ClusterHarness(tmp_path / "cluster", 3, shared, auth=ClientAuth(None, ADMIN))
    try:
        harness.start()
        listeners = {}
        for broker_id, process in harness.brokers.items():
            found = re.search(r"Kafka listener on (\S+)", process.start_line)
            assert found, process.start_line
            listeners[broker_id] = found.group(1)
        with Admin(harness.brokers[1].address, token=ADMIN) as admin:
            admin.create_topic("cluster-orders", 3, replication_factor=3)
        alice = confluent_conf(listeners[3], "SASL_PLAINTEXT", username="alice", token=ALICE)
        metadata = AdminClient(alice).list_topics(timeout=CLIENT_TIMEOUT_MS / 1000)
        assert set(metadata.topics) == set()
        assert sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values()) == sorted(
            listeners.values()
        )
        with Admin(harness.brokers[1].address, token=ADMIN) as admin:
            admin.create_acls([AclBinding("User:alice", "topic", "cluster-orders", "describe")])
        wait_until(
            lambda: confluent_topics(alice) == {"cluster-orders"},
            "broker 3's Kafka listener to apply an ACL created through broker 1",
            step_s=0.5,
        )
        bob = confluent_conf(listeners[2], "SASL_PLAINTEXT", username="bob", token=BOB)
        named = AdminClient(bob).list_topics(topic="cluster-orders", timeout=5)
        error = named.topics["cluster-orders"].error
        assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    finally:
        harness.close()

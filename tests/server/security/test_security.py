"""TLS, mutual TLS, bearer tokens and ACLs against real `logstore serve` processes.

Certificates come from a throwaway CA made with the `openssl` command line once per
session. Brokers are shared per module where the tests only add state under their own
topic and group names.
"""

from __future__ import annotations

import queue
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logstore import Admin, Consumer, Producer
from logstore.acls import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    AuthenticationError,
    AuthorizationError,
)
from logstore.client._connection import ClientSecurity, open_channel
from logstore.codec import record_batch as rb
from logstore.errors import BrokerUnavailableError
from logstore.server.security.acl_store import AclStore, Authorizer
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.helpers import wait_until
from tests.server.conftest import BrokerProcess
from tests.server.security.pki import make_ca, make_leaf, require_openssl

TOKENS = {"admin-s3cret": "User:admin", "alice-s3cret": "User:alice", "bob-s3cret": "User:bob"}
ADMIN, ALICE, BOB = "admin-s3cret", "alice-s3cret", "bob-s3cret"
#: short timeouts: every call here answers at once or not at all
CALL_TIMEOUT_MS = 5_000


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1, clients, and a stranger CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    alice_cert: Path
    alice_key: Path
    other_ca: Path
    tokens: Path


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_openssl()
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(
        d,
        "server",
        "ca",
        "logstore-broker",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    make_leaf(d, "alice", "ca", "alice", "extendedKeyUsage=clientAuth\n")
    tokens = d / "tokens.toml"
    tokens.write_text("[tokens]\n" + "".join(f'"{t}" = "{p}"\n' for t, p in TOKENS.items()))
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "alice.pem",
        d / "alice.key",
        d / "other-ca.pem",
        tokens,
    )


def tls_credentials(pki: Pki, client_cert: bool = False) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        pki.ca.read_bytes(),
        pki.alice_key.read_bytes() if client_cert else None,
        pki.alice_cert.read_bytes() if client_cert else None,
    )


def start_broker(
    root: Path, args: list[str], credentials: grpc.ChannelCredentials | None = None
) -> BrokerProcess:
    process = BrokerProcess(root / "data", args)
    process.channel_credentials = credentials
    process.start()
    return process


def admin(address: str, token: str | None = None, **security: str) -> Admin:
    return Admin(address, token=token, request_timeout_ms=CALL_TIMEOUT_MS, **security)


def poll_values(consumer: Consumer, attempts: int = 50) -> list[bytes | None]:
    """Values of the first non-empty poll (at most `attempts` polls of 0.2 s)."""
    for _ in range(attempts):
        records = consumer.poll(timeout=0.2)
        if records:
            return [r.value for r in records]
    return []


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    process = start_broker(tmp_path_factory.mktemp("tls"), args, tls_credentials(pki))
    try:
        yield process
    finally:
        process.close()


def test_tls_client_with_the_ca_produces_and_consumes(tls_broker: BrokerProcess, pki: Pki) -> None:
    ca = str(pki.ca)
    with admin(tls_broker.address, ssl_cafile=ca) as a:
        a.create_topic("tls-orders")
    with Producer(tls_broker.address, ssl_cafile=ca, request_timeout_ms=CALL_TIMEOUT_MS) as p:
        assert p.send("tls-orders", value=b"secret").result(timeout=10).offset == 0
    with Consumer(tls_broker.address, ssl_cafile=ca, auto_offset_reset="earliest") as c:
        c.assign([("tls-orders", 0)])
        assert poll_values(c) == [b"secret"]


def test_tls_broker_refuses_plaintext_and_unknown_ca(tls_broker: BrokerProcess, pki: Pki) -> None:
    with (
        admin(tls_broker.address) as plain,
        pytest.raises(BrokerUnavailableError),
    ):
        plain.list_topics()
    with (
        admin(tls_broker.address, ssl_cafile=str(pki.other_ca)) as stranger,
        pytest.raises(BrokerUnavailableError),
    ):
        stranger.list_topics()


# --- mutual TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    args = [
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
        *("--tls-client-ca", str(pki.ca), "--acls-enabled"),
        *("--super-users", "User:root"),
    ]
    process = start_broker(tmp_path_factory.mktemp("mtls"), args, tls_credentials(pki, True))
    try:
        yield process
    finally:
        process.close()


def test_mtls_refuses_a_client_without_certificate(mtls_broker: BrokerProcess, pki: Pki) -> None:
    with (
        admin(mtls_broker.address, ssl_cafile=str(pki.ca)) as anonymous,
        pytest.raises(BrokerUnavailableError),
    ):
        anonymous.list_topics()


def test_mtls_principal_is_the_certificate_cn(mtls_broker: BrokerProcess, pki: Pki) -> None:
    files = {
        "ssl_cafile": str(pki.ca),
        "ssl_certfile": str(pki.alice_cert),
        "ssl_keyfile": str(pki.alice_key),
    }
    with admin(mtls_broker.address, **files) as alice:
        with pytest.raises(AuthorizationError, match="User:alice may not create topics"):
            alice.create_topic("mtls-orders")
        # Nobody may grant ACLs yet except super users: alice is not one.
        with pytest.raises(AuthorizationError, match="User:alice may not alter ACLs"):
            alice.create_acls([AclBinding("User:alice", "cluster", "logstore-cluster", "create")])


# --- tokens and ACLs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    args = [
        *("--auth-tokens", str(pki.tokens), "--acls-enabled"),
        *("--super-users", "User:admin"),
    ]
    process = start_broker(tmp_path_factory.mktemp("acl"), args)
    try:
        yield process
    finally:
        process.close()


def grant(address: str, principal: str, resource_type: str, name: str, *ops: str) -> None:
    with admin(address, ADMIN) as a:
        a.create_acls([AclBinding(principal, resource_type, name, op) for op in ops])


def test_missing_and_unknown_tokens_are_unauthenticated(acl_broker: BrokerProcess) -> None:
    with admin(acl_broker.address) as nobody, pytest.raises(AuthenticationError, match="missing"):
        nobody.list_topics()
    with (
        admin(acl_broker.address, "guess") as guesser,
        pytest.raises(AuthenticationError, match="unknown token"),
    ):
        guesser.list_topics()
    with admin(acl_broker.address, ADMIN) as a:
        a.create_topic("auth-listed", partitions=2)
        listed = a.list_topics()
        assert "auth-listed" in listed
        assert len(listed) == len(set(listed))
        assert a.describe_topic("auth-listed").name == "auth-listed"
    # Health checks stay open to every caller: no token, or one the broker does not know.
    with grpc.insecure_channel(acl_broker.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(request, timeout=5).status == serving
        guessed = (("authorization", "Bearer guess"),)
        assert health.Check(request, metadata=guessed, timeout=5).status == serving
    assert "Traceback" not in acl_broker.logs()
    assert ADMIN not in acl_broker.logs() and "guess" not in acl_broker.logs()


@pytest.mark.parametrize("method", ["Produce", "CreateAcls"])
def test_unparseable_request_bytes_are_invalid_argument_with_acls_on(
    acl_broker: BrokerProcess, method: str
) -> None:
    """The ACL check must not trip over bytes that are not a request (it once answered
    INTERNAL): the handler refuses them as malformed."""
    with grpc.insecure_channel(acl_broker.address) as channel:
        call = channel.unary_unary(f"/logstore.v1.LogStore/{method}")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff", metadata=(("authorization", f"Bearer {ADMIN}"),), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in str(raised.value.details())


def test_deny_by_default_and_super_user_bypass(acl_broker: BrokerProcess) -> None:
    with admin(acl_broker.address, ADMIN) as a:
        a.create_topic("dflt")  # super user: no ACL needed
    with admin(acl_broker.address, BOB) as bob:
        with pytest.raises(AuthorizationError, match="User:bob may not describe topic dflt"):
            bob.describe_topic("dflt")
        with pytest.raises(AuthorizationError, match="User:bob may not create topics"):
            bob.create_topic("bobs")
        assert "dflt" not in bob.list_topics()


def test_produce_and_consume_acls(acl_broker: BrokerProcess) -> None:
    address = acl_broker.address
    with admin(address, ADMIN) as a:
        a.create_topic("pc-orders")
        a.create_topic("pc-secret")
    grant(address, "User:alice", "topic", "pc-orders", "produce", "consume")
    # Describe lets the clients look the topics up, so the produce and consume checks decide.
    grant(address, "User:alice", "topic", "pc-secret", "describe")
    grant(address, "User:bob", "topic", "pc-orders", "describe")
    with Producer(address, token=ALICE, request_timeout_ms=CALL_TIMEOUT_MS) as p:
        assert p.send("pc-orders", value=b"v").result(timeout=10).offset == 0
        denied = p.send("pc-secret", value=b"v")
        with pytest.raises(AuthorizationError, match="User:alice may not produce to topic"):
            denied.result(timeout=10)
    # Through the streaming RPC: each message is checked, the first is allowed.
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        meta = (("authorization", f"Bearer {ALICE}"),)
        requests = [
            pb.ProduceRequest(acks=1, topics=[pb.ProduceTopicData(topic=t)], correlation_id=i)
            for i, t in enumerate(("pc-orders", "pc-secret"))
        ]
        responses = stub.ProduceStream(iter(requests), metadata=meta, timeout=5)
        assert next(responses).correlation_id == 0
        with pytest.raises(grpc.RpcError) as caught:
            next(responses)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        fetches = [
            pb.FetchRequest(topics=[pb.FetchTopic(topic=t, partitions=[pb.FetchPartition()])])
            for t in ("pc-orders", "pc-secret")
        ]
        answers = stub.FetchStream(iter(fetches), metadata=meta, timeout=5)
        assert next(answers).topics[0].topic == "pc-orders"
        with pytest.raises(grpc.RpcError) as caught:
            next(answers)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with Consumer(address, token=ALICE, auto_offset_reset="earliest") as c:
        c.assign([("pc-orders", 0)])
        assert poll_values(c) == [b"v"]
    with Consumer(address, token=BOB, auto_offset_reset="earliest") as c:
        c.assign([("pc-orders", 0)])
        with pytest.raises(AuthorizationError, match="User:bob may not consume from topic"):
            for _ in range(50):
                c.poll(timeout=0.2)


def test_describe_alter_and_delete_topic_acls(acl_broker: BrokerProcess) -> None:
    address = acl_broker.address
    with admin(address, ADMIN) as a:
        for name in ("dad-a", "dad-b"):
            a.create_topic(name)
    grant(address, "User:alice", "topic", "dad-a", "describe", "alter", "delete")
    grant(address, "User:bob", "topic", "dad-*", "describe")
    with admin(address, ALICE) as alice:
        assert alice.describe_topic("dad-a").name == "dad-a"
        assert alice.list_offsets("dad-a", "latest")[0].offset == 0
        assert alice.alter_topic_config("dad-a", set={"retention.ms": "1000"}).config_overrides
        assert len(alice.add_partitions("dad-a", 2).partitions) == 2
        with pytest.raises(AuthorizationError, match="may not alter topic dad-b"):
            alice.alter_topic_config("dad-b", set={"retention.ms": "1000"})
        with pytest.raises(AuthorizationError, match="may not delete topic dad-b"):
            alice.delete_topic("dad-b")
        with pytest.raises(AuthorizationError, match="may not describe topic dad-b"):
            alice.list_offsets("dad-b", "latest", partitions=[0])
        alice.delete_topic("dad-a")
    with admin(address, BOB) as bob:
        assert "dad-b" in bob.list_topics()  # prefix ACL
        assert bob.describe_topic("dad-b").name == "dad-b"
        with pytest.raises(AuthorizationError, match="may not alter topic dad-b"):
            bob.add_partitions("dad-b", 3)


def test_create_topic_needs_cluster_create(acl_broker: BrokerProcess) -> None:
    grant(acl_broker.address, "User:alice", "cluster", "logstore-cluster", "create")
    with admin(acl_broker.address, ALICE) as alice:
        assert alice.create_topic("cc-new").name == "cc-new"


def test_group_acls(acl_broker: BrokerProcess) -> None:
    address = acl_broker.address
    with admin(address, ADMIN) as a:
        a.create_topic("grp-t")
    grant(address, "User:alice", "topic", "grp-t", "consume")
    grant(address, "User:alice", "group", "grp-alice", "read", "delete")
    with Consumer(
        address, token=ALICE, group_id="grp-alice", auto_offset_reset="earliest"
    ) as consumer:
        consumer.subscribe(["grp-t"])
        for _ in range(100):
            consumer.poll(timeout=0.1)
            if consumer.assignment():
                break
        assert consumer.assignment() == {("grp-t", 0)}
        consumer.commit()
    with admin(address, ALICE) as alice:
        # read implies describe
        assert alice.describe_group("grp-alice").group_id == "grp-alice"
        assert [g.group_id for g in alice.list_groups()] == ["grp-alice"]
        with pytest.raises(AuthorizationError, match="User:alice may not read group grp-bob"):
            alice.commit_offsets("grp-bob", {("grp-t", 0): 0})
        alice.delete_group("grp-alice")
    with Consumer(address, token=BOB, group_id="grp-alice") as consumer:
        consumer.subscribe(["grp-t"])
        with pytest.raises(AuthorizationError, match="User:bob may not read group grp-alice"):
            for _ in range(50):
                consumer.poll(timeout=0.1)
    # a member must see the topics it subscribes to, even in a group it may read
    grant(address, "User:bob", "group", "grp-bob", "read")
    with Consumer(address, token=BOB, group_id="grp-bob") as consumer:
        consumer.subscribe(["grp-t"])
        with pytest.raises(AuthorizationError, match="User:bob may not describe topic grp-t"):
            for _ in range(50):
                consumer.poll(timeout=0.1)
        assert consumer.assignment() == set()
    with admin(address, ADMIN) as a:
        assert a.describe_group("grp-bob").members == []
    with admin(address, BOB) as bob:
        with pytest.raises(AuthorizationError, match="may not describe group grp-alice"):
            bob.describe_group("grp-alice")
        with pytest.raises(AuthorizationError, match="may not delete group grp-alice"):
            bob.delete_group("grp-alice")
        assert bob.list_groups() == []


def test_deny_binding_beats_allow(acl_broker: BrokerProcess) -> None:
    with admin(acl_broker.address, ADMIN) as a:
        a.create_topic("deny-t")
        a.create_acls(
            [
                AclBinding("User:*", "topic", "deny-t", "describe"),
                AclBinding("User:bob", "topic", "deny-t", "describe", "deny"),
            ]
        )
    with admin(acl_broker.address, ALICE) as alice:
        assert alice.describe_topic("deny-t").name == "deny-t"
    with admin(acl_broker.address, BOB) as bob, pytest.raises(AuthorizationError):
        bob.describe_topic("deny-t")


def test_acl_management_rpcs(acl_broker: BrokerProcess) -> None:
    binding = AclBinding("User:carol", "topic", "mgmt-t", "produce")
    with admin(acl_broker.address, ADMIN) as a:
        assert a.create_acls([binding]) == [binding]
        assert a.create_acls([binding]) == []  # already there
        assert a.describe_acls(AclFilter(principal="User:carol")) == [binding]
        assert a.delete_acls(AclFilter(principal="User:carol")) == [binding]
        assert a.describe_acls(AclFilter(principal="User:carol")) == []
    with admin(acl_broker.address, BOB) as bob:
        with pytest.raises(AuthorizationError, match="may not describe ACLs"):
            bob.describe_acls()
        with pytest.raises(AuthorizationError, match="may not alter ACLs"):
            bob.delete_acls(AclFilter(principal="User:bob"))


def test_acls_survive_a_restart(pki: Pki, tmp_path: Path) -> None:
    args = [
        *("--auth-tokens", str(pki.tokens), "--acls-enabled"),
        *("--super-users", "User:admin"),
    ]
    process = start_broker(tmp_path, args)
    try:
        with admin(process.address, ADMIN) as a:
            a.create_topic("durable")
        grant(process.address, "User:alice", "topic", "durable", "describe")
        process.kill9()  # the ACL file was fsynced when the RPC answered
        process.start()
        with admin(process.address, ALICE) as alice:
            assert alice.describe_topic("durable").name == "durable"
        with admin(process.address, BOB) as bob, pytest.raises(AuthorizationError):
            bob.describe_topic("durable")
    finally:
        process.close()


def test_acl_rpcs_refused_without_acls_enabled(broker: BrokerProcess) -> None:
    with Admin(broker.address) as a, pytest.raises(Exception, match="ACLs are not enabled"):
        a.describe_acls()


def test_token_without_tls_reaches_the_broker_through_open_channel(
    acl_broker: BrokerProcess,
) -> None:
    with open_channel(acl_broker.address, ClientSecurity(token=ADMIN)) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        created = stub.CreateTopic(pb.CreateTopicRequest(name="open-chan", partitions=3), timeout=5)
        assert (created.topic.name, len(created.topic.partitions)) == ("open-chan", 3)
        listed = stub.ListTopics(pb.ListTopicsRequest(), timeout=5).topics
        assert [(t.name, t.partitions, t.internal) for t in listed if t.name == "open-chan"] == [
            ("open-chan", 3, False)
        ]
    with grpc.insecure_channel(acl_broker.address) as bare:  # the same call without the token
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.LogStoreStub(bare).ListTopics(pb.ListTopicsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "alice" not in repr(ClientSecurity(token="alice-s3cret"))


def test_every_logstore_rpc_has_an_access_rule() -> None:
    from logstore.server.security.acl_rules import RULES

    methods = {m.name for m in pb.DESCRIPTOR.services_by_name["LogStore"].methods}
    assert methods == set(RULES)


def test_managing_acls_does_not_let_a_principal_fetch_as_a_replica(tmp_path: Path) -> None:
    """Kafka's ClusterAction: replica fetches need their own cluster operation, so a
    principal allowed to manage ACLs (alter) is not, by that alone, a replica."""
    from logstore.server.security.acl_rules import RULES

    store = AclStore(tmp_path)
    store.add([AclBinding("User:ops", "cluster", CLUSTER_NAME, "alter")])
    store.add([AclBinding("User:broker", "cluster", CLUSTER_NAME, "cluster_action")])
    authorizer = Authorizer(store)
    for rpc, request in (
        ("ReplicaFetch", pb.ReplicaFetchRequest()),
        ("OffsetForLeaderEpoch", pb.OffsetForLeaderEpochRequest()),
    ):
        needed = RULES[rpc](request)
        assert needed, rpc
        assert not all(authorizer.authorize("User:ops", *need) for need in needed), rpc
        assert all(authorizer.authorize("User:broker", *need) for need in needed), rpc
    creating_acls = RULES["CreateAcls"](pb.CreateAclsRequest())
    assert all(authorizer.authorize("User:ops", *need) for need in creating_acls)
    assert not all(authorizer.authorize("User:broker", *need) for need in creating_acls)


# --- rotating credentials without a restart (SIGHUP) --------------------------------------------

#: how long a test waits for the broker to act on a SIGHUP (s)
RELOAD_WAIT_S = 10.0


def reload_and_wait(broker: BrokerProcess, line: str) -> None:
    """SIGHUP the broker and wait until its log has one more `line` than before."""
    before = broker.logs().count(line)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: broker.logs().count(line) > before, f"the broker to log {line!r}", RELOAD_WAIT_S
    )


def write_tokens(path: Path, tokens: dict[str, str]) -> None:
    path.write_text("[tokens]\n" + "".join(f'"{t}" = "{p}"\n' for t, p in tokens.items()))


def test_sighup_rereads_the_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    write_tokens(tokens, {ALICE: "User:alice", BOB: "User:bob"})
    broker = start_broker(tmp_path, ["--auth-tokens", str(tokens)])
    try:
        with admin(broker.address, ALICE) as alice:
            alice.create_topic("rotation")
        with admin(broker.address, "carol-s3cret") as carol, pytest.raises(AuthenticationError):
            carol.list_topics()
        write_tokens(tokens, {ALICE: "User:alice", "carol-s3cret": "User:carol"})
        reload_and_wait(broker, "reloaded 2 tokens")
        with admin(broker.address, "carol-s3cret") as carol:
            assert carol.list_topics() == ["rotation"]
        with admin(broker.address, ALICE) as alice:
            assert alice.list_topics() == ["rotation"]
        with admin(broker.address, BOB) as bob, pytest.raises(AuthenticationError, match="unknown"):
            bob.list_topics()

        # a stream opened with a token that is then revoked ends at its next message
        with Producer(broker.address, token="carol-s3cret", request_timeout_ms=5000) as carol:
            assert carol.send("rotation", b"before").result(timeout=10).offset == 0
            write_tokens(tokens, {ALICE: "User:alice"})
            reload_and_wait(broker, "reloaded 1 tokens")
            with pytest.raises(AuthenticationError, match="unknown token"):
                carol.send("rotation", b"after").result(timeout=10)

        # a stream opened before a revocation, whose first message comes after it
        write_tokens(tokens, {ALICE: "User:alice", "carol-s3cret": "User:carol"})
        reload_and_wait(broker, "reloaded 2 tokens")
        with grpc.insecure_channel(broker.address) as channel:
            outbox: queue.SimpleQueue[pb.ProduceRequest | None] = queue.SimpleQueue()
            call = pb_grpc.LogStoreStub(channel).ProduceStream(
                iter(outbox.get, None),
                metadata=[("authorization", "Bearer carol-s3cret")],
                timeout=CALL_TIMEOUT_MS / 1000,
            )
            call.initial_metadata()  # sent by the broker once it has authenticated the stream
            assert call.is_active(), "the stream was refused before the token was revoked"
            write_tokens(tokens, {ALICE: "User:alice"})
            reload_and_wait(broker, "reloaded 1 tokens")
            batch = rb.encode_batch([(None, b"late", (), 0)])
            partition = pb.ProducePartitionData(partition=0, records=batch)
            topic = pb.ProduceTopicData(topic="rotation", partitions=[partition])
            outbox.put(pb.ProduceRequest(acks=1, topics=[topic], correlation_id=1))
            with pytest.raises(grpc.RpcError) as refused:
                next(call)
            outbox.put(None)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        tokens.write_bytes(b'[tokens]\n# Zo\xeb\n"x" = "User:x"\n')  # not UTF-8: refused
        reload_and_wait(broker, "reload refused, still serving the previous credentials")
        tokens.write_text("[tokens\n")  # broken: the reload is refused, nothing changes
        reload_and_wait(broker, "reload refused, still serving the previous credentials")
        with admin(broker.address, ALICE) as alice:
            assert alice.list_topics() == ["rotation"]
        assert broker.proc is not None and broker.proc.poll() is None
    finally:
        broker.close()


def _new_server_leaf(pki: Pki, name: str, ca: str) -> tuple[Path, Path]:
    d = pki.ca.parent
    if not (d / f"{name}.pem").exists():
        extensions = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        make_leaf(d, name, ca, "logstore-broker", extensions)
    return d / f"{name}.pem", d / f"{name}.key"


def test_sighup_rotates_the_tls_certificate_for_new_connections(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "broker.pem", tmp_path / "broker.key"
    shutil.copy(pki.server_cert, cert)
    shutil.copy(pki.server_key, key)
    broker = start_broker(
        tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key)], tls_credentials(pki)
    )
    old_ca, new_ca = str(pki.ca), str(pki.other_ca)
    try:
        with admin(broker.address, ssl_cafile=old_ca) as before:
            before.create_topic("rotated")
            new_cert, new_key = _new_server_leaf(pki, "server-rotated", "other-ca")

            # a certificate with another certificate's key is refused: nothing changes
            shutil.copy(new_cert, cert)
            reload_and_wait(broker, "reload refused, still serving the previous credentials")
            with admin(broker.address, ssl_cafile=old_ca) as still:
                assert still.list_topics() == ["rotated"]

            shutil.copy(new_key, key)
            reload_and_wait(broker, "reloaded TLS certificate")
            with admin(broker.address, ssl_cafile=new_ca) as after:
                assert after.list_topics() == ["rotated"]
            with (
                admin(broker.address, ssl_cafile=old_ca) as stale,
                pytest.raises(BrokerUnavailableError),
            ):
                stale.list_topics()
            # a connection opened before the rotation goes on working
            assert before.list_topics() == ["rotated"]
    finally:
        broker.close()

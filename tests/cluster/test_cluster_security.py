"""A secured cluster: three real brokers and etcd with mutual TLS, bearer tokens and ACLs.

The brokers replicate to each other over mutual TLS, each presenting its own certificate
and the broker token (`User:broker`, a super user); the Python clients present a client
certificate and a token of their own. The ACLs live in etcd: one created through any
broker is enforced by every broker, and survives a restart of all of them. A broker whose
inter-broker token its peers do not know cannot replicate, and says why in its log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from logstore import Admin, Consumer, Producer
from logstore.acls import AclBinding, AclFilter, AuthenticationError, AuthorizationError
from logstore.errors import BrokerUnavailableError
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.cluster.harness import ClientAuth, ClusterHarness
from tests.helpers import wait_until
from tests.server.security.pki import BROKER_EXTENSIONS, make_ca, make_leaf, require_openssl

TOKENS = {
    "admin-s3cret": "User:admin",
    "bob-s3cret": "User:bob",
    "broker-s3cret": "User:broker",
}
ADMIN, BOB, BROKER = "admin-s3cret", "bob-s3cret", "broker-s3cret"
#: a token only the misconfigured broker's own table knows
STRANGER = "stranger-s3cret"
#: every call of a test client answers within this (ms)
CALL_TIMEOUT_MS = 10_000
#: how soon an ACL created through one broker must be enforced by another (s): one etcd
#: watch event, normally a few ms; under the stores' 5 s poll, so the watch is what is tested
ACL_SEEN_WITHIN_S = 3.0


@dataclass(frozen=True)
class Pki:
    """A CA, one certificate per broker (CN broker-N), client certificates and tokens."""

    dir: Path
    ca: Path
    tokens: Path
    broker_token: Path

    def cert(self, name: str) -> tuple[str, str]:
        return str(self.dir / f"{name}.pem"), str(self.dir / f"{name}.key")

    def client(self, name: str = "alice") -> dict[str, str]:
        """The TLS keyword arguments of a Python client presenting `name`'s certificate."""
        cert, key = self.cert(name)
        return {"ssl_cafile": str(self.ca), "ssl_certfile": cert, "ssl_keyfile": key}

    def auth(self, token: str | None, name: str = "alice") -> ClientAuth:
        cert, key = self.cert(name)
        credentials = grpc.ssl_channel_credentials(
            self.ca.read_bytes(), Path(key).read_bytes(), Path(cert).read_bytes()
        )
        return ClientAuth(credentials, token)

    def broker_tls(self, broker_id: int) -> list[str]:
        cert, key = self.cert(f"broker-{broker_id}")
        return ["--tls-cert", cert, "--tls-key", key]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_openssl()
    d = tmp_path_factory.mktemp("cluster-pki")
    make_ca(d, "ca")
    for broker_id in (1, 2, 3):
        make_leaf(d, f"broker-{broker_id}", "ca", f"broker-{broker_id}", BROKER_EXTENSIONS)
    for name in ("alice", "admin"):
        make_leaf(d, name, "ca", name, "extendedKeyUsage=clientAuth\n")
    tokens = d / "tokens.toml"
    tokens.write_text("[tokens]\n" + "".join(f'"{t}" = "{p}"\n' for t, p in TOKENS.items()))
    broker_token = d / "broker.token"
    broker_token.write_text(BROKER + "\n")
    return Pki(d, d / "ca.pem", tokens, broker_token)


def secured_args(pki: Pki) -> list[str]:
    """What every broker of the secured cluster shares (each adds its certificate)."""
    return [
        *("--tls-client-ca", str(pki.ca)),
        *("--auth-tokens", str(pki.tokens), "--inter-broker-token-file", str(pki.broker_token)),
        *("--acls-enabled", "--super-users", "User:admin,User:broker"),
    ]


def start_cluster(
    base: Path, pki: Pki, broker_args: dict[int, list[str]] | None = None
) -> ClusterHarness:
    args = {b: [*pki.broker_tls(b), *(broker_args or {}).get(b, [])] for b in (1, 2, 3)}
    harness = ClusterHarness(
        base, 3, secured_args(pki), broker_args=args, auth=pki.auth(ADMIN, "admin")
    )
    try:
        harness.start()
    except BaseException:
        harness.close()
        raise
    return harness


@pytest.fixture(scope="module")
def secure(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHarness]:
    harness = start_cluster(tmp_path_factory.mktemp("secure-cluster"), pki)
    try:
        yield harness
    finally:
        harness.close()


def admin(address: str, pki: Pki, token: str | None = ADMIN, name: str = "alice") -> Admin:
    return Admin(address, token=token, request_timeout_ms=CALL_TIMEOUT_MS, **pki.client(name))


def create_topic(harness: ClusterHarness, pki: Pki, topic: str, partitions: int = 1) -> None:
    with admin(harness.bootstrap, pki) as a:
        a.create_topic(topic, partitions, replication_factor=3)


# --- the secured cluster -------------------------------------------------------------------


def test_clients_without_a_token_or_certificate_are_refused(
    secure: ClusterHarness, pki: Pki
) -> None:
    """Every broker refuses a client with neither a token nor a client certificate (in the
    TLS handshake) and one with an unknown token; a client with only its certificate is
    `User:<CN>`, which may do nothing no ACL allows."""
    create_topic(secure, pki, "refused-orders")
    for process in secure.brokers.values():
        anonymous = Admin(
            process.address, ssl_cafile=str(pki.ca), request_timeout_ms=3000, token=None
        )
        with anonymous, pytest.raises(BrokerUnavailableError):
            anonymous.list_topics()
        guesser = admin(process.address, pki, token="guess")
        with guesser, pytest.raises(AuthenticationError, match="unknown token"):
            guesser.list_topics()
        alice = admin(process.address, pki, token=None)
        with alice, pytest.raises(AuthorizationError, match="User:alice may not describe"):
            alice.describe_topic("refused-orders")
    producer = Producer(secure.bootstrap, request_timeout_ms=5000, **pki.client())
    with producer, pytest.raises(AuthorizationError, match="User:alice may not"):
        producer.send("refused-orders", value=b"x").result(timeout=10)


def test_only_brokers_may_fetch_as_replicas(secure: ClusterHarness, pki: Pki) -> None:
    """A client with a valid token and certificate still may not call the inter-broker
    RPCs: they need cluster_action on the cluster, which only the brokers (super users)
    hold."""
    with pki.auth(BOB).channel(secure.brokers[1].address) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ReplicaFetch(pb.ReplicaFetchRequest(replica_id=2), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "User:bob may not fetch as a replica (cluster_action on the cluster)" in str(
        refused.value.details()
    )


def test_acks_all_produce_through_the_python_client_and_a_leader_change(
    secure: ClusterHarness, pki: Pki
) -> None:
    topic = "secure-orders"
    create_topic(secure, pki, topic)
    assert sorted(secure.wait_for_isr(topic, 3)) == [1, 2, 3]
    leader = secure.wait_for_leader(topic)
    # A secured cluster replicates over gRPC with its credentials, never over the plain
    # replication stream, which no secured broker even listens for.
    logs = "\n".join(process.logs() for process in secure.brokers.values())
    assert f"following partitions of leader {leader} at" in logs
    assert "over gRPC" in logs and "replication stream" not in logs
    values = [f"v{i}".encode() for i in range(20)]
    client = {"token": ADMIN, **pki.client()}
    with Producer(secure.bootstrap, acks="all", request_timeout_ms=20_000, **client) as p:
        first = [p.send(topic, value=v).result(timeout=30) for v in values[:10]]
        assert [m.offset for m in first] == list(range(10))
        # The leader dies: the producer finds the new one and sends there, secured alike.
        secure.kill9(leader)
        secure.wait_for_leader(topic, not_on=leader, timeout_s=20)
        second = [p.send(topic, value=v).result(timeout=30) for v in values[10:]]
        assert [m.offset for m in second] == list(range(10, 20))
    secure.heal()
    # The restarted broker catches up over the secured replication and rejoins the ISR.
    assert sorted(secure.wait_for_isr(topic, 3)) == [1, 2, 3]
    with Consumer(secure.bootstrap, auto_offset_reset="earliest", **client) as c:
        c.assign([(topic, 0)])
        read: list[bytes | None] = []
        for _ in range(100):
            read.extend(r.value for r in c.poll(timeout=0.2))
            if len(read) >= len(values):
                break
    assert read == values


def bob_may_describe(address: str, pki: Pki, topic: str) -> bool:
    with admin(address, pki, token=BOB) as bob:
        try:
            bob.describe_topic(topic)
        except AuthorizationError:
            return False
    return True


def test_an_acl_created_through_one_broker_is_enforced_by_another(
    secure: ClusterHarness, pki: Pki
) -> None:
    topic = "acl-orders"
    create_topic(secure, pki, topic)
    first, second, third = (secure.brokers[b].address for b in (1, 2, 3))
    assert not bob_may_describe(third, pki, topic)
    binding = AclBinding("User:bob", "topic", topic, "describe")
    with admin(first, pki) as a:
        assert a.create_acls([binding]) == [binding]
    created = time.monotonic()
    wait_until(
        lambda: bob_may_describe(third, pki, topic),
        "broker 3 to allow what broker 1 granted",
        timeout_s=ACL_SEEN_WITHIN_S,
    )
    granted_after_s = time.monotonic() - created
    with admin(third, pki) as a:
        assert binding in a.describe_acls(AclFilter(principal="User:bob"))
    with admin(second, pki) as a:
        assert a.delete_acls(AclFilter(principal="User:bob", resource_name=topic)) == [binding]
    wait_until(
        lambda: not bob_may_describe(third, pki, topic),
        "broker 3 to deny again what broker 2 revoked",
        timeout_s=ACL_SEEN_WITHIN_S,
    )
    assert granted_after_s < ACL_SEEN_WITHIN_S


def test_acls_survive_a_restart_of_every_broker(secure: ClusterHarness, pki: Pki) -> None:
    topic = "kept-orders"
    create_topic(secure, pki, topic)
    binding = AclBinding("User:bob", "topic", topic, "describe")
    with admin(secure.brokers[2].address, pki) as a:
        a.create_acls([binding])
    secure.stop_all()
    secure.heal()
    for process in secure.brokers.values():
        assert bob_may_describe(process.address, pki, topic)
        with admin(process.address, pki) as a:
            assert binding in a.describe_acls(AclFilter(principal="User:bob"))
        # The cluster's ACLs live in etcd only, never in a broker's own file.
        assert not (process.data_dir / "__acls.json").exists()


# --- a misconfigured broker ----------------------------------------------------------------


def refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if "refused" in line and "unknown token" in line]


def test_a_broker_with_a_wrong_inter_broker_token_cannot_replicate_until_fixed(
    pki: Pki, tmp_path: Path
) -> None:
    """Broker 3 presents a token its peers do not know (its own token table was changed,
    theirs not): it stays out of the ISR of every partition it follows, and its log says
    why in one line per leader. Given the right token and SIGHUP, it catches up and joins."""
    token_file = tmp_path / "broker-3.token"
    token_file.write_text(STRANGER + "\n")
    own_table = tmp_path / "tokens-3.toml"
    own_table.write_text(pki.tokens.read_text() + f'"{STRANGER}" = "User:broker"\n')
    harness = start_cluster(
        tmp_path / "cluster",
        pki,
        {3: ["--auth-tokens", str(own_table), "--inter-broker-token-file", str(token_file)]},
    )
    try:
        topic = "stranger-orders"
        create_topic(harness, pki, topic, partitions=3)
        leaders = {p: harness.wait_for_leader(topic, p) for p in range(3)}
        followed = [p for p, leader in leaders.items() if leader != 3]
        assert followed, f"broker 3 leads every partition: {leaders}"

        def out_of_isr() -> bool:
            return all(3 not in harness.partition(topic, p).isr for p in followed)

        wait_until(out_of_isr, "broker 3 to leave the ISR it cannot keep up with", timeout_s=15)
        time.sleep(1.0)  # it does not come back while refused
        assert out_of_isr()
        log = harness.brokers[3].logs()
        lines = refusals(log)
        leader_addresses = {harness.brokers[leaders[p]].address for p in followed}
        assert 1 <= len(lines) <= len(leader_addresses), lines
        assert all("check --inter-broker-token-file" in line for line in lines), lines
        assert all(re.search(r"the broker at \S+ refused \w+ from this broker", x) for x in lines)
        # The partitions broker 3 leads replicate: its own table knows the broker token.
        for partition, leader in leaders.items():
            if leader == 3:
                assert sorted(harness.wait_for_isr(topic, 3, partition)) == [1, 2, 3]

        token_file.write_text(BROKER + "\n")
        harness.reload(3)
        for partition in followed:
            harness.wait_for_isr(topic, 3, partition, timeout_s=20)
        assert "inter-broker credentials" in harness.brokers[3].logs()
    finally:
        harness.close()


# --- mutual TLS alone: brokers are User:<certificate CN> ----------------------------------


def test_mutual_tls_without_tokens_names_brokers_by_their_certificates(
    pki: Pki, tmp_path: Path
) -> None:
    brokers = ",".join(f"User:broker-{b}" for b in (1, 2, 3))
    harness = ClusterHarness(
        tmp_path,
        3,
        [
            *("--tls-client-ca", str(pki.ca), "--acls-enabled"),
            *("--super-users", f"User:admin,{brokers}"),
        ],
        broker_args={b: pki.broker_tls(b) for b in (1, 2, 3)},
        auth=pki.auth(None, "admin"),
    )
    try:
        harness.start()
        topic = "cn-orders"
        with admin(harness.bootstrap, pki, token=None, name="admin") as a:
            a.create_topic(topic, 1, replication_factor=3)
        assert sorted(harness.wait_for_isr(topic, 3)) == [1, 2, 3]
        alice = admin(harness.bootstrap, pki, token=None)
        with alice, pytest.raises(AuthorizationError, match="User:alice may not create topics"):
            alice.create_topic("alices", 1, replication_factor=3)
        client = {"token": None, **pki.client("admin")}
        with Producer(harness.bootstrap, acks="all", request_timeout_ms=20_000, **client) as p:
            assert p.send(topic, value=b"x").result(timeout=30).offset == 0
    finally:
        harness.close()

"""What a Kafka handler sees: the broker's core objects, and the connection's session.

`KafkaBroker` is built once per broker over the same objects the gRPC servicer uses (the
log manager, committed offsets, group coordinator, producer ids and, in cluster mode, the
cluster node), so both protocols serve one store. `Session` is per connection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from logstore.addresses import parse_host_port
from logstore.server.kafka.settings import KafkaSettings

if TYPE_CHECKING:
    from logstore.server.broker import LogStoreServicer
    from logstore.server.cluster.node import ClusterNode
    from logstore.server.groups.coordinator import GroupCoordinator
    from logstore.server.groups.offsets_store import OffsetStore
    from logstore.server.kafka.security import SaslAuthenticator
    from logstore.storage.log_manager import LogManager

#: the principal of a connection that has not authenticated
ANONYMOUS = "User:ANONYMOUS"
#: the node id a standalone broker answers with (as over gRPC)
STANDALONE_NODE_ID = 0

#: (principal, resource type, resource name, operation) -> allowed
Authorize = Callable[[str, str, str, str], bool]


@dataclass
class Session:
    """One client connection: who it is, and what it has shown so far.

    Invariants: `authenticated` is False only on a listener that requires SASL, from the
    connection's start (or its SaslHandshake) until SaslAuthenticate succeeds; then
    `principal` is the token's and `sasl_credential` that token's digest. Once `closing`
    is set the connection closes after the response being sent.
    """

    peer: str
    #: whether the connection is TLS
    tls: bool = False
    principal: str = ANONYMOUS
    #: False until SASL completes, on a listener that requires it
    authenticated: bool = True
    #: the mechanism agreed by SaslHandshake (None before)
    sasl_mechanism: str | None = None
    #: the SASL exchange between SaslHandshake and its last SaslAuthenticate (a
    #: `security.SaslExchange`)
    sasl_exchange: Any = None
    #: SHA-256 digest of the token this connection authenticated with (None: none)
    sasl_credential: bytes | None = None
    #: the token file's generation when `sasl_credential` was last checked
    sasl_generation: int = 0
    #: why the connection closes once the response being sent is out (None: it stays open)
    closing: str | None = None
    #: per-connection state a handler family keeps, by family name
    extras: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class BrokerEndpoint:
    """A live broker as Kafka clients reach it."""

    node_id: int
    host: str
    port: int


def advertised_endpoint(settings: KafkaSettings, bound_port: int) -> tuple[str, int]:
    """(host, port) to advertise: `advertised_listen`, else the listen host and the bound
    port. A wildcard listen host needs `advertised_listen` (as Kafka, which will not
    advertise 0.0.0.0): no client could connect to it; `serve` refuses it in one line."""
    if settings.advertised_listen:
        host, port = parse_host_port(settings.advertised_listen)
        return host, port
    host = parse_host_port(settings.listen, port_zero=True)[0]
    if host in ("", "0.0.0.0", "::"):
        raise ValueError(
            f"Kafka listener {settings.listen} listens on every interface: it needs an "
            "advertised address clients can reach"
        )
    return host, bound_port


class KafkaBroker:
    """The core as the Kafka handlers see it."""

    def __init__(
        self,
        servicer: LogStoreServicer,
        settings: KafkaSettings,
        advertised: tuple[str, int],
        authorize: Authorize | None = None,
        sasl: SaslAuthenticator | None = None,
    ) -> None:
        self.servicer = servicer
        self.settings = settings
        self.advertised = advertised
        #: None: every principal may do everything (no ACLs)
        self.authorize_fn = authorize
        #: None: SASL is not offered on this listener (no token file)
        self.sasl = sasl

    @property
    def manager(self) -> LogManager:
        return self.servicer.manager

    @property
    def cluster(self) -> ClusterNode | None:
        return self.servicer.cluster

    @property
    def offsets(self) -> OffsetStore:
        return self.servicer.offsets

    @property
    def coordinator(self) -> GroupCoordinator:
        return self.servicer.coordinator

    @property
    def stopping(self) -> bool:
        return self.servicer.stopping

    @property
    def node_id(self) -> int:
        cluster = self.cluster
        return STANDALONE_NODE_ID if cluster is None else cluster.broker_id

    def brokers(self) -> list[BrokerEndpoint]:
        """Every live broker with a Kafka listener, by node id; standalone: this one."""
        cluster = self.cluster
        if cluster is None:
            host, port = self.advertised
            return [BrokerEndpoint(STANDALONE_NODE_ID, host, port)]
        found = [
            BrokerEndpoint(r.broker_id, r.kafka_host or r.host, r.kafka_port)
            for r in cluster.view.brokers.values()
            if r.kafka_port
        ]
        if not any(b.node_id == cluster.broker_id for b in found):
            host, port = self.advertised  # registered a moment from now, or etcd lags
            found.append(BrokerEndpoint(cluster.broker_id, host, port))
        return sorted(found, key=lambda b: b.node_id)

    def endpoint(self, node_id: int) -> BrokerEndpoint | None:
        return next((b for b in self.brokers() if b.node_id == node_id), None)

    def controller_id(self) -> int:
        """The controller if it is live with a Kafka listener, else this broker: clients
        send admin requests there, and any broker here serves them."""
        cluster = self.cluster
        if cluster is None:
            return STANDALONE_NODE_ID
        controller = cluster.view.controller
        if self.endpoint(controller) is not None:
            return controller
        return self.node_id

    def cluster_id(self) -> str:
        """The cluster's id in etcd; standalone, the data directory's (meta.properties).
        Kafka always sends one, and some clients crash on none (librdkafka's
        describe_cluster)."""
        cluster = self.cluster
        if cluster is None:
            return self.servicer.standalone_cluster_id()
        return cluster.view.cluster_id

    def allowed(self, session: Session, resource_type: str, name: str, operation: str) -> bool:
        """Whether the session's principal may do `operation` on the resource: the broker's
        ACLs (the same `Authorizer` as gRPC's, super users included), or always without
        ACLs. `operation` is one of `logstore.acls.OPERATIONS[resource_type]`."""
        if self.authorize_fn is None:
            return True
        return self.authorize_fn(session.principal, resource_type, name, operation)


@dataclass(frozen=True)
class RequestContext:
    """One request being served: the broker, the connection's session, and the header."""

    broker: KafkaBroker
    session: Session
    #: the request's API version (the response is encoded at the same one)
    version: int
    client_id: str | None
    correlation_id: int

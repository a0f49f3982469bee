"""What a broker needs to take part in a cluster (times in ms, sizes in bytes).

A broker runs standalone when `BrokerSettings.cluster` is None; with a `ClusterSettings`
it registers in etcd under `/logstore/<cluster_name>/` and replicates its partitions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterSettings:
    """Cluster-mode settings; the Kafka name of each broker setting is in its comment."""

    #: this broker's id (broker.id), unique in the cluster, >= 0
    broker_id: int
    #: etcd client endpoints, HOST:PORT each
    etcd_endpoints: tuple[str, ...]
    #: names the etcd key prefix, so several clusters can share one etcd
    cluster_name: str = "logstore"
    #: HOST:PORT clients and other brokers use to reach this broker; None: the listen address
    advertised_listen: str | None = None
    #: a broker whose etcd lease is not renewed for this long is gone (broker.session.timeout.ms;
    #: Kafka's is 9000). The lease is renewed every third of it, so a killed leader is
    #: replaced 2/3 to 1 of this after its death: 4000 keeps failover under 5 s.
    session_timeout_ms: int = 4000
    #: a follower that has not caught up for this long leaves the ISR (replica.lag.time.max.ms)
    replica_lag_time_max_ms: int = 30_000
    #: elect a leader outside the ISR when no ISR member is alive, losing data
    #: (unclean.leader.election.enable)
    unclean_leader_election: bool = False
    #: replication factor of topics created without one (default.replication.factor)
    default_replication_factor: int = 1
    #: longest a follower's fetch waits at the leader for new data (replica.fetch.wait.max.ms)
    replica_fetch_wait_max_ms: int = 500
    #: most bytes a follower asks for per partition per fetch (replica.fetch.max.bytes)
    replica_fetch_max_bytes: int = 1024 * 1024
    #: how long an acks=all produce waits for the ISR before it fails (request.timeout.ms)
    replica_ack_timeout_ms: int = 30_000
    #: on a cluster with no TLS, tokens or ACLs, followers fetch over a plain TCP stream
    #: (`replication_stream`), far cheaper than gRPC; False: always over gRPC
    replication_stream: bool = True
    #: the stream's port, on the --listen host (0: any free port; brokers learn it from
    #: each other's registration in etcd)
    replication_port: int = 0
    #: how often the preferred leader is given leadership back
    #: (leader.imbalance.check.interval.seconds, in ms)
    leader_imbalance_check_interval_ms: int = 30_000

    @property
    def etcd_prefix(self) -> str:
        """The key prefix all of this cluster's records live under (ends with "/")."""
        return f"/logstore/{self.cluster_name}/"

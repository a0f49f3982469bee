"""What `logstore serve --kafka-listen ...` configures (times in ms)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KafkaSettings:
    """The Kafka listener of one broker."""

    #: HOST:PORT to listen on (port 0 picks a free one)
    listen: str
    #: HOST:PORT clients are told to connect to (Metadata, FindCoordinator); None: the
    #: listen host and bound port
    advertised_listen: str | None = None
    #: Kafka's auto.create.topics.enable: Metadata for an unknown topic creates it
    auto_create_topics: bool = True
    #: Kafka's num.partitions: the partition count of auto-created topics
    num_partitions: int = 1
    #: connections beyond this are closed at once (each holds a thread)
    max_connections: int = 1024
    #: Kafka's max.connections.per.ip: connections from one address beyond this are closed
    #: at once. None: no per-address limit, Kafka's default: many legitimate clients share
    #: one address behind NAT, a proxy or a sidecar, so only an operator who knows the
    #: network can choose a number that refuses no one who should get in.
    max_connections_per_ip: int | None = None
    #: Kafka's connections.max.idle.ms: a connection silent this long is closed
    connections_max_idle_ms: int = 600_000
    #: a request must arrive whole within this long of its first byte, and a connection's
    #: first request within this long of connecting, or the connection is closed (ms). Each
    #: connection holds a thread, so a client trickling bytes, or connecting and staying
    #: silent, must not hold one for ever. 60 s is librdkafka's socket.timeout.ms, the
    #: longest request timeout of the clients' defaults (Java, kafka-python and kafkajs
    #: 30 s, aiokafka 40 s): every client has given up on a request by then, so no request
    #: still arriving has anyone waiting for its answer. At that bound a 64 MiB request
    #: (the largest accepted) needs about 1.1 MB/s.
    request_receive_timeout_ms: int = 60_000
    #: a connection on a listener that requires SASL is closed once it has been
    #: unauthenticated this long (ms); a client authenticates right after ApiVersions
    authentication_timeout_ms: int = 30_000
    #: Kafka's group.initial.rebalance.delay.ms: the first rebalance of an empty classic
    #: group waits this long for more members (ms). Kafka's default, 3000: consumers started
    #: together form one generation instead of rebalancing once per member, each of which
    #: stops every member of an eager group; the price is 3 s before a new group's first
    #: records. 0 suits tests and single-consumer groups.
    group_initial_rebalance_delay_ms: int = 3_000
    #: Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms: the session
    #: timeouts a Kafka consumer may ask for (ms)
    group_min_session_timeout_ms: int = 6_000
    group_max_session_timeout_ms: int = 1_800_000

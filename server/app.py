"""Running the broker: gRPC server, health, reflection, signals, graceful shutdown."""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from logstore.addresses import parse_host_port
from logstore.allocator import TRIM_THRESHOLD_BYTES, keep_freed_memory
from logstore.clock import SYSTEM_CLOCK
from logstore.errors import LogStoreError, UnknownTopicOrPartitionError
from logstore.server.broker import (
    DEFAULT_MAX_FETCH_BYTES,
    LogStoreServicer,
    add_servicer_to_server,
)
from logstore.server.cluster.settings import ClusterSettings
from logstore.server.groups.classic import (
    ClassicGroupCoordinator,
)
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OFFSETS_TOPIC, OffsetStore
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.metrics import BrokerMetrics
from logstore.server.producer_ids import BlockProducerIds, ProducerIdManager
from logstore.server.security import BrokerSecurity, SecuritySettings
from logstore.storage.log_config import LogConfig
from logstore.storage.log_manager import LogManager, ManagerSettings
from logstore.v1 import logstore_pb2 as pb

if TYPE_CHECKING:
    from logstore.server.cluster.node import ClusterNode
    from logstore.server.cluster.replication_stream import ReplicationListener
    from logstore.server.kafka.service import KafkaService

log = logging.getLogger("logstore.broker")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LogStore"].full_name
DEFAULT_LISTEN = "127.0.0.1:9092"
PRODUCER_ID_FILE = "producer-id-block"


def default_data_dir() -> Path:
    """Where data lives when no --data-dir is given: $XDG_DATA_HOME/logstore."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "logstore"


@dataclass
class BrokerSettings:
    """Everything `logstore serve` can be told (sizes in bytes, times in ms)."""

    data_dir: Path = field(default_factory=default_data_dir)
    listen: str = DEFAULT_LISTEN
    #: HOST:PORT for Prometheus metrics at /metrics; None serves none (and counts nothing)
    metrics_listen: str | None = None
    #: largest gRPC request accepted (a produce request holds whole batches)
    max_request_bytes: int = 64 * 1024 * 1024
    max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES
    #: threads serving RPCs; long polls and produce streams each hold one while open
    max_workers: int = 128
    #: more concurrent RPCs than this are refused with RESOURCE_EXHAUSTED
    max_concurrent_rpcs: int = 1024
    shutdown_grace_s: float = 10.0
    #: committed offsets of a group with no members are dropped after this (Kafka's default)
    offsets_retention_minutes: int = 10080
    #: how often member sessions and offset retention are checked (ms)
    group_check_interval_ms: int = 500
    topic_defaults: dict[str, str] = field(default_factory=dict)
    manager: ManagerSettings = field(default_factory=ManagerSettings)
    #: TLS, authentication and ACLs (all off by default)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    #: None: a standalone broker that needs no other service; else cluster mode (etcd)
    cluster: ClusterSettings | None = None
    #: None: no Kafka listener; else where and how Kafka clients are served
    kafka: KafkaSettings | None = None


def check_can_listen(address: str) -> None:
    """Raise OSError ("HOST:PORT is already in use") when `address` cannot be bound.

    Called before anything touches the data dir, so a broker started twice by mistake
    changes nothing on disk. Port 0 always binds. Only a port in use or one needing
    privileges is refused here; other failures (e.g. no IPv6 on this machine for one of
    the host's addresses) are left to the listener, which skips such addresses too.
    """
    try:
        host, port = parse_host_port(address, port_zero=True)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except ValueError as exc:
        raise OSError(str(exc)) from None
    except socket.gaierror as exc:
        raise OSError(f"{address}: {exc.strerror}") from None
    if port == 0:
        return
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # gRPC binds with SO_REUSEADDR: a port held only by connections closing
            # (TIME_WAIT) after a restart is free for it, so it must be free here too.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"{address} is already in use") from None
                if exc.errno == errno.EACCES:
                    raise OSError(f"{address}: permission denied") from None


def peer_host(settings: BrokerSettings) -> str | None:
    """The host other brokers dial to reach this one (its advertised host); None when
    standalone."""
    if settings.cluster is None:
        return None
    address = settings.cluster.advertised_listen or settings.listen
    return parse_host_port(address, port_zero=True)[0]


def metrics_failure(reason: object) -> OSError:
    """The one wording of a metrics listener that cannot serve; `reason` names the address."""
    return OSError(f"cannot serve metrics: {reason}")


def replication_listen(settings: BrokerSettings) -> str | None:
    """HOST:PORT of this broker's replication stream listener, None when it has none:
    standalone, the stream switched off, or any security on (the stream is plain TCP
    with no credentials, so a secured cluster replicates over gRPC)."""
    cluster, security = settings.cluster, settings.security
    if cluster is None or not cluster.replication_stream:
        return None
    if security.tls_cert or security.auth_tokens or security.acls_enabled:
        return None
    host = parse_host_port(settings.listen, port_zero=True)[0]
    return (
        f"[{host}]:{cluster.replication_port}"
        if ":" in host
        else (f"{host}:{cluster.replication_port}")
    )


def check_listeners(settings: BrokerSettings) -> None:
    """`check_can_listen` for the gRPC listener and, when on, the metrics one and the
    replication stream's."""
    check_can_listen(settings.listen)
    stream = replication_listen(settings)
    if stream is not None:
        try:
            check_can_listen(stream)
        except OSError as exc:
            raise OSError(f"cannot listen for replication (--replication-port): {exc}") from None
    if settings.kafka is not None:
        try:
            check_can_listen(settings.kafka.listen)
        except OSError as exc:
            raise OSError(f"cannot listen for Kafka clients (--kafka-listen): {exc}") from None
    if settings.metrics_listen:
        try:
            check_can_listen(settings.metrics_listen)
        except OSError as exc:
            raise metrics_failure(exc) from None


class Broker:
    """A started broker: the core objects and the gRPC server in front of them."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        data_dir = Path(settings.data_dir)
        # First, before the data dir is touched: a broker started twice by mistake, or on a
        # busy metrics port, must change nothing on disk. This is the only place it runs.
        check_listeners(settings)
        # Before anything opens: a misconfigured broker must fail, never start unprotected.
        self.security = BrokerSecurity(
            settings.security, data_dir, settings.cluster, peer_host(settings)
        )
        try:
            self.manager = LogManager(
                data_dir,
                default_config=LogConfig.from_properties(settings.topic_defaults),
                settings=settings.manager,
                replicated=settings.cluster is not None,
            )
        except BaseException:
            self.security.close()  # its etcd clients, in cluster mode
            raise
        self.cluster: ClusterNode | None = None
        replicated_append = None
        if settings.cluster is not None:

            def replicated_append(partition: int, batch: bytes) -> None:
                assert self.cluster is not None
                self.cluster.append_offsets(partition, batch)

        self.offsets = OffsetStore(self.manager, replicated_append=replicated_append)
        self.producer_ids: ProducerIdManager | BlockProducerIds = ProducerIdManager(
            self.manager.data_dir / PRODUCER_ID_FILE
        )
        # Kafka clients' groups (the classic protocol), beside LogStore's own
        kafka = settings.kafka if settings.kafka is not None else KafkaSettings(listen="")
        classic = ClassicGroupCoordinator(
            initial_rebalance_delay_ms=kafka.group_initial_rebalance_delay_ms,
            min_session_timeout_ms=kafka.group_min_session_timeout_ms,
            max_session_timeout_ms=kafka.group_max_session_timeout_ms,
        )
        self.coordinator = GroupCoordinator(partition_counts=self._partition_count, classic=classic)
        self.servicer = LogStoreServicer(
            self.manager,
            self.offsets,
            self.producer_ids,
            self.coordinator,
            max_fetch_bytes=settings.max_fetch_bytes,
            max_request_bytes=settings.max_request_bytes,
        )
        self._stopping = threading.Event()
        self._maintenance = threading.Thread(
            target=self._group_maintenance, name="logstore-groups", daemon=True
        )
        self.health = health.HealthServicer()
        self.metrics: BrokerMetrics | None = None
        if settings.metrics_listen:
            self.metrics = BrokerMetrics(self.manager, self.offsets, self.coordinator)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.max_workers, thread_name_prefix="logstore-rpc"
            ),
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            # Metrics outermost, so refused calls are counted with their status code.
            interceptors=[
                *([self.metrics.interceptor] if self.metrics else []),
                self.security.interceptor,
            ],
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                # Any batch a request could carry must also fit in a response.
                (
                    "grpc.max_send_message_length",
                    max(settings.max_fetch_bytes, settings.max_request_bytes) + 1024 * 1024,
                ),
                # Without this a second broker could bind the same port and split traffic.
                ("grpc.so_reuseport", 0),
            ],
        )
        add_servicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        try:
            self.port = self.security.add_port(self.server, settings.listen)
        except RuntimeError:  # newer gRPC raises where older returned 0
            self.port = 0
        if self.port == 0:
            self.security.close()
            self.manager.close()
            raise OSError(f"cannot listen on {settings.listen}")
        host = settings.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        #: followers' plain replication streams (cluster mode without security)
        self.replication_listener: ReplicationListener | None = None
        #: the Kafka protocol listener (None without --kafka-listen)
        self.kafka: KafkaService | None = None
        if settings.kafka is not None:
            self._open_kafka_listener(settings.kafka)
        if settings.cluster is not None:
            self._join_cluster(settings.cluster)
        #: where /metrics is served ("" when it is not)
        self.metrics_address = ""
        if self.metrics is not None and settings.metrics_listen:
            try:
                self.metrics_address = self.metrics.serve(settings.metrics_listen)
            except (OSError, ValueError) as exc:
                self.server.stop(None)  # release the gRPC port bound above
                self._stop_replication_listener()
                self._stop_kafka_listener()
                self.security.close()
                self.manager.close()
                raise metrics_failure(f"{settings.metrics_listen}: {exc}") from exc

    def _open_kafka_listener(self, kafka: KafkaSettings) -> None:
        """Bind the Kafka listener (it serves from `start`)."""
        from logstore.server.kafka.security import kafka_security
        from logstore.server.kafka.service import KafkaService

        try:
            # From the same files BrokerSecurity just checked: TLS, tokens and ACLs decide
            # for Kafka clients as they do for gRPC ones.
            security = kafka_security(self.security)
        except LogStoreError:
            self.server.stop(None)
            self.security.close()
            self.manager.close()
            raise
        try:
            self.kafka = KafkaService(
                self.servicer,
                kafka,
                max_request_bytes=self.settings.max_request_bytes,
                security=security,
                observer=self.metrics.kafka_observer() if self.metrics is not None else None,
            )
        except OSError as exc:
            self.server.stop(None)  # release the gRPC port bound above
            self.security.close()
            self.manager.close()
            raise OSError(f"cannot listen for Kafka clients on {kafka.listen}: {exc}") from exc

    def _join_cluster(self, cluster: ClusterSettings) -> None:
        """Set up cluster mode (etcd is first contacted in `start`, once we serve)."""
        from logstore.server.cluster.leader_offsets import LeaderOffsets
        from logstore.server.cluster.node import PRODUCER_ID_BLOCK, ClusterNode
        from logstore.server.cluster.replication_stream import ReplicationListener

        advertised = cluster.advertised_listen or self.address
        stream = replication_listen(self.settings)
        if stream is not None:
            try:
                self.replication_listener = ReplicationListener(stream, self.servicer.replica_fetch)
            except OSError as exc:
                self.server.stop(None)  # release the gRPC port bound above
                self.security.close()
                self.manager.close()
                raise OSError(f"cannot listen for replication on {stream}: {exc}") from exc
        try:
            self.cluster = ClusterNode(
                cluster,
                self.manager,
                advertised,
                on_topic_deleted=self.offsets.delete_topic,
                on_leadership=self._leadership_changed,
                peers=self.security.peers,
                replication_port=(
                    self.replication_listener.port if self.replication_listener else 0
                ),
                kafka_endpoint=self.kafka.advertised if self.kafka else None,
            )
        except BaseException:
            self._stop_replication_listener()
            self._stop_kafka_listener()
            raise
        # Producer ids must be unique across the cluster: blocks come from etcd.
        self.producer_ids = BlockProducerIds(self.cluster.next_producer_id_block, PRODUCER_ID_BLOCK)
        self.servicer.cluster = self.cluster
        self.servicer.producer_ids = self.producer_ids
        self.leader_offsets = LeaderOffsets(self.cluster)
        self.servicer.partition_offsets = self.leader_offsets

    def _leadership_changed(self, topic: str, partition: int, leads: bool) -> None:
        """The coordinator of a group is the leader of its offsets partition."""
        if topic != OFFSETS_TOPIC:
            return
        if leads:
            self.offsets.load_partition(partition)
            return
        self.offsets.unload_partition(partition)
        # As Kafka on resignation: the groups go with the partition, and requests waiting
        # on them are answered NOT_COORDINATOR now, so their members find the new one.
        unloaded = self.coordinator.unload_partition(partition, self.offsets.partition_of)
        if unloaded:
            log.info(
                "%s-%d is led elsewhere now: unloaded groups %s",
                OFFSETS_TOPIC,
                partition,
                ", ".join(unloaded),
            )

    def _partition_count(self, topic: str) -> int | None:
        try:
            return len(self.manager.topic(topic).partitions)
        except UnknownTopicOrPartitionError:
            return None

    def _group_maintenance(self) -> None:
        """Evict members whose sessions lapsed; expire offsets of long-inactive groups."""
        retention_ms = self.settings.offsets_retention_minutes * 60_000
        last_retention = 0.0
        while not self._stopping.wait(self.settings.group_check_interval_ms / 1000):
            try:
                for group, member in self.coordinator.expire():
                    log.info(
                        "group %s: removed member %s (session or rebalance timeout)", group, member
                    )
                for group, member in self.coordinator.classic.expire():
                    log.info(
                        "group %s: removed Kafka member %s (session, rebalance or sync timeout)",
                        group,
                        member,
                    )
                if time.monotonic() - last_retention >= 60:
                    last_retention = time.monotonic()
                    self.offsets.expire_inactive_groups(
                        SYSTEM_CLOCK.now_ms(),
                        retention_ms,
                        lambda g: self.coordinator.active_member_count(g) > 0,
                        self.coordinator,
                    )
            except Exception:  # keep the broker serving; the next tick tries again
                log.exception("group maintenance failed")

    def start(self) -> None:
        try:
            # Before serving: in cluster mode, no request is decided without the cluster's
            # ACLs, and a broker that cannot read them does not start.
            self.security.start()
        except BaseException:
            self.server.stop(None)
            self._stop_replication_listener()
            self._stop_kafka_listener()
            self.security.close()
            self.manager.close()
            raise
        log.info("listener security: %s", self.security.describe())
        self.server.start()
        if self.replication_listener is not None:
            self.replication_listener.start()
        if self.cluster is not None:
            # After the server starts: other brokers fetch from this one as soon as it is
            # registered. A broker that cannot reach etcd at start-up does not start.
            try:
                self.cluster.start()
            except BaseException:
                self.server.stop(None)
                self._stop_replication_listener()
                self._stop_kafka_listener()
                self.security.close()
                self.manager.close()
                raise
        self._maintenance.start()
        if self.kafka is not None:
            self.kafka.start()
            host, port = self.kafka.advertised
            log.info(
                "serving Kafka clients on port %d, advertised as %s:%d", self.kafka.port, host, port
            )
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def _stop_replication_listener(self) -> None:
        if self.replication_listener is not None:
            self.replication_listener.stop()

    def _stop_kafka_listener(self) -> None:
        if self.kafka is not None:
            self.kafka.stop()

    def stop(self) -> None:
        """Stop accepting, let in-flight RPCs finish, then flush and close every log."""
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.servicer.begin_shutdown()
        # Before the drain: a stopping broker answers replica fetches at once (no long
        # poll), so followers on the stream would spin on it; gRPC refuses new calls too.
        self._stop_replication_listener()
        self._stop_kafka_listener()
        self.server.stop(self.settings.shutdown_grace_s).wait()
        if self.cluster is not None:
            self.cluster.stop()
            self.leader_offsets.close()
        self._stopping.set()
        if self._maintenance.is_alive():
            self._maintenance.join(timeout=10)
        if self.metrics is not None:
            # After the drain, so the last requests are visible; before close, so no scrape
            # reads a log being closed.
            self.metrics.close()
        self.security.close()
        self.manager.close()


#: the soft descriptor limit to aim for when the hard limit is unlimited (Linux's default
#: fs.nr_open, the most a process may set)
_NOFILE_WHEN_UNLIMITED = 1 << 20


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft limit on open descriptors to the hard limit; return (before, after).

    Every segment keeps its .log file open and every sealed index its mapping, and each
    client connection takes one more: a broker with many partitions or small segments needs
    far more than the 1,024 a login shell often starts with (Kafka's guidance is 100,000).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _NOFILE_WHEN_UNLIMITED if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft


def reload_security(broker: Broker) -> bool:
    """Re-read the token and TLS files, and in cluster mode the inter-broker token and CA
    (on SIGHUP): credentials rotate without a restart. A bad file is logged and changes
    nothing. Returns whether the reload took effect."""
    try:
        what = broker.security.reload()
        if broker.kafka is not None:
            what += f"; Kafka listener: {broker.kafka.reload_security()}"
    except LogStoreError as exc:
        log.error("reload refused, still serving the previous credentials: %s", exc)
        return False
    except Exception:  # raised from a signal handler it would end the broker uncleanly
        log.exception("reload refused, still serving the previous credentials")
        return False
    log.info("reloaded %s", what)
    return True


def run(settings: BrokerSettings) -> int:
    """Run a broker in the foreground until SIGINT or SIGTERM (SIGHUP re-reads the token
    and TLS files); return the exit status."""
    # Before the broker opens its logs (one descriptor per segment), but told only once it
    # stands: a broker refused for a busy port says so in one line and logs nothing else.
    before, after = raise_open_file_limit()
    keeps_freed = keep_freed_memory()
    broker = Broker(settings)
    if after != before:
        log.info("raised the open-file limit from %d to %d", before, after)
    if keeps_freed:
        log.info("malloc keeps up to %d bytes of freed memory for reuse", TRIM_THRESHOLD_BYTES)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_security(broker))
    broker.start()
    recovered = (
        " (recovered after unclean shutdown)"
        if broker.manager.recovered_after_unclean_shutdown
        else ""
    )
    kafka = ""
    if broker.kafka is not None:
        host, port = broker.kafka.advertised
        shown = f"[{host}]" if ":" in host else host  # IPv6, bracketed as HOST:PORT reads it
        kafka = f"; Kafka listener on {shown}:{port}"
    print(
        f"LogStore broker listening on {broker.address}, data in {broker.manager.data_dir}"
        f"{recovered}{kafka}",
        flush=True,
    )
    while not stop.wait(1.0):
        pass
    broker.stop()
    log.info("LogStore broker stopped cleanly")
    sys.stdout.flush()
    return 0

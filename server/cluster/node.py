"""A broker's part in a cluster: registration, the controller's duties, and its replicas.

One control thread re-reads the cluster's records from etcd whenever they change (and
at least every second), then:
- as controller (one broker at a time, elected through etcd), replaces dead leaders from
  the ISR, drops dead brokers from ISRs, completes reassignments, gives leadership back
  to preferred leaders, and writes the partition states a crashed broker left unwritten
  when it created or grew a topic; every write is fenced by the controller epoch;
- as a broker, creates and deletes local logs to match the topics, and leads or follows
  each partition it holds as the partition's state says.
A second thread maintains the ISRs of the partitions this broker leads.

Invariants:
- The local view only follows etcd: a role changes after etcd recorded it, never before.
- A broker whose epoch changed since the controller last looked (it restarted, perhaps
  with an empty disk) is treated as dead for one pass: it leaves every ISR and must catch
  up before it rejoins (KIP-903).
- While etcd is unreachable nothing changes: leaders keep serving with their ISR, and the
  broker says so in its log and in `etcd_healthy`.
- A topic's new partitions (all of a new topic's) appear locally, and so to clients, once
  etcd holds all their states, so clients see a partition count and its leaders together.
  If the writer of the states stalls (it died half way), they appear after
  _STALLED_CREATION_S anyway: a partition whose state is not written yet has a local log
  and no leader; it is not available yet, and requests for it fail with retriable errors
  (Kafka's LEADER_NOT_AVAILABLE), until the controller has written the missing states.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import record_batch as rb
from logstore.codec.partitioner import partition_for_key
from logstore.errors import (
    ClusterMetadataUnavailableError,
    InvalidPartitionsError,
    InvalidRequestError,
    LogStoreError,
    NotCoordinatorError,
    NotLeaderOrFollowerError,
    TopicExistsError,
    UnknownTopicOrPartitionError,
)
from logstore.server.cluster import election, placement
from logstore.server.cluster.metadata_store import ClusterMetadataStore
from logstore.server.cluster.peer_channels import PeerChannels
from logstore.server.cluster.replica_fetcher import ReplicaFetchers
from logstore.server.cluster.replica_manager import Replica, ReplicaManager
from logstore.server.cluster.settings import ClusterSettings
from logstore.server.cluster.state import (
    NO_LEADER,
    BrokerRegistration,
    PartitionState,
    TopicRecord,
    Versioned,
)
from logstore.server.groups.offsets_store import OFFSETS_TOPIC, OFFSETS_TOPIC_CONFIG
from logstore.storage.log_config import (
    is_internal_topic,
    validate_partition_count,
    validate_topic_name,
)
from logstore.storage.log_manager import LogManager

log = logging.getLogger(__name__)

#: the control loop re-reads etcd at least this often (s), even without a watch event
_CONTROL_INTERVAL_S = 1.0
#: ISR maintenance runs this often (s)
_MAINTENANCE_INTERVAL_S = 0.25
#: high watermarks are written to replication-offset-checkpoint this often (s; Kafka's
#: replica.high.watermark.checkpoint.interval.ms is 5 s)
_HW_CHECKPOINT_INTERVAL_S = 5.0
#: how long a create or delete waits for the local logs to follow etcd (s), plus
#: _APPLY_S_PER_PARTITION for each partition created or deleted (a partition's files and
#: directory take a few ms to make durable)
_APPLY_TIMEOUT_S = 10.0
_APPLY_S_PER_PARTITION = 0.01
#: the controller writes a topic's missing partition states once their number has not
#: changed for this long (s): the broker writing them has died or lost etcd. A live writer
#: makes a chunk of progress every few ms; were both to write, each state is created only
#: if absent, so nothing is overwritten either way.
_STALLED_CREATION_S = 3.0
#: placement start indexes are drawn below this (any number works: it is taken modulo the
#: broker count, whatever that count is when the partitions are placed)
_PLACEMENT_STARTS = 1 << 16
#: compare-and-swap attempts before a request gives up on a record that keeps changing
_CAS_ATTEMPTS = 10
#: partitions of __consumer_offsets in a cluster (Kafka's offsets.topic.num.partitions is
#: 50; fewer keep a new cluster's first group quick to start)
OFFSETS_TOPIC_PARTITIONS = 10
#: Kafka's offsets.topic.replication.factor (fewer when fewer brokers are live)
OFFSETS_TOPIC_REPLICATION_FACTOR = 3
#: producer ids are reserved from etcd in blocks of this many
PRODUCER_ID_BLOCK = 1000


def _apply_timeout_s(partitions: int) -> float:
    """How long a broker may take to create or delete `partitions` local partitions (s)."""
    return _APPLY_TIMEOUT_S + partitions * _APPLY_S_PER_PARTITION


@dataclass(frozen=True)
class ClusterView:
    """One consistent-enough read of the cluster's records."""

    cluster_id: str = ""
    brokers: Mapping[int, BrokerRegistration] = field(default_factory=dict)
    controller: int = NO_LEADER
    topics: Mapping[str, Versioned] = field(default_factory=dict)
    states: Mapping[tuple[str, int], Versioned] = field(default_factory=dict)
    #: the reassignment throttle (bytes/s) of replicas being added; 0: none
    throttle_bytes_per_s: int = 0

    def missing_states(self, name: str) -> list[int]:
        """The partitions of topic `name` its record counts and that have no state yet."""
        found = self.topics.get(name)
        if found is None:
            return []
        return [p for p in range(found.value.partitions) if (name, p) not in self.states]

    def state(self, topic: str, partition: int) -> PartitionState | None:
        found = self.states.get((topic, partition))
        return None if found is None else found.value


class ClusterNode:
    """Everything cluster mode adds to a broker (see the module docstring)."""

    def __init__(
        self,
        settings: ClusterSettings,
        manager: LogManager,
        advertised: str,
        *,
        on_topic_deleted: Callable[[str], None] = lambda name: None,
        on_leadership: Callable[[str, int, bool], None] = lambda topic, partition, leads: None,
        clock: Clock = SYSTEM_CLOCK,
        peers: PeerChannels | None = None,
        replication_port: int = 0,
        kafka_endpoint: tuple[str, int] | None = None,
    ) -> None:
        self.settings = settings
        #: how this broker reaches the others (transport and credentials)
        self.peers = peers if peers is not None else PeerChannels()
        #: the port of this broker's replication stream listener (0: none), registered so
        #: that followers can fetch from it
        self.replication_port = replication_port
        #: (host, port) Kafka clients reach this broker at; None: no Kafka listener
        self.kafka_endpoint = kafka_endpoint
        self.broker_id = settings.broker_id
        self.manager = manager
        self.advertised = advertised
        self._on_topic_deleted = on_topic_deleted
        #: told (topic, partition, True) when this broker starts leading a partition and
        #: (..., False) when it stops (the offsets store loads and unloads groups)
        self._on_leadership = on_leadership
        self._clock = clock
        self.store = ClusterMetadataStore(settings.etcd_endpoints, settings.etcd_prefix)
        self.view = ClusterView()
        self.broker_epoch = -1
        self.controller_epoch: int | None = None
        #: False while etcd cannot be reached (leaders keep serving, nothing changes)
        self.etcd_healthy = True
        self._etcd_down_since: float | None = None
        self._seen_broker_epochs: dict[int, int] = {}
        self._known_topics: set[str] = set()
        self._last_preferred_check = time.monotonic()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._session_lost = threading.Event()
        self.replicas = ReplicaManager(
            self.broker_id,
            settings,
            self._leadership_valid,
            self._write_isr,
            self._registered_epoch,
            manager.appends.notify,
            clock,
        )
        self.fetchers = ReplicaFetchers(
            self.broker_id,
            lambda: self.broker_epoch,
            settings.replica_fetch_wait_max_ms,
            settings.replica_fetch_max_bytes,
            manager.appends.notify,
            self.peers,
            clock,
            use_streams=settings.replication_stream,
        )
        #: (topic, create revision) of topics with partition states missing -> (how many
        #: were missing, time.monotonic() when that count was first seen)
        self._incomplete: dict[tuple[str, int], tuple[int, float]] = {}
        #: those of them whose writer has made no progress for _STALLED_CREATION_S
        self._stalled: set[tuple[str, int]] = set()
        #: the last refusal logged for each of those topics (logged once, not every pass)
        self._completion_refusals: dict[tuple[str, int], str] = {}
        self._threads = [
            threading.Thread(target=self._control_loop, name="logstore-cluster", daemon=True),
            threading.Thread(target=self._maintenance_loop, name="logstore-isr", daemon=True),
        ]

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Register in etcd (waiting out a previous registration of this id that has not
        expired yet), read the cluster, take up this broker's roles, start the threads."""
        cluster_id = self.store.cluster_id()
        self._register()
        self.store.watch(self._wake.set)
        self._refresh_and_apply()
        self.view = replace(self.view, cluster_id=cluster_id)
        for thread in self._threads:
            thread.start()
        log.info(
            "broker %d joined cluster %s (%s) as %s, broker epoch %d",
            self.broker_id,
            self.settings.cluster_name,
            cluster_id,
            self.advertised,
            self.broker_epoch,
        )

    def _register(self) -> None:
        host, _, port = self.advertised.rpartition(":")
        kafka_host, kafka_port = self.kafka_endpoint or ("", 0)
        registration = BrokerRegistration(
            self.broker_id,
            host,
            int(port),
            replication_port=self.replication_port,
            kafka_host=kafka_host,
            kafka_port=kafka_port,
        )
        ttl_s = max(1, round(self.settings.session_timeout_ms / 1000))
        deadline = time.monotonic() + 2 * ttl_s + 5
        while True:
            try:
                self.broker_epoch = self.store.register_broker(registration, ttl_s)
                break
            except ClusterMetadataUnavailableError:
                raise
            except LogStoreError as exc:
                # The id may still be held by this broker's previous run until its lease
                # expires (a kill -9 does not revoke it).
                if time.monotonic() > deadline:
                    raise
                log.info("waiting to register: %s", exc)
                time.sleep(0.5)
        self._session_lost.clear()
        self.store.on_session_lost = self._on_session_lost

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=10)
        self.fetchers.stop()
        self.store.close()

    def _on_session_lost(self) -> None:
        log.warning(
            "broker %d lost its cluster session: it leads nothing until it re-registers",
            self.broker_id,
        )
        self._session_lost.set()
        # Until the cluster is read again under a new registration, lead nothing: a new
        # leader may have been elected meanwhile.
        self.replicas.demote_all()
        for replica in self.replicas.replicas():
            if replica.topic == OFFSETS_TOPIC:
                self._on_leadership(OFFSETS_TOPIC, replica.partition, False)
        self._wake.set()

    def _leadership_valid(self) -> bool:
        return not self._session_lost.is_set() and self.store.leadership_valid()

    # --- reading the cluster -----------------------------------------------------------------

    def _read_view(self) -> ClusterView:
        controller = self.store.controller()
        brokers = self.store.live_brokers()
        topics = self.store.topics()
        states = self.store.partition_states()
        # After the states: a reassignment sets its throttle before it writes the states
        # that add replicas, so a view holding those states holds the throttle too.
        throttle = self.store.replication_throttle()
        return ClusterView(
            self.view.cluster_id,
            brokers,
            controller[0] if controller else NO_LEADER,
            topics,
            states,
            throttle,
        )

    def _control_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(_CONTROL_INTERVAL_S)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                if self._session_lost.is_set():
                    self._register()
                    log.info(
                        "broker %d re-registered at epoch %d", self.broker_id, self.broker_epoch
                    )
                self._refresh_and_apply()
            except ClusterMetadataUnavailableError as exc:
                self._mark_etcd_down(exc)
            except Exception:  # keep the broker serving; the next pass retries
                log.exception("cluster control pass failed")

    def _refresh_and_apply(self) -> None:
        view = self._read_view()
        self._mark_etcd_up()
        self.view = view
        self._track_incomplete(view)
        if self._act_as_controller(view):
            view = self._read_view()
            self.view = view
            self._track_incomplete(view)
        self._apply_locally(view)

    def _track_incomplete(self, view: ClusterView) -> None:
        """Follow the topics whose record counts partitions without a state (being created
        or grown, or left so by a writer that died): one whose count of missing states has
        not changed for _STALLED_CREATION_S is stalled."""
        now = time.monotonic()
        incomplete: dict[tuple[str, int], tuple[int, float]] = {}
        for name, versioned in view.topics.items():
            missing = len(view.missing_states(name))
            if not missing:
                continue
            key = (name, versioned.create_revision)
            count, since = self._incomplete.get(key, (-1, now))
            if count != missing:
                since = now  # progress (or a first sighting): the writer may be alive
            incomplete[key] = (missing, since)
        self._incomplete = incomplete
        self._stalled = {
            k for k, (_, since) in incomplete.items() if now - since >= _STALLED_CREATION_S
        }
        for key in set(self._completion_refusals) - set(incomplete):
            del self._completion_refusals[key]

    def _stalled_topic(self, name: str, view: ClusterView) -> bool:
        found = view.topics.get(name)
        return found is not None and (name, found.create_revision) in self._stalled

    def _mark_etcd_down(self, exc: Exception) -> None:
        if self.etcd_healthy:
            log.warning(
                "etcd unreachable (%s): serving the partitions this broker leads with their "
                "current ISR; no leadership changes until it returns",
                exc,
            )
        self.etcd_healthy = False
        if self._etcd_down_since is None:
            self._etcd_down_since = time.monotonic()

    def _mark_etcd_up(self) -> None:
        if not self.etcd_healthy:
            log.warning("etcd reachable again")
        self.etcd_healthy = True
        self._etcd_down_since = None

    def _registered_epoch(self, broker_id: int) -> int | None:
        found = self.view.brokers.get(broker_id)
        return None if found is None else found.epoch

    # --- the controller ----------------------------------------------------------------------

    def _act_as_controller(self, view: ClusterView) -> bool:
        """Campaign if there is no controller; as controller, decide. True if anything was
        written."""
        if view.controller == NO_LEADER:
            self.controller_epoch = self.store.campaign_controller(self.broker_id)
            if self.controller_epoch is not None:
                log.info(
                    "broker %d is the controller (epoch %d)", self.broker_id, self.controller_epoch
                )
                self._seen_broker_epochs = {b: r.epoch for b, r in view.brokers.items()}
                return True
            return False
        if view.controller != self.broker_id:
            self.controller_epoch = None
            return False
        if self.controller_epoch is None:
            found = self.store.controller()
            self.controller_epoch = found[1] if found and found[0] == self.broker_id else None
            if self.controller_epoch is None:
                return False
            self._seen_broker_epochs = {b: r.epoch for b, r in view.brokers.items()}
        wrote = self._decide(view, self.controller_epoch)
        return self._complete_topics(view, self.controller_epoch) or wrote

    def _decide(self, view: ClusterView, controller_epoch: int) -> bool:
        restarted = {
            b
            for b, r in view.brokers.items()
            if b in self._seen_broker_epochs and self._seen_broker_epochs[b] != r.epoch
        }
        previous = self._seen_broker_epochs
        self._seen_broker_epochs = {b: r.epoch for b, r in view.brokers.items()}
        live = set(view.brokers) - restarted
        refused = False
        preferred_due = (
            time.monotonic() - self._last_preferred_check
            >= self.settings.leader_imbalance_check_interval_ms / 1000
        )
        if preferred_due:
            self._last_preferred_check = time.monotonic()
        wrote = False
        for (topic, partition), versioned in view.states.items():
            state: PartitionState = versioned.value
            new = election.on_brokers_changed(
                state, live, unclean=self.settings.unclean_leader_election
            )
            if new is None and election.reassignment_in_progress(state):
                new = election.complete_reassignment(state, live)
            if new is None and preferred_due:
                new = election.preferred_leader(state, live)
            if new is None:
                continue
            revision = self.store.update_partition_as_controller(
                topic, partition, new, versioned.mod_revision, controller_epoch
            )
            if revision is None:
                refused = True
            else:
                wrote = True
                log.info(
                    "%s-%d: leader %d -> %d (epoch %d), ISR %s",
                    topic,
                    partition,
                    state.leader,
                    new.leader,
                    new.leader_epoch,
                    list(new.isr),
                )
        if restarted:
            log.info("brokers restarted since the last pass: %s", sorted(restarted))
            if refused:
                # Some write lost a race: treat them as restarted again next pass, so none
                # stays in an ISR it has not caught up to (KIP-903).
                for broker in restarted:
                    self._seen_broker_epochs[broker] = previous[broker]
        return wrote

    def _complete_topics(self, view: ClusterView, controller_epoch: int) -> bool:
        """Write the partition states missing from topics whose writer stopped half way
        (stalled, see `_track_incomplete`); True if anything was written."""
        wrote = False
        for name, versioned in view.topics.items():
            if self._stalled_topic(name, view):
                missing = view.missing_states(name)
                wrote |= self._write_missing_states(view, versioned, missing, controller_epoch)
        return wrote

    def _write_missing_states(
        self, view: ClusterView, topic: Versioned, missing: list[int], controller_epoch: int
    ) -> bool:
        """Place and write the states of the `missing` partitions of `topic` as its creator
        would have (the recorded replication factor and placement start, the live brokers);
        True if any was written. A refusal is logged and retried on a later pass."""
        record: TopicRecord = topic.value
        live = sorted(view.brokers)
        replication_factor = self._replication_factor_of(record, view)
        start = record.placement_start
        if start < 0:  # a record from before placement starts were recorded
            start = random.randrange(_PLACEMENT_STARTS)
        try:
            placed = placement.assign_partitions(missing, replication_factor, live, start)
            states = {p: election.initial_state(r, set(live)) for p, r in placed.items()}
            written = self.store.write_missing_partition_states(
                record.name, topic.create_revision, states, controller_epoch=controller_epoch
            )
        except ClusterMetadataUnavailableError:
            raise
        except LogStoreError as exc:  # too few live brokers, topic deleted, deposed
            key = (record.name, topic.create_revision)
            if self._completion_refusals.get(key) != str(exc):  # once, not every pass
                self._completion_refusals[key] = str(exc)
                log.warning(
                    "%s: cannot write the states of its %d missing partition(s) yet: %s",
                    record.name,
                    len(missing),
                    exc,
                )
            return False
        log.info(
            "%s: wrote the states of %d partition(s) its creator left unwritten",
            record.name,
            written,
        )
        return written > 0

    def _replication_factor_of(self, record: TopicRecord, view: ClusterView) -> int:
        """The topic's replication factor: recorded, else that of a partition it has (not
        counting replicas a reassignment is removing), else the broker default."""
        if record.replication_factor > 0:
            return record.replication_factor
        for (topic, _), versioned in view.states.items():
            if topic == record.name:
                state: PartitionState = versioned.value
                return len(state.replicas) - len(state.removing)
        return self.settings.default_replication_factor

    # --- following etcd locally --------------------------------------------------------------

    def _apply_locally(self, view: ClusterView) -> None:
        self.fetchers.set_throttle(view.throttle_bytes_per_s)
        for name, versioned in view.topics.items():
            # While a live writer is still writing a topic's states, its new partitions
            # wait: a client told of partitions before their leaders would find none. A
            # stalled topic's partitions appear, those without a state as leaderless.
            grow = not view.missing_states(name) or self._stalled_topic(name, view)
            self._ensure_topic(versioned.value, grow)
        for name in sorted(self._known_topics - set(view.topics)):
            self._delete_local(name)
        for (topic, partition), versioned in view.states.items():
            try:
                part = self.manager.partition(topic, partition)
            except UnknownTopicOrPartitionError:
                continue
            change = self.replicas.apply(
                part, topic, partition, versioned.value, versioned.mod_revision
            )
            replica = self.replicas.replica(topic, partition)
            if change is not None:
                role, changed = change
                self._on_leadership(topic, partition, role == "leader")
                if role in ("leader", "none"):
                    self.fetchers.unfollow(changed.key)
                    continue
            if replica is None or replica.state.leader == self.broker_id:
                continue
            self._follow(replica, view)

    def _follow(self, replica: Replica, view: ClusterView) -> None:
        leader = replica.state.leader
        where = self.fetchers.following(replica.key)
        registration = view.brokers.get(leader)
        if leader == NO_LEADER or registration is None:
            if where is not None:
                self.fetchers.unfollow(replica.key)
            return
        wanted = (leader, registration.address, registration.replication_address)
        fetching_epoch = self.fetchers.fetching_epoch(replica.key)
        # Only the replicas a reassignment adds are throttled (Kafka's throttled replicas).
        # Once in the ISR they are not (Kafka throttles only replicas out of sync): the
        # high watermark, and so acks=all, must not wait on the throttle.
        throttled = (
            view.throttle_bytes_per_s > 0
            and self.broker_id in replica.state.adding
            and self.broker_id not in replica.state.isr
        )
        if (
            where != wanted
            or fetching_epoch != replica.state.leader_epoch
            or self.fetchers.throttled(replica.key) != throttled
        ):
            self.fetchers.follow(
                replica,
                leader,
                registration.address,
                replication_address=registration.replication_address,
                throttled=throttled,
            )

    def _ensure_topic(self, record: TopicRecord, grow: bool) -> None:
        """Create or update the local copy of a topic; without `grow`, create no partition
        (a new topic waits, an existing one keeps its partition count)."""
        names = set(self.manager.topic_names())
        if record.name in names:
            local = self.manager.topic(record.name)
            if local.topic_id != record.topic_id:
                log.warning(
                    "topic %s: local copy has id %s, the cluster's is %s: replacing it",
                    record.name,
                    local.topic_id,
                    record.topic_id,
                )
                self._delete_local(record.name)
            else:
                if grow and len(local.partitions) < record.partitions:
                    self.manager.add_partitions(record.name, record.partitions)
                if local.config_overrides != record.config:
                    changes: dict[str, str | int | None] = dict(record.config)
                    changes.update(
                        {k: None for k in local.config_overrides if k not in record.config}
                    )
                    self.manager.alter_config(record.name, changes)
                self._known_topics.add(record.name)
                return
        if not grow:
            return
        self.manager.create_topic(
            record.name, record.partitions, record.config, topic_id=record.topic_id
        )
        self._known_topics.add(record.name)

    def _delete_local(self, name: str) -> None:
        for replica in self.replicas.replicas():
            if replica.topic == name:
                self.fetchers.unfollow(replica.key)
        self.replicas.forget(name)
        with contextlib.suppress(UnknownTopicOrPartitionError):
            self.manager.delete_topic(name)
        self._on_topic_deleted(name)
        self._known_topics.discard(name)

    def _maintenance_loop(self) -> None:
        last_checkpoint = time.monotonic()
        while not self._stopping.wait(_MAINTENANCE_INTERVAL_S):
            try:
                self.replicas.maintain()
                if time.monotonic() - last_checkpoint >= _HW_CHECKPOINT_INTERVAL_S:
                    last_checkpoint = time.monotonic()
                    self.manager.checkpoint_high_watermarks()
            except Exception:  # keep the broker serving; the next pass retries
                log.exception("ISR maintenance failed")

    def _write_isr(
        self, topic: str, partition: int, state: PartitionState, expected_mod_revision: int
    ) -> int | None:
        revision = self.store.update_partition_as_leader(
            topic, partition, state, expected_mod_revision, self.broker_id, self.broker_epoch
        )
        if revision is None:
            self._wake.set()  # someone else wrote first: re-read
        return revision

    # --- requests the servicer forwards --------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int, replication_factor: int, config: Mapping[str, str]
    ) -> None:
        """Place and record a new topic in etcd; return once this broker has its logs.

        The record goes to etcd first, then the partition states in chunks (see
        `ClusterMetadataStore.create_topic`), so any partition count a standalone broker
        accepts works; should this broker die half way, the controller writes the rest.
        """
        validate_topic_name(name)
        validate_partition_count(partitions)
        if replication_factor <= 0:
            replication_factor = self.settings.default_replication_factor
        self.manager.default_config.with_overrides(config)  # InvalidConfigError before etcd
        live = sorted(self.store.live_brokers())
        start = random.randrange(_PLACEMENT_STARTS)
        assignment = placement.assign_replicas(
            partitions, replication_factor, live, start_index=start
        )
        states = {
            p: election.initial_state(replicas, set(live)) for p, replicas in enumerate(assignment)
        }
        record = TopicRecord(
            name, uuid.uuid4().hex, partitions, dict(config), replication_factor, start
        )
        self.store.create_topic(record, states)
        self._wake.set()
        self._await(
            lambda: name in self.manager.topic_names(),
            f"topic {name} to be created",
            _apply_timeout_s(partitions),
        )

    def delete_topic(self, name: str) -> None:
        if is_internal_topic(name):  # the servicer refuses it too; this guards other callers
            raise InvalidRequestError(f"cannot delete internal topic {name!r}")
        found = self.view.topics.get(name)
        partitions = found.value.partitions if found is not None else 0
        self.store.delete_topic(name)
        self._wake.set()
        self._await(
            lambda: name not in self.manager.topic_names(),
            f"topic {name} to be deleted",
            _apply_timeout_s(partitions),
        )

    def _await(
        self, condition: Callable[[], bool], what: str, timeout_s: float = _APPLY_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterMetadataUnavailableError(
                    f"etcd recorded the change, but this broker did not apply it within "
                    f"{timeout_s:.0f} s (waiting for {what})"
                )
            self._wake.set()
            time.sleep(0.02)

    def alter_topic_config(self, name: str, overrides: Mapping[str, str]) -> None:
        """Replace the topic's config overrides in etcd; every broker applies them."""
        self.manager.default_config.with_overrides(overrides)  # InvalidConfigError first
        for _ in range(_CAS_ATTEMPTS):
            current = self._topic_record(name)
            if self.store.update_topic_config(name, overrides, current.mod_revision):
                break
        else:
            raise ClusterMetadataUnavailableError(f"topic {name} kept changing; try again")
        self._wake.set()
        self._await(
            lambda: self.manager.topic(name).config_overrides == dict(overrides),
            f"the config of {name} to apply",
        )

    def add_partitions(self, name: str, total: int) -> None:
        """Grow a topic to `total` partitions, placed as if the topic had been created with
        them (its recorded placement start and replication factor), the record first and
        then the new states in chunks, like a creation (crash-safe the same way)."""
        validate_partition_count(total)
        for _ in range(_CAS_ATTEMPTS):
            current = self.store.topic(name)
            record: TopicRecord = current.value
            if total <= record.partitions:
                raise InvalidPartitionsError(
                    f"topic {name!r} has {record.partitions} partitions; {total} is not more"
                )
            replication_factor = record.replication_factor
            if replication_factor <= 0:  # a record from before it was recorded
                first = self.store.partition_state(name, 0)
                replication_factor = len(first.value.replicas) if first is not None else 1
            start = record.placement_start
            if start < 0:
                start = random.randrange(_PLACEMENT_STARTS)
            live = sorted(self.store.live_brokers())
            placed = placement.assign_partitions(
                range(record.partitions, total), replication_factor, live, start
            )
            states = {p: election.initial_state(r, set(live)) for p, r in placed.items()}
            if self.store.add_partitions(name, total, states, current.mod_revision):
                break
        else:
            raise ClusterMetadataUnavailableError(f"topic {name} kept changing; try again")
        self._wake.set()
        self._await(
            lambda: len(self.manager.topic(name).partitions) >= total,
            f"{name} to have {total} partitions",
            _apply_timeout_s(total - record.partitions),
        )

    def _topic_record(self, name: str) -> Versioned:
        return self.store.topic(name)

    def reassign(self, topic: str, partition: int, target: list[int] | None) -> None:
        """Start moving a partition to `target` (None: cancel a running move). The
        controller completes it once the new replicas are in sync (KIP-455)."""
        live = set(self.store.live_brokers())
        if target is not None:
            unknown = sorted(set(target) - live)
            if unknown:
                raise InvalidRequestError(
                    f"{topic}-{partition}: brokers {unknown} are not live cluster members"
                )
        for _ in range(_CAS_ATTEMPTS):
            found = self.store.partition_state(topic, partition)
            if found is None:
                if partition < self.store.topic(topic).value.partitions:
                    raise NotLeaderOrFollowerError(
                        f"{topic}-{partition} is not available yet: its state is still being "
                        "written; try again"
                    )
                raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
            state: PartitionState = found.value
            if target is None:
                if not election.reassignment_in_progress(state):
                    raise InvalidRequestError(f"{topic}-{partition}: no reassignment is running")
                original = [b for b in state.replicas if b not in state.adding]
                new = election.start_reassignment(state, original)
            else:
                new = election.start_reassignment(state, target)
            # Written by whichever broker took the request, fenced by its own registration;
            # the compare on the partition's revision orders it with the controller's writes.
            revision = self.store.update_partition_as_leader(
                topic, partition, new, found.mod_revision, self.broker_id, self.broker_epoch
            )
            if revision is not None:
                self._wake.set()
                return
        raise ClusterMetadataUnavailableError(f"{topic}-{partition} kept changing; try again")

    def set_replication_throttle(self, bytes_per_s: int) -> None:
        """Set the cluster's reassignment throttle (bytes/s; 0 removes it). Every broker
        applies it, from etcd, to the fetches of the replicas a reassignment is adding."""
        self.store.set_replication_throttle(bytes_per_s)
        self._wake.set()

    def replication_throttle(self) -> int:
        """The cluster's reassignment throttle (bytes/s), 0 when there is none."""
        return self.store.replication_throttle()

    def reassignments(self) -> dict[tuple[str, int], PartitionState]:
        """The partitions being reassigned now, with their states."""
        return {
            key: versioned.value
            for key, versioned in self.store.partition_states().items()
            if election.reassignment_in_progress(versioned.value)
        }

    def append_offsets(self, partition: int, batch: bytes) -> None:
        """Append a batch of committed offsets as the leader of that partition of
        __consumer_offsets; return once the ISR has it (a coordinator failover keeps it)."""
        try:
            replica = self.replicas.leader(OFFSETS_TOPIC, partition)
            headers = rb.split_batches(batch, replica.log.config.max_message_bytes)
            result, epoch = self.replicas.append(replica, batch, headers)
            self.replicas.wait_for_replication(replica, result.last_offset + 1, epoch)
        except NotLeaderOrFollowerError as exc:
            raise NotCoordinatorError(f"no longer the group coordinator: {exc}") from exc

    def group_coordinator(self, group: str) -> BrokerRegistration:
        """The broker leading `group`'s partition of __consumer_offsets, which is created
        on first use (as Kafka does) with up to 3 replicas."""
        if OFFSETS_TOPIC not in self.view.topics:
            live = self.store.live_brokers()
            with contextlib.suppress(TopicExistsError):
                self.create_topic(
                    OFFSETS_TOPIC,
                    OFFSETS_TOPIC_PARTITIONS,
                    min(OFFSETS_TOPIC_REPLICATION_FACTOR, len(live)),
                    OFFSETS_TOPIC_CONFIG,
                )
            self._await(lambda: OFFSETS_TOPIC in self.view.topics, f"{OFFSETS_TOPIC} to exist")
        record: TopicRecord = self.view.topics[OFFSETS_TOPIC].value
        partition = partition_for_key(group.encode(), record.partitions)
        state = self.view.state(OFFSETS_TOPIC, partition)
        leader = state.leader if state is not None else NO_LEADER
        registration = self.view.brokers.get(leader)
        if registration is None:
            raise NotCoordinatorError(
                f"group {group!r}: partition {partition} of {OFFSETS_TOPIC} has no live "
                "leader yet; try again"
            )
        return registration

    def next_producer_id_block(self) -> int:
        return self.store.allocate_producer_ids(PRODUCER_ID_BLOCK)

    def partition_state(self, topic: str, partition: int) -> PartitionState | None:
        replica = self.replicas.replica(topic, partition)
        if replica is not None:
            return replica.state
        return self.view.state(topic, partition)

    def health(self) -> tuple[bool, str]:
        return self.store.health()

"""A broker's part in a cluster: registration, the controller's duties, and its replicas.

One control thread re-reads the cluster's records from etcd whenever they change (and
at least every second), then:
- as controller (one broker at a time, elected through etcd), replaces dead leaders from
  the ISR, drops dead brokers from ISRs, completes reassignments and gives leadership
  back to preferred leaders; every write is fenced by the controller epoch;
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
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import record_batch as rb
from logstore.codec.partitioner import partition_for_key
from logstore.errors import (
    ClusterMetadataUnavailableError,
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
from logstore.storage.log_config import is_internal_topic
from logstore.storage.log_manager import LogManager

log = logging.getLogger(__name__)

#: the control loop re-reads etcd at least this often (s), even without a watch event
_CONTROL_INTERVAL_S = 1.0
#: ISR maintenance runs this often (s)
_MAINTENANCE_INTERVAL_S = 0.25
#: high watermarks are written to replication-offset-checkpoint this often (s; Kafka's
#: replica.high.watermark.checkpoint.interval.ms is 5 s)
_HW_CHECKPOINT_INTERVAL_S = 5.0
#: how long a create or delete waits for the local logs to follow etcd (s)
_APPLY_TIMEOUT_S = 10.0
#: compare-and-swap attempts before a request gives up on a record that keeps changing
_CAS_ATTEMPTS = 10
#: partitions of __consumer_offsets in a cluster (Kafka's offsets.topic.num.partitions is
#: 50; fewer keep its creation one small etcd transaction)
OFFSETS_TOPIC_PARTITIONS = 10
#: Kafka's offsets.topic.replication.factor (fewer when fewer brokers are live)
OFFSETS_TOPIC_REPLICATION_FACTOR = 3
#: producer ids are reserved from etcd in blocks of this many
PRODUCER_ID_BLOCK = 1000


@dataclass(frozen=True)
class ClusterView:
    """One consistent-enough read of the cluster's records."""

    cluster_id: str = ""
    brokers: Mapping[int, BrokerRegistration] = field(default_factory=dict)
    controller: int = NO_LEADER
    topics: Mapping[str, Versioned] = field(default_factory=dict)
    states: Mapping[tuple[str, int], Versioned] = field(default_factory=dict)

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
    ) -> None:
        self.settings = settings
        #: how this broker reaches the others (transport and credentials)
        self.peers = peers if peers is not None else PeerChannels()
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
        )
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
        self.view = ClusterView(
            cluster_id, self.view.brokers, self.view.controller, self.view.topics, self.view.states
        )
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
        registration = BrokerRegistration(self.broker_id, host, int(port))
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
        return ClusterView(
            self.view.cluster_id,
            self.store.live_brokers(),
            controller[0] if controller else NO_LEADER,
            self.store.topics(),
            self.store.partition_states(),
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
        if self._act_as_controller(view):
            view = self._read_view()
            self.view = view
        self._apply_locally(view)

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
        return self._decide(view, self.controller_epoch)

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

    # --- following etcd locally --------------------------------------------------------------

    def _apply_locally(self, view: ClusterView) -> None:
        for versioned in view.topics.values():
            self._ensure_topic(versioned.value)
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
        wanted = (leader, registration.address)
        fetching_epoch = self.fetchers.fetching_epoch(replica.key)
        if where != wanted or fetching_epoch != replica.state.leader_epoch:
            self.fetchers.follow(replica, leader, registration.address)

    def _ensure_topic(self, record: TopicRecord) -> None:
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
                if len(local.partitions) < record.partitions:
                    self.manager.add_partitions(record.name, record.partitions)
                if local.config_overrides != record.config:
                    changes: dict[str, str | int | None] = dict(record.config)
                    changes.update(
                        {k: None for k in local.config_overrides if k not in record.config}
                    )
                    self.manager.alter_config(record.name, changes)
                self._known_topics.add(record.name)
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
        """Place and record a new topic in etcd; return once this broker has its logs."""
        if replication_factor <= 0:
            replication_factor = self.settings.default_replication_factor
        self.manager.default_config.with_overrides(config)  # InvalidConfigError before etcd
        live = sorted(self.store.live_brokers())
        assignment = placement.assign_replicas(partitions, replication_factor, live)
        states = {
            p: election.initial_state(replicas, set(live)) for p, replicas in enumerate(assignment)
        }
        record = TopicRecord(name, uuid.uuid4().hex, partitions, dict(config))
        self.store.create_topic(record, states)
        self._wake.set()
        self._await(lambda: name in self.manager.topic_names(), f"topic {name} to be created")

    def delete_topic(self, name: str) -> None:
        if is_internal_topic(name):  # the servicer refuses it too; this guards other callers
            raise InvalidRequestError(f"cannot delete internal topic {name!r}")
        self.store.delete_topic(name)
        self._wake.set()
        self._await(lambda: name not in self.manager.topic_names(), f"topic {name} to be deleted")

    def _await(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _APPLY_TIMEOUT_S
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterMetadataUnavailableError(
                    f"etcd recorded the change, but this broker did not apply it within "
                    f"{_APPLY_TIMEOUT_S:.0f} s (waiting for {what})"
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
        """Grow a topic to `total` partitions, placed like a new topic's with the same
        replication factor (that of partition 0)."""
        for _ in range(_CAS_ATTEMPTS):
            current = self._topic_record(name)
            record: TopicRecord = current.value
            first = self.store.partition_state(name, 0)
            replication_factor = len(first.value.replicas) if first is not None else 1
            live = sorted(self.store.live_brokers())
            placed = placement.assign_replicas(
                total - record.partitions,
                replication_factor,
                live,
                first_partition=record.partitions,
            )
            states = {
                record.partitions + i: election.initial_state(replicas, set(live))
                for i, replicas in enumerate(placed)
            }
            if self.store.add_partitions(name, total, states, current.mod_revision):
                break
        else:
            raise ClusterMetadataUnavailableError(f"topic {name} kept changing; try again")
        self._wake.set()
        self._await(
            lambda: len(self.manager.topic(name).partitions) >= total,
            f"{name} to have {total} partitions",
        )

    def _topic_record(self, name: str) -> Versioned:
        found = self.store.topics().get(name)
        if found is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return found

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

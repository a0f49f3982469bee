"""A broker's replicas: which partitions it leads or follows, and the leader's duties.

Invariants:
- A broker appends to a partition as leader only while the partition's state (read from
  etcd) names it leader, at the epoch it stamps into the batches, and while it may act as
  leader (`ClusterMetadataStore.leadership_valid`): a broker that was paused past its
  session, or whose session lapsed, acknowledges nothing until it has re-read the cluster.
- The high watermark a leader publishes is the minimum log end offset over the ISR and
  never goes back while the broker leads at one epoch. Consumers read below it only.
- An acks=all produce is answered once the high watermark passes its last record, or
  fails with NotEnoughReplicasAfterAppendError after `replica_ack_timeout_ms`; with fewer
  in-sync replicas than min.insync.replicas it is refused before anything is appended.
- The ISR changes only through a compare-and-swap in etcd fenced by the leader's broker
  epoch; the local view changes after etcd accepted the write, never before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec.record_batch import BatchHeader
from logstore.errors import (
    BrokerNotRegisteredError,
    ClusterMetadataUnavailableError,
    FencedLeaderEpochError,
    NotEnoughReplicasAfterAppendError,
    NotEnoughReplicasError,
    NotLeaderOrFollowerError,
    UnknownLeaderEpochError,
)
from logstore.server.cluster.isr import FollowerTracker
from logstore.server.cluster.settings import ClusterSettings
from logstore.server.cluster.state import NO_LEADER, PartitionState
from logstore.storage.partition_log import AppendResult, PartitionLog

log = logging.getLogger(__name__)

#: (topic, partition)
Key = tuple[str, int]


@dataclass
class Replica:
    """This broker's copy of one partition, and what it knows of the partition's state."""

    topic: str
    partition: int
    log: PartitionLog
    state: PartitionState
    mod_revision: int
    #: the leader's record of its followers (None while following)
    tracker: FollowerTracker | None = None
    #: the log end offset at which this broker's current leader epoch began
    epoch_start_offset: int = 0
    #: the ISR being written to etcd by this leader, until the write settles
    pending_isr: tuple[int, ...] = ()
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> Key:
        return (self.topic, self.partition)

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"


class ReplicaManager:
    """The replicas this broker holds, their roles, and the leader's replication duties."""

    def __init__(
        self,
        broker_id: int,
        settings: ClusterSettings,
        leadership_valid: Callable[[], bool],
        write_isr: Callable[[str, int, PartitionState, int], int | None],
        registered_epoch: Callable[[int], int | None],
        on_high_watermark: Callable[[], None],
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.broker_id = broker_id
        self.settings = settings
        #: whether this broker may act as a leader now (see
        #: `ClusterMetadataStore.leadership_valid`)
        self._leadership_valid = leadership_valid
        self._write_isr = write_isr
        self._registered_epoch = registered_epoch
        self._on_high_watermark = on_high_watermark
        self._clock = clock
        self._replicas: dict[Key, Replica] = {}
        self._lock = threading.Lock()
        #: notified whenever a leader's high watermark advances (acks=all waiters)
        self._hw_changed = threading.Condition()

    # --- roles -------------------------------------------------------------------------------

    def replica(self, topic: str, partition: int) -> Replica | None:
        return self._replicas.get((topic, partition))

    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas.values())

    def apply(
        self, log_for: PartitionLog, topic: str, partition: int, state: PartitionState, rev: int
    ) -> tuple[str, Replica] | None:
        """Take a partition state read from etcd; return ("leader" | "follower", replica)
        when this broker's role for it changed (the caller starts or stops fetching), or
        None when nothing changed for the fetcher."""
        key = (topic, partition)
        hosted = self.broker_id in state.replicas or self.broker_id in state.adding
        with self._lock:
            current = self._replicas.get(key)
            if not hosted:
                if current is not None:
                    del self._replicas[key]
                    return ("none", current)
                return None
            if current is None:
                current = Replica(topic, partition, log_for, state, rev)
                self._replicas[key] = current
                was_leader, old_epoch = False, -1
            else:
                was_leader = current.state.leader == self.broker_id
                old_epoch = current.state.leader_epoch
            now_leader = state.leader == self.broker_id
            with current.lock:
                if rev < current.mod_revision:
                    return None  # an older read than one already applied
                epoch_changed = state.leader_epoch != old_epoch
                isr_changed = state.isr != current.state.isr
                current.state = state
                current.mod_revision = rev
                if now_leader and (not was_leader or epoch_changed):
                    self._become_leader(current)
                    change: tuple[str, Replica] | None = ("leader", current)
                elif not now_leader and (was_leader or epoch_changed or current.tracker is None):
                    current.tracker = None
                    change = ("follower", current)
                else:
                    change = None
        if change is not None or isr_changed:
            # A smaller ISR may let the high watermark advance; a lost leadership must
            # fail the acks=all requests waiting on it now, not at their timeout.
            self._advance_high_watermark(current)
            with self._hw_changed:
                self._hw_changed.notify_all()
        return change

    def _become_leader(self, replica: Replica) -> None:
        """Start leading at `replica.state.leader_epoch` (called with the replica's lock)."""
        part = replica.log
        replica.epoch_start_offset = part.log_end_offset
        part.leader_epoch_cache.assign(replica.state.leader_epoch, part.log_end_offset)
        replica.tracker = FollowerTracker(
            self.broker_id, self.settings.replica_lag_time_max_ms, self._clock.monotonic_ms()
        )
        log.info(
            "%s: leader at epoch %d from offset %d, ISR %s",
            replica.name,
            replica.state.leader_epoch,
            part.log_end_offset,
            list(replica.state.isr),
        )
        self._advance_high_watermark(replica)

    def demote_all(self) -> None:
        """Stop leading everything (the broker's session lapsed): the next state read
        from etcd decides again. acks=all waiters fail at once."""
        for replica in self.replicas():
            with replica.lock:
                if replica.state.leader == self.broker_id:
                    replica.state = replace(replica.state, leader=NO_LEADER)
                    replica.tracker = None
        with self._hw_changed:
            self._hw_changed.notify_all()

    def forget(self, topic: str) -> None:
        """Drop every replica of a deleted topic."""
        with self._lock:
            for key in [k for k in self._replicas if k[0] == topic]:
                del self._replicas[key]

    # --- leading -----------------------------------------------------------------------------

    def leader(self, topic: str, partition: int, leader_epoch: int | None = None) -> Replica:
        """The replica, if this broker leads it now (at `leader_epoch`, when given)."""
        replica = self._replicas.get((topic, partition))
        if replica is None or replica.state.leader != self.broker_id:
            leader = replica.state.leader if replica is not None else -1
            raise NotLeaderOrFollowerError(
                f"{topic}-{partition}: broker {self.broker_id} is not its leader"
                + (f" (broker {leader} is)" if leader >= 0 else "")
            )
        if not self._leadership_valid():
            raise NotLeaderOrFollowerError(
                f"{topic}-{partition}: broker {self.broker_id}'s cluster session lapsed; "
                "it leads nothing until it has re-registered"
            )
        if leader_epoch is not None and leader_epoch >= 0:
            current = replica.state.leader_epoch
            if leader_epoch < current:
                raise FencedLeaderEpochError(
                    f"{topic}-{partition}: leader epoch {leader_epoch} is older than {current}"
                )
            if leader_epoch > current:
                raise UnknownLeaderEpochError(
                    f"{topic}-{partition}: leader epoch {leader_epoch} is newer than {current}"
                )
        return replica

    def check_min_isr(self, replica: Replica) -> None:
        """Refuse an acks=all produce before it is appended when the ISR is too small."""
        needed = replica.log.config.min_insync_replicas
        isr = replica.state.isr
        if len(isr) < needed:
            raise NotEnoughReplicasError(
                f"{replica.name}: {len(isr)} in-sync replica(s) {list(isr)}, "
                f"min.insync.replicas is {needed}"
            )

    def append(
        self, replica: Replica, records: bytes | memoryview, headers: list[BatchHeader]
    ) -> tuple[AppendResult, int]:
        """Append as leader, stamping the leader epoch into every batch; return the result
        and that epoch (what `wait_for_replication` must still see). Under the replica's
        lock, so a switch to follower cannot slip between the check and the append."""
        with replica.lock:
            state = replica.state
            if state.leader != self.broker_id:
                raise NotLeaderOrFollowerError(
                    f"{replica.name}: broker {self.broker_id} is no longer its leader"
                )
            result = replica.log.append(
                records, validated_headers=headers, leader_epoch=state.leader_epoch
            )
        if len(state.isr) <= 1:
            self._advance_high_watermark(replica)
        return result, state.leader_epoch

    def wait_for_replication(self, replica: Replica, end_offset: int, leader_epoch: int) -> None:
        """Block until the high watermark reaches `end_offset` while this broker leads at
        `leader_epoch` (acks=all). Leadership is read before and after the high watermark:
        epochs only grow, so the same epoch on both sides means the high watermark was
        raised by this leadership, over records this broker appended."""
        timeout_s = self.settings.replica_ack_timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        with self._hw_changed:
            while True:
                if not self._leads_at(replica, leader_epoch):
                    raise NotLeaderOrFollowerError(
                        f"{replica.name}: leadership moved before the in-sync replicas "
                        f"confirmed offset {end_offset - 1}; the batch may be lost"
                    )
                reached = replica.log.high_watermark >= end_offset
                if reached and self._leads_at(replica, leader_epoch):
                    self._check_min_isr_after_append(replica, end_offset)
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotEnoughReplicasAfterAppendError(
                        f"{replica.name}: the in-sync replicas {list(replica.state.isr)} did "
                        f"not confirm offset {end_offset - 1} within "
                        f"{self.settings.replica_ack_timeout_ms} ms (high watermark "
                        f"{replica.log.high_watermark})"
                    )
                self._hw_changed.wait(min(remaining, 0.5))

    @staticmethod
    def _check_min_isr_after_append(replica: Replica, end_offset: int) -> None:
        """As Kafka: the high watermark also rises when the ISR shrinks, so reaching it is
        not enough for acks=all; the batch is held by the ISR, which must still have
        min.insync.replicas members, or the producer is told it is not (retriable)."""
        isr = replica.state.isr
        needed = replica.log.config.min_insync_replicas
        if len(isr) < needed:
            raise NotEnoughReplicasAfterAppendError(
                f"{replica.name}: offset {end_offset - 1} is held by the in-sync replicas "
                f"{list(isr)}, fewer than min.insync.replicas={needed}"
            )

    def _leads_at(self, replica: Replica, leader_epoch: int) -> bool:
        state = replica.state
        return state.leader == self.broker_id and state.leader_epoch == leader_epoch

    def record_follower_fetch(
        self, replica: Replica, follower_id: int, broker_epoch: int, fetch_offset: int
    ) -> None:
        """A follower fetched from `fetch_offset`: it holds everything below it."""
        registered = self._registered_epoch(follower_id)
        if registered is None or registered != broker_epoch:
            raise BrokerNotRegisteredError(
                f"broker {follower_id} at epoch {broker_epoch} is not registered"
                + (f" (its registration has epoch {registered})" if registered else "")
            )
        if follower_id not in replica.state.replicas and follower_id not in replica.state.adding:
            raise NotLeaderOrFollowerError(
                f"{replica.name}: broker {follower_id} holds no replica of it"
            )
        tracker = replica.tracker
        if tracker is None:
            return
        with replica.lock:
            tracker.record_fetch(
                follower_id,
                fetch_offset,
                replica.log.log_end_offset,
                self._clock.monotonic_ms(),
                broker_epoch,
            )
        self._advance_high_watermark(replica)

    def _advance_high_watermark(self, replica: Replica) -> None:
        tracker = replica.tracker
        if tracker is None:
            return
        part = replica.log
        # While an ISR change is being written, count both ISRs (Kafka's "maximal ISR"):
        # a replica etcd may already list must hold everything below the high watermark.
        isr = tuple(dict.fromkeys(replica.state.isr + replica.pending_isr))
        candidate = tracker.high_watermark(isr, part.log_end_offset)
        if candidate > part.high_watermark and part.update_high_watermark(candidate):
            with self._hw_changed:
                self._hw_changed.notify_all()
            self._on_high_watermark()

    # --- ISR maintenance (a broker thread calls `maintain` a few times a second) -----------

    def maintain(self) -> None:
        """Shrink the ISR of every led partition by lagging followers and expand it by
        caught-up ones, through etcd; a failed compare-and-swap is retried on the next pass
        with the state the node re-reads."""
        now_ms = self._clock.monotonic_ms()
        for replica in self.replicas():
            if replica.state.leader != self.broker_id or replica.tracker is None:
                continue
            try:
                self._maintain_isr(replica, now_ms)
            except ClusterMetadataUnavailableError as exc:
                log.debug("%s: ISR change postponed: %s", replica.name, exc)
                return

    def _maintain_isr(self, replica: Replica, now_ms: int) -> None:
        with replica.lock:
            # One consistent (state, revision): the write must not carry an older state
            # (leader, epoch) under a newer revision.
            state, revision_seen, tracker = replica.state, replica.mod_revision, replica.tracker
        if tracker is None or state.leader != self.broker_id:
            return
        lagging = tracker.out_of_sync(state.isr, now_ms)
        joining = tracker.caught_up(
            tuple(state.replicas) + tuple(b for b in state.adding if b not in state.replicas),
            state.isr,
            replica.log.high_watermark,
            replica.epoch_start_offset,
            self._registered_epoch,
        )
        if not lagging and not joining:
            return
        isr = tuple(b for b in state.isr if b not in lagging) + tuple(sorted(joining))
        if self.broker_id not in isr:
            return
        new_state = state.with_isr(isr)
        replica.pending_isr = isr
        try:
            revision = self._write_isr(replica.topic, replica.partition, new_state, revision_seen)
        except BaseException:
            replica.pending_isr = ()
            raise
        if revision is None:
            replica.pending_isr = ()
            return
        with replica.lock:
            if replica.mod_revision == revision_seen:
                replica.state = new_state
                replica.mod_revision = revision
            replica.pending_isr = ()
        log.info(
            "%s: ISR %s -> %s%s%s",
            replica.name,
            list(state.isr),
            list(isr),
            f" (lagging {sorted(lagging)})" if lagging else "",
            f" (caught up {sorted(joining)})" if joining else "",
        )
        # a smaller ISR may let the high watermark advance (and release acks=all waiters)
        self._advance_high_watermark(replica)

"""A partition leader's view of its followers (pure: no I/O, no threads, no clock).

The leader learns each follower's log end offset from its fetches: a follower fetching
from offset `o` has every record below `o`. From that it computes, as Kafka does:

- the high watermark: the least log end offset over the ISR, the leader's own included;
- which ISR followers have fallen out of sync: not caught up with the leader's log end
  offset for more than `replica.lag.time.max.ms` (`Replica.updateFetchState` decides when
  a follower last was caught up);
- which followers outside the ISR may rejoin it: they hold everything up to the high
  watermark and to the start of the current leader epoch, and fetch with the broker epoch
  their registration has (KIP-903: a restarted broker, whose disk may be empty, must
  prove itself again).

Times are milliseconds of one monotonic clock, passed in by the caller (`now_ms`), so
tests drive them with a `ManualClock`. A tracker lives as long as one leadership: a
broker that becomes leader starts a new one, and every follower then counts as caught
up at the start of the leadership (Kafka gives them that benefit of the doubt, so a new
leader does not shrink the ISR before the followers had a chance to fetch).
The tracker is not thread-safe; the caller holds the partition's lock around it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from logstore.errors import BrokerNotRegisteredError

#: broker id -> the broker epoch of its current registration, None when not registered
RegisteredEpochs = Callable[[int], int | None] | Mapping[int, int]


@dataclass(frozen=True)
class FollowerState:
    """What the leader knows of one follower (offsets in records, times in ms)."""

    #: the follower's log end offset (its last fetch offset); None before its first fetch
    log_end_offset: int | None = None
    #: the last time the follower was known to have every record the leader had;
    #: None when never (it then counts as out of sync)
    last_caught_up_ms: int | None = None
    #: when the follower last fetched, and the leader's log end offset at that moment
    last_fetch_ms: int | None = None
    last_fetch_leader_log_end_offset: int | None = None
    #: the broker epoch of the follower's fetches; None before its first fetch
    broker_epoch: int | None = None


class FollowerTracker:
    """The followers of one partition, as seen by its leader `leader_id` during one
    leadership that started at `leadership_start_ms`.

    Invariants: the leader is never a follower of itself (its own log end offset is passed
    in by the caller); a follower's `last_caught_up_ms` only grows while its broker epoch
    stays the same.
    """

    def __init__(
        self, leader_id: int, replica_lag_time_max_ms: int, leadership_start_ms: int
    ) -> None:
        if replica_lag_time_max_ms < 0:
            raise ValueError(f"replica_lag_time_max_ms {replica_lag_time_max_ms} must be >= 0")
        self.leader_id = leader_id
        self.replica_lag_time_max_ms = replica_lag_time_max_ms
        self._start = FollowerState(last_caught_up_ms=leadership_start_ms)
        self._followers: dict[int, FollowerState] = {}

    def follower(self, replica_id: int) -> FollowerState:
        """What is known of `replica_id` (the start-of-leadership state if it never fetched)."""
        return self._followers.get(replica_id, self._start)

    def record_fetch(
        self,
        replica_id: int,
        fetch_offset: int,
        leader_log_end_offset: int,
        now_ms: int,
        broker_epoch: int,
    ) -> None:
        """A fetch by follower `replica_id` from `fetch_offset`, while the leader's log ends
        at `leader_log_end_offset` (Kafka's `Replica.updateFetchStateOrThrow`).

        The follower was caught up now if it asks from the leader's log end offset; else it
        was caught up at its previous fetch if it now has everything the leader had then.
        A fetch with a newer broker epoch than the follower's earlier fetches comes from a
        restarted broker: what was known of it is forgotten first. One with an older broker
        epoch comes from a stale incarnation and raises BrokerNotRegisteredError.
        """
        if replica_id == self.leader_id:
            raise ValueError(f"broker {replica_id} leads the partition; it does not fetch")
        state = self._known(replica_id, broker_epoch)
        caught_up = state.last_caught_up_ms
        if fetch_offset >= leader_log_end_offset:
            caught_up = _latest(caught_up, now_ms)
        elif (
            state.last_fetch_leader_log_end_offset is not None
            and state.last_fetch_ms is not None
            and fetch_offset >= state.last_fetch_leader_log_end_offset
        ):
            caught_up = _latest(caught_up, state.last_fetch_ms)
        self._followers[replica_id] = FollowerState(
            log_end_offset=fetch_offset,
            last_caught_up_ms=caught_up,
            last_fetch_ms=now_ms,
            last_fetch_leader_log_end_offset=leader_log_end_offset,
            broker_epoch=broker_epoch,
        )

    def high_watermark(self, isr: Collection[int], leader_log_end_offset: int) -> int:
        """The least log end offset over the ISR: the leader's own for itself, each
        follower's last fetch offset for it.

        A follower that has not fetched in this leadership counts as 0: nothing is known to
        be replicated to it, so the result may be below the partition's current high
        watermark. The caller keeps the high watermark monotonic by only ever advancing it
        to a larger result (as Kafka's `maybeIncrementLeaderHW` does).
        """
        offsets = [leader_log_end_offset]
        for replica_id in isr:
            if replica_id != self.leader_id:
                offset = self.follower(replica_id).log_end_offset
                offsets.append(0 if offset is None else offset)
        return min(offsets)

    def out_of_sync(
        self, isr: Collection[int], now_ms: int, leader_log_end_offset: int | None = None
    ) -> set[int]:
        """The followers in the ISR not caught up for more than `replica_lag_time_max_ms`
        (Kafka's `getOutOfSyncReplicas`); never the leader.

        With `leader_log_end_offset`, a follower whose log end offset equals it stays in
        sync however long ago it fetched, as in Kafka's `isCaughtUp` (an idle partition
        does not drop followers that have everything).
        """
        lagging: set[int] = set()
        for replica_id in isr:
            if replica_id == self.leader_id:
                continue
            state = self.follower(replica_id)
            if leader_log_end_offset is not None and state.log_end_offset == leader_log_end_offset:
                continue
            last = state.last_caught_up_ms
            if last is None or now_ms - last > self.replica_lag_time_max_ms:
                lagging.add(replica_id)
        return lagging

    def caught_up(
        self,
        replicas: Collection[int],
        isr: Collection[int],
        high_watermark: int,
        leader_epoch_start_offset: int,
        registered_epochs: RegisteredEpochs,
    ) -> set[int]:
        """The followers among `replicas`, outside the ISR, that may join it (Kafka's
        `isFollowerInSync` with KIP-903's broker epoch check).

        Each must have fetched in this leadership up to at least `high_watermark` and
        `leader_epoch_start_offset` (the leader's log end offset when its epoch began: a
        follower short of it may still hold records of an older leader that it has yet to
        truncate), and with the broker epoch `registered_epochs` gives for it
        (a callable broker id -> epoch or None, or a mapping).
        """
        registered = _lookup(registered_epochs)
        joining: set[int] = set()
        for replica_id in replicas:
            if replica_id == self.leader_id or replica_id in isr:
                continue
            state = self._followers.get(replica_id)
            if state is None or state.log_end_offset is None:
                continue
            if state.log_end_offset < max(high_watermark, leader_epoch_start_offset):
                continue
            epoch = registered(replica_id)
            if epoch is not None and state.broker_epoch == epoch:
                joining.add(replica_id)
        return joining

    def _known(self, replica_id: int, broker_epoch: int) -> FollowerState:
        """What is known of the follower, forgotten if `broker_epoch` is a newer one."""
        state = self.follower(replica_id)
        if state.broker_epoch is None or state.broker_epoch == broker_epoch:
            return state
        if broker_epoch < state.broker_epoch:
            raise BrokerNotRegisteredError(
                f"broker {replica_id} fetched at broker epoch {broker_epoch}, older than "
                f"its epoch {state.broker_epoch}: a stale incarnation of it"
            )
        # a restarted broker: its disk may be empty, so none of its history counts
        return FollowerState(broker_epoch=broker_epoch)


def _latest(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)


def _lookup(registered_epochs: RegisteredEpochs) -> Callable[[int], int | None]:
    if isinstance(registered_epochs, Mapping):
        return registered_epochs.get
    return registered_epochs

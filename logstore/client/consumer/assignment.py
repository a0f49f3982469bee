"""The partitions a consumer owns, and how that set changes.

It changes in one of two ways, which exclude each other: assign() replaces it outright (as
in Kafka, the positions of the partitions it drops are committed asynchronously with
auto-commit), and a group member's rebalances apply the coordinator's assignment on the
application thread, inside poll(), through the `Rebalance` callbacks made here: revoke
(commit with auto-commit, tell the listener while still owned, then stop reading), lose
(tell the listener, then stop reading without committing: another member may own them
already) and add (start reading, then tell the listener, which may seek).

Invariants: the owned partitions are exactly the keys of `FetchPositions.states`, changed
only under the shared fetch lock; each change tells the routing thread and wakes the
fetchers, and new partitions resolve their positions at once (from the committed offsets
with a group_id, else per auto_offset_reset). revoke and lose stop reading the partitions
even when the listener raises. A pause lasts until resume() or until the partition is no
longer owned.
"""

from __future__ import annotations

from collections.abc import Callable

from logstore import errors
from logstore.client.consumer.committer import OffsetCommitter
from logstore.client.consumer.fetcher import SharedFetchState
from logstore.client.consumer.group_member import ConsumerRebalanceListener, Rebalance
from logstore.client.consumer.options import COMMITTED, ConsumerOptions
from logstore.client.consumer.position_resolver import PositionResolver
from logstore.client.consumer.routing import FetchRouter
from logstore.types import TopicPartition


class Assignment:
    """Applies changes of the owned partitions to the shared fetch state; `closing()` says
    whether the consumer is closing (its revoke then commits nothing more)."""

    def __init__(
        self,
        shared: SharedFetchState,
        options: ConsumerOptions,
        router: FetchRouter,
        committer: OffsetCommitter,
        resolver: PositionResolver,
        closing: Callable[[], bool],
    ) -> None:
        self._shared = shared
        self._options = options
        self._router = router
        self._committer = committer
        self._resolver = resolver
        self._closing = closing

    def owned(self) -> list[TopicPartition]:
        with self._shared.lock:
            return list(self._shared.positions.states)

    def replace(self, new: set[TopicPartition]) -> None:
        """Own exactly `new` (assign(), or giving up an assignment)."""
        old = set(self.owned())
        self._committer.commit_dropped(old - new)
        self._set(new)

    # --- a group member's rebalances ---------------------------------------------------------

    def rebalance(self) -> Rebalance:
        """The callbacks through which a group member changes the owned partitions."""
        return Rebalance(self._revoke, self._lose, self._add)

    def _revoke(
        self, revoked: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Give `revoked` back to the group: commit their positions (with auto-commit; not
        again while closing, which has just committed), tell the listener while they are
        still owned, then stop reading them, even if the listener raises."""
        try:
            self._committer.commit_revoked(revoked, self._closing())
            if listener is not None:
                listener.on_partitions_revoked(set(revoked))
        finally:
            self._drop(revoked)

    def _lose(self, lost: set[TopicPartition], listener: ConsumerRebalanceListener | None) -> None:
        """Drop `lost` without committing (another member may own them already), telling
        the listener first."""
        try:
            if listener is not None:
                callback = getattr(listener, "on_partitions_lost", listener.on_partitions_revoked)
                callback(set(lost))
        finally:
            self._drop(lost)

    def _add(self, added: set[TopicPartition], listener: ConsumerRebalanceListener | None) -> None:
        """Start reading `added` (from the committed offsets, else per auto_offset_reset),
        then tell the listener, which may seek them."""
        self._set(set(self.owned()) | added)
        if listener is not None:
            listener.on_partitions_assigned(set(added))

    def _drop(self, tps: set[TopicPartition]) -> None:
        self._set(set(self.owned()) - tps)

    def _set(self, wanted: set[TopicPartition]) -> None:
        strategy = COMMITTED if self._options.group_id else self._options.reset_policy
        with self._shared.lock:
            self._shared.positions.set_assignment(wanted, strategy)
            self._router.assignment_changed()
            self._shared.wake_fetcher()
        self._resolver.retry_now()  # new partitions resolve at once

    # --- pausing -----------------------------------------------------------------------------

    def paused(self) -> set[TopicPartition]:
        """The owned partitions that are paused."""
        with self._shared.lock:
            return {tp for tp, state in self._shared.positions.states.items() if state.paused}

    def set_paused(self, wanted: list[TopicPartition], paused: bool) -> None:
        """Pause or resume `wanted`, all owned (else InvalidRequestError, and none
        changes); wakes the fetchers and a waiting poll()."""
        shared = self._shared
        states = shared.positions.states
        with shared.lock:
            unknown = [f"{t}-{p}" for t, p in wanted if (t, p) not in states]
            if unknown:
                verb = "pause" if paused else "resume"
                raise errors.InvalidRequestError(
                    f"cannot {verb} {', '.join(sorted(unknown))}: not assigned to this consumer"
                )
            for tp in wanted:
                states[tp].paused = paused
            shared.wake_fetcher()
            shared.data_ready.notify_all()

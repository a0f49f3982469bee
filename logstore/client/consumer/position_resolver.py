"""Where an owned partition reads from: positions the application sets (seek()), and
resolving the ones it has not (new partitions, seek_to_beginning(), seek_to_end()).

A partition whose strategy is "committed" (assigned with a group_id) starts at the
group's committed offset; without one, and for "earliest" or "latest" (no group_id, or a
seek to the beginning or end), at the log start or end its leader answers to
ListOffsets, as auto_offset_reset says. With "error" it gets no position:
NoOffsetForPartitionError is raised, naming why. What a seek or an answer changes is
decided by `FetchPositions`; here the broker is asked, on the application thread (inside
poll() and position()).

Invariants: while partitions stay unresolved, the broker is asked at most once per backoff
(from retry_backoff_ms, doubling up to MAX_RETRY_BACKOFF_S, reset by a full resolution);
`retry_now()` (a change of assignment, a seek, a caller waiting in position()) makes the
next attempt due at once. A partition the broker does not know (topic or partition) stays
unresolved and is marked missing, for the progress monitor; retriable failures are retried
after the backoff, other errors raised. Only owned partitions are sought or waited for
(else InvalidRequestError). Times are monotonic seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from logstore import errors
from logstore.client._connection import is_retriable
from logstore.client.consumer.broker_calls import BrokerCalls
from logstore.client.consumer.fetcher import SharedFetchState
from logstore.client.consumer.options import COMMITTED, Backoff, ConsumerOptions
from logstore.codec.wire import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from logstore.types import OffsetAndMetadata, TopicPartition

log = logging.getLogger("logstore.client.consumer")

#: the group's committed offsets of some partitions (those without a commit left out)
FetchCommitted = Callable[[Iterable[TopicPartition]], dict[TopicPartition, OffsetAndMetadata]]
#: per unresolved partition: (epoch, strategy, why it has no position; may be "")
Pending = dict[TopicPartition, tuple[int, str, str]]


class PositionResolver:
    """Moves owned partitions' positions, and gives unresolved ones a position, backing
    off while the broker cannot."""

    def __init__(
        self,
        shared: SharedFetchState,
        options: ConsumerOptions,
        calls: BrokerCalls,
        fetch_committed: FetchCommitted,
    ) -> None:
        self._shared = shared
        self._options = options
        self._calls = calls
        self._fetch_committed = fetch_committed
        #: unresolved positions are not looked up again before this (monotonic seconds)
        self._resolve_at = 0.0
        self._backoff = Backoff(options.retry_backoff_ms / 1000)

    def retry_now(self) -> None:
        """Make the next attempt due at once (new partitions, a seek, a waiting caller)."""
        self._resolve_at = 0.0

    # --- what the application asks -----------------------------------------------------------

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Make `tp` read from `offset` on (>= 0), dropping what was fetched for it."""
        with self._shared.lock:
            self._require_owned([tp])
            self._shared.positions.reposition(tp, offset, None)
            self._shared.wake_fetcher()

    def seek_to(self, strategy: str, tps: Iterable[TopicPartition] | None) -> None:
        """Make `tps` (None: every owned partition) read from the position `strategy`
        ("earliest" or "latest") resolves to, resolved lazily."""
        with self._shared.lock:
            states = self._shared.positions.states
            chosen = list(states) if tps is None else list(tps)
            self._require_owned(chosen)
            for tp in chosen:
                self._shared.positions.reposition(tp, None, strategy)
            self._shared.wake_fetcher()
        self.retry_now()

    def wait_for(self, tp: TopicPartition, timeout_s: float) -> int:
        """The position of `tp`, resolving it if needed, for up to `timeout_s`; raises
        RequestTimedOutError after that."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._shared.lock:
                self._require_owned([tp])
                position = self._shared.positions.states[tp].position
            if position is not None:
                return position
            self.retry_now()  # the caller is waiting: ask now, back off after
            retry_in = self.try_resolve()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.RequestTimedOutError(f"position of {tp[0]}-{tp[1]} not resolved")
            if retry_in != float("inf"):
                time.sleep(min(retry_in, remaining))

    def _require_owned(self, tps: Iterable[TopicPartition]) -> None:
        """Raise InvalidRequestError naming the `tps` not owned; caller holds the lock."""
        missing = [tp for tp in tps if tp not in self._shared.positions.states]
        if missing:
            raise errors.InvalidRequestError(
                f"partitions {sorted(missing)} are not assigned to this consumer"
            )

    # --- resolving ---------------------------------------------------------------------------

    def try_resolve(self) -> float:
        """Resolve what is unresolved, at most once per backoff while the broker cannot
        answer; returns seconds until the next attempt is due (inf if none is needed)."""
        now = time.monotonic()
        if now < self._resolve_at:
            return self._resolve_at - now
        try:
            pending = self._resolve()
        except errors.LogStoreError as exc:
            if not is_retriable(exc):
                raise
            log.debug("resolving positions failed, retrying: %s", exc)
            pending = True
        if not pending:
            self._backoff.reset()
            return float("inf")
        delay = self._backoff.next()
        self._resolve_at = time.monotonic() + delay
        return delay

    def _resolve(self) -> bool:
        """Give unresolved partitions a position: the committed offset, else the reset
        policy. Returns True if some stay unresolved (unknown topic); raises
        NoOffsetForPartitionError for partitions whose policy is "error"."""
        with self._shared.lock:
            if not self._shared.positions.unresolved:
                return False
            pending = self._shared.positions.unresolved_states()
        if not pending:
            return False
        found: dict[TopicPartition, int] = {}
        committing = [tp for tp, (_, strategy, _) in pending.items() if strategy == COMMITTED]
        if committing:
            committed = self._fetch_committed(committing)
            found.update({tp: om.offset for tp, om in committed.items()})
        policy = self._options.reset_policy
        wanted = {
            tp: policy if strategy == COMMITTED else strategy
            for tp, (_, strategy, _) in pending.items()
            if tp not in found
        }
        specs = {
            tp: EARLIEST_TIMESTAMP if s == "earliest" else LATEST_TIMESTAMP
            for tp, s in wanted.items()
        }
        specs = {tp: spec for tp, spec in specs.items() if wanted[tp] != "error"}
        listed, failed = self._calls.list_offsets(specs)
        found.update({tp: ot.offset for tp, ot in listed.items()})
        self._apply(found, pending, failed)
        _raise_no_offset([tp for tp, s in wanted.items() if s == "error"], pending)
        for exc in failed.values():
            if not isinstance(exc, errors.UnknownTopicOrPartitionError):
                raise exc
        return bool(failed)

    def _apply(
        self,
        found: dict[TopicPartition, int],
        pending: Pending,
        failed: Mapping[TopicPartition, errors.LogStoreError],
    ) -> None:
        """Set the positions found, and note the partitions the broker does not know."""
        positions = self._shared.positions
        with self._shared.lock:
            for tp, exc in failed.items():
                state = positions.states.get(tp)
                if state is not None:
                    missing = isinstance(exc, errors.UnknownTopicOrPartitionError)
                    positions.set_missing(tp, state, missing)
            if positions.resolved(found, pending):
                self._shared.wake_fetcher()


def _raise_no_offset(tps: list[TopicPartition], pending: Pending) -> None:
    if not tps:
        return
    reasons = sorted({pending[tp][2] for tp in tps if pending[tp][2]})
    why = "; ".join(reasons) if reasons else "no committed offset"
    raise errors.NoOffsetForPartitionError(
        f"no valid position for {sorted(tps)} ({why}) and auto_offset_reset='error': "
        "seek() to an offset or use auto_offset_reset='earliest' or 'latest'"
    )

"""A consumer's membership of its group: the state behind the heartbeat protocol.

Pure state with an injected clock: which request is due (join, heartbeat, leave), what an
answer or a failure changes, when the member must rejoin, and what poll() has to apply.
`group_member.GroupMember` runs it on a heartbeat thread under one condition variable.
Times are ms of the clock's monotonic reading.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Literal, NamedTuple

from logstore import errors
from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.types import TopicPartition

log = logging.getLogger("logstore.client.consumer")

#: member_epoch values with a meaning of their own in GroupHeartbeatRequest
JOIN_EPOCH = 0
LEAVE_EPOCH = -1
#: errors after which the coordinator no longer counts our partitions as ours: rejoin
REJOIN_ERRORS = (errors.UnknownMemberIdError, errors.FencedMemberEpochError)

Phase = Literal["left", "joining", "stable", "rebalancing"]


class Due(NamedTuple):
    """What the heartbeat thread should do now: send a request with `epoch` (LEAVE_EPOCH,
    JOIN_EPOCH or the member's epoch), or (epoch None) wait `wait_ms` (None: until
    notified), or `stop`."""

    epoch: int | None
    wait_ms: int | None = None
    stop: bool = False


class PollNews(NamedTuple):
    """What poll() applies: `lost` (why) partitions to drop, else a `target` assignment
    (None: no change); `owned` as of now; an `error` to raise once."""

    lost: str | None
    target: frozenset[TopicPartition] | None
    owned: frozenset[TopicPartition]
    error: errors.LogStoreError | None


class MemberState:
    """Membership of one consumer in `group`.

    Invariants:

    - the member is in the group exactly when `epoch` > 0; `member_id` outlives a leave
      so that a rejoin replaces the old incarnation instead of adding one;
    - `owned` is what the application holds and what heartbeats report: it changes only
      through `set_owned` / `drop_lost` / `clear`, called by the application thread;
    - `lost` (why) is set when the group may already have given our partitions to others;
      until `drop_lost` nothing but a leave is sent and commits may cover no partition;
    - `target` is the newest assignment answered and not yet taken by poll();
    - at most one request is in flight (`in_flight`).

    `on_news` is called (under the caller's lock) whenever poll() has something to apply.
    """

    def __init__(
        self,
        group: str,
        *,
        heartbeat_interval_ms: int,
        session_timeout_ms: int,
        max_poll_interval_ms: int,
        retry_backoff_ms: int = 100,
        clock: Clock = SYSTEM_CLOCK,
        on_news: Callable[[], None] = lambda: None,
    ) -> None:
        self.group = group
        self._configured_interval_ms = heartbeat_interval_ms
        self._session_ms = session_timeout_ms
        self._max_poll_ms = max_poll_interval_ms
        self._base_backoff_ms = max(retry_backoff_ms, 1)
        self._backoff_ms = self._base_backoff_ms
        self._clock = clock
        self._on_news = on_news
        # Chosen here, as KIP-848 clients do: a join whose answer is lost is retried under
        # the same id, which replaces the first incarnation instead of orphaning it.
        self.member_id = str(uuid.uuid4())
        self.epoch = JOIN_EPOCH
        self.topics: tuple[str, ...] = ()
        self.owned: frozenset[TopicPartition] = frozenset()
        self.target: frozenset[TopicPartition] | None = None
        self.lost: str | None = None
        self.error: errors.LogStoreError | None = None
        self.interval_ms = heartbeat_interval_ms
        self.in_flight = False
        self.stopping = False
        #: set when poll() has something to apply; read by poll() without a lock
        self.news = False
        now = clock.monotonic_ms()
        self._beat_at = now
        #: a heartbeat is wanted now (after a release or a subscribe), whatever `_beat_at` says
        self._prompt = False
        self._last_poll = now
        self._last_answer = now

    @property
    def phase(self) -> Phase:
        """ "left" (not in the group, nothing subscribed), "joining", "rebalancing" (an
        assignment or a loss waits for poll()), or "stable"."""
        if self.epoch <= 0:
            return "joining" if self.topics and not self.stopping else "left"
        if self.lost is not None or self.target is not None:
            return "rebalancing"
        return "stable"

    # --- the application thread -----------------------------------------------------------

    def subscribe(self, topics: tuple[str, ...]) -> None:
        self.topics = tuple(sorted(set(topics)))
        self._last_poll = self._clock.monotonic_ms()
        self._prompt = True

    def take_news(self) -> PollNews:
        """What poll() applies now; counts as a poll for max_poll_interval_ms."""
        self._last_poll = self._clock.monotonic_ms()
        self.news = False
        news = PollNews(self.lost, self.target, self.owned, self.error)
        self.error = None
        self.target = None
        return news

    def drop_lost(self) -> None:
        """poll() stopped reading the lost partitions: rejoin now."""
        self.owned = frozenset()
        self.lost = None
        self._prompt = True

    def set_owned(self, owned: frozenset[TopicPartition], prompt: bool) -> None:
        """The application now reads exactly `owned`; `prompt`: report it at once (after a
        release, so the coordinator can hand the partitions on)."""
        self.owned = owned
        self._prompt |= prompt

    def clear(self) -> None:
        """Unsubscribed: nothing owned, nothing to apply; the member leaves."""
        self.topics = ()
        self.target = None
        self.owned = frozenset()
        self.lost = None

    def commit_identity(self) -> tuple[str, int, frozenset[TopicPartition], str | None]:
        """(member id, epoch, partitions a commit may cover, why they were lost or None)."""
        committable = frozenset() if self.lost is not None else self.owned
        return self.member_id, self.epoch, committable, self.lost

    def commit_refused(self, member_id: str, epoch: int, reason: str) -> None:
        """The coordinator refused a commit made as (`member_id`, `epoch`): if that is
        still who we are, give up the partitions and rejoin."""
        if (member_id, epoch) != (self.member_id, self.epoch) or self.epoch <= 0:
            return  # the membership moved on since that commit was made
        self._mark_lost(f"commit refused: {reason}")
        self.epoch = JOIN_EPOCH

    def out_of_group(self) -> bool:
        return self.epoch <= 0 and not self.in_flight

    # --- the heartbeat thread -------------------------------------------------------------

    def due(self) -> Due:
        """The next step of the heartbeat thread; a request returned is marked in flight."""
        while True:
            now = self._clock.monotonic_ms()
            in_group = self.epoch > 0
            if in_group and (self.stopping or not self.topics or self.lost is not None):
                return self._send(LEAVE_EPOCH, now)
            if self.stopping:
                return Due(None, stop=True)
            if in_group and self._check_liveness(now):
                continue
            if self.topics and self.lost is None and (self._prompt or now >= self._beat_at):
                return self._send(self.epoch, now)
            return Due(None, self._idle_ms(now))

    def _send(self, epoch: int, now: int) -> Due:
        self.in_flight = True
        if epoch != LEAVE_EPOCH:
            self._prompt = False
            self._beat_at = now + self.interval_ms
        return Due(epoch)

    def _check_liveness(self, now: int) -> bool:
        """Mark the partitions lost if poll() stalled (we then leave, so they move on) or
        no heartbeat was answered for a session (the coordinator has dropped us)."""
        if now - self._last_poll > self._max_poll_ms:
            self._mark_lost(
                f"poll() was not called for max_poll_interval_ms={self._max_poll_ms}; left "
                "the group so its partitions move to other members"
            )
            return True
        if now - self._last_answer > self._session_ms:
            self._mark_lost(f"no heartbeat answered for session_timeout_ms={self._session_ms}")
            self.epoch = JOIN_EPOCH
            return True
        return False

    def _idle_ms(self, now: int) -> int | None:
        """How long nothing is due (None: until notified)."""
        due: list[int] = []
        if self.topics and self.lost is None:
            due.append(self._beat_at)
            if self.epoch > 0:
                due += [self._last_poll + self._max_poll_ms, self._last_answer + self._session_ms]
        return max(min(due) - now, 0) if due else None

    def answered(
        self,
        request_epoch: int,
        member_id: str,
        member_epoch: int,
        heartbeat_interval_ms: int,
        assignment: frozenset[TopicPartition],
    ) -> None:
        """The coordinator answered the request sent with `request_epoch`."""
        self.in_flight = False
        if request_epoch == LEAVE_EPOCH:
            self.epoch = JOIN_EPOCH
            return
        now = self._clock.monotonic_ms()
        self.member_id = member_id
        self.epoch = member_epoch
        self._last_answer = now
        self._backoff_ms = self._base_backoff_ms
        self.interval_ms = min(
            self._configured_interval_ms, heartbeat_interval_ms or self._configured_interval_ms
        )
        self._beat_at = now + self.interval_ms
        if not self.topics or self.lost is not None:
            return  # unsubscribed or lost meanwhile: this assignment is not to be applied
        self.target = None if assignment == self.owned else assignment
        if self.target is not None:
            self._tell_poll()

    def failed(self, request_epoch: int, exc: errors.LogStoreError, retriable: bool) -> None:
        """The request sent with `request_epoch` failed with `exc`."""
        self.in_flight = False
        now = self._clock.monotonic_ms()
        if request_epoch == LEAVE_EPOCH:
            # Not retried: if it was lost the session timeout removes us anyway.
            log.info("group %s: leaving failed: %s", self.group, exc)
            self.epoch = JOIN_EPOCH
        elif isinstance(exc, REJOIN_ERRORS):
            self._mark_lost(str(exc))
            self.epoch = JOIN_EPOCH
        elif retriable:
            log.debug("group %s: heartbeat failed, retrying: %s", self.group, exc)
            self._beat_at = now + self._next_backoff_ms()
        else:
            log.warning("group %s: heartbeat refused: %s", self.group, exc)
            self.error = exc
            self._tell_poll()
            self._beat_at = now + max(self.interval_ms, self._next_backoff_ms())

    def _next_backoff_ms(self) -> int:
        delay = self._backoff_ms
        self._backoff_ms = min(self._backoff_ms * 2, 1000)
        return delay

    def _mark_lost(self, reason: str) -> None:
        log.warning("group %s: member %s: %s", self.group, self.member_id, reason)
        self.lost = reason
        self.target = None
        self._tell_poll()

    def _tell_poll(self) -> None:
        self.news = True
        self._on_news()

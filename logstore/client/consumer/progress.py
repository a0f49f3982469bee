"""Whether a consumer can make progress: an unreachable broker, topics that do not exist.

Without this a consumer in either situation returns [] from poll() forever without a
word. As Kafka's clients do, the condition is logged as a WARNING when it starts, again at
most once per `log_interval_ms` while it lasts, and as an INFO when it clears; and
`ConsumerStall` makes it readable from code. Pure state with an injected clock; its own
lock, since the fetcher, the heartbeat thread and the application all report to it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Literal

from logstore.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger("logstore.client.consumer")

#: a stalled consumer repeats its warning at most this often (ms)
STALL_LOG_INTERVAL_MS = 30_000

BROKER_UNREACHABLE: Literal["broker_unreachable"] = "broker_unreachable"
MISSING_TOPICS: Literal["missing_topics"] = "missing_topics"


@dataclass(frozen=True)
class ConsumerStall:
    """Why a consumer cannot make progress, and since when.

    `reason` is "broker_unreachable" (no request reached `broker`; `detail` is the last
    error) or "missing_topics" (the broker says `topics` do not exist, or partitions of
    them assigned to this consumer). `since_ms` is wall-clock ms since the Unix epoch.
    """

    reason: Literal["broker_unreachable", "missing_topics"]
    since_ms: int
    broker: str
    topics: frozenset[str] = frozenset()
    detail: str = ""


class _Condition:
    """One condition's start (monotonic and wall ms) and when it was last logged."""

    __slots__ = ("last_logged_ms", "since_ms", "started_ms")

    def __init__(self, clock: Clock) -> None:
        self.started_ms = clock.monotonic_ms()
        self.since_ms = clock.now_ms()
        self.last_logged_ms = self.started_ms


class ProgressMonitor:
    """Tracks the two conditions; each report logs per the rules in the module docstring.

    Invariants: a condition is either absent or has a start time that does not change
    until it clears; a WARNING is logged when it starts and then only when
    `log_interval_ms` have passed since the last one; exactly one INFO when it clears.
    Missing topics are kept per source ("assigned", "subscribed"): the condition holds
    while any source names one.
    """

    def __init__(
        self,
        broker: str,
        clock: Clock = SYSTEM_CLOCK,
        log_interval_ms: int = STALL_LOG_INTERVAL_MS,
    ) -> None:
        self.broker = broker
        self._clock = clock
        self._interval_ms = log_interval_ms
        self._lock = threading.Lock()
        self._unreachable: _Condition | None = None
        self._detail = ""
        self._missing: _Condition | None = None
        self._missing_by_source: dict[str, frozenset[str]] = {}
        self._missing_topics: frozenset[str] = frozenset()

    # --- reports --------------------------------------------------------------------------

    def broker_failed(self, detail: str) -> None:
        """A request could not reach the broker (connection refused, unavailable)."""
        with self._lock:
            self._detail = detail
            if self._unreachable is None:
                self._unreachable = _Condition(self._clock)
                self._warn_unreachable()
            else:
                self._maybe_repeat()

    def broker_answered(self) -> None:
        """A request was answered: the broker is reachable. Cheap when nothing changes
        (called for every fetch answer)."""
        if self._unreachable is None:
            return
        with self._lock:
            if self._unreachable is not None:
                self._unreachable = None
                log.info("broker %s is reachable again", self.broker)

    def set_missing(self, source: str, topics: frozenset[str]) -> None:
        """The topics `source` ("assigned" or "subscribed") found missing now (may be empty)."""
        with self._lock:
            if self._missing_by_source.get(source, frozenset()) == topics:
                self._maybe_repeat()
                return
            self._missing_by_source[source] = topics
            union = frozenset().union(*self._missing_by_source.values())
            before, self._missing_topics = self._missing_topics, union
            if union and self._missing is None:
                self._missing = _Condition(self._clock)
                self._warn_missing()
            elif not union and self._missing is not None:
                self._missing = None
                log.info("topics %s exist now; consuming", ", ".join(sorted(before)))
            else:
                self._maybe_repeat()

    def tick(self) -> None:
        """Repeat the warning if one is due (called from poll())."""
        if self._unreachable is None and self._missing is None:
            return
        with self._lock:
            self._maybe_repeat()

    # --- reading --------------------------------------------------------------------------

    def stall(self) -> ConsumerStall | None:
        """The current condition (an unreachable broker first), or None."""
        with self._lock:
            if self._unreachable is not None:
                return ConsumerStall(
                    BROKER_UNREACHABLE,
                    self._unreachable.since_ms,
                    self.broker,
                    detail=self._detail,
                )
            if self._missing is not None:
                return ConsumerStall(
                    MISSING_TOPICS, self._missing.since_ms, self.broker, self._missing_topics
                )
            return None

    # --- logging (caller holds the lock) --------------------------------------------------

    def _maybe_repeat(self) -> None:
        now = self._clock.monotonic_ms()
        for condition, warn in (
            (self._unreachable, self._warn_unreachable),
            (self._missing, self._warn_missing),
        ):
            if condition is not None and now - condition.last_logged_ms >= self._interval_ms:
                condition.last_logged_ms = now
                warn()

    def _warn_unreachable(self) -> None:
        assert self._unreachable is not None
        log.warning(
            "cannot reach broker %s for %.0f s (%s); the consumer retries and poll() "
            "returns nothing meanwhile",
            self.broker,
            self._age_s(self._unreachable),
            self._detail,
        )

    def _warn_missing(self) -> None:
        assert self._missing is not None
        log.warning(
            "topics %s do not exist on broker %s (for %.0f s); the consumer waits for "
            "them and poll() returns nothing from them meanwhile",
            ", ".join(sorted(self._missing_topics)),
            self.broker,
            self._age_s(self._missing),
        )

    def _age_s(self, condition: _Condition) -> float:
        return (self._clock.monotonic_ms() - condition.started_ms) / 1000

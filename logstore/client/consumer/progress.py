"""Whether a consumer can make progress: an unreachable broker, topics or partitions that
do not exist.

Without this a consumer in either situation returns [] from poll() forever without a
word. As Kafka's clients do, the condition is logged as a WARNING when it starts, again at
most once per `log_interval_ms` while it lasts, and as an INFO when it clears; and
`ConsumerStall` makes it readable from code. Pure state with an injected clock; its own
lock, since the fetcher, the heartbeat thread and the application all report to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.types import TopicPartition

log = logging.getLogger("logstore.client.consumer")

#: a stalled consumer repeats its warning at most this often (ms)
STALL_LOG_INTERVAL_MS = 30_000

BROKER_UNREACHABLE: Literal["broker_unreachable"] = "broker_unreachable"
MISSING_TOPICS: Literal["missing_topics"] = "missing_topics"
MISSING_PARTITIONS: Literal["missing_partitions"] = "missing_partitions"

StallReason = Literal["broker_unreachable", "missing_topics", "missing_partitions"]


@dataclass(frozen=True)
class ConsumerStall:
    """Why a consumer cannot make progress, and since when.

    `reason` is "broker_unreachable" (no request reached `broker`; `detail` is the last
    error), "missing_topics" (the broker says `topics` do not exist; `partitions` may name
    more) or "missing_partitions" (every topic exists, but the broker says the assigned
    `partitions` of them do not, e.g. partition 7 of a 3-partition topic). `topics` never
    holds a topic that exists; `partitions` holds only partitions of topics that exist.
    `since_ms` is wall-clock ms since the Unix epoch.
    """

    reason: StallReason
    since_ms: int
    broker: str
    topics: frozenset[str] = frozenset()
    detail: str = ""
    partitions: frozenset[TopicPartition] = frozenset()


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
    Missing topics and partitions are kept per source ("assigned", "subscribed"): the
    condition holds while any source names one; it starts once, however its contents change.
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
        self._missing_by_source: dict[str, _Missing] = {}
        self._missing_now: _Missing = _NOTHING_MISSING

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

    def set_missing(
        self,
        source: str,
        topics: frozenset[str],
        partitions: frozenset[TopicPartition] = frozenset(),
    ) -> None:
        """What `source` ("assigned" or "subscribed") found missing now (either may be
        empty): `topics` the broker does not know, and `partitions` of topics it knows."""
        missing = _Missing(topics, partitions)
        with self._lock:
            if self._missing_by_source.get(source, _NOTHING_MISSING) == missing:
                self._maybe_repeat()
                return
            self._missing_by_source[source] = missing
            union = _Missing.union(self._missing_by_source.values())
            before, self._missing_now = self._missing_now, union
            if union and self._missing is None:
                self._missing = _Condition(self._clock)
                self._warn_missing()
            elif not union and self._missing is not None:
                self._missing = None
                log.info("%s now; consuming", before.describe("exists", "exist"))
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
                now = self._missing_now
                return ConsumerStall(
                    MISSING_TOPICS if now.topics else MISSING_PARTITIONS,
                    self._missing.since_ms,
                    self.broker,
                    now.topics,
                    partitions=now.partitions,
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
            "%s on broker %s (for %.0f s); the consumer waits and poll() returns nothing "
            "from them meanwhile",
            self._missing_now.describe("does not exist", "do not exist"),
            self.broker,
            self._age_s(self._missing),
        )

    def _age_s(self, condition: _Condition) -> float:
        return (self._clock.monotonic_ms() - condition.started_ms) / 1000


@dataclass(frozen=True, slots=True)
class _Missing:
    """Topics the broker does not know, and partitions of topics it knows."""

    topics: frozenset[str]
    partitions: frozenset[TopicPartition]

    @staticmethod
    def union(parts: Iterable[_Missing]) -> _Missing:
        topics: set[str] = set()
        partitions: set[TopicPartition] = set()
        for part in parts:
            topics |= part.topics
            partitions |= part.partitions
        # A source that saw the topic missing outranks one that saw only a partition of it.
        return _Missing(
            frozenset(topics), frozenset(tp for tp in partitions if tp[0] not in topics)
        )

    def __bool__(self) -> bool:
        return bool(self.topics or self.partitions)

    def describe(self, singular: str, plural: str) -> str:
        """E.g. "topic later does not exist", "topic a and partition orders-7 do not exist"."""
        names = []
        if self.topics:
            topics = sorted(self.topics)
            names.append(f"{_noun('topic', topics)} {', '.join(topics)}")
        if self.partitions:
            tps = [f"{t}-{p}" for t, p in sorted(self.partitions)]
            names.append(f"{_noun('partition', tps)} {', '.join(tps)}")
        one = len(self.topics) + len(self.partitions) == 1
        return f"{' and '.join(names)} {singular if one else plural}"


def _noun(word: str, items: list[str]) -> str:
    return word if len(items) == 1 else f"{word}s"


_NOTHING_MISSING = _Missing(frozenset(), frozenset())

"""The clients' view of the cluster: the live brokers and each partition's leader.

I/O-free: `ClusterMetadata` is fed answers shaped like a `logstore.v1` MetadataResponse
(anything with its fields) and read by the producer's and the consumer's routing; when to
ask again is decided here, on an injected clock (ms). The gRPC side (`BrokerChannels` in
`logstore.client._connection`) does the asking.

Rules:

- A broker with an empty host is "the address you reached me at": a standalone broker
  answers with one broker {0, "", 0}. In standalone mode (cluster_id "" and one broker)
  that broker leads every partition, known or not, so routing never waits for a refresh;
  a broker without the Metadata RPC is taken for one (`update_standalone`).
- Kafka's KIP-320 rule: an answer that gives a partition an OLDER leader_epoch than the
  one known never replaces it, so a lagging broker cannot send clients back to a deposed
  leader. An equal epoch replaces it (replicas and isr change within an epoch).
- Topics never lose partitions here: an answer without some partitions of a known topic
  (a broker that has not seen AddPartitions yet) keeps the known ones. A topic answered
  UnknownTopicOrPartitionError, or left out of an answer for every topic, is forgotten.
  Without topic ids, a topic deleted and re-created between two refreshes keeps its old
  epochs until the producer or consumer forgets it (`forget`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.types import TopicPartition

log = logging.getLogger("logstore.client")

#: PartitionMetadata.leader when the partition has no leader
NO_LEADER = -1
#: how often metadata is asked again without a reason (ms), as Kafka's metadata.max.age.ms
DEFAULT_MAX_AGE_MS = 300_000
#: first and longest delay between failed refreshes (ms), as Kafka's retry.backoff.ms
DEFAULT_BACKOFF_MS = 100
DEFAULT_BACKOFF_MAX_MS = 1_000
#: the error kind of a topic that does not exist
UNKNOWN_TOPIC_KIND = "UnknownTopicOrPartitionError"
#: gRPC NOT_FOUND, the code the broker gives an unknown topic
_NOT_FOUND_CODE = 5


# --- the shape of an answer (a logstore.v1 MetadataResponse fits) ----------------------------


class _BrokerAnswer(Protocol):
    broker_id: int
    host: str
    port: int


class _ErrorAnswer(Protocol):
    code: int
    message: str
    kind: str


class _PartitionAnswer(Protocol):
    partition: int
    leader: int
    leader_epoch: int
    replicas: Iterable[int]
    isr: Iterable[int]


class _TopicAnswer(Protocol):
    topic: str
    error: _ErrorAnswer
    partitions: Iterable[_PartitionAnswer]


class MetadataAnswer(Protocol):
    """What `ClusterMetadata.update` reads: the fields of a MetadataResponse."""

    cluster_id: str
    controller_id: int
    brokers: Iterable[_BrokerAnswer]
    topics: Iterable[_TopicAnswer]


# --- the cache -------------------------------------------------------------------------------


def format_address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets (as `parse_host_port` reads it back)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who leads a partition (`leader` broker id, NO_LEADER if none), under which
    `leader_epoch`, and its `replicas` and in-sync replicas `isr` (broker ids)."""

    leader: int
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class ClusterMetadata:
    """Live brokers and partition leadership as the last answers said; not thread-safe (the
    caller holds one lock around every call).

    Invariants: `version` increases whenever a partition's leader address may have changed
    (a leader, or the broker list, changed), so a router that saw the same version routes
    the same; a known partition's leader_epoch never decreases (KIP-320); `brokers` maps
    broker id to "host:port". Refresh timing: stale when never answered, when invalidated
    (a broker said it is not the leader, or a leader stopped answering) or after
    `max_age_ms`; failed refreshes are retried after a backoff doubling from `backoff_ms`
    to `backoff_max_ms`. A client whose broker has no Metadata RPC never refreshes: there
    is nothing to ask.
    """

    def __init__(
        self,
        *,
        max_age_ms: float = DEFAULT_MAX_AGE_MS,
        backoff_ms: float = DEFAULT_BACKOFF_MS,
        backoff_max_ms: float = DEFAULT_BACKOFF_MAX_MS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.max_age_ms = max_age_ms
        self.backoff_ms = max(backoff_ms, 1)
        self.backoff_max_ms = max(backoff_max_ms, self.backoff_ms)
        self.clock = clock
        self.cluster_id = ""
        self.controller_id = -1
        self.brokers: dict[int, str] = {}
        self.version = 0
        #: an answer (or the standalone stand-in) has been applied
        self.known = False
        #: the broker answers Metadata (False: it predates the RPC, see update_standalone)
        self.supported = True
        self._partitions: dict[TopicPartition, Leadership] = {}
        self._counts: dict[str, int] = {}
        self._missing: dict[str, str] = {}
        self._updated_ms: float | None = None
        self._stale_all = False
        self._stale_topics: set[str] = set()
        self._failures = 0
        self._retry_at_ms = 0.0
        #: the last answer was older than what was known for some partition (a lagging
        #: broker): ask another broker next time
        self.lagging = False

    # --- applying answers ------------------------------------------------------------------

    @property
    def standalone(self) -> bool:
        """One broker, no cluster: it leads every partition."""
        return self.cluster_id == "" and len(self.brokers) == 1

    def update(
        self, answer: MetadataAnswer, reached_at: str, requested: Collection[str] = ()
    ) -> bool:
        """Apply an answer got from the broker at `reached_at` to a request for `requested`
        topics (empty: every topic); the request must name every topic the client relies on
        and every one in `stale_topics()`. True when some leader address may have changed.
        """
        brokers = {
            b.broker_id: format_address(b.host, b.port) if b.host else reached_at
            for b in answer.brokers
        }
        changed = brokers != self.brokers
        self.brokers = brokers
        self.cluster_id = answer.cluster_id
        self.controller_id = answer.controller_id
        seen: set[str] = set()
        lagging: set[str] = set()
        for topic in answer.topics:
            seen.add(topic.topic)
            if topic.error.code:
                changed |= self._topic_failed(topic.topic, topic.error)
                continue
            self._missing.pop(topic.topic, None)
            for p in topic.partitions:
                outcome = self._apply_partition(topic.topic, p)
                changed |= outcome is True
                # An older answer, or a partition with no leader yet (an election or a
                # creation under way): ask again after the backoff, as Kafka's clients do,
                # not only after max_age_ms.
                if outcome is None or p.leader == NO_LEADER:
                    lagging.add(topic.topic)
        if not requested:
            for name in [t for t in self._counts if t not in seen]:
                changed |= self._drop(name)
        self._answered(requested, lagging)
        if changed or not self.known:
            self.version += 1
        self.known = True
        return changed

    def update_standalone(self, reached_at: str) -> None:
        """The broker at `reached_at` has no Metadata RPC (it predates cluster mode): it is
        a standalone broker, leading everything, and nothing will ever need asking again."""
        self.supported = False
        self.update(_StandaloneAnswer(), reached_at)

    def _apply_partition(self, topic: str, p: _PartitionAnswer) -> bool | None:
        """Take one partition's leadership: True if its leader changed, False if not, None
        if the answer was older than what is known (and was ignored)."""
        tp = (topic, p.partition)
        known = self._partitions.get(tp)
        if known is not None and p.leader_epoch < known.leader_epoch:
            log.debug(
                "%s-%d: ignoring leader %d at epoch %d, older than epoch %d",
                topic,
                p.partition,
                p.leader,
                p.leader_epoch,
                known.leader_epoch,
            )
            return None
        self._partitions[tp] = Leadership(p.leader, p.leader_epoch, tuple(p.replicas), tuple(p.isr))
        if p.partition >= self._counts.get(topic, 0):
            self._counts[topic] = p.partition + 1
        return known is None or known.leader != p.leader

    def _topic_failed(self, topic: str, error: _ErrorAnswer) -> bool:
        """A topic answered with an error: forget it if it does not exist; True if a
        leader was forgotten."""
        if error.kind != UNKNOWN_TOPIC_KIND and error.code != _NOT_FOUND_CODE:
            return False  # e.g. not authorized: keep what was known
        changed = self._drop(topic)
        self._missing[topic] = error.message or f"topic {topic!r} does not exist"
        return changed

    def _drop(self, topic: str) -> bool:
        count = self._counts.pop(topic, 0)
        for p in range(count):
            self._partitions.pop((topic, p), None)
        return count > 0

    def forget(self, topic: str) -> None:
        """Drop what is known of `topic` (a leader said it does not exist: it may have been
        deleted and re-created, with epochs from 0 again), and ask again."""
        if self._drop(topic):
            self.version += 1
        self.invalidate(topic)

    def _answered(self, requested: Collection[str], lagging: set[str]) -> None:
        """Refresh bookkeeping after an answer; `lagging` topics (an answer older than
        what is known, or a partition without a leader) stay stale, so a broker (another
        one, for an old answer) is asked again after the backoff."""
        now = self.clock.monotonic_ms()
        # A client asks about every topic it uses (and every invalidated one) at once, so
        # any answer renews what it relies on.
        self._stale_all = False
        if requested:
            self._stale_topics.difference_update(requested)
        else:
            self._stale_topics.clear()
        self._stale_topics |= lagging
        self.lagging = bool(lagging)
        if lagging:
            self._failures += 1
            self._retry_at_ms = now + self._backoff(self._failures)
        else:
            self._failures = 0
            self._retry_at_ms = 0.0
        self._updated_ms = now

    # --- reading ---------------------------------------------------------------------------

    def leader_id(self, topic: str, partition: int) -> int | None:
        """The id of the partition's leader, or None when it has none or is not known."""
        known = self._partitions.get((topic, partition))
        if known is not None and known.leader != NO_LEADER:
            return known.leader
        if self.standalone:
            return next(iter(self.brokers))
        return None

    def leader_address(self, topic: str, partition: int) -> str | None:
        """Where to send the partition's produce and fetch requests: its leader's address,
        or None when it has no leader, is not known, or its leader is not a live broker."""
        leader = self.leader_id(topic, partition)
        return None if leader is None else self.brokers.get(leader)

    def leader_epoch(self, topic: str, partition: int) -> int | None:
        known = self._partitions.get((topic, partition))
        return None if known is None else known.leader_epoch

    def leadership(self, topic: str, partition: int) -> Leadership | None:
        return self._partitions.get((topic, partition))

    def partitions_for(self, topic: str) -> set[int] | None:
        """The partition ids of `topic`, or None when no answer described it."""
        count = self._counts.get(topic)
        return None if count is None else set(range(count))

    def missing(self, topic: str) -> str | None:
        """Why the last answer about `topic` said it does not exist, or None."""
        return self._missing.get(topic)

    def topics(self) -> list[str]:
        return list(self._counts)

    def addresses(self) -> list[str]:
        """The live brokers' addresses, by broker id."""
        return [self.brokers[b] for b in sorted(self.brokers)]

    # --- when to ask again -----------------------------------------------------------------

    def invalidate(self, topic: str | None = None) -> None:
        """Ask again soon: about `topic` (a broker said it does not lead one of its
        partitions), or about everything (a leader stopped answering)."""
        if topic is None:
            self._stale_all = True
        else:
            self._stale_topics.add(topic)

    def is_stale(self) -> bool:
        """Whether an answer is wanted: never answered, invalidated, or max_age_ms old."""
        if not self.known:
            return True
        if not self.supported:
            return False
        if self._stale_all or self._stale_topics:
            return True
        assert self._updated_ms is not None
        return self.clock.monotonic_ms() - self._updated_ms >= self.max_age_ms

    def stale_topics(self) -> set[str]:
        """The topics invalidated one by one (all are asked about when everything is)."""
        return set(self._stale_topics)

    def refresh_due(self) -> bool:
        """Stale, and not backing off after a failed refresh."""
        return self.is_stale() and self.clock.monotonic_ms() >= self._retry_at_ms

    def next_refresh_ms(self) -> float | None:
        """When (ms on the clock) a refresh is due; None: never (no Metadata RPC)."""
        if self.known and not self.supported:
            return None
        if self.is_stale() or self._updated_ms is None:
            return max(self.clock.monotonic_ms(), self._retry_at_ms)
        return self._updated_ms + self.max_age_ms

    def refresh_failed(self) -> None:
        """No broker answered: back off before the next attempt."""
        self._failures += 1
        self._retry_at_ms = self.clock.monotonic_ms() + self._backoff(self._failures)

    def _backoff(self, failures: int) -> float:
        return min(self.backoff_max_ms, self.backoff_ms * 2 ** max(0, failures - 1))


class _StandaloneBroker:
    broker_id = 0
    host = ""
    port = 0


class _StandaloneAnswer:
    """A standalone broker's answer: itself (reached where it was asked) and no topics."""

    cluster_id = ""
    controller_id = -1
    brokers = (_StandaloneBroker(),)
    topics = ()

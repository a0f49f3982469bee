"""Retries with exponential backoff and full jitter, retry topics and a dead letter queue.

`RetryingConsumer` runs `handler(record)` for every record of its topics. When the handler
raises, the record is tried again:

* in process, after sleeping, while the backoff ceiling of the next attempt is at most
  `RetryPolicy.max_in_process_delay_ms` (short delays: blocking the consumer briefly is
  cheaper than a round trip through a topic);
* otherwise through a retry topic `<topic>.retry.<n>` (n = 1, 2, ...: the n-th hop), with a
  `logstore.retry.not-before` header (ms). The consumer reads its retry topics too and
  holds a retry partition whose head is not yet due, without holding any other partition;
* after `max_attempts` failed attempts the record goes to `<topic>.dlq` with headers naming
  where it came from and why it failed.

Invariants: a source offset is committed only after the record succeeded or its copy in a
retry topic or the DLQ was acknowledged with acks=all, so a record is never lost; and no
record blocks its partition for longer than the in-process delays, so poison records never
stall a partition. Delivery is at least once: a crash between publishing the copy and the
commit publishes the copy again.
"""

from __future__ import annotations

import contextlib
import logging
import random as _random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer, ConsumerRebalanceListener
from logstore.client.producer import Producer
from logstore.errors import TopicExistsError
from logstore.patterns import headers as h
from logstore.patterns.delivery import rewind, run_bounded
from logstore.types import ConsumerRecord, TopicPartition

log = logging.getLogger(__name__)

Handler = Callable[[ConsumerRecord], object]


def now_ms() -> int:
    """Wall-clock time in ms since the epoch (not-before headers cross processes)."""
    return time.time_ns() // 1_000_000


@dataclass
class RetryPolicy:
    """When and how often a failed record is tried again.

    Attempt k (1-based) that fails is followed by a delay drawn with full jitter from
    [0, ceiling(k)], ceiling(k) = min(max_backoff_ms, initial_backoff_ms * multiplier**(k-1))
    (all in ms); without jitter the delay is the ceiling itself. The decision between an
    in-process retry and a retry topic looks at the ceiling, not the drawn delay, so the set
    of retry topics a policy needs is fixed. `random` (returns [0, 1)), `sleep` (seconds)
    and `clock` (wall-clock ms) are injectable for tests.
    """

    max_attempts: int = 5
    initial_backoff_ms: float = 100
    max_backoff_ms: float = 30_000
    multiplier: float = 2.0
    jitter: bool = True
    max_in_process_delay_ms: float = 1_000
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], int] = field(default=now_ms, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_ms < 0 or self.max_backoff_ms < 0:
            raise ValueError("backoffs must be >= 0 ms")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.max_in_process_delay_ms < 0:
            raise ValueError("max_in_process_delay_ms must be >= 0")

    def ceiling_ms(self, attempt: int) -> float:
        """The largest delay after failed attempt `attempt` (1-based), in ms."""
        if attempt < 1:
            raise ValueError(f"attempts are 1-based, got {attempt}")
        # grown step by step and stopped at the cap: multiplier**attempt overflows a float
        grown = self.initial_backoff_ms
        for _ in range(attempt - 1):
            if grown >= self.max_backoff_ms:
                break
            grown *= self.multiplier
        return min(self.max_backoff_ms, grown)

    def delay_ms(self, attempt: int) -> float:
        """The delay (ms) before the attempt after failed attempt `attempt`."""
        ceiling = self.ceiling_ms(attempt)
        return self.random() * ceiling if self.jitter else ceiling

    def in_process(self, attempt: int) -> bool:
        """Whether the retry after failed attempt `attempt` sleeps in process."""
        return self.ceiling_ms(attempt) <= self.max_in_process_delay_ms

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts

    def level_for(self, attempt: int) -> int:
        """The retry topic level (1-based) used after failed attempt `attempt`: how many
        hops through retry topics the record has made, this one included."""
        return sum(1 for k in range(1, attempt + 1) if not self.in_process(k))

    def retry_levels(self) -> int:
        """How many retry topics the policy can use (0: every retry is in process)."""
        return self.level_for(self.max_attempts - 1) if self.max_attempts > 1 else 0


@dataclass
class RetryStats:
    """What a `RetryingConsumer` did, for logs and examples."""

    succeeded: int = 0
    retried_in_process: int = 0
    sent_to_retry: int = 0
    dead_lettered: int = 0
    held: int = 0


@dataclass
class _Hold:
    """A retry partition parked at `offset` until wall-clock `due_ms`."""

    offset: int
    due_ms: int


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: RetryingConsumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._owner._forget(revoked)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._owner._forget(lost)


class RetryingConsumer:
    """A group consumer of `topics` that retries failed records and dead-letters poison ones.

    >>> rc = RetryingConsumer("127.0.0.1:9092", "emails", ["emails"], send_email,
    ...                       RetryPolicy(max_attempts=4))        # doctest: +SKIP
    >>> rc.run(duration_s=10)                                      # doctest: +SKIP

    Creates `<topic>.retry.<n>` (n = 1..policy.retry_levels()) and `<topic>.dlq` when
    missing, with as many partitions as `<topic>`. The handler sees records as consumed: a
    retried one comes from a retry topic, with `logstore.retry.*` headers (see
    `original_topic()`). Use from one thread; offsets are committed explicitly (auto-commit
    in `consumer_options` is overridden). `security` (ssl_cafile, ssl_certfile,
    ssl_keyfile, token) goes to every client built here; without it they fall back to
    LOGSTORE_TLS_CA, LOGSTORE_TOKEN, ...
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str],
        handler: Handler,
        policy: RetryPolicy | None = None,
        *,
        consumer_options: Mapping[str, Any] | None = None,
        create_topics: bool = True,
        security: Mapping[str, str | None] | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.handler = handler
        self.sources = list(topics)
        self.stats = RetryStats()
        self._holds: dict[TopicPartition, _Hold] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self._partition_counts: dict[str, int] = {}
        self._bootstrap = bootstrap
        self._security = dict(security or {})
        levels = self.policy.retry_levels()
        self.retry_topics = [
            h.retry_topic(t, n) for t in self.sources for n in range(1, levels + 1)
        ]
        self.dlq_topics = [h.dlq_topic(t) for t in self.sources]
        if create_topics:
            with Admin(bootstrap, **self._security) as admin:
                ensure_companion_topics(admin, self.sources, levels)
        options: dict[str, Any] = {"auto_offset_reset": "earliest", "fetch_max_wait_ms": 100}
        options.update(consumer_options or {})
        options["enable_auto_commit"] = False
        self.consumer = Consumer(bootstrap, group_id=group_id, **options, **self._security)
        self.producer = Producer(
            bootstrap, acks="all", enable_idempotence=True, linger_ms=0, **self._security
        )
        self.consumer.subscribe(self.sources + self.retry_topics, listener=_Listener(self))

    # --- the loop --------------------------------------------------------------------------

    def poll_once(self, timeout: float = 0.2) -> int:
        """Poll once, handle what came, commit; returns how many records were settled
        (succeeded, sent to a retry topic or dead-lettered). Waits at most `timeout` s, less
        when a held retry partition comes due sooner."""
        self._release_due_holds()
        if self._holds:
            due_in_ms = min(hold.due_ms for hold in self._holds.values()) - self.policy.clock()
            timeout = min(timeout, max(due_in_ms, 0) / 1000)
        records = self.consumer.poll(timeout=timeout)
        settled = 0
        for index, record in enumerate(records):
            tp = (record.topic, record.partition)
            if tp in self._holds:
                continue  # read again from the hold's offset once it is due
            if not self._due(record):
                self._holds[tp] = _Hold(record.offset, self._not_before(record))
                self.stats.held += 1
                # paused, the partition is not fetched until due; the others go on
                self.consumer.seek(tp[0], tp[1], record.offset)
                self.consumer.pause([tp])
                continue
            try:
                self._settle(record)
            except BaseException:
                # e.g. the broker refused the retry copy: read this record and the rest
                # again rather than let the next commit skip them
                rewind(self.consumer, [r for r in records[index:] if r[:2] not in self._holds])
                self._commit()
                raise
            self._to_commit[tp] = record.offset + 1
            settled += 1
        self._commit()
        self._release_due_holds()
        return settled

    def run(
        self,
        *,
        duration_s: float | None = None,
        until: Callable[[], bool] | None = None,
        poll_timeout: float = 0.2,
    ) -> RetryStats:
        """Poll until `until()` is true or `duration_s` seconds passed (at least one must
        be given, so the loop is bounded)."""
        run_bounded(self.poll_once, duration_s, until, poll_timeout)
        return self.stats

    def close(self) -> None:
        """Commit what was settled, leave the group, flush and close the producer."""
        try:
            self._commit()
        finally:
            self.consumer.close()
            self.producer.close()

    def __enter__(self) -> RetryingConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one record ------------------------------------------------------------------------

    def _settle(self, record: ConsumerRecord) -> None:
        """Run the handler until it succeeds or the record moved to a retry topic or DLQ."""
        attempt = h.header_int(record.headers, h.RETRY_ATTEMPTS) or 0
        while True:
            attempt += 1
            try:
                self.handler(record)
            except Exception as exc:  # the handler's failure is data here, not a bug
                if self.policy.exhausted(attempt):
                    self._dead_letter(record, attempt, exc)
                    return
                if not self.policy.in_process(attempt):
                    self._send_to_retry(record, attempt, exc)
                    return
                self.stats.retried_in_process += 1
                self.policy.sleep(self.policy.delay_ms(attempt) / 1000)
            else:
                self.stats.succeeded += 1
                return

    def _origin(self, record: ConsumerRecord) -> tuple[str, int, int]:
        """(topic, partition, offset) of the record before any retry hop."""
        hs = record.headers
        topic = h.header_str(hs, h.RETRY_ORIGINAL_TOPIC)
        if topic is None:
            return record.topic, record.partition, record.offset
        partition = h.header_int(hs, h.RETRY_ORIGINAL_PARTITION)
        offset = h.header_int(hs, h.RETRY_ORIGINAL_OFFSET)
        return topic, -1 if partition is None else partition, -1 if offset is None else offset

    def _send_to_retry(self, record: ConsumerRecord, attempt: int, exc: Exception) -> None:
        topic, partition, offset = self._origin(record)
        not_before = self.policy.clock() + int(self.policy.delay_ms(attempt))
        added = h.encode(
            {
                h.RETRY_ORIGINAL_TOPIC: topic,
                h.RETRY_ORIGINAL_PARTITION: partition,
                h.RETRY_ORIGINAL_OFFSET: offset,
                h.RETRY_ATTEMPTS: attempt,
                h.RETRY_ERROR_TYPE: type(exc).__name__,
                h.RETRY_ERROR_MESSAGE: _message(exc),
                h.RETRY_NOT_BEFORE: not_before,
            }
        )
        target = h.retry_topic(topic, self.policy.level_for(attempt))
        self._publish(target, record, added)
        self.stats.sent_to_retry += 1

    def _dead_letter(self, record: ConsumerRecord, attempt: int, exc: Exception) -> None:
        topic, partition, offset = self._origin(record)
        added = h.encode(
            {
                h.DLQ_ORIGINAL_TOPIC: topic,
                h.DLQ_ORIGINAL_PARTITION: partition,
                h.DLQ_ORIGINAL_OFFSET: offset,
                h.DLQ_ATTEMPTS: attempt,
                h.DLQ_ERROR_TYPE: type(exc).__name__,
                h.DLQ_ERROR_MESSAGE: _message(exc),
                h.DLQ_TIMESTAMP: self.policy.clock(),
            }
        )
        self._publish(h.dlq_topic(topic), record, added)
        self.stats.dead_lettered += 1
        log.warning(
            "dead-lettered %s-%d@%d after %d attempts: %s", topic, partition, offset, attempt, exc
        )

    def _publish(
        self, target: str, record: ConsumerRecord, added: list[tuple[str, bytes | None]]
    ) -> None:
        """Copy `record` to `target` and wait for acks=all: only then may its offset be
        committed."""
        kept = h.without(record.headers, (h.RETRY_PREFIX, h.DLQ_PREFIX))
        _, partition, _ = self._origin(record)
        self.producer.send(
            target,
            value=record.value,
            key=record.key,
            headers=kept + added,
            # the same partition number keeps a key's copies in order next to each other
            partition=max(partition, 0) % self._partition_count(target),
            timestamp_ms=record.timestamp,
        ).result()

    def _partition_count(self, topic: str) -> int:
        if topic not in self._partition_counts:
            with Admin(self._bootstrap, **self._security) as admin:
                self._partition_counts[topic] = len(admin.describe_topic(topic).partitions)
        return self._partition_counts[topic]

    # --- holds and commits -----------------------------------------------------------------

    def _not_before(self, record: ConsumerRecord) -> int:
        return h.header_int(record.headers, h.RETRY_NOT_BEFORE) or 0

    def _due(self, record: ConsumerRecord) -> bool:
        return self._not_before(record) <= self.policy.clock()

    def _release_due_holds(self) -> None:
        now = self.policy.clock()
        for tp, hold in list(self._holds.items()):
            if hold.due_ms <= now:
                del self._holds[tp]
                if tp in self.consumer.paused():
                    self.consumer.resume([tp])

    def _commit(self) -> None:
        if self._to_commit:
            offsets, self._to_commit = self._to_commit, {}
            self.consumer.commit(offsets)

    def _forget(self, tps: set[TopicPartition]) -> None:
        """Partitions leaving this member: their holds go (the next owner starts from the
        committed offset, i.e. the held record); settled offsets are committed while still
        owned."""
        owned = {tp: o for tp, o in self._to_commit.items() if tp in tps}
        for tp in tps:
            self._holds.pop(tp, None)
            self._to_commit.pop(tp, None)
        if owned:
            try:
                self.consumer.commit(owned)
            except Exception as exc:  # lost partitions cannot commit; the next owner retries
                log.info("could not commit revoked partitions: %s", exc)


def _message(exc: Exception) -> str:
    return str(exc)[: h.MAX_ERROR_MESSAGE_CHARS]


def original_topic(record: ConsumerRecord) -> str:
    """The topic a record was first produced to, even when it comes from a retry topic."""
    return h.header_str(record.headers, h.RETRY_ORIGINAL_TOPIC) or record.topic


def attempts_so_far(record: ConsumerRecord) -> int:
    """Failed attempts before this delivery (0 for a record read from its source topic)."""
    return h.header_int(record.headers, h.RETRY_ATTEMPTS) or 0


def ensure_companion_topics(admin: Admin, sources: Iterable[str], levels: int) -> None:
    """Create `<t>.retry.1..levels` and `<t>.dlq` when missing, with `<t>`'s partition
    count (1 when `<t>` does not exist yet)."""
    existing = set(admin.list_topics())
    for source in sources:
        partitions = 1
        if source in existing:
            partitions = len(admin.describe_topic(source).partitions)
        wanted = [h.retry_topic(source, n) for n in range(1, levels + 1)] + [h.dlq_topic(source)]
        for name in wanted:
            if name in existing:
                continue
            # another member may have created it since list_topics()
            with contextlib.suppress(TopicExistsError):
                admin.create_topic(name, partitions=partitions)

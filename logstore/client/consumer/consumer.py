"""`Consumer`: reads records from topics, tracks positions and commits them for a group.

Threads and what they own:

- the application thread calls every public method (a consumer is not thread-safe, as in
  Kafka); it resolves starting positions, drains the record buffer and commits;
- one routing thread (`routing`) keeps each assigned partition's leader as the cluster
  metadata says, and one fetcher thread per leader broker;
- each fetcher thread (`fetcher`) keeps fetches in flight for the assigned partitions its
  broker leads, decodes the answers into `ConsumerRecord`s and appends them to a bounded
  buffer (with a standalone broker: one fetcher, for everything);
- one commit thread (`committer`, started on first use) runs `commit_async` requests in
  order;
- with subscribe(), one heartbeat thread (`group_member`) keeps the consumer a member of
  its group: it only talks to the coordinator and records the newest assignment, which
  the application thread applies inside poll(), as Kafka does.

`Consumer` is the facade over them. Its own requests go out through `broker_calls`:
group requests (commit, committed offsets) to the group's coordinator, topic
descriptions to the first broker that answered, offset lookups to each partition's
leader (as fetches go). What the application thread does is kept in one module each:
`assignment` (the owned partitions and rebalances), `position_resolver` (where an
unresolved partition starts), `committer` (committing offsets, with auto-commit) and
`missing_partitions` (which assigned partitions the broker does not know).

The decisions are made by I/O-free state: `fetch_positions` (positions, what a seek, a
reset or an answer changes), `record_buffer` (what poll() hands out), `member_state`
(the group membership) and `progress` (whether the consumer can make progress). Offsets
are record offsets; sizes are bytes of RecordBatch data as fetched; times are seconds
unless a name ends in `_ms`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any, Unpack

from logstore import errors
from logstore.client._connection import (
    SecurityOptions,
    client_security,
    is_retriable,
    resolve_bootstrap,
)
from logstore.client.consumer.assignment import Assignment
from logstore.client.consumer.broker_calls import BrokerCalls, connect
from logstore.client.consumer.committer import CommitCallback, OffsetCommitter
from logstore.client.consumer.fetch_positions import FetchPositions
from logstore.client.consumer.fetcher import CLOSE_JOIN_S, SharedFetchState
from logstore.client.consumer.group_member import ConsumerRebalanceListener, GroupMember
from logstore.client.consumer.missing_partitions import MissingPartitions
from logstore.client.consumer.options import ConsumerOptions
from logstore.client.consumer.position_resolver import PositionResolver
from logstore.client.consumer.progress import ConsumerStall, ProgressMonitor
from logstore.client.consumer.routing import FetchRouter, fetcher_factory
from logstore.codec.wire import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from logstore.types import ConsumerRecord, OffsetAndMetadata, OffsetAndTimestamp, TopicPartition

log = logging.getLogger("logstore.client.consumer")

Deserializer = Callable[[bytes], Any]


# --- the consumer ----------------------------------------------------------------------------


class Consumer:
    """Reads records from assigned or subscribed partitions, Kafka-style.

    >>> with Consumer("127.0.0.1:9092", group_id="billing",        # doctest: +SKIP
    ...               auto_offset_reset="earliest") as consumer:
    ...     consumer.subscribe(["orders"])
    ...     for record in consumer.poll(timeout=1.0):
    ...         print(record.offset, record.value)
    ...     consumer.commit()

    `bootstrap` is "HOST:PORT[,HOST:PORT...]" (default $LOGSTORE_BOOTSTRAP, else
    127.0.0.1:9092): any live broker of the list is enough to find the partition leaders,
    which are then fetched from.

    A consumer is used from one thread. poll() returns records from a buffer that a
    background thread keeps filled; `position()` is the offset after the last record poll()
    returned, and commit() commits those positions. Deserializers, if given, are applied
    to non-null keys and values in poll() (a cost per record).

    subscribe() makes the consumer a member of its group: the group's coordinator shares
    the partitions of the subscribed topics among the members (`group_remote_assignor`:
    "sticky", "range" or "roundrobin"; members that name one must all name the same, and
    None, the default, takes the group's: "sticky" for a new group) and
    moves them when members come and go. A background thread heartbeats every
    `heartbeat_interval_ms`; a member silent for `session_timeout_ms`, or whose
    application has not called poll() for `max_poll_interval_ms`, loses its partitions.
    Changes of assignment are applied inside poll(), calling the listener.

    Options follow Kafka's consumer settings in snake_case, with Kafka's defaults, except
    `auto_offset_reset="error"` (Kafka's "none", also accepted). `metadata_max_age_ms` is
    how often a group member checks that its subscribed topics exist (the coordinator
    notices partitions added to subscribed topics at each heartbeat).

    A consumer that cannot make progress says so, as Kafka's clients do: when the broker
    cannot be reached, or assigned or subscribed topics (or assigned partitions of existing
    topics) do not exist, it logs a WARNING (naming the broker, the topics or the
    partitions) when that starts, again at most every 30 s while it lasts, and an INFO when
    it clears. `stalled()` returns the same from code: None, or a `ConsumerStall` with the
    reason ("broker_unreachable", "missing_topics" or "missing_partitions"), the broker
    address or the missing topics and partitions, and since when (`since_ms`, wall-clock
    ms).

    Security: the keyword arguments of `SecurityOptions` (`ssl_cafile`, `ssl_certfile`,
    `ssl_keyfile`, `token`), each falling back to its environment variable.
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        group_id: str | None = None,
        auto_offset_reset: str = "latest",
        enable_auto_commit: bool = True,
        auto_commit_interval_ms: int = 5000,
        max_poll_records: int = 500,
        fetch_min_bytes: int = 1,
        fetch_max_wait_ms: int = 500,
        fetch_max_bytes: int = 52_428_800,
        max_partition_fetch_bytes: int = 1_048_576,
        session_timeout_ms: int = 45_000,
        heartbeat_interval_ms: int = 3000,
        max_poll_interval_ms: int = 300_000,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        metadata_max_age_ms: int = 5000,
        client_id: str = "",
        group_remote_assignor: str | None = None,
        key_deserializer: Deserializer | None = None,
        value_deserializer: Deserializer | None = None,
        fetch_stream: bool = True,
        **security: Unpack[SecurityOptions],
    ) -> None:
        self._options = ConsumerOptions(
            group_id,
            auto_offset_reset,
            enable_auto_commit,
            auto_commit_interval_ms,
            max_poll_records,
            fetch_min_bytes,
            fetch_max_wait_ms,
            fetch_max_bytes,
            max_partition_fetch_bytes,
            session_timeout_ms,
            heartbeat_interval_ms,
            max_poll_interval_ms,
            request_timeout_ms,
            retry_backoff_ms,
            metadata_max_age_ms,
            client_id,
            group_remote_assignor,
        )
        self._options.validate()
        self._key_deserializer = key_deserializer
        self._value_deserializer = value_deserializer
        self.address = resolve_bootstrap(bootstrap)
        self._timeout_s = request_timeout_ms / 1000
        connections = connect(self.address, client_security("Consumer", security), self._options)
        self._channels = connections.channels
        # Room for two fetches per partition: one answer is drained while the next arrives.
        self._shared = SharedFetchState(
            FetchPositions(
                2 * fetch_max_bytes,
                2 * max_partition_fetch_bytes,
                reset_policy=self._options.reset_policy,
                retry_backoff_s=retry_backoff_ms / 1000,
                retriable=is_retriable,
            )
        )
        self._progress = ProgressMonitor(self.address)
        make_fetcher = fetcher_factory(
            self._shared, self._channels, self._options, self._progress, fetch_stream
        )
        self._router = FetchRouter(
            self._shared, self._channels, self._options, self._progress, make_fetcher
        )
        #: topic requests go to the home broker, group requests to the group's coordinator
        self._calls = BrokerCalls(
            self.address, connections, self._options, self._progress, self._router.stale
        )
        self._committer = OffsetCommitter(
            self._shared, self._options, self._calls, self._subscribed_member
        )
        self._resolver = PositionResolver(
            self._shared, self._options, self._calls, self._committer.fetch_committed
        )
        self._assignment = Assignment(
            self._shared,
            self._options,
            self._router,
            self._committer,
            self._resolver,
            self._is_closing,
        )
        self._missing = MissingPartitions(self._shared, self._options, self._calls, self._progress)
        self._membership: GroupMember | None = None
        if group_id is not None:
            self._membership = GroupMember(
                connections.home,
                connections.coordinators,
                self._options,
                self._assignment.rebalance(),
                self._wake_poll,
                self._progress,
            )
        #: "assign", "subscribe" or None: the two ways to own partitions exclude each other
        self._mode: str | None = None
        self._closed = False
        self._closing = False
        self._router.start()

    def _subscribed_member(self) -> GroupMember | None:
        """The group member while the consumer is subscribed (commits then go as it)."""
        return self._membership if self._mode == "subscribe" else None

    def _is_closing(self) -> bool:
        return self._closing

    # --- assignment --------------------------------------------------------------------------

    def subscribe(
        self, topics: Iterable[str], listener: ConsumerRebalanceListener | None = None
    ) -> None:
        """Join the group to share the partitions of `topics` with its other members.

        Joining happens in the background; partitions are assigned (and the listener
        called) inside later poll() calls. Needs a group_id; excludes assign(). An empty
        list unsubscribes; calling it again replaces the subscription.
        """
        self._ensure_open()
        names = [topics] if isinstance(topics, str) else list(topics)
        if self._membership is None:
            raise errors.InvalidRequestError("subscribe() needs a group_id; use assign() without")
        bad = [name for name in names if not isinstance(name, str) or not name]
        if bad:
            raise errors.InvalidRequestError(f"topic names must be non-empty strings: {bad!r}")
        if self._mode == "assign":
            raise errors.InvalidRequestError(
                "subscribe() after assign(): a consumer uses one or the other "
                "(call unsubscribe() first)"
            )
        if not names:
            self.unsubscribe()
            return
        self._mode = "subscribe"
        self._membership.subscribe(names, listener)

    def unsubscribe(self) -> None:
        """Give up every partition, whether subscribed or assigned; a member revokes its
        partitions (committing them with auto-commit) and leaves the group."""
        self._ensure_open()
        if self._mode == "subscribe" and self._membership is not None:
            self._membership.leave(min(self._timeout_s, CLOSE_JOIN_S))
        else:
            self._assignment.replace(set())
        self._mode = None

    def subscription(self) -> set[str]:
        self._ensure_open()
        if self._mode != "subscribe" or self._membership is None:
            return set()
        return set(self._membership.subscription())

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Own exactly `partitions` (topic, partition), without group coordination.

        Positions start at the group's committed offsets when there is a group_id, else
        (and when nothing is committed) per auto_offset_reset. Excludes subscribe().
        """
        self._ensure_open()
        wanted = {_tp(tp) for tp in partitions}
        if self._mode == "subscribe":
            raise errors.InvalidRequestError(
                "assign() after subscribe(): a consumer uses one or the other "
                "(call unsubscribe() first)"
            )
        self._mode = "assign" if wanted else None
        self._assignment.replace(wanted)

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer currently owns (for a group member: as of the last
        change poll() applied)."""
        self._ensure_open()
        return set(self._assignment.owned())

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching `partitions` and returning their records from poll(), keeping
        their positions and what is already buffered, until resume(). A group member keeps
        heartbeating meanwhile (Kafka's pause: flow control, e.g. while a downstream is
        slow or a retry is not yet due). Raises InvalidRequestError for a partition this
        consumer does not own; a pause ends when the partition is revoked."""
        self._set_paused(partitions, True)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch and return `partitions` again after pause()."""
        self._set_paused(partitions, False)

    def paused(self) -> set[TopicPartition]:
        """The owned partitions that are paused."""
        self._ensure_open()
        return self._assignment.paused()

    def _set_paused(self, partitions: Iterable[TopicPartition], paused: bool) -> None:
        self._ensure_open()
        self._assignment.set_paused([_tp(tp) for tp in partitions], paused)

    def _wake_poll(self) -> None:
        """Make a waiting poll() look at the membership now (called by the heartbeat
        thread)."""
        with self._shared.lock:
            self._shared.data_ready.notify_all()

    # --- polling -----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_records: int | None = None) -> list[ConsumerRecord]:
        """Up to `max_records` (default max_poll_records) records, waiting up to `timeout`
        seconds for some; [] if none arrived in time.

        Per partition, records come in offset order and continue exactly where the previous
        poll() (or seek) left off. A group member applies assignment changes here, calling
        the listener, before it returns records. Raises NoOffsetForPartitionError when a
        position cannot be resolved with auto_offset_reset="error", and errors the fetcher
        or the group coordinator answered (once each).
        """
        self._ensure_open()
        if self._mode is None:
            raise errors.InvalidRequestError(
                "poll() needs partitions: call subscribe() or assign() first"
            )
        limit = max_records or self._options.max_poll_records
        deadline = time.monotonic() + max(timeout, 0.0)
        member = self._subscribed_member()
        self._committer.maybe_auto_commit()
        shared = self._shared
        while True:
            if member is not None:
                member.poll_hook()
            retry_in = self._resolver.try_resolve()
            self._missing.check()
            with shared.lock:
                self._raise_fetch_error()
                records = shared.drain(limit)
                remaining = deadline - time.monotonic()
                if records or remaining <= 0:
                    break
                if member is None or not member.has_news():
                    # bounded so the membership sees this poll at least once an interval
                    heartbeat_s = self._options.heartbeat_interval_ms / 1000
                    shared.data_ready.wait(min(remaining, retry_in, heartbeat_s))
        self._progress.tick()
        return self._deserialize(records)

    def stalled(self) -> ConsumerStall | None:
        """Why this consumer cannot make progress now, or None if nothing stops it.

        A `ConsumerStall` says "broker_unreachable" (no request has reached `broker` since
        `since_ms`, wall-clock ms), "missing_topics" (the broker says `topics` do not
        exist: assigned partitions of them, or subscribed topics) or "missing_partitions"
        (the topics exist, but assigned `partitions` of them do not). The same conditions
        are logged: a WARNING when they start, at most every 30 s while they last, an INFO
        when they clear. Assigned partitions are checked as poll() runs; subscribed topics
        every metadata_max_age_ms.
        """
        self._ensure_open()
        self._missing.report()
        return self._progress.stall()

    def _raise_fetch_error(self) -> None:
        """Raise (once) a fetch failure the application has not seen; caller holds the lock."""
        error, self._shared.fetch_error = self._shared.fetch_error, None
        if error is not None:
            raise error

    def _deserialize(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        key_fn, value_fn = self._key_deserializer, self._value_deserializer
        if key_fn is None and value_fn is None:
            return records
        new = tuple.__new__
        return [
            new(
                ConsumerRecord,
                (
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4] if key_fn is None or r[4] is None else key_fn(r[4]),
                    r[5] if value_fn is None or r[5] is None else value_fn(r[5]),
                    r[6],
                ),
            )
            for r in records
        ]

    # --- positions ---------------------------------------------------------------------------

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Make the next poll() return `topic`-`partition` records from `offset` on."""
        self._ensure_open()
        if offset < 0:
            raise errors.InvalidRequestError(f"cannot seek to negative offset {offset}")
        self._resolver.seek(_tp((topic, partition)), offset)

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Read `partitions` (default: all assigned) from their log start, resolved lazily."""
        self._seek_to("earliest", partitions)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Read `partitions` (default: all assigned) from their end, resolved lazily."""
        self._seek_to("latest", partitions)

    def _seek_to(self, strategy: str, partitions: Iterable[TopicPartition] | None) -> None:
        self._ensure_open()
        tps = None if partitions is None else [_tp(p) for p in partitions]
        self._resolver.seek_to(strategy, tps)

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record poll() returns for `tp` (resolving it if needed,
        for up to request_timeout_ms)."""
        self._ensure_open()
        return self._resolver.wait_for(_tp(tp), self._timeout_s)

    # --- offset queries ----------------------------------------------------------------------

    def offsets_for_times(
        self, timestamps: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp | None]:
        """Per partition, the first offset whose record timestamp (ms) is >= the one
        given, with that timestamp; None when no record is that new."""
        self._ensure_open()
        specs = {_tp(tp): int(ts) for tp, ts in timestamps.items()}
        bad = {tp: ts for tp, ts in specs.items() if ts < 0}
        if bad:
            raise errors.InvalidRequestError(f"timestamps must be >= 0 ms, got {bad}")
        listed = self._calls.list_offsets_or_raise(specs)
        return {tp: (ot if ot.offset >= 0 else None) for tp, ot in listed.items()}

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition."""
        self._ensure_open()
        specs = {_tp(tp): EARLIEST_TIMESTAMP for tp in partitions}
        return {tp: ot.offset for tp, ot in self._calls.list_offsets_or_raise(specs).items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last readable record of each partition."""
        self._ensure_open()
        specs = {_tp(tp): LATEST_TIMESTAMP for tp in partitions}
        return {tp: ot.offset for tp, ot in self._calls.list_offsets_or_raise(specs).items()}

    def committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        """What the group has committed for `tp` (the next offset it will read), or None."""
        self._ensure_open()
        tp = _tp(tp)
        return self._committer.fetch_committed([tp]).get(tp)

    # --- commits -----------------------------------------------------------------------------

    def commit(
        self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None
    ) -> None:
        """Commit `offsets` (default: the position of every assigned partition, i.e. the
        offset after what poll() returned) and wait for the broker to store them.

        A subscribed consumer commits as its group member (id and epoch) and only the
        partitions it owns now; others are skipped. Retriable failures are retried for up
        to request_timeout_ms. Raises CommitFailedError when the group refuses the commit,
        also when the coordinator has dropped this member (its session expired, or the
        broker restarted): the consumer then rejoins in the next poll(). Otherwise raises
        the error met.
        """
        self._ensure_open()
        self._options.require_group("commit()")
        chosen = self._committer.consumed() if offsets is None else _normalize_offsets(offsets)
        self._committer.commit_sync(chosen, self._timeout_s)

    def commit_async(
        self,
        offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None,
        callback: CommitCallback | None = None,
    ) -> Future[None]:
        """Commit in the background (one attempt, in call order; a coordinator that refuses
        the group or has died is found again and the commit sent there, within
        request_timeout_ms), then call `callback(offsets, exception or None)` from the
        commit thread.

        The offsets are taken now (default: current positions). Returns a Future that
        completes with the commit (its result() raises the commit's error).
        """
        self._ensure_open()
        self._options.require_group("commit_async()")
        chosen = self._committer.consumed() if offsets is None else _normalize_offsets(offsets)
        return self._committer.submit(chosen, callback)

    # --- lifecycle ---------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise errors.ClientClosedError("the consumer is closed")

    def close(self, timeout: float | None = None) -> None:
        """Stop fetching, commit positions (with auto-commit), revoke the assignment and
        leave the group (so its partitions move at once, not after the session timeout),
        disconnect.

        `timeout` (seconds, default request_timeout_ms) bounds the final commit; waits for
        the leave, the heartbeat thread and pending async commits are bounded by it and by
        CLOSE_JOIN_S each. Idempotent; every other method then raises ClientClosedError.
        """
        if self._closed or self._closing:
            return
        # Closed only at the end, so a listener may still commit in on_partitions_revoked.
        self._closing = True
        limit_s = self._timeout_s if timeout is None else max(timeout, 0.0)
        self._router.stop(min(CLOSE_JOIN_S, limit_s + 1.0))
        try:
            self._committer.commit_at_close(limit_s)
            if self._membership is not None:
                self._membership.close(min(CLOSE_JOIN_S, limit_s))
        except Exception:
            log.exception("error while closing the consumer")
        finally:
            self._closed = True
            self._committer.close(min(CLOSE_JOIN_S, limit_s))
            self._channels.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------------


def _tp(value: TopicPartition | tuple[str, int]) -> TopicPartition:
    topic, partition = value
    return (str(topic), int(partition))


def _normalize_offsets(
    offsets: Mapping[TopicPartition, int | OffsetAndMetadata],
) -> dict[TopicPartition, OffsetAndMetadata]:
    normalized: dict[TopicPartition, OffsetAndMetadata] = {}
    for tp, value in offsets.items():
        om = value if isinstance(value, OffsetAndMetadata) else OffsetAndMetadata(int(value))
        if om.offset < 0:
            raise errors.InvalidRequestError(f"cannot commit offset {om.offset} for {tp}")
        normalized[_tp(tp)] = om
    return normalized

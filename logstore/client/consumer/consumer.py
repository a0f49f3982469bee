"""`Consumer`: reads records from topics, tracks positions and commits them for a group.

Threads and what they own:

- the application thread calls every public method (a consumer is not thread-safe, as in
  Kafka); it resolves starting positions, drains the record buffer and commits;
- one routing thread (`routing`) keeps each assigned partition's leader as the cluster
  metadata says, and one fetcher thread per leader broker;
- each fetcher thread (`fetcher`) keeps fetches in flight for the assigned partitions its
  broker leads, decodes the answers into `ConsumerRecord`s and appends them to a bounded
  buffer (with a standalone broker: one fetcher, for everything);
- one commit thread (started on first use) runs `commit_async` requests in order;
- with subscribe(), one heartbeat thread (`group_member`) keeps the consumer a member of
  its group: it only talks to the coordinator and records the newest assignment, which
  the application thread applies inside poll(), as Kafka does.

Group requests (join, heartbeat, leave, commit, committed offsets) go to the group's
coordinator (`CoordinatorRouter`: found with FindCoordinator, found again when it refuses
with NotCoordinatorError or stops answering; with a standalone broker, that broker). Topic
descriptions go to the first broker that answered (`BrokerChannels.home`), and to another
live broker when it stops answering; fetches and offset lookups go to each partition's
leader.

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
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Unpack

import grpc

from logstore import errors
from logstore.client._connection import (
    METADATA_STALE_KINDS,
    BrokerChannels,
    SecurityOptions,
    client_security,
    home_coordinators,
    is_retriable,
    partition_error,
    resolve_bootstrap,
    translate,
)
from logstore.client.consumer.fetch_positions import FetchPositions
from logstore.client.consumer.fetcher import (
    CLOSE_JOIN_S,
    Fetcher,
    SharedFetchState,
    StreamFetcher,
)
from logstore.client.consumer.group_member import (
    ConsumerRebalanceListener,
    GroupMember,
    Rebalance,
)
from logstore.client.consumer.member_state import REJOIN_ERRORS
from logstore.client.consumer.options import (
    COMMITTED,
    MAX_RETRY_BACKOFF_S,
    Backoff,
    ConsumerOptions,
)
from logstore.client.consumer.progress import ConsumerStall, ProgressMonitor
from logstore.client.consumer.routing import FetchRouter
from logstore.client.coordinators import CoordinatorCache
from logstore.client.metadata import DEFAULT_MAX_AGE_MS, ClusterMetadata
from logstore.codec.wire import EARLIEST_TIMESTAMP, LATEST_TIMESTAMP
from logstore.types import (
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    TopicPartition,
)
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger("logstore.client.consumer")

CommitCallback = Callable[[dict[TopicPartition, OffsetAndMetadata], Exception | None], None]
Deserializer = Callable[[bytes], Any]


def _member_commit_failed(group: str, reason: str) -> errors.CommitFailedError:
    """As in Kafka, a commit by a member the group has dropped (its session expired, the
    broker restarted, poll() came too late) fails with CommitFailedError; the consumer
    rejoins in its next poll()."""
    return errors.CommitFailedError(
        f"group {group}: commit refused, this consumer is no longer a member of the group "
        f"({reason}). It rejoins in the next poll(); records after the last committed "
        "offsets may be delivered again."
    )


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
        # Leaders move rarely and fetch errors say when: Kafka's metadata age, not the
        # topic check's `metadata_max_age_ms`.
        self._metadata = ClusterMetadata(
            max_age_ms=DEFAULT_MAX_AGE_MS,
            backoff_ms=retry_backoff_ms,
            backoff_max_ms=MAX_RETRY_BACKOFF_S * 1000,
        )
        self._channels = BrokerChannels(
            self.address,
            client_security("Consumer", security),
            self._metadata,
            request_timeout_s=self._timeout_s,
        )
        #: topic requests go to the home broker, group requests to the group's coordinator
        self._stub = self._channels.home_stub()
        self._coordinators = home_coordinators(
            self._channels,
            CoordinatorCache(
                backoff_ms=retry_backoff_ms, backoff_max_ms=MAX_RETRY_BACKOFF_S * 1000
            ),
        )
        self._fetch_stream = fetch_stream
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
        self._membership: GroupMember | None = None
        if group_id is not None:
            rebalance = Rebalance(
                self._revoke_partitions, self._lose_partitions, self._add_partitions
            )
            self._membership = GroupMember(
                self._stub,
                self._coordinators,
                self._options,
                rebalance,
                self._wake_poll,
                self._progress,
            )
        #: "assign", "subscribe" or None: the two ways to own partitions exclude each other
        self._mode: str | None = None
        self._closed = False
        self._closing = False
        self._committer: ThreadPoolExecutor | None = None
        self._pending_commits: set[Future[None]] = set()
        self._next_auto_commit = time.monotonic() + auto_commit_interval_ms / 1000
        #: unresolved positions are not looked up again before this (monotonic seconds)
        self._resolve_at = 0.0
        self._resolve_backoff = Backoff(retry_backoff_ms / 1000)
        #: the assigned partitions last reported missing to the progress monitor
        self._reported_missing: frozenset[TopicPartition] = frozenset()
        #: topics the broker last described (so their missing partitions are partitions)
        self._described: frozenset[str] = frozenset()
        #: when the missing partitions' topics are next described (monotonic s)
        self._describe_at = 0.0
        self._router = FetchRouter(
            self._shared, self._channels, self._options, self._progress, self._new_fetcher
        )
        self._router.start()

    def _new_fetcher(self, address: str, on_stale: Callable[[str | None], None]) -> Fetcher:
        """The fetcher of the partitions the broker at `address` leads (not started)."""
        stub = self._channels.stub(address)
        if self._fetch_stream:
            channel = self._channels.channel(address)
            return StreamFetcher(
                self._shared, stub, self._options, address, self._progress, channel, on_stale
            )
        return Fetcher(self._shared, stub, self._options, address, self._progress, on_stale)

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
            self._change_assignment(set(self._assigned()), set())
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
        self._change_assignment(set(self._assigned()), wanted)

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer currently owns (for a group member: as of the last
        change poll() applied)."""
        self._ensure_open()
        return set(self._assigned())

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
        with self._shared.lock:
            return {tp for tp, state in self._shared.positions.states.items() if state.paused}

    def _set_paused(self, partitions: Iterable[TopicPartition], paused: bool) -> None:
        self._ensure_open()
        wanted = [_tp(tp) for tp in partitions]
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

    def _assigned(self) -> list[TopicPartition]:
        with self._shared.lock:
            return list(self._shared.positions.states)

    def _revoke_partitions(
        self, revoked: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Give `revoked` back to the group: commit their positions (with auto-commit; not
        again while closing, which has just committed), tell the listener while they are
        still owned, then stop reading them, even if the listener raises."""
        try:
            # An older async commit landing after this one would move the offsets back.
            self._await_pending_commits(CLOSE_JOIN_S if self._closing else self._timeout_s)
            if self._auto_commit_enabled() and not self._closing:
                self._commit_quietly(self._consumed(revoked), self._timeout_s)
            if listener is not None:
                listener.on_partitions_revoked(set(revoked))
        finally:
            self._drop_partitions(revoked)

    def _lose_partitions(
        self, lost: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Drop `lost` without committing (another member may own them already), telling
        the listener first."""
        try:
            if listener is not None:
                callback = getattr(listener, "on_partitions_lost", listener.on_partitions_revoked)
                callback(set(lost))
        finally:
            self._drop_partitions(lost)

    def _add_partitions(
        self, added: set[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        """Start reading `added` (from the committed offsets, else per auto_offset_reset),
        then tell the listener, which may seek them."""
        self._set_states(set(self._assigned()) | added)
        if listener is not None:
            listener.on_partitions_assigned(set(added))

    def _drop_partitions(self, tps: set[TopicPartition]) -> None:
        self._set_states(set(self._assigned()) - tps)

    def _wake_poll(self) -> None:
        """Make a waiting poll() look at the membership now (called by the heartbeat
        thread)."""
        with self._shared.lock:
            self._shared.data_ready.notify_all()

    def _change_assignment(self, old: set[TopicPartition], new: set[TopicPartition]) -> None:
        # As Kafka's assign(): positions of dropped partitions are committed asynchronously.
        removed = old - new
        if removed and self._auto_commit_enabled():
            offsets = self._consumed(removed)
            if offsets:
                self._submit_commit(offsets, self._log_auto_commit)
        self._set_states(new)

    def _set_states(self, wanted: set[TopicPartition]) -> None:
        strategy = COMMITTED if self._options.group_id else self._options.reset_policy
        with self._shared.lock:
            self._shared.positions.set_assignment(wanted, strategy)
            self._router.assignment_changed()
            self._shared.wake_fetcher()
        self._resolve_at = 0.0  # new partitions resolve at once

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
        member = self._membership if self._mode == "subscribe" else None
        self._maybe_auto_commit()
        shared = self._shared
        while True:
            if member is not None:
                member.poll_hook()
            retry_in = self._try_resolve_positions()
            if shared.positions.missing or self._reported_missing:
                self._report_missing()
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
        self._report_missing()
        return self._progress.stall()

    def _report_missing(self) -> None:
        """Tell the progress monitor which assigned partitions the broker does not know:
        whole topics, or partitions of topics it knows. Describes their topics when the set
        changes and every metadata_max_age_ms while it lasts; caller holds no lock (the
        answers are awaited)."""
        with self._shared.lock:
            missing = frozenset(self._shared.positions.missing)
        now = time.monotonic()
        if missing == self._reported_missing and (not missing or now < self._describe_at):
            return
        self._described = self._existing_topics({topic for topic, _ in missing})
        self._describe_at = now + self._options.metadata_max_age_ms / 1000
        self._reported_missing = missing
        self._progress.set_missing(
            "assigned",
            frozenset(topic for topic, _ in missing if topic not in self._described),
            frozenset(tp for tp in missing if tp[0] in self._described),
        )

    def _existing_topics(self, topics: set[str]) -> frozenset[str]:
        """Which of `topics` the broker knows (DescribeTopic each). A topic it could not
        be asked about keeps what the previous answer said (unknown at first: missing)."""
        existing: set[str] = set()
        ordered = sorted(topics)
        for i, topic in enumerate(ordered):
            try:
                self._call("DescribeTopic", pb.DescribeTopicRequest(name=topic))
            except errors.UnknownTopicOrPartitionError:
                continue
            except errors.BrokerUnavailableError as exc:
                # the others would wait for the same unreachable broker
                log.debug("describing topic %s failed: %s", topic, exc)
                existing.update(t for t in ordered[i:] if t in self._described)
                break
            except errors.LogStoreError as exc:
                log.debug("describing topic %s failed: %s", topic, exc)
                if topic in self._described:
                    existing.add(topic)
                continue
            existing.add(topic)
        return frozenset(existing)

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
        tp = _tp((topic, partition))
        with self._shared.lock:
            self._require_assigned([tp])
            self._shared.positions.reposition(tp, offset, None)
            self._shared.wake_fetcher()

    def seek_to_beginning(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Read `partitions` (default: all assigned) from their log start, resolved lazily."""
        self._seek_to("earliest", partitions)

    def seek_to_end(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Read `partitions` (default: all assigned) from their end, resolved lazily."""
        self._seek_to("latest", partitions)

    def _seek_to(self, strategy: str, partitions: Iterable[TopicPartition] | None) -> None:
        self._ensure_open()
        with self._shared.lock:
            states = self._shared.positions.states
            tps = list(states) if partitions is None else [_tp(p) for p in partitions]
            self._require_assigned(tps)
            for tp in tps:
                self._shared.positions.reposition(tp, None, strategy)
            self._shared.wake_fetcher()
        self._resolve_at = 0.0

    def position(self, tp: TopicPartition) -> int:
        """The offset of the next record poll() returns for `tp` (resolving it if needed,
        for up to request_timeout_ms)."""
        self._ensure_open()
        tp = _tp(tp)
        deadline = time.monotonic() + self._timeout_s
        while True:
            with self._shared.lock:
                self._require_assigned([tp])
                position = self._shared.positions.states[tp].position
            if position is not None:
                return position
            self._resolve_at = 0.0  # the caller is waiting: ask now, back off after
            retry_in = self._try_resolve_positions()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.RequestTimedOutError(f"position of {tp[0]}-{tp[1]} not resolved")
            if retry_in != float("inf"):
                time.sleep(min(retry_in, remaining))

    def _require_assigned(self, tps: Iterable[TopicPartition]) -> None:
        missing = [tp for tp in tps if tp not in self._shared.positions.states]
        if missing:
            raise errors.InvalidRequestError(
                f"partitions {sorted(missing)} are not assigned to this consumer"
            )

    def _try_resolve_positions(self) -> float:
        """Resolve what is unresolved, at most once per backoff while the broker cannot
        answer; returns seconds until the next attempt is due (inf if none is needed)."""
        now = time.monotonic()
        if now < self._resolve_at:
            return self._resolve_at - now
        try:
            pending = self._resolve_positions()
        except errors.LogStoreError as exc:
            if not is_retriable(exc):
                raise
            log.debug("resolving positions failed, retrying: %s", exc)
            pending = True
        if not pending:
            self._resolve_backoff.reset()
            return float("inf")
        delay = self._resolve_backoff.next()
        self._resolve_at = time.monotonic() + delay
        return delay

    def _resolve_positions(self) -> bool:
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
        listed, failed = self._list_offsets(specs)
        found.update({tp: ot.offset for tp, ot in listed.items()})
        self._apply_positions(found, pending, failed)
        self._raise_no_offset([tp for tp, s in wanted.items() if s == "error"], pending)
        for exc in failed.values():
            if not isinstance(exc, errors.UnknownTopicOrPartitionError):
                raise exc
        return bool(failed)

    def _apply_positions(
        self,
        found: dict[TopicPartition, int],
        pending: dict[TopicPartition, tuple[int, str, str]],
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

    def _raise_no_offset(
        self,
        tps: list[TopicPartition],
        pending: dict[TopicPartition, tuple[int, str, str]],
    ) -> None:
        if not tps:
            return
        reasons = sorted({pending[tp][2] for tp in tps if pending[tp][2]})
        why = "; ".join(reasons) if reasons else "no committed offset"
        raise errors.NoOffsetForPartitionError(
            f"no valid position for {sorted(tps)} ({why}) and auto_offset_reset='error': "
            "seek() to an offset or use auto_offset_reset='earliest' or 'latest'"
        )

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
        listed = self._list_offsets_or_raise(specs)
        return {tp: (ot if ot.offset >= 0 else None) for tp, ot in listed.items()}

    def beginning_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The log start offset of each partition."""
        self._ensure_open()
        listed = self._list_offsets_or_raise({_tp(tp): EARLIEST_TIMESTAMP for tp in partitions})
        return {tp: ot.offset for tp, ot in listed.items()}

    def end_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The offset after the last readable record of each partition."""
        self._ensure_open()
        listed = self._list_offsets_or_raise({_tp(tp): LATEST_TIMESTAMP for tp in partitions})
        return {tp: ot.offset for tp, ot in listed.items()}

    def _list_offsets_or_raise(
        self, specs: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp]:
        listed, failed = self._list_offsets(specs)
        for exc in failed.values():
            raise exc
        return listed

    def _list_offsets(
        self, specs: Mapping[TopicPartition, int]
    ) -> tuple[
        dict[TopicPartition, OffsetAndTimestamp], dict[TopicPartition, errors.LogStoreError]
    ]:
        """ListOffsets for (tp -> -2 | -1 | timestamp ms): results and per-partition errors.

        Asked of each partition's leader; a partition whose leader is not known yet is
        asked of the home broker, which says whether it exists."""
        if not specs:
            return {}, {}
        by_leader: dict[str | None, dict[TopicPartition, int]] = {}
        for tp, leader in self._leaders(specs).items():
            by_leader.setdefault(leader, {})[tp] = specs[tp]
        listed: dict[TopicPartition, OffsetAndTimestamp] = {}
        failed: dict[TopicPartition, errors.LogStoreError] = {}
        for leader, asked in by_leader.items():
            request = pb.ListOffsetsRequest(
                topics=[
                    pb.ListOffsetsTopic(
                        topic=topic,
                        partitions=[
                            pb.ListOffsetsPartition(partition=p, timestamp=ts) for p, ts in ps
                        ],
                    )
                    for topic, ps in _by_topic(asked.items()).items()
                ]
            )
            for topic in self._call("ListOffsets", request, leader).topics:
                for p in topic.partitions:
                    tp = (topic.topic, p.partition)
                    error = partition_error(p.error)
                    if error is None:
                        listed[tp] = OffsetAndTimestamp(p.offset, p.timestamp)
                        continue
                    failed[tp] = error
                    if type(error).__name__ in METADATA_STALE_KINDS:
                        self._router.stale(topic.topic)
        return listed, failed

    def _leaders(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, str | None]:
        """Each partition's leader address (None: not known), learning the cluster first if
        need be; a broker that cannot be reached is reported as `_call` reports it."""
        tps = list(tps)
        if not self._channels.bootstrapped:
            try:
                self._channels.bootstrap(self._timeout_s, sorted({t for t, _ in tps}))
            except errors.BrokerUnavailableError as exc:
                self._progress.broker_failed(str(exc))
                raise
        return self._channels.leaders(tps)

    def committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        """What the group has committed for `tp` (the next offset it will read), or None."""
        self._ensure_open()
        tp = _tp(tp)
        return self._fetch_committed([tp]).get(tp)

    def _fetch_committed(
        self, tps: Iterable[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        group = self._require_group("committed offsets")
        request = pb.FetchCommittedOffsetsRequest(
            group_id=group,
            topics=[
                pb.TopicPartitions(topic=topic, partitions=[p for p, _ in ps])
                for topic, ps in _by_topic((tp, None) for tp in tps).items()
            ],
        )
        return {
            (o.topic, o.partition): OffsetAndMetadata(o.offset, o.metadata, o.commit_timestamp)
            for o in self._group_call("FetchCommittedOffsets", request).offsets
            if o.offset >= 0
        }

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
        self._require_group("commit()")
        chosen = self._consumed() if offsets is None else _normalize_offsets(offsets)
        self._commit_sync(chosen, self._timeout_s)

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
        self._require_group("commit_async()")
        chosen = self._consumed() if offsets is None else _normalize_offsets(offsets)
        return self._submit_commit(chosen, callback)

    def _submit_commit(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: CommitCallback | None
    ) -> Future[None]:
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="logstore-consumer-commit")
        future = self._committer.submit(self._commit_once, offsets, callback)
        self._pending_commits.add(future)
        future.add_done_callback(self._pending_commits.discard)
        return future

    def _commit_once(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: CommitCallback | None
    ) -> None:
        error: Exception | None = None
        try:
            self._send_commit(offsets)
        except errors.LogStoreError as exc:
            error = exc
        if callback is not None:
            try:
                callback(offsets, error)
            except Exception:
                log.exception("commit callback failed")
        if error is not None:
            raise error

    def _commit_sync(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        backoff = Backoff(self._options.retry_backoff_ms / 1000)
        while True:
            try:
                self._send_commit(offsets)
                return
            except errors.LogStoreError as exc:
                delay = backoff.next()
                if not is_retriable(exc) or time.monotonic() + delay >= deadline:
                    raise
                log.debug("commit failed, retrying in %.2fs: %s", delay, exc)
                time.sleep(delay)

    def _send_commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        group = self._require_group("commit")
        member_id, epoch, offsets = self._as_committer(group, offsets)
        if not offsets:
            return
        request = pb.CommitOffsetsRequest(
            group_id=group,
            member_id=member_id,
            generation_id=epoch,
            topics=[
                pb.CommitTopic(
                    topic=topic,
                    partitions=[
                        pb.CommitPartition(partition=p, offset=om.offset, metadata=om.metadata)
                        for p, om in ps
                    ],
                )
                for topic, ps in _by_topic(offsets.items()).items()
            ],
        )
        try:
            # A coordinator that refused it (NotCoordinatorError) did not store it: it is
            # sent to the new coordinator within the request timeout.
            response = self._group_call("CommitOffsets", request)
        except REJOIN_ERRORS as exc:
            if self._membership is not None and member_id:
                self._membership.commit_refused(member_id, epoch, str(exc))
            raise _member_commit_failed(group, str(exc)) from exc
        for topic in response.topics:
            for p in topic.partitions:
                error = partition_error(p.error)
                if error is not None:
                    raise error

    def _as_committer(
        self, group: str, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> tuple[str, int, dict[TopicPartition, OffsetAndMetadata]]:
        """(member id, member epoch, offsets) of a commit.

        A group member commits as itself and only partitions it owns now: a partition it
        was never given, or gave up in a rebalance, may be another member's, whose commits
        must not be overwritten (the broker refuses them too). A member that has lost its
        partitions commits nothing and raises CommitFailedError. Outside the group protocol
        (assign()) the commit carries "" and -1, which the broker accepts only while the
        group has no members.
        """
        if self._mode != "subscribe" or self._membership is None:
            return "", -1, offsets
        member_id, epoch, owned, lost = self._membership.commit_identity()
        if lost is not None and offsets:
            raise _member_commit_failed(group, lost)
        foreign = sorted(set(offsets) - owned)
        if foreign:
            log.info("group %s: not committing %s: not owned by this member", group, foreign)
        return member_id, epoch, {tp: om for tp, om in offsets.items() if tp in owned}

    def _await_pending_commits(self, timeout_s: float) -> None:
        if self._pending_commits:
            wait_futures(list(self._pending_commits), timeout=timeout_s)

    def _consumed(
        self, tps: Iterable[TopicPartition] | None = None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The current position of each (assigned, resolved) partition, as commit offsets."""
        with self._shared.lock:
            states = self._shared.positions.states
            chosen = states if tps is None else [tp for tp in tps if tp in states]
            return {
                tp: OffsetAndMetadata(states[tp].position)  # type: ignore[arg-type]
                for tp in chosen
                if states[tp].position is not None
            }

    def _auto_commit_enabled(self) -> bool:
        return self._options.enable_auto_commit and self._options.group_id is not None

    def _maybe_auto_commit(self) -> None:
        if not self._auto_commit_enabled() or time.monotonic() < self._next_auto_commit:
            return
        self._next_auto_commit = time.monotonic() + self._options.auto_commit_interval_ms / 1000
        offsets = self._consumed()
        if offsets:
            self._submit_commit(offsets, self._log_auto_commit)

    @staticmethod
    def _log_auto_commit(
        offsets: dict[TopicPartition, OffsetAndMetadata], exc: Exception | None
    ) -> None:
        if exc is not None:
            log.warning("auto-commit of %d partitions failed: %s", len(offsets), exc)

    def _commit_quietly(
        self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_s: float
    ) -> None:
        try:
            self._commit_sync(offsets, timeout_s)
        except errors.LogStoreError as exc:
            log.warning("auto-commit of %d partitions failed: %s", len(offsets), exc)

    def _require_group(self, what: str) -> str:
        group = self._options.group_id
        if group is None:
            raise errors.InvalidRequestError(f"{what} needs a consumer created with a group_id")
        return group

    # --- plumbing and lifecycle --------------------------------------------------------------

    def _call(self, method: str, request: Any, address: str | None = None) -> Any:
        """`method` at `address` (None: the home broker), failures as LogStore errors."""
        stub = self._stub if address is None else self._channels.stub(address)
        try:
            response = getattr(stub, method)(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            error = translate(exc, address or self.address)
            if isinstance(error, errors.BrokerUnavailableError):
                self._progress.broker_failed(str(error))
                if address is not None:
                    self._router.stale(None)  # a leader gone: where are its partitions?
            raise error from None
        self._progress.broker_answered()
        return response

    def _group_call(self, method: str, request: Any) -> Any:
        """`method` at the group's coordinator, found again (within request_timeout_ms)
        while it refuses the group or cannot be reached; failures as LogStore errors."""
        group = self._require_group(method)
        try:
            response = self._coordinators.call(group, method, request, self._timeout_s)
        except errors.BrokerUnavailableError as exc:
            self._progress.broker_failed(str(exc))
            raise
        self._progress.broker_answered()
        return response

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
            if self._auto_commit_enabled():
                self._commit_quietly(self._consumed(), limit_s)
            if self._membership is not None:
                self._membership.close(min(CLOSE_JOIN_S, limit_s))
        except Exception:
            log.exception("error while closing the consumer")
        finally:
            self._closed = True
            self._finish_close(limit_s)

    def _finish_close(self, limit_s: float) -> None:
        self._await_pending_commits(min(CLOSE_JOIN_S, limit_s))
        if self._committer is not None:
            self._committer.shutdown(wait=False, cancel_futures=True)
        self._channels.close()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ---------------------------------------------------------------------------------


def _tp(value: TopicPartition | tuple[str, int]) -> TopicPartition:
    topic, partition = value
    return (str(topic), int(partition))


def _by_topic(items: Iterable[tuple[TopicPartition, Any]]) -> dict[str, list[tuple[int, Any]]]:
    """Group ((topic, partition), value) pairs by topic for the per-topic request layout."""
    grouped: dict[str, list[tuple[int, Any]]] = {}
    for (topic, partition), value in items:
        grouped.setdefault(topic, []).append((partition, value))
    return grouped


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

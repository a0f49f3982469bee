"""Committing a consumer's offsets to its group, and reading the committed offsets back.

Commits and committed-offset lookups go to the group's coordinator (`BrokerCalls`, which
finds it again when it moves). What is committed by default is each assigned partition's
position: the offset after the last record poll() returned.

Invariants:

- async commits (commit_async(), auto-commits, the commit of the partitions assign()
  drops) run on one commit thread, started on first use, one attempt each and in
  submission order, so an older commit never lands after a newer one; a revoke first
  waits for them, since one landing after the revoke's commit would move offsets back;
- a sync commit retries retriable failures, with backoff, for up to its timeout;
- a subscribed member commits as itself (member id and epoch) and only the partitions it
  owns now: another member's commits must not be overwritten. A member the group has
  dropped commits nothing and raises CommitFailedError, also when the coordinator answers
  with a `REJOIN_ERRORS` error (the membership then rejoins in the next poll()). Without
  the group protocol (assign()) a commit carries member "" and epoch -1;
- auto-commit (enable_auto_commit with a group_id) commits every position at most once per
  auto_commit_interval_ms from poll(), the positions of revoked partitions (not while
  closing: close() has just committed them) and of partitions assign() drops, and every
  position at close(); its failures are logged, never raised.

Offsets are record offsets; times are seconds unless a name ends in `_ms`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from logstore import errors
from logstore.client._connection import is_retriable, partition_error
from logstore.client.consumer.broker_calls import BrokerCalls, by_topic
from logstore.client.consumer.fetcher import CLOSE_JOIN_S, SharedFetchState
from logstore.client.consumer.group_member import GroupMember
from logstore.client.consumer.member_state import REJOIN_ERRORS
from logstore.client.consumer.options import Backoff, ConsumerOptions
from logstore.types import OffsetAndMetadata, TopicPartition
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger("logstore.client.consumer")

CommitCallback = Callable[[dict[TopicPartition, OffsetAndMetadata], Exception | None], None]
Offsets = dict[TopicPartition, OffsetAndMetadata]


def member_commit_failed(group: str, reason: str) -> errors.CommitFailedError:
    """As in Kafka, a commit by a member the group has dropped (its session expired, the
    broker restarted, poll() came too late) fails with CommitFailedError; the consumer
    rejoins in its next poll()."""
    return errors.CommitFailedError(
        f"group {group}: commit refused, this consumer is no longer a member of the group "
        f"({reason}). It rejoins in the next poll(); records after the last committed "
        "offsets may be delivered again."
    )


class OffsetCommitter:
    """Commits positions for a consumer's group: sync, async (on the commit thread) and
    automatically; `subscribed()` is the group member while the consumer is subscribed,
    else None."""

    def __init__(
        self,
        shared: SharedFetchState,
        options: ConsumerOptions,
        calls: BrokerCalls,
        subscribed: Callable[[], GroupMember | None],
    ) -> None:
        self._shared = shared
        self._options = options
        self._calls = calls
        self._subscribed = subscribed
        self._timeout_s = options.request_timeout_ms / 1000
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()
        self._next_auto_commit = time.monotonic() + options.auto_commit_interval_ms / 1000

    def consumed(self, tps: Iterable[TopicPartition] | None = None) -> Offsets:
        """The current position of each (assigned, resolved) partition, as commit offsets."""
        with self._shared.lock:
            states = self._shared.positions.states
            chosen = states if tps is None else [tp for tp in tps if tp in states]
            return {
                tp: OffsetAndMetadata(states[tp].position)  # type: ignore[arg-type]
                for tp in chosen
                if states[tp].position is not None
            }

    # --- commits -----------------------------------------------------------------------------

    def commit_sync(self, offsets: Offsets, timeout_s: float) -> None:
        """Commit `offsets` and wait for the broker to store them, retrying retriable
        failures for up to `timeout_s`; raises the error met."""
        deadline = time.monotonic() + timeout_s
        backoff = Backoff(self._options.retry_backoff_ms / 1000)
        while True:
            try:
                self._send(offsets)
                return
            except errors.LogStoreError as exc:
                delay = backoff.next()
                if not is_retriable(exc) or time.monotonic() + delay >= deadline:
                    raise
                log.debug("commit failed, retrying in %.2fs: %s", delay, exc)
                time.sleep(delay)

    def submit(self, offsets: Offsets, callback: CommitCallback | None) -> Future[None]:
        """Commit `offsets` once on the commit thread, after the commits submitted before,
        then call `callback(offsets, exception or None)` there; the Future's result()
        raises the commit's error."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="logstore-consumer-commit")
        future = self._executor.submit(self._commit_once, offsets, callback)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _commit_once(self, offsets: Offsets, callback: CommitCallback | None) -> None:
        error: Exception | None = None
        try:
            self._send(offsets)
        except errors.LogStoreError as exc:
            error = exc
        if callback is not None:
            try:
                callback(offsets, error)
            except Exception:
                log.exception("commit callback failed")
        if error is not None:
            raise error

    def _send(self, offsets: Offsets) -> None:
        group = self._options.require_group("commit")
        member = self._subscribed()
        member_id, epoch, offsets = _as_committer(group, member, offsets)
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
                for topic, ps in by_topic(offsets.items()).items()
            ],
        )
        try:
            # A coordinator that refused it (NotCoordinatorError) did not store it: it is
            # sent to the new coordinator within the request timeout.
            response = self._calls.group_call("CommitOffsets", request)
        except REJOIN_ERRORS as exc:
            if member is not None and member_id:
                member.commit_refused(member_id, epoch, str(exc))
            raise member_commit_failed(group, str(exc)) from exc
        for topic in response.topics:
            for p in topic.partitions:
                error = partition_error(p.error)
                if error is not None:
                    raise error

    # --- auto-commit -------------------------------------------------------------------------

    def auto_commit_enabled(self) -> bool:
        return self._options.enable_auto_commit and self._options.group_id is not None

    def maybe_auto_commit(self) -> None:
        """Commit every position asynchronously if auto_commit_interval_ms has passed
        since the last time (called by poll())."""
        if not self.auto_commit_enabled() or time.monotonic() < self._next_auto_commit:
            return
        self._next_auto_commit = time.monotonic() + self._options.auto_commit_interval_ms / 1000
        offsets = self.consumed()
        if offsets:
            self.submit(offsets, _log_auto_commit)

    def commit_revoked(self, revoked: set[TopicPartition], closing: bool) -> None:
        """Before `revoked` are given back: wait for pending async commits, then commit
        their positions with auto-commit (not while `closing`, which has just committed)."""
        # An older async commit landing after this one would move the offsets back.
        self.await_pending(CLOSE_JOIN_S if closing else self._timeout_s)
        if self.auto_commit_enabled() and not closing:
            self._commit_quietly(self.consumed(revoked), self._timeout_s)

    def commit_dropped(self, removed: set[TopicPartition]) -> None:
        """As Kafka's assign(): with auto-commit, the positions of partitions it drops are
        committed asynchronously."""
        if removed and self.auto_commit_enabled():
            offsets = self.consumed(removed)
            if offsets:
                self.submit(offsets, _log_auto_commit)

    def commit_at_close(self, timeout_s: float) -> None:
        """With auto-commit, commit every position, waiting up to `timeout_s`."""
        if self.auto_commit_enabled():
            self._commit_quietly(self.consumed(), timeout_s)

    def _commit_quietly(self, offsets: Offsets, timeout_s: float) -> None:
        try:
            self.commit_sync(offsets, timeout_s)
        except errors.LogStoreError as exc:
            log.warning("auto-commit of %d partitions failed: %s", len(offsets), exc)

    # --- committed offsets and lifecycle -----------------------------------------------------

    def fetch_committed(self, tps: Iterable[TopicPartition]) -> Offsets:
        """What the group has committed for `tps` (partitions without a commit left out)."""
        group = self._options.require_group("committed offsets")
        request = pb.FetchCommittedOffsetsRequest(
            group_id=group,
            topics=[
                pb.TopicPartitions(topic=topic, partitions=[p for p, _ in ps])
                for topic, ps in by_topic((tp, None) for tp in tps).items()
            ],
        )
        return {
            (o.topic, o.partition): OffsetAndMetadata(o.offset, o.metadata, o.commit_timestamp)
            for o in self._calls.group_call("FetchCommittedOffsets", request).offsets
            if o.offset >= 0
        }

    def await_pending(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the async commits submitted so far."""
        if self._pending:
            wait_futures(list(self._pending), timeout=timeout_s)

    def close(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for pending async commits, then stop the commit thread
        (cancelling what has not started)."""
        self.await_pending(timeout_s)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


def _as_committer(
    group: str, member: GroupMember | None, offsets: Offsets
) -> tuple[str, int, Offsets]:
    """(member id, member epoch, offsets) of a commit.

    A group member commits as itself and only partitions it owns now: a partition it
    was never given, or gave up in a rebalance, may be another member's, whose commits
    must not be overwritten (the broker refuses them too). A member that has lost its
    partitions commits nothing and raises CommitFailedError. Outside the group protocol
    (assign()) the commit carries "" and -1, which the broker accepts only while the
    group has no members.
    """
    if member is None:
        return "", -1, offsets
    member_id, epoch, owned, lost = member.commit_identity()
    if lost is not None and offsets:
        raise member_commit_failed(group, lost)
    foreign = sorted(set(offsets) - owned)
    if foreign:
        log.info("group %s: not committing %s: not owned by this member", group, foreign)
    return member_id, epoch, {tp: om for tp, om in offsets.items() if tp in owned}


def _log_auto_commit(offsets: Offsets, exc: Exception | None) -> None:
    if exc is not None:
        log.warning("auto-commit of %d partitions failed: %s", len(offsets), exc)

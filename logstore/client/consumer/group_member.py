"""The heartbeat thread: a consumer's membership of its group, over gRPC.

The decisions live in `member_state.MemberState`; this module sends what it says is due
to the group's coordinator (through a `CoordinatorRouter`, which finds it again when it
moves), feeds the answers back, and applies assignment changes on the application thread
(inside poll()) through the consumer's `Rebalance` callbacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import grpc

from logstore import errors
from logstore.client._connection import CoordinatorRouter, is_retriable
from logstore.client.consumer.member_state import JOIN_EPOCH, LEAVE_EPOCH, MemberState
from logstore.client.consumer.options import ConsumerOptions
from logstore.client.consumer.progress import ProgressMonitor
from logstore.types import TopicPartition
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger("logstore.client.consumer")

_GROUP_RPC = {JOIN_EPOCH: "JoinGroup", LEAVE_EPOCH: "LeaveGroup"}


class ConsumerRebalanceListener:
    """Callbacks around changes of a subscription's assignment; override what you need.

    All run in the application thread, inside `poll()` (and `unsubscribe()` / `close()`).
    In `on_partitions_revoked` the partitions are still owned, so committing their
    positions there works; in `on_partitions_assigned` they are owned, so seeking works.
    In `on_partitions_lost` they may already belong to another member, so they cannot be
    committed.
    """

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called before `revoked` partitions stop being read."""

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Called after `assigned` partitions became owned, before they are read."""

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Called before `lost` partitions stop being read, when the group took them
        without a rebalance (the member was fenced, expired, or left the group because
        poll() stalled). By default the same as `on_partitions_revoked`, as in Kafka."""
        self.on_partitions_revoked(lost)


class Rebalance(NamedTuple):
    """How the consumer applies a change of assignment, on the application thread.

    `revoke` commits (with auto-commit), calls the listener while the partitions are still
    owned, then stops reading them; `lose` calls the listener without committing, then stops
    reading them; `add` starts reading, then calls the listener. Each is given the
    partitions and the listener (or None); `revoke` and `lose` stop reading the partitions
    even when the listener raises.
    """

    revoke: Callable[[set[TopicPartition], ConsumerRebalanceListener | None], None]
    lose: Callable[[set[TopicPartition], ConsumerRebalanceListener | None], None]
    add: Callable[[set[TopicPartition], ConsumerRebalanceListener | None], None]


class GroupMember:
    """Membership of a consumer group through the coordinator's heartbeat protocol.

    A heartbeat thread (started by the first subscribe()) runs `MemberState.due()`: joins,
    heartbeats and leaves; it only talks to the broker and records the newest assignment.
    The application thread applies it in `poll_hook()`: it releases revoked partitions
    (then a heartbeat goes out at once, so the coordinator can hand them on) and takes
    added ones. Every `metadata_max_age_ms` it also checks that the subscribed topics
    exist, reporting the missing ones to the progress monitor; only while holding `_cond`,
    and only topics subscribed at that moment, so no report outlives its subscription.

    The heartbeat thread may take the consumer's buffer lock (through `wake`) while it
    holds `_cond`; nothing takes `_cond` while holding the buffer lock.
    """

    def __init__(
        self,
        stub: Any,
        coordinators: CoordinatorRouter,
        options: ConsumerOptions,
        rebalance: Rebalance,
        wake: Callable[[], None],
        progress: ProgressMonitor,
    ) -> None:
        assert options.group_id is not None
        self._group = options.group_id
        #: topic listings go here (any broker answers them)
        self._stub = stub
        self._coordinators = coordinators
        self._options = options
        self._rebalance = rebalance
        self._progress = progress
        # A heartbeat answered after the session would have lapsed is of no use; the bound
        # covers finding a moved coordinator again and the retries there.
        self._rpc_timeout_s = min(options.request_timeout_ms, options.session_timeout_ms) / 1000
        self._cond = threading.Condition()
        self._state = MemberState(
            self._group,
            heartbeat_interval_ms=options.heartbeat_interval_ms,
            session_timeout_ms=options.session_timeout_ms,
            max_poll_interval_ms=options.max_poll_interval_ms,
            retry_backoff_ms=options.retry_backoff_ms,
            on_news=wake,
        )
        self._thread: threading.Thread | None = None
        self._listener: ConsumerRebalanceListener | None = None
        #: when the subscribed topics are next checked for existence (monotonic s)
        self._check_topics_at = 0.0
        #: the subscribed topics last reported missing (guarded by `_cond`)
        self._missing: frozenset[str] = frozenset()
        # The check runs just after a heartbeat went out and is bounded by one interval,
        # so it never holds back the next heartbeat by more than that heartbeat's answer.
        self._check_timeout_s = min(self._rpc_timeout_s, options.heartbeat_interval_ms / 1000)

    # --- the application thread -----------------------------------------------------------

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener | None) -> None:
        with self._cond:
            self._state.subscribe(tuple(topics))
            self._listener = listener
            self._check_topics_at = 0.0
            self._report_missing(self._missing & frozenset(topics))
            self._cond.notify_all()
        if self._thread is None:
            name = self._options.client_id or self._group
            self._thread = threading.Thread(
                target=self._run, name=f"logstore-consumer-heartbeat[{name}]", daemon=True
            )
            self._thread.start()

    def subscription(self) -> list[str]:
        with self._cond:
            return list(self._state.topics)

    def has_news(self) -> bool:
        """poll_hook() has something to apply (read without the lock)."""
        return self._state.news

    def commit_identity(self) -> tuple[str, int, frozenset[TopicPartition], str | None]:
        with self._cond:
            return self._state.commit_identity()

    def commit_refused(self, member_id: str, epoch: int, reason: str) -> None:
        """The coordinator refused a commit made as (`member_id`, `epoch`) because it no
        longer knows that member: give up the partitions and rejoin."""
        with self._cond:
            self._state.commit_refused(member_id, epoch, reason)
            self._cond.notify_all()

    def poll_hook(self) -> None:
        """Apply what the heartbeat thread recorded: drop lost partitions (then rejoin), or
        move to the newest assignment; raise (once) a heartbeat error the application has
        not seen. Counts as a poll for max_poll_interval_ms."""
        with self._cond:
            news = self._state.take_news()
            listener = self._listener
        if news.lost is not None:
            self._drop_lost(news.owned, listener)
        elif news.target is not None:
            self._apply(news.owned, news.target, listener)
        if news.error is not None:
            raise news.error

    def _drop_lost(
        self, owned: frozenset[TopicPartition], listener: ConsumerRebalanceListener | None
    ) -> None:
        log.info("group %s: dropping lost partitions %s; rejoining", self._group, sorted(owned))
        try:
            if owned:
                self._rebalance.lose(set(owned), listener)
        finally:
            with self._cond:
                self._state.drop_lost()
                self._cond.notify_all()

    def _apply(
        self,
        owned: frozenset[TopicPartition],
        target: frozenset[TopicPartition],
        listener: ConsumerRebalanceListener | None,
    ) -> None:
        """Release `owned - target`, report that at once, then take `target - owned`.

        A listener's exception does not stop the change: it is raised once both steps ran.
        """
        revoked, added = owned - target, target - owned
        failure: Exception | None = None
        if revoked:
            log.info("group %s: revoking %s", self._group, sorted(revoked))
            try:
                self._rebalance.revoke(set(revoked), listener)
            except Exception as exc:
                failure = exc
            self._set_owned(owned - revoked, prompt=True)
        if added:
            log.info("group %s: assigned %s", self._group, sorted(added))
            self._set_owned(target, prompt=False)
            try:
                self._rebalance.add(set(added), listener)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def _set_owned(self, owned: frozenset[TopicPartition], prompt: bool) -> None:
        with self._cond:
            self._state.set_owned(owned, prompt)
            self._cond.notify_all()

    def leave(self, timeout_s: float) -> None:
        """Give up every partition (revoking it, or dropping it as lost if the group may
        have taken it already) and leave the group; wait up to `timeout_s` for that."""
        with self._cond:
            owned, lost, listener = self._state.owned, self._state.lost, self._listener
        try:
            if owned and lost is None:
                self._rebalance.revoke(set(owned), listener)
            elif owned:
                self._rebalance.lose(set(owned), listener)
        finally:
            with self._cond:
                # Only now: the revocation may commit, which needs us still in the group.
                self._state.clear()
                self._report_missing(frozenset())
                self._cond.notify_all()
                if self._thread is not None:
                    self._cond.wait_for(self._state.out_of_group, timeout_s)

    def close(self, timeout_s: float) -> None:
        """Leave, then stop the heartbeat thread."""
        try:
            self.leave(timeout_s)
        finally:
            with self._cond:
                self._state.stopping = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout_s)

    # --- the heartbeat thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                request = self._next_request()
            if request is None:
                return
            self._exchange(request)
            self._maybe_check_topics()

    def _next_request(self) -> pb.GroupHeartbeatRequest | None:
        """Wait until a request is due and return it; None once stopping and out of the
        group. Caller holds `_cond`."""
        while True:
            due = self._state.due()
            if due.stop:
                return None
            if due.epoch is not None:
                return self._request(due.epoch)
            self._cond.wait(None if due.wait_ms is None else due.wait_ms / 1000)

    def _request(self, epoch: int) -> pb.GroupHeartbeatRequest:
        state = self._state
        if epoch == LEAVE_EPOCH:
            return pb.GroupHeartbeatRequest(
                group_id=self._group, member_id=state.member_id, member_epoch=LEAVE_EPOCH
            )
        options = self._options
        return pb.GroupHeartbeatRequest(
            group_id=self._group,
            member_id=state.member_id,
            member_epoch=epoch,
            subscription=pb.Subscription(topics=list(state.topics)),
            assignor=options.group_remote_assignor or "",
            session_timeout_ms=options.session_timeout_ms,
            rebalance_timeout_ms=options.max_poll_interval_ms,
            client_id=options.client_id,
            owned=assignment_proto(state.owned),
        )

    def _exchange(self, request: pb.GroupHeartbeatRequest) -> None:
        method = _GROUP_RPC.get(request.member_epoch, "Heartbeat")
        try:
            response = self._coordinators.call(self._group, method, request, self._rpc_timeout_s)
        except errors.LogStoreError as exc:
            self._on_failure(request, exc)
        except Exception as exc:  # a fault here must not end the membership
            log.exception("group %s: %s failed", self._group, method)
            self._on_failure(request, errors.BrokerUnavailableError(f"{method} failed: {exc!r}"))
        else:
            self._progress.broker_answered()
            assignment = frozenset(
                (t.topic, p) for t in response.assignment.topics for p in t.partitions
            )
            with self._cond:
                self._state.answered(
                    request.member_epoch,
                    response.member_id,
                    response.member_epoch,
                    response.heartbeat_interval_ms,
                    assignment,
                )
                self._cond.notify_all()

    def _on_failure(self, request: pb.GroupHeartbeatRequest, exc: errors.LogStoreError) -> None:
        if isinstance(exc, errors.BrokerUnavailableError):
            self._progress.broker_failed(str(exc))
        with self._cond:
            self._state.failed(request.member_epoch, exc, is_retriable(exc))
            self._cond.notify_all()

    def _maybe_check_topics(self) -> None:
        """Every metadata_max_age_ms while subscribed: report subscribed topics the broker
        does not know (the coordinator silently assigns nothing of them).

        The answer is awaited without `_cond` (for at most one heartbeat interval), so the
        subscription may have changed meanwhile: only topics still subscribed are reported.
        """
        now = time.monotonic()
        with self._cond:
            topics = self._state.topics
            if not topics or now < self._check_topics_at:
                return
            self._check_topics_at = now + self._options.metadata_max_age_ms / 1000
        try:
            listing = self._stub.ListTopics(pb.ListTopicsRequest(), timeout=self._check_timeout_s)
        except grpc.RpcError as exc:
            log.debug("group %s: listing topics failed: %s", self._group, exc)
            return
        unknown = frozenset(topics) - {topic.name for topic in listing.topics}
        with self._cond:
            self._report_missing(unknown & frozenset(self._state.topics))

    def _report_missing(self, topics: frozenset[str]) -> None:
        """Report `topics` as the subscribed ones missing; caller holds `_cond`, so a report
        and a change of subscription never cross."""
        self._missing = topics
        self._progress.set_missing("subscribed", topics)


def assignment_proto(partitions: Iterable[TopicPartition]) -> pb.Assignment:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return pb.Assignment(
        topics=[pb.TopicPartitions(topic=t, partitions=ps) for t, ps in by_topic.items()]
    )

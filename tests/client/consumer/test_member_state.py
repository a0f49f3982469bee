"""Group membership state, without a broker: on a ManualClock, nothing sleeps."""

from __future__ import annotations

import pytest

from logstore import errors
from logstore.client.consumer.member_state import (
    JOIN_EPOCH,
    LEAVE_EPOCH,
    MemberState,
)
from logstore.clock import ManualClock
from logstore.types import TopicPartition

A: TopicPartition = ("t", 0)
B: TopicPartition = ("t", 1)


class Member:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.news = 0
        self.state = MemberState(
            "g",
            heartbeat_interval_ms=3000,
            session_timeout_ms=10_000,
            max_poll_interval_ms=60_000,
            clock=self.clock,
            on_news=self._count,
        )

    def _count(self) -> None:
        self.news += 1

    def join(self, assignment: frozenset[TopicPartition] = frozenset({A})) -> None:
        self.state.subscribe(("t",))
        due = self.state.due()
        assert due.epoch == JOIN_EPOCH
        self.state.answered(JOIN_EPOCH, "m-1", 1, 3000, assignment)


def test_a_member_joins_then_heartbeats_at_the_interval() -> None:
    member = Member()
    state = member.state
    assert state.phase == "left"
    state.subscribe(("t",))
    assert state.phase == "joining"
    assert state.due().epoch == JOIN_EPOCH and state.in_flight
    state.answered(JOIN_EPOCH, "m-1", 1, 2000, frozenset({A}))
    assert (state.member_id, state.epoch, state.interval_ms) == ("m-1", 1, 2000)
    assert state.phase == "rebalancing" and member.news == 1
    assert state.due().wait_ms == 2000
    member.clock.advance(2000)
    assert state.due().epoch == 1


def test_poll_takes_the_new_assignment_once() -> None:
    member = Member()
    member.join()
    news = member.state.take_news()
    assert (news.target, news.owned, news.lost) == (frozenset({A}), frozenset(), None)
    member.state.set_owned(frozenset({A}), prompt=False)
    assert member.state.phase == "stable"
    assert member.state.take_news().target is None


def test_an_answer_repeating_what_is_owned_changes_nothing() -> None:
    member = Member()
    member.join()
    member.state.take_news()
    member.state.set_owned(frozenset({A}), prompt=False)
    member.clock.advance(3000)
    assert member.state.due().epoch == 1
    member.state.answered(1, "m-1", 2, 3000, frozenset({A}))
    assert (member.state.epoch, member.state.target, member.news) == (2, None, 1)


def test_a_release_is_reported_at_once() -> None:
    member = Member()
    member.join(frozenset({A, B}))
    member.state.set_owned(frozenset({A, B}), prompt=False)
    assert member.state.due().wait_ms == 3000
    member.state.set_owned(frozenset({A}), prompt=True)
    assert member.state.due().epoch == 1


@pytest.mark.parametrize(
    "error", [errors.UnknownMemberIdError("gone"), errors.FencedMemberEpochError("old")]
)
def test_a_fenced_member_loses_its_partitions_and_rejoins_after_poll_dropped_them(
    error: errors.LogStoreError,
) -> None:
    member = Member()
    member.join()
    member.state.set_owned(frozenset({A}), prompt=False)
    member.clock.advance(3000)
    member.state.due()
    member.state.failed(1, error, retriable=False)
    state = member.state
    assert (state.epoch, state.phase, state.commit_identity()[2]) == (JOIN_EPOCH, "joining", set())
    assert state.due().wait_ms is None  # nothing is sent while the lost partitions are read
    assert state.take_news().lost == str(error)
    state.drop_lost()
    assert state.due().epoch == JOIN_EPOCH


def test_a_retriable_failure_backs_off_and_keeps_the_membership() -> None:
    member = Member()
    member.join()
    member.clock.advance(3000)
    member.state.due()
    member.state.failed(1, errors.BrokerUnavailableError("down"), retriable=True)
    assert member.state.epoch == 1
    assert member.state.due().wait_ms == 100  # retry_backoff_ms


def test_a_refused_heartbeat_is_raised_once_by_poll() -> None:
    member = Member()
    member.join()
    member.state.take_news()
    member.clock.advance(3000)
    member.state.due()
    refused = errors.AuthorizationError("no")
    member.state.failed(1, refused, retriable=False)
    assert member.state.take_news().error is refused
    assert member.state.take_news().error is None


def test_a_silent_session_marks_the_partitions_lost() -> None:
    member = Member()
    member.join()
    member.state.set_owned(frozenset({A}), prompt=False)
    member.clock.advance(3000)
    assert member.state.due().epoch == 1  # sent, never answered
    member.state.in_flight = False
    member.clock.advance(10_001)
    member.state.due()
    assert member.state.lost is not None and member.state.epoch == JOIN_EPOCH


def test_a_stalled_poll_leaves_the_group() -> None:
    member = Member()
    member.join()
    for _ in range(30):  # heartbeats answered, but poll() never called
        member.clock.advance(3000)
        due = member.state.due()
        if due.epoch == LEAVE_EPOCH:
            break
        assert due.epoch is not None
        member.state.answered(due.epoch, "m-1", 1, 3000, frozenset({A}))
    assert due.epoch == LEAVE_EPOCH
    assert member.state.lost is not None and "max_poll_interval_ms" in member.state.lost


def test_a_commit_refused_for_an_older_epoch_is_ignored() -> None:
    member = Member()
    member.join()
    member.state.commit_refused("m-1", 0, "stale")
    assert member.state.lost is None
    member.state.commit_refused("m-1", 1, "unknown member")
    assert member.state.lost is not None and member.state.epoch == JOIN_EPOCH


def test_unsubscribing_leaves_then_stops() -> None:
    member = Member()
    member.join()
    member.state.clear()
    assert member.state.due().epoch == LEAVE_EPOCH
    member.state.answered(LEAVE_EPOCH, "", 0, 0, frozenset())
    assert member.state.out_of_group() and member.state.phase == "left"
    member.state.stopping = True
    assert member.state.due().stop

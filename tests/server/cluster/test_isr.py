"""The leader's follower tracking: high watermark, ISR shrink after the lag time, expansion
once caught up, broker epochs. Time runs on a ManualClock's monotonic reading."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.errors import BrokerNotRegisteredError
from logstore.server.cluster.isr import FollowerTracker

LAG_MS = 30_000
LEADER = 1
EPOCHS = {1: 10, 2: 20, 3: 30}


class Partition:
    """A leader's log end offset, a clock, and the tracker the leader keeps."""

    def __init__(self, isr: tuple[int, ...] = (1, 2, 3)) -> None:
        self.clock = ManualClock()
        self.leo = 0
        self.isr = isr
        self.tracker = FollowerTracker(LEADER, LAG_MS, self.clock.monotonic_ms())

    def append(self, records: int) -> None:
        self.leo += records

    def fetch(self, follower: int, offset: int, epoch: int | None = None) -> None:
        self.tracker.record_fetch(
            follower, offset, self.leo, self.clock.monotonic_ms(), epoch or EPOCHS[follower]
        )

    def hw(self) -> int:
        return self.tracker.high_watermark(self.isr, self.leo)

    def lagging(self) -> set[int]:
        return self.tracker.out_of_sync(self.isr, self.clock.monotonic_ms())

    def joining(self, hw: int, epoch_start: int = 0) -> set[int]:
        return self.tracker.caught_up((1, 2, 3), self.isr, hw, epoch_start, EPOCHS)


# --- high watermark --------------------------------------------------------------------------


def test_high_watermark_is_the_least_log_end_offset_over_the_isr() -> None:
    p = Partition()
    p.append(10)
    p.fetch(2, 0)
    p.fetch(3, 0)
    assert p.hw() == 0
    p.fetch(2, 10)
    assert p.hw() == 0  # 3 still has nothing
    p.fetch(3, 7)
    assert p.hw() == 7
    p.fetch(3, 10)
    assert p.hw() == 10
    p.append(5)
    assert p.hw() == 10  # the leader's new records are not replicated yet
    p.fetch(2, 15)
    p.fetch(3, 15)
    assert p.hw() == 15


def test_a_follower_outside_the_isr_does_not_hold_the_high_watermark_back() -> None:
    p = Partition(isr=(1, 2))
    p.append(10)
    p.fetch(2, 10)
    p.fetch(3, 1)
    assert p.hw() == 10


def test_the_leader_alone() -> None:
    p = Partition(isr=(1,))
    p.append(4)
    assert p.hw() == 4


def test_an_isr_follower_that_never_fetched_counts_as_zero() -> None:
    """A new leader knows nothing of its followers: the caller keeps the old HW."""
    p = Partition()
    p.append(10)
    p.fetch(2, 10)
    assert p.hw() == 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([2, 3]), st.integers(0, 5), st.integers(0, 5)), max_size=30)
)
def test_high_watermark_is_min_over_isr(steps: list[tuple[int, int, int]]) -> None:
    """Whatever the order of appends and fetches, HW = min(leader LEO, follower offsets)."""
    p = Partition()
    offsets: dict[int, int] = {}
    for follower, appended, behind in steps:
        p.append(appended)
        offset = max(0, p.leo - behind)
        p.fetch(follower, offset)
        offsets[follower] = offset
        expected = min([p.leo] + [offsets.get(f, 0) for f in (2, 3)])
        assert p.hw() == expected


# --- shrinking the ISR -----------------------------------------------------------------------


def test_a_new_leader_gives_its_followers_the_lag_time() -> None:
    p = Partition()
    p.append(5)
    p.clock.advance(LAG_MS)
    assert p.lagging() == set()
    p.clock.advance(1)
    assert p.lagging() == {2, 3}


def test_a_follower_that_stops_fetching_leaves_after_the_lag_time_and_not_before() -> None:
    p = Partition()
    for _ in range(5):  # both keep up for a while
        p.append(3)
        p.clock.advance(1000)
        p.fetch(2, p.leo)
        p.fetch(3, p.leo)
    caught_up_at = p.clock.monotonic_ms()
    for _ in range(40):  # then 3 stops; 2 keeps fetching everything
        p.append(1)
        p.clock.advance(1000)
        p.fetch(2, p.leo)
        expected = {3} if p.clock.monotonic_ms() - caught_up_at > LAG_MS else set()
        assert p.lagging() == expected


def test_a_follower_always_one_fetch_behind_stays_in_sync() -> None:
    """Kafka's rule: reaching the leader's log end offset of the previous fetch counts as
    caught up at that previous fetch, so a steady stream does not drop a keeping-up follower."""
    p = Partition()
    for _ in range(100):
        previous_leo = p.leo
        p.append(2)
        p.clock.advance(1000)
        p.fetch(2, previous_leo)  # never equal to the LEO at its fetch
        p.fetch(3, p.leo)
        assert p.lagging() == set()


def test_a_follower_falling_further_behind_leaves() -> None:
    """Fetching steadily but never reaching what the leader had at the previous fetch."""
    p = Partition()
    p.fetch(2, 0)
    for step in range(1, 60):
        p.append(10)
        p.clock.advance(1000)
        p.fetch(2, step)  # 2 replicates a tenth of what is appended
        p.fetch(3, p.leo)
        # 2 caught up last at its first fetch, at time 0
        assert p.lagging() == ({2} if step * 1000 > LAG_MS else set())


def test_an_idle_partition_keeps_a_follower_that_has_everything() -> None:
    p = Partition()
    p.append(5)
    p.fetch(2, 5)
    p.fetch(3, 4)
    p.clock.advance(LAG_MS + 1)
    assert p.tracker.out_of_sync(p.isr, p.clock.monotonic_ms(), p.leo) == {3}
    assert p.tracker.out_of_sync(p.isr, p.clock.monotonic_ms()) == {2, 3}


def test_the_leader_is_never_out_of_sync() -> None:
    p = Partition()
    p.clock.advance(10 * LAG_MS)
    assert LEADER not in p.lagging()
    with pytest.raises(ValueError, match="leads"):
        p.fetch(LEADER, 0, epoch=10)


def test_followers_outside_the_isr_are_not_reported_lagging() -> None:
    p = Partition(isr=(1, 2))
    p.clock.advance(LAG_MS + 1)
    assert p.lagging() == {2}


# --- expanding the ISR -----------------------------------------------------------------------


def test_a_follower_rejoins_once_it_reaches_the_high_watermark() -> None:
    p = Partition(isr=(1, 2))
    p.append(10)
    p.fetch(2, 10)
    hw = p.hw()
    assert hw == 10
    p.fetch(3, 4)
    assert p.joining(hw) == set()
    p.fetch(3, 9)
    assert p.joining(hw) == set()
    p.fetch(3, 10)
    assert p.joining(hw) == {3}


def test_a_follower_must_also_reach_the_start_of_the_leader_epoch() -> None:
    """Below the leader epoch's start offset, it may still hold an old leader's records."""
    p = Partition(isr=(1, 2))
    p.append(20)
    p.fetch(3, 12)
    assert p.joining(hw=10, epoch_start=15) == set()
    p.fetch(3, 15)
    assert p.joining(hw=10, epoch_start=15) == {3}


def test_a_follower_that_never_fetched_does_not_join() -> None:
    p = Partition(isr=(1,))
    assert p.joining(hw=0) == set()
    p.fetch(2, 0)
    assert p.joining(hw=0) == {2}


def test_only_the_registered_broker_epoch_joins() -> None:
    """KIP-903: a fetch by another incarnation than the registered one does not count."""
    p = Partition(isr=(1, 2))
    p.append(5)
    p.fetch(3, 5, epoch=29)
    assert p.joining(hw=5) == set()
    p.fetch(3, 5, epoch=30)
    assert p.joining(hw=5) == {3}
    assert p.tracker.caught_up((1, 2, 3), p.isr, 5, 0, lambda broker: None) == set()
    assert p.tracker.caught_up((1, 2, 3), p.isr, 5, 0, lambda broker: 30) == {3}


def test_members_and_the_leader_are_not_reported_joining() -> None:
    p = Partition(isr=(1, 2, 3))
    p.fetch(2, 0)
    p.fetch(3, 0)
    assert p.joining(hw=0) == set()


# --- broker epochs ---------------------------------------------------------------------------


def test_a_restarted_follower_is_forgotten() -> None:
    """A newer broker epoch: the broker restarted, maybe with an empty disk, so its old
    catch-up time no longer counts."""
    p = Partition()
    p.append(10)
    p.fetch(2, 10, epoch=20)
    p.fetch(3, 10)
    p.append(1)
    p.clock.advance(1000)
    p.fetch(2, 0, epoch=25)  # restarted and empty
    assert p.tracker.follower(2).log_end_offset == 0
    assert p.lagging() == {2}  # not caught up since the restart
    assert p.hw() == 0
    p.fetch(2, 11, epoch=25)
    assert p.lagging() == set()


def test_a_stale_incarnation_is_refused() -> None:
    p = Partition()
    p.fetch(2, 0, epoch=20)
    with pytest.raises(BrokerNotRegisteredError, match="epoch 19"):
        p.fetch(2, 0, epoch=19)
    assert p.tracker.follower(2).broker_epoch == 20


def test_a_new_tracker_forgets_the_previous_leadership() -> None:
    """Each leadership starts afresh: followers count as caught up at its start."""
    clock = ManualClock()
    first = FollowerTracker(LEADER, LAG_MS, clock.monotonic_ms())
    first.record_fetch(2, 3, 3, clock.monotonic_ms(), 20)
    clock.advance(2 * LAG_MS)
    assert first.out_of_sync((1, 2), clock.monotonic_ms()) == {2}
    second = FollowerTracker(LEADER, LAG_MS, clock.monotonic_ms())
    assert second.out_of_sync((1, 2), clock.monotonic_ms()) == set()
    assert second.follower(2).log_end_offset is None
    assert second.high_watermark((1, 2), 3) == 0

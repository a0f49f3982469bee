"""The reassignment throttle's token bucket, on a manual clock (no sleeping)."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.server.cluster.throttle import FETCH_SPAN_S, TokenBucket

MB = 1_000_000


def test_a_full_bucket_lets_one_burst_through_then_waits_out_the_debt() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1000, clock=clock)  # 1000 B/s, a burst of 1 s
    assert bucket.delay_s() == 0
    bucket.record(1500)  # one fetch may overshoot: 500 bytes of debt
    assert bucket.delay_s() == pytest.approx(0.5)
    clock.advance(499)
    assert bucket.delay_s() == pytest.approx(0.001)
    clock.advance(1)
    assert bucket.delay_s() == 0
    bucket.record(1)
    assert bucket.delay_s() == pytest.approx(0.001)


def test_an_idle_bucket_holds_at_most_its_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1000, burst_s=2.0, clock=clock)
    clock.advance(3_600_000)  # an hour idle earns no more than 2 s worth
    bucket.record(2000)
    assert bucket.delay_s() == 0
    bucket.record(1000)
    assert bucket.delay_s() == pytest.approx(1.0)


def test_rate_zero_is_unthrottled() -> None:
    clock = ManualClock()
    bucket = TokenBucket(0, clock=clock)
    bucket.record(10 * MB)
    assert bucket.delay_s() == 0
    assert bucket.fetch_size(1 * MB) == 1 * MB


def test_a_throttled_fetch_asks_for_a_tenth_of_a_second_of_the_rate() -> None:
    bucket = TokenBucket(1 * MB, clock=ManualClock())
    assert FETCH_SPAN_S == 0.1
    assert bucket.fetch_size(1024 * 1024) == 100_000
    assert bucket.fetch_size(50_000) == 50_000  # never more than a follower's fetch
    bucket.set_rate(5)
    assert bucket.fetch_size(50_000) == 1  # the leader sends the first batch whole anyway


def test_changing_the_rate_keeps_the_debt() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1000, clock=clock)
    bucket.record(3000)  # 2000 bytes of debt
    bucket.set_rate(4000)  # raised: the debt is repaid four times as fast
    assert bucket.delay_s() == pytest.approx(0.5)
    bucket.set_rate(1000)  # and lowering it again grants nothing
    assert bucket.delay_s() == pytest.approx(2.0)
    clock.advance(2000)
    assert bucket.delay_s() == 0
    # Lowering the rate shrinks the burst a full bucket holds.
    clock.advance(10_000)
    bucket.set_rate(100)
    bucket.record(101)
    assert bucket.delay_s() == pytest.approx(0.01)


def test_a_bucket_throttled_again_starts_full() -> None:
    clock = ManualClock()
    bucket = TokenBucket(1000, clock=clock)
    bucket.record(5000)
    bucket.set_rate(0)
    assert bucket.delay_s() == 0
    bucket.set_rate(2000)  # a new throttle: a fresh burst
    bucket.record(2000)
    assert bucket.delay_s() == 0


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1)
    with pytest.raises(ValueError):
        TokenBucket(1, burst_s=0)
    bucket = TokenBucket(1)
    with pytest.raises(ValueError):
        bucket.set_rate(-5)
    with pytest.raises(ValueError):
        bucket.record(-1)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.integers(1, 10 * MB),
    fetches=st.lists(st.integers(0, 4 * MB), min_size=1, max_size=200),
)
@example(rate=835, fetches=[1022, 315594, 4000000, 0])  # float tokens left 5e-13 s of debt
def test_a_fetcher_that_obeys_the_bucket_stays_within_its_rate(
    rate: int, fetches: list[int]
) -> None:
    """A fetch loop that waits out every delay, on the clock's whole milliseconds: the
    bytes fetched before the last fetch are at most the burst plus the rate times the time
    it took (so the rate holds, give or take one fetch), and it took no longer than the
    debt needed (to the millisecond)."""
    clock = ManualClock()
    bucket = TokenBucket(rate, clock=clock)
    start = clock.monotonic_ms()
    total = 0
    for size in fetches:
        delay_s = bucket.delay_s()
        if delay_s > 0:
            delay_ms = round(delay_s * 1000)  # whole milliseconds, rounded up
            assert delay_ms >= 1 and abs(delay_ms - delay_s * 1000) < 1e-6
            clock.advance(delay_ms)
            assert bucket.delay_s() == 0
        bucket.record(size)
        total += size
    elapsed_s = (clock.monotonic_ms() - start) / 1000
    before_last = total - fetches[-1]
    slack = 1e-9 * (total + bucket.burst_bytes)
    assert before_last <= bucket.burst_bytes + rate * elapsed_s + slack
    assert elapsed_s <= max(0.0, (before_last - bucket.burst_bytes) / rate) + 0.001 + 1e-9

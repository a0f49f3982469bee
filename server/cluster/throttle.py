"""The reassignment throttle: a token bucket of bytes per second on a follower's fetches.

Kafka's `kafka-reassign-partitions --throttle` limits the replication traffic of the
replicas a reassignment is moving, and only theirs, so copying a partition to a new broker
cannot starve the produce traffic; a throttled partition is left out of a fetch while its
broker is over quota. LogStore's followers do the same: the replicas a running
reassignment is adding fetch through one `TokenBucket` per broker, in requests of their
own, which wait while the bucket is in debt; every other partition fetches as before.

A bucket holds at most `burst_s` seconds of its rate, and starts full. A fetch may be made
whenever the bucket is not in debt (tokens >= 0); the bytes it brought are taken out
afterwards, however many there were (a fetch cannot be cut to the exact byte: the first
batch always comes whole), so the bucket may go into debt and the next fetch waits until
the debt is repaid. Over any interval of T seconds the bytes recorded are therefore at
most `burst + rate * T + one fetch`: the rate holds on average, as Kafka's quotas do.

Rate 0 means unthrottled: no waiting, no limit. Time comes from an injected `Clock` (ms),
so the bucket's arithmetic is tested without sleeping. Thread-safe: the fetcher threads
of every leader share a broker's bucket.
"""

from __future__ import annotations

import threading

from logstore.clock import SYSTEM_CLOCK, Clock

#: seconds of the rate a full bucket holds (the most a throttled broker fetches at once
#: after a quiet spell, besides one fetch's overshoot)
DEFAULT_BURST_S = 1.0
#: a throttled fetch asks for about this many seconds of the rate, so the traffic flows
#: in small steps rather than in one burst a second (s)
FETCH_SPAN_S = 0.1


class TokenBucket:
    """A rate in bytes/s, with a burst of `burst_s` seconds of it (see the module
    docstring). Invariants: tokens <= the burst; tokens only fall through `record`."""

    def __init__(
        self,
        rate_bytes_per_s: int = 0,
        *,
        burst_s: float = DEFAULT_BURST_S,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if burst_s <= 0:
            raise ValueError(f"the burst must be a positive number of seconds, not {burst_s}")
        self._burst_ms = max(1, round(burst_s * 1000))
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = 0
        # Tokens are counted in thousandths of a byte: a rate in bytes/s earns exactly
        # `rate` of them per ms of the clock, so the arithmetic is exact integers and a
        # debt waited out to the millisecond is repaid in full.
        self._millitokens = 0
        self._last_ms = clock.monotonic_ms()
        self.set_rate(rate_bytes_per_s)

    @property
    def rate(self) -> int:
        """Bytes per second; 0 when unthrottled."""
        return self._rate

    @property
    def burst_bytes(self) -> float:
        """The most a full bucket holds (bytes)."""
        return self._rate * self._burst_ms / 1000

    def set_rate(self, rate_bytes_per_s: int) -> None:
        """Change the rate (0: unthrottled). Tokens gathered so far keep their value; a
        bucket that was unthrottled starts full; debt is kept, so lowering the rate and
        raising it again grants nothing."""
        if rate_bytes_per_s < 0:
            raise ValueError(f"a rate is >= 0 bytes/s, not {rate_bytes_per_s}")
        with self._lock:
            self._refill()
            was_unthrottled = self._rate == 0
            self._rate = rate_bytes_per_s
            if was_unthrottled:
                self._millitokens = self._burst_millitokens()
            else:
                self._millitokens = min(self._millitokens, self._burst_millitokens())

    def delay_s(self) -> float:
        """Seconds to wait before the next fetch: 0 when the bucket is not in debt (or
        unthrottled), else the time the rate takes to repay the debt, rounded up to the
        millisecond."""
        with self._lock:
            if self._rate == 0:
                return 0.0
            self._refill()
            if self._millitokens >= 0:
                return 0.0
            return -(self._millitokens // self._rate) / 1000  # ceil(debt / rate) ms

    def record(self, nbytes: int) -> None:
        """Take out the bytes a fetch brought (the bucket may go into debt)."""
        if nbytes < 0:
            raise ValueError(f"a fetch brings >= 0 bytes, not {nbytes}")
        with self._lock:
            if self._rate == 0:
                return
            self._refill()
            self._millitokens -= nbytes * 1000

    def _burst_millitokens(self) -> int:
        return self._rate * self._burst_ms

    def fetch_size(self, max_bytes: int) -> int:
        """How many bytes one throttled fetch asks for: about FETCH_SPAN_S of the rate, at
        most `max_bytes`, at least 1 (the first batch comes whole anyway)."""
        if self._rate == 0:
            return max_bytes
        return max(1, min(max_bytes, int(self._rate * FETCH_SPAN_S)))

    def _refill(self) -> None:
        """Add the tokens earned since the last look (call with the lock)."""
        now_ms = self._clock.monotonic_ms()
        elapsed_ms = max(0, now_ms - self._last_ms)
        self._last_ms = now_ms
        if self._rate:
            earned = self._millitokens + self._rate * elapsed_ms
            self._millitokens = min(self._burst_millitokens(), earned)

"""Retry decisions for produce requests: what may be retried, how long to wait, when to give up.

Pure: no I/O and no clock of its own. Times are in ms (monotonic readings passed in).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum

from logstore import errors


class Verdict(Enum):
    """What becomes of a batch whose attempt failed."""

    #: resend it unchanged (same bytes, same sequence) after the backoff
    RETRY = "retry"
    #: give up: the error is final
    FAIL = "fail"
    #: give up: retriable, but delivery_timeout_ms has passed since the batch was created
    EXPIRE = "expire"


class RetryPolicy:
    """Kafka's retry rules for a producer.

    Invariants: `backoff_ms(n)` lies within +-20% of ``min(backoff_max_ms, backoff_ms *
    2**(n - 1))``; a batch is retried only while younger than `delivery_timeout_ms` and
    only when acks != 0 (with acks=0 nothing is known about a request's fate).
    `OutOfOrderSequenceError` is retriable only while the partition is draining: then an
    earlier batch of the same round failed and this one was never appended.
    """

    __slots__ = (
        "_backoff_max_ms",
        "_backoff_ms",
        "_is_retriable",
        "_uniform",
        "acks",
        "delivery_timeout_ms",
    )

    def __init__(
        self,
        *,
        backoff_ms: float,
        backoff_max_ms: float,
        delivery_timeout_ms: float,
        acks: int,
        is_retriable: Callable[[BaseException], bool],
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._backoff_ms = backoff_ms
        self._backoff_max_ms = max(backoff_max_ms, backoff_ms)
        self.delivery_timeout_ms = delivery_timeout_ms
        self.acks = acks
        self._is_retriable = is_retriable
        self._uniform = uniform

    def backoff_ms(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1-based), in ms: doubling, capped, +-20%."""
        base = min(self._backoff_max_ms, self._backoff_ms * 2 ** max(0, attempt - 1))
        return base * self._uniform(0.8, 1.2)

    def retriable(self, error: BaseException, draining: bool = False) -> bool:
        """Whether `error` may go away if the same request is sent again."""
        if isinstance(error, errors.OutOfOrderSequenceError):
            return draining
        return self._is_retriable(error)

    def expired(self, created_ms: float, now_ms: float) -> bool:
        """Whether a batch created at `created_ms` has outlived delivery_timeout_ms."""
        return now_ms - created_ms >= self.delivery_timeout_ms

    def verdict(
        self, error: BaseException, created_ms: float, now_ms: float, draining: bool
    ) -> Verdict:
        """What to do with a batch created at `created_ms` whose attempt failed with `error`."""
        if not self.retriable(error, draining) or self.acks == 0:
            return Verdict.FAIL
        if self.expired(created_ms, now_ms):
            return Verdict.EXPIRE
        return Verdict.RETRY

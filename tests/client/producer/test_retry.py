"""The producer's retry policy: classification, backoff bounds, delivery timeout."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore import errors
from logstore.client._connection import is_retriable
from logstore.client.producer.retry import RetryPolicy, Verdict


def policy(acks: int = -1, uniform: object = random.uniform) -> RetryPolicy:
    return RetryPolicy(
        backoff_ms=100,
        backoff_max_ms=1_000,
        delivery_timeout_ms=5_000,
        acks=acks,
        is_retriable=is_retriable,
        uniform=uniform,  # type: ignore[arg-type]
    )


@given(attempt=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_backoff_doubles_up_to_the_cap_within_twenty_percent(attempt: int, seed: int) -> None:
    rng = random.Random(seed)
    delay = policy(uniform=rng.uniform).backoff_ms(attempt)
    base = min(1_000, 100 * 2 ** (attempt - 1))
    assert 0.8 * base <= delay <= 1.2 * base


def test_backoff_max_below_backoff_uses_backoff() -> None:
    p = RetryPolicy(
        backoff_ms=500,
        backoff_max_ms=100,
        delivery_timeout_ms=1,
        acks=1,
        is_retriable=is_retriable,
        uniform=lambda low, high: 1.0,
    )
    assert p.backoff_ms(1) == p.backoff_ms(5) == 500


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (errors.BrokerUnavailableError("gone"), Verdict.RETRY),
        (errors.RequestTimedOutError("slow"), Verdict.RETRY),
        (errors.StorageError("disk"), Verdict.RETRY),
        (errors.RecordTooLargeError("big"), Verdict.FAIL),
        (errors.UnknownTopicOrPartitionError("nope"), Verdict.FAIL),
        (errors.OutOfOrderSequenceError("gap"), Verdict.FAIL),
    ],
)
def test_verdicts(error: errors.LogStoreError, verdict: Verdict) -> None:
    assert policy().verdict(error, created_ms=0, now_ms=100, draining=False) is verdict


def test_out_of_order_is_retried_only_while_draining() -> None:
    """Then an earlier batch of the round failed and this one was never appended."""
    error = errors.OutOfOrderSequenceError("gap")
    assert policy().verdict(error, 0, 100, draining=True) is Verdict.RETRY


def test_nothing_is_retried_with_acks_0() -> None:
    error = errors.BrokerUnavailableError("gone")
    assert policy(acks=0).verdict(error, 0, 100, draining=False) is Verdict.FAIL


def test_retriable_errors_expire_after_the_delivery_timeout() -> None:
    error = errors.BrokerUnavailableError("gone")
    p = policy()
    assert p.verdict(error, created_ms=1_000, now_ms=5_999, draining=False) is Verdict.RETRY
    assert p.verdict(error, created_ms=1_000, now_ms=6_000, draining=False) is Verdict.EXPIRE
    assert p.expired(1_000, 6_000) and not p.expired(1_000, 5_999)

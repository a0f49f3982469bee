"""RetryPolicy backoff math (injected random) and RetryingConsumer against a real broker:
retry topics, not-before holds, the dead letter queue, nothing lost, nothing blocked."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore import Admin, Consumer, Producer
from logstore.errors import UnknownTopicOrPartitionError
from logstore.patterns import headers as h
from logstore.patterns.retry import RetryingConsumer, RetryPolicy, attempts_so_far, original_topic
from logstore.types import ConsumerRecord

# --- backoff math ------------------------------------------------------------------------------


def test_ceiling_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff_ms=100, multiplier=2, max_backoff_ms=1000)
    assert [policy.ceiling_ms(k) for k in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    with pytest.raises(ValueError):
        policy.ceiling_ms(0)


def test_full_jitter_scales_the_ceiling_by_the_injected_random() -> None:
    draws = iter([0.0, 0.5, 0.999])
    policy = RetryPolicy(initial_backoff_ms=100, multiplier=3, random=lambda: next(draws))
    assert policy.delay_ms(1) == 0.0
    assert policy.delay_ms(2) == pytest.approx(150.0)
    assert policy.delay_ms(3) == pytest.approx(899.1)


def test_without_jitter_the_delay_is_the_ceiling() -> None:
    policy = RetryPolicy(initial_backoff_ms=50, jitter=False, random=lambda: 0.0)
    assert policy.delay_ms(3) == 200


@given(
    initial=st.floats(0, 10_000),
    multiplier=st.floats(1, 10),
    cap=st.floats(0, 100_000),
    attempt=st.integers(1, 2000),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_a_jittered_delay_stays_within_zero_and_the_cap(
    initial: float, multiplier: float, cap: float, attempt: int, draw: float
) -> None:
    policy = RetryPolicy(
        initial_backoff_ms=initial, multiplier=multiplier, max_backoff_ms=cap, random=lambda: draw
    )
    delay = policy.delay_ms(attempt)
    assert 0 <= delay <= policy.ceiling_ms(attempt) <= cap


def test_short_delays_stay_in_process_and_long_ones_use_numbered_retry_topics() -> None:
    policy = RetryPolicy(
        max_attempts=6, initial_backoff_ms=100, multiplier=2, max_in_process_delay_ms=300
    )
    # ceilings after attempts 1..5: 100, 200, 400, 800, 1600
    assert [policy.in_process(k) for k in range(1, 6)] == [True, True, False, False, False]
    assert [policy.level_for(k) for k in (3, 4, 5)] == [1, 2, 3]
    assert policy.retry_levels() == 3
    assert RetryPolicy(max_attempts=1).retry_levels() == 0


def test_policy_rejects_nonsense() -> None:
    for bad in ({"max_attempts": 0}, {"multiplier": 0.5}, {"initial_backoff_ms": -1}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)  # type: ignore[arg-type]


# --- against a broker --------------------------------------------------------------------------


class ManualClock:
    """Wall-clock ms that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with Producer(bootstrap, linger_ms=0) as producer:
        for value in values:
            producer.send(topic, value=value, key=value, partition=0).result()


def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    with Admin(bootstrap) as admin:
        ends = admin.list_offsets(topic, "latest")
    wanted = sum(o.offset for o in ends.values())
    found: list[ConsumerRecord] = []
    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in ends])
        deadline = time.monotonic() + 10
        while len(found) < wanted and time.monotonic() < deadline:
            found.extend(consumer.poll(timeout=0.2))
    return found


def run_until(rc: RetryingConsumer, done: Callable[[], bool], timeout_s: float = 15) -> None:
    rc.run(until=done, duration_s=timeout_s)
    assert done(), f"condition not reached in {timeout_s} s: {rc.stats}"


def test_poison_record_moves_through_retry_topics_to_the_dlq_without_blocking(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("emails")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    produce(bootstrap, topic, [b"ok-1", b"poison", b"ok-2", b"ok-3"])
    calls: list[bytes] = []

    def handler(record: ConsumerRecord) -> None:
        assert record.value is not None
        calls.append(record.value)
        if record.value == b"poison":
            raise ValueError("mailbox unavailable")

    # ceilings 10, 100, 1000 ms: one in-process retry, then retry.1, retry.2, then the DLQ
    policy = RetryPolicy(
        max_attempts=4,
        initial_backoff_ms=10,
        multiplier=10,
        max_in_process_delay_ms=50,
        random=lambda: 0.3,
    )
    group = unique("mailer")
    with RetryingConsumer(bootstrap, group, [topic], handler, policy) as rc:
        assert rc.retry_topics == [f"{topic}.retry.1", f"{topic}.retry.2"]
        run_until(rc, lambda: rc.stats.dead_lettered == 1)
        stats = rc.stats

    assert calls.count(b"poison") == 4
    # the good records behind the poison one did not wait for its retries
    last_poison = max(i for i, v in enumerate(calls) if v == b"poison")
    assert calls.index(b"ok-3") < last_poison
    assert sorted(v for v in calls if v != b"poison") == [b"ok-1", b"ok-2", b"ok-3"]
    assert (stats.succeeded, stats.retried_in_process, stats.sent_to_retry) == (3, 1, 2)

    retried = read_all(bootstrap, f"{topic}.retry.1") + read_all(bootstrap, f"{topic}.retry.2")
    assert [r.value for r in retried] == [b"poison", b"poison"]
    assert [attempts_so_far(r) for r in retried] == [2, 3]
    assert all(original_topic(r) == topic for r in retried)

    (dead,) = read_all(bootstrap, f"{topic}.dlq")
    assert (dead.key, dead.value) == (b"poison", b"poison")
    hs = dead.headers
    assert h.header_str(hs, h.DLQ_ORIGINAL_TOPIC) == topic
    assert h.header_int(hs, h.DLQ_ORIGINAL_PARTITION) == 0
    assert h.header_int(hs, h.DLQ_ORIGINAL_OFFSET) == 1
    assert h.header_int(hs, h.DLQ_ATTEMPTS) == 4
    assert h.header_str(hs, h.DLQ_ERROR_TYPE) == "ValueError"
    assert h.header_str(hs, h.DLQ_ERROR_MESSAGE) == "mailbox unavailable"
    assert abs((h.header_int(hs, h.DLQ_TIMESTAMP) or 0) - time.time() * 1000) < 60_000
    assert not [k for k, _ in hs if k.startswith(h.RETRY_PREFIX)]

    with Admin(bootstrap) as admin:
        committed = admin.committed_offsets(group)
    assert committed[(topic, 0)].offset == 4
    assert committed[(f"{topic}.retry.1", 0)].offset == 1
    assert committed[(f"{topic}.retry.2", 0)].offset == 1


def test_a_retry_partition_is_held_until_not_before_while_the_source_flows(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("orders")
    clock = ManualClock()
    fail_first = {b"flaky": 2}
    handled: list[bytes] = []

    def handler(record: ConsumerRecord) -> None:
        assert record.value is not None
        if fail_first.get(record.value, 0) > 0:
            fail_first[record.value] -= 1
            raise TimeoutError("payment gateway timed out")
        handled.append(record.value)

    policy = RetryPolicy(
        max_attempts=5,
        initial_backoff_ms=1000,
        max_in_process_delay_ms=0,
        jitter=False,
        clock=clock,
        sleep=lambda s: pytest.fail("no in-process sleep expected"),
    )
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    with RetryingConsumer(bootstrap, unique("billing"), [topic], handler, policy) as rc:
        produce(bootstrap, topic, [b"flaky"])
        run_until(rc, lambda: rc.stats.held >= 1)
        (copy,) = read_all(bootstrap, f"{topic}.retry.1")
        assert h.header_int(copy.headers, h.RETRY_NOT_BEFORE) == clock.now + 1000

        # held: newer source records are handled, the retried one is not
        produce(bootstrap, topic, [b"a", b"b"])
        run_until(rc, lambda: handled == [b"a", b"b"])
        rc.run(duration_s=0.5)
        assert handled == [b"a", b"b"] and rc.stats.sent_to_retry == 1

        clock.now += 1000  # due: fails again, to retry.2 with a 2000 ms delay
        run_until(rc, lambda: rc.stats.sent_to_retry == 2)
        clock.now += 1999
        rc.run(duration_s=0.5)
        assert b"flaky" not in handled
        clock.now += 1
        run_until(rc, lambda: b"flaky" in handled)
        assert rc.stats.dead_lettered == 0
    assert read_all(bootstrap, f"{topic}.dlq") == []


def test_every_record_is_handled_or_dead_lettered_across_partitions(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic = unique("events")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=3)
    values = [f"event-{i}".encode() for i in range(60)]
    poison = {v for i, v in enumerate(values) if i % 7 == 3}
    with Producer(bootstrap, linger_ms=0) as producer:
        for value in values:
            producer.send(topic, value=value, key=value)
    ok: list[bytes] = []

    def handler(record: ConsumerRecord) -> None:
        assert record.value is not None
        if record.value in poison:
            raise RuntimeError("cannot parse")
        ok.append(record.value)

    policy = RetryPolicy(
        max_attempts=3, initial_backoff_ms=1, multiplier=50, max_in_process_delay_ms=10
    )
    with RetryingConsumer(bootstrap, unique("g"), [topic], handler, policy) as rc:
        run_until(rc, lambda: rc.stats.dead_lettered == len(poison))
    dead = read_all(bootstrap, f"{topic}.dlq")
    assert sorted(ok) == sorted(set(values) - poison)
    assert sorted(r.value for r in dead) == sorted(poison)
    # each DLQ copy sits in its source partition's number, so replay keeps key order
    for record in dead:
        assert record.partition == h.header_int(record.headers, h.DLQ_ORIGINAL_PARTITION)


def test_a_refused_dlq_copy_is_not_committed_and_is_retried(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    topic, group = unique("invoices"), unique("biller")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    produce(bootstrap, topic, [b"ok-1", b"poison", b"ok-2"])
    calls: list[bytes] = []

    def handler(record: ConsumerRecord) -> None:
        calls.append(record.value or b"")
        if record.value == b"poison":
            raise ValueError("bad invoice")

    policy = RetryPolicy(max_attempts=1)  # straight to the DLQ
    with RetryingConsumer(bootstrap, group, [topic], handler, policy) as rc:
        with Admin(bootstrap) as admin:
            admin.delete_topic(f"{topic}.dlq")  # the copy cannot be written now
            refused = 0
            for _ in range(50):
                try:
                    rc.poll_once(0.2)
                except UnknownTopicOrPartitionError:
                    refused += 1
                    break
            assert refused == 1 and calls == [b"ok-1", b"poison"]
            assert admin.committed_offsets(group)[(topic, 0)].offset == 1
            admin.create_topic(f"{topic}.dlq", partitions=1)
        run_until(rc, lambda: rc.stats.dead_lettered == 1 and b"ok-2" in calls)
    assert calls == [b"ok-1", b"poison", b"poison", b"ok-2"]
    assert [r.value for r in read_all(bootstrap, f"{topic}.dlq")] == [b"poison"]
    with Admin(bootstrap) as admin:
        assert admin.committed_offsets(group)[(topic, 0)].offset == 3

"""`logstore.codec.partitioner`: Kafka's murmur2, keyed partitioning and KIP-480 stickiness.

Two independent references pin the hash: the vectors from Kafka's own
``UtilsTest.testMurmur2`` and ``kafka.partitioner.default.murmur2`` from kafka-python. The
latter returns the hash as an unsigned 32-bit number where Java (and we) return a signed int,
so it is converted before comparing.
"""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from logstore.codec.partitioner import StickyPartitioner, murmur2, partition_for_key, to_positive
from logstore.errors import InvalidPartitionsError

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: (key, Java's Utils.murmur2(key)) from Kafka's clients/.../common/utils/UtilsTest.java
KAFKA_UTILS_TEST_VECTORS = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (bytes([ord(c) for c in "abc"]), 479470107),
]

#: (key, partition of 1000) that kafka-python's test suite records as the Java producer's
#: choice; covers the empty key and every tail length
KAFKA_PARTITION_VECTORS = [
    (b"", 681),
    (b"a", 524),
    (b"ab", 434),
    (b"abc", 107),
    (b"123456789", 566),
    (b"\x00 ", 742),
]


def reference_murmur2(data: bytes) -> int:
    """kafka-python's murmur2 reinterpreted as a signed 32-bit int, as Java returns it."""
    h = kafka_python_murmur2(data)
    assert 0 <= h <= 0xFFFFFFFF
    return h - 2**32 if h > INT32_MAX else h


# --- murmur2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), KAFKA_UTILS_TEST_VECTORS)
def test_murmur2_matches_kafka_utils_test_vectors(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_UTILS_TEST_VECTORS)
def test_reference_implementation_agrees_with_kafka_vectors(key: bytes, expected: int) -> None:
    # Guards the property tests below: they are only as good as the reference they compare to.
    assert reference_murmur2(key) == expected


@pytest.mark.parametrize(
    "length",
    # every tail length, around the precompiled-unpacker limit (256 bytes), and a long key
    [*range(0, 9), 252, 255, 256, 257, 259, 260, 261, 4096, 4099],
)
def test_murmur2_matches_reference_at_boundary_lengths(length: int) -> None:
    rng = random.Random(length)
    for _ in range(20):
        data = rng.randbytes(length)
        assert murmur2(data) == reference_murmur2(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_murmur2_equals_kafka_python(data: bytes) -> None:
    assert murmur2(data) == reference_murmur2(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_murmur2_is_a_signed_32_bit_int(data: bytes) -> None:
    h = murmur2(data)
    assert isinstance(h, int)
    assert INT32_MIN <= h <= INT32_MAX


@given(st.binary(max_size=300))
def test_murmur2_accepts_bytes_like_objects(data: bytes) -> None:
    assert murmur2(bytearray(data)) == murmur2(data)
    assert murmur2(memoryview(data)) == murmur2(data)


def test_murmur2_of_high_bytes() -> None:
    # Bytes >= 0x80 are negative in Java; Kafka masks them with 0xff, which we get for free.
    for data in (b"\xa4", b"\x81" * 1000, b"\xff\xff\xff", b"\xff" * 7):
        assert murmur2(data) == reference_murmur2(data)


# --- to_positive -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, 0),
        (1, 1),
        (INT32_MAX, INT32_MAX),
        (-1, INT32_MAX),
        (INT32_MIN, 0),  # the value Java's Math.abs cannot make positive
        (-973932308, -973932308 & 0x7FFFFFFF),
    ],
)
def test_to_positive(n: int, expected: int) -> None:
    assert to_positive(n) == expected


@given(st.integers(INT32_MIN, INT32_MAX))
def test_to_positive_clears_only_the_sign_bit(n: int) -> None:
    p = to_positive(n)
    assert 0 <= p <= INT32_MAX
    # Non-negative ints pass through; negative ones lose exactly 2**31.
    assert p == (n if n >= 0 else n + 2**31)


# --- partition_for_key -----------------------------------------------------------------------


@pytest.mark.parametrize(("key", "expected"), KAFKA_PARTITION_VECTORS)
def test_partition_for_key_matches_java_producer(key: bytes, expected: int) -> None:
    assert partition_for_key(key, 1000) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 10_000))
def test_partition_for_key_in_range_and_matches_reference(key: bytes, n: int) -> None:
    p = partition_for_key(key, n)
    assert 0 <= p < n
    assert p == (reference_murmur2(key) & 0x7FFFFFFF) % n


@given(st.binary(max_size=100), st.integers(1, 1000))
def test_partition_for_key_is_stable(key: bytes, n: int) -> None:
    first = partition_for_key(key, n)
    assert all(partition_for_key(bytes(key), n) == first for _ in range(5))


def test_single_partition_takes_every_key() -> None:
    for key, _ in KAFKA_UTILS_TEST_VECTORS:
        assert partition_for_key(key, 1) == 0


@pytest.mark.parametrize("n", [0, -1, -1000])
def test_partition_for_key_rejects_bad_counts(n: int) -> None:
    with pytest.raises(InvalidPartitionsError, match="at least 1"):
        partition_for_key(b"k", n)


# --- StickyPartitioner -----------------------------------------------------------------------


def test_sticks_until_new_batch() -> None:
    sticky = StickyPartitioner(random.Random(1))
    first = sticky.partition("t", 12)
    assert 0 <= first < 12
    assert all(sticky.partition("t", 12) == first for _ in range(1000))

    sticky.on_new_batch("t", 12, first)
    second = sticky.partition("t", 12)
    assert second != first
    assert 0 <= second < 12
    assert all(sticky.partition("t", 12) == second for _ in range(1000))


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 64), st.integers(0, 2**32), st.integers(1, 30))
def test_every_new_batch_moves_to_another_partition(n: int, seed: int, batches: int) -> None:
    sticky = StickyPartitioner(random.Random(seed))
    current = sticky.partition("t", n)
    for _ in range(batches):
        assert 0 <= current < n
        sticky.on_new_batch("t", n, current)
        moved = sticky.partition("t", n)
        assert moved != current
        assert 0 <= moved < n
        assert sticky.partition("t", n) == moved
        current = moved


@given(st.integers(0, 2**32), st.integers(1, 20))
def test_one_partition_always_zero(seed: int, batches: int) -> None:
    sticky = StickyPartitioner(random.Random(seed))
    for _ in range(batches):
        assert sticky.partition("t", 1) == 0
        sticky.on_new_batch("t", 1, 0)
        assert sticky.partition("t", 1) == 0


def test_moves_are_uniform_over_the_other_partitions() -> None:
    n, moves = 5, 5000
    sticky = StickyPartitioner(random.Random(7))
    counts = [[0] * n for _ in range(n)]  # counts[from][to]
    current = sticky.partition("t", n)
    for _ in range(moves):
        sticky.on_new_batch("t", n, current)
        moved = sticky.partition("t", n)
        counts[current][moved] += 1
        current = moved
    for frm in range(n):
        assert counts[frm][frm] == 0
        row_total = sum(counts[frm])
        for to in range(n):
            if to != frm:
                # each of the 4 others expects a quarter of the row; allow wide slack
                assert abs(counts[frm][to] - row_total / (n - 1)) < 0.25 * row_total


def test_stale_new_batch_is_ignored() -> None:
    sticky = StickyPartitioner(random.Random(3))
    current = sticky.partition("t", 8)
    stale = (current + 1) % 8
    sticky.on_new_batch("t", 8, stale)
    assert sticky.partition("t", 8) == current


def test_topics_are_independent() -> None:
    sticky = StickyPartitioner(random.Random(5))
    a = sticky.partition("a", 10)
    b = sticky.partition("b", 10)
    sticky.on_new_batch("a", 10, a)
    assert sticky.partition("a", 10) != a
    assert sticky.partition("b", 10) == b


def test_new_batch_before_any_partition_avoids_previous() -> None:
    for seed in range(200):
        sticky = StickyPartitioner(random.Random(seed))
        sticky.on_new_batch("t", 3, 2)
        assert sticky.partition("t", 3) in (0, 1)


def test_same_seed_gives_same_choices() -> None:
    def run(seed: int) -> list[int]:
        sticky = StickyPartitioner(random.Random(seed))
        out = []
        for _ in range(50):
            p = sticky.partition("t", 17)
            out.append(p)
            sticky.on_new_batch("t", 17, p)
        return out

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_default_rng_works() -> None:
    sticky = StickyPartitioner()
    p = sticky.partition("t", 4)
    sticky.on_new_batch("t", 4, p)
    assert sticky.partition("t", 4) != p


def test_fewer_partitions_than_before_stays_in_range() -> None:
    # Kafka never shrinks a topic, but a caller holding stale metadata may pass a smaller count.
    for seed in range(100):
        sticky = StickyPartitioner(random.Random(seed))
        while sticky.partition("t", 100) < 10:
            sticky.on_new_batch("t", 100, sticky.partition("t", 100))
        assert 0 <= sticky.partition("t", 10) < 10


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 8),
    st.integers(0, 2**32),
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.booleans()), max_size=40),
)
def test_matches_a_model_of_stickiness(n: int, seed: int, ops: list[tuple[str, bool]]) -> None:
    # Model: a topic's partition changes exactly when a batch is reported for its current
    # partition (and then to a different one if n > 1); a stale report changes nothing.
    sticky = StickyPartitioner(random.Random(seed))
    model = {topic: sticky.partition(topic, n) for topic in ("a", "b")}
    for topic, report_current in ops:
        before = model[topic]
        reported = before if report_current else (before + 1) % n
        sticky.on_new_batch(topic, n, reported)
        after = sticky.partition(topic, n)
        assert 0 <= after < n
        if reported != before:
            assert after == before
        elif n > 1:
            assert after != before
        else:
            assert after == 0
        model[topic] = after
        assert all(sticky.partition(t, n) == p for t, p in model.items())


def test_concurrent_reports_of_one_batch_move_once() -> None:
    # With two partitions a second move would land back on the full one, so each round
    # checks that however many threads report the same batch, the topic moves exactly once.
    threads_n, rounds = 8, 200
    sticky = StickyPartitioner(random.Random(9))
    barrier = threading.Barrier(threads_n)
    seen: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(rounds):
                barrier.wait()
                full = sticky.partition("t", 2)
                barrier.wait()  # everyone has read the same partition before anyone reports
                sticky.on_new_batch("t", 2, full)
                barrier.wait()
                after = sticky.partition("t", 2)
                assert after == 1 - full
                seen.append(after)
        except BaseException as exc:  # surface failures from the thread in the test
            errors.append(exc)
            barrier.abort()

    workers = [threading.Thread(target=worker) for _ in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not errors, errors[0]
    assert len(seen) == threads_n * rounds


def test_concurrent_use_stays_in_range() -> None:
    sticky = StickyPartitioner(random.Random(13))
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        local = []
        for _ in range(2000):
            p = sticky.partition("t", 6)
            local.append(p)
            sticky.on_new_batch("t", 6, p)
        with lock:
            results.extend(local)

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert len(results) == 4 * 2000
    assert set(results) <= set(range(6))


@pytest.mark.parametrize("n", [0, -3])
def test_sticky_rejects_bad_counts(n: int) -> None:
    sticky = StickyPartitioner(random.Random(0))
    with pytest.raises(InvalidPartitionsError):
        sticky.partition("t", n)
    with pytest.raises(InvalidPartitionsError):
        sticky.on_new_batch("t", n, 0)

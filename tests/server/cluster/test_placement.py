"""Replica placement: Kafka's round-robin with shifted followers, and load-aware placement."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidRequestError,
)
from logstore.server.cluster.placement import assign_partitions, assign_replicas

brokers_st = st.lists(st.integers(0, 50), min_size=1, max_size=9, unique=True)


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[int], int, int, int]:
    """(brokers, replication factor, partitions, start index)."""
    brokers = draw(brokers_st)
    rf = draw(st.integers(1, len(brokers)))
    return brokers, rf, draw(st.integers(0, 40)), draw(st.integers(0, 20))


def test_kafka_documented_layout() -> None:
    """The example in Kafka's AdminUtils: 5 brokers, 10 partitions, 3 replicas, start 0."""
    got = assign_replicas(10, 3, [0, 1, 2, 3, 4], start_index=0)
    assert got == [
        (0, 1, 2),
        (1, 2, 3),
        (2, 3, 4),
        (3, 4, 0),
        (4, 0, 1),
        (0, 2, 3),  # second round: followers shifted by one more
        (1, 3, 4),
        (2, 4, 0),
        (3, 0, 1),
        (4, 1, 2),
    ]


def test_start_index_picks_the_first_leader() -> None:
    assert [r[0] for r in assign_replicas(4, 1, [7, 8, 9], start_index=2)] == [9, 7, 8, 9]


@settings(max_examples=300, deadline=None)
@given(layouts())
def test_every_partition_gets_distinct_live_brokers(
    layout: tuple[list[int], int, int, int],
) -> None:
    brokers, rf, partitions, start = layout
    got = assign_replicas(partitions, rf, brokers, start_index=start)
    assert len(got) == partitions
    for replicas in got:
        assert len(replicas) == rf
        assert len(set(replicas)) == rf
        assert set(replicas) <= set(brokers)


@settings(max_examples=300, deadline=None)
@given(layouts(), st.integers(1, 4))
def test_leaders_and_replicas_balanced(
    layout: tuple[list[int], int, int, int], rounds: int
) -> None:
    """Over a multiple of the broker count every broker leads and holds equally often;
    over any count, within one."""
    brokers, rf, partitions, start = layout
    for count in (rounds * len(brokers), partitions):
        got = assign_replicas(count, rf, brokers, start_index=start)
        leaders = Counter({b: 0 for b in brokers}) + Counter(r[0] for r in got)
        led = [leaders[b] for b in brokers]
        assert max(led) - min(led) <= (0 if count % len(brokers) == 0 else 1)
        held = Counter(b for r in got for b in r)
        holds = [held[b] for b in brokers]
        if count % len(brokers) == 0:
            assert max(holds) == min(holds) == count * rf // len(brokers)


@settings(max_examples=200, deadline=None)
@given(layouts(), st.integers(0, 2**32))
def test_deterministic_for_a_seed(layout: tuple[list[int], int, int, int], seed: int) -> None:
    brokers, rf, partitions, _ = layout
    first = assign_replicas(partitions, rf, brokers, rng=random.Random(seed))
    again = assign_replicas(partitions, rf, brokers, rng=random.Random(seed))
    assert first == again


def test_random_start_varies_the_first_leader() -> None:
    """Without a start index the first leader is drawn: many small topics spread."""
    rng = random.Random(7)
    firsts = {assign_replicas(1, 1, [1, 2, 3, 4], rng=rng)[0][0] for _ in range(50)}
    assert firsts == {1, 2, 3, 4}


@settings(max_examples=200, deadline=None)
@given(layouts(), st.integers(0, 20))
def test_added_partitions_continue_the_pattern(
    layout: tuple[list[int], int, int, int], added: int
) -> None:
    """Adding partitions to a topic gives what creating them all at once would have."""
    brokers, rf, partitions, start = layout
    whole = assign_replicas(partitions + added, rf, brokers, start_index=start)
    tail = assign_replicas(added, rf, brokers, start_index=start, first_partition=partitions)
    assert tail == whole[partitions:]


def test_followers_do_not_always_pair_the_same_brokers() -> None:
    """The shift: over two rounds, broker 0 leads with different followers."""
    got = assign_replicas(6, 2, [0, 1, 2], start_index=0)
    assert {r[1] for r in got if r[0] == 0} == {1, 2}


@pytest.mark.parametrize(
    ("rf", "brokers", "message"),
    [
        (3, [1, 2], "replication factor 3 is larger than the 2 live brokers (1, 2)"),
        (1, [], "replication factor 1 is larger than the 0 live brokers ()"),
        (0, [1, 2], "replication factor 0 must be at least 1"),
        (-1, [1], "replication factor -1 must be at least 1"),
    ],
)
def test_impossible_replication_factor(rf: int, brokers: list[int], message: str) -> None:
    with pytest.raises(InvalidReplicationFactorError) as exc:
        assign_replicas(3, rf, brokers, start_index=0)
    assert str(exc.value) == message


def test_other_bad_arguments() -> None:
    with pytest.raises(InvalidPartitionsError, match="-1 partitions"):
        assign_replicas(-1, 1, [1], start_index=0)
    with pytest.raises(InvalidPartitionsError, match="first partition -2"):
        assign_replicas(1, 1, [1], start_index=0, first_partition=-2)
    with pytest.raises(InvalidRequestError, match="twice"):
        assign_replicas(1, 1, [1, 1], start_index=0)


def test_zero_partitions() -> None:
    assert assign_replicas(0, 2, [1, 2], start_index=0) == []


# --- with the brokers' current load ---------------------------------------------------------


def test_new_broker_gets_the_new_partitions() -> None:
    """Broker 4 just joined holding nothing: it leads the new partitions and is in each."""
    got = assign_replicas(3, 2, [1, 2, 3, 4], start_index=0, existing_load={1: 5, 2: 5, 3: 5})
    assert [r[0] for r in got] == [4, 4, 4]
    assert sorted(r[1] for r in got) == [1, 2, 3]


def test_least_loaded_lead_first() -> None:
    got = assign_replicas(2, 1, [1, 2, 3], start_index=0, existing_load={1: 4, 2: 1, 3: 2})
    # 2 holds the fewest; then 2 and 3 hold two each, and 3 has led none of these yet
    assert got == [(2,), (3,)]


@settings(max_examples=300, deadline=None)
@given(layouts(), st.data())
def test_load_gap_never_widens(
    layout: tuple[list[int], int, int, int], data: st.DataObject
) -> None:
    """The gap between the most and the least loaded broker ends at most max(gap, 1)."""
    brokers, rf, partitions, start = layout
    load = {b: data.draw(st.integers(0, 30)) for b in brokers}
    got = assign_replicas(partitions, rf, brokers, start_index=start, existing_load=load)
    assert len(got) == partitions
    after = Counter(load) + Counter(b for r in got for b in r)
    final = [after[b] for b in brokers]
    before = max(load.values()) - min(load.values())
    assert max(final) - min(final) <= max(before, 1)
    for replicas in got:
        assert len(set(replicas)) == rf and set(replicas) <= set(brokers)


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_even_load_stays_balanced(layout: tuple[list[int], int, int, int]) -> None:
    """From an even load, replicas stay within one per broker, leaders too over a multiple
    of the broker count when every partition is on every broker."""
    brokers, rf, partitions, start = layout
    load = dict.fromkeys(brokers, 3)
    got = assign_replicas(partitions, rf, brokers, start_index=start, existing_load=load)
    held = Counter(b for r in got for b in r)
    assert max(held[b] for b in brokers) - min(held[b] for b in brokers) <= 1
    if rf == len(brokers) or rf == 1:
        led = Counter(r[0] for r in got)
        assert max(led[b] for b in brokers) - min(led[b] for b in brokers) <= 1


@settings(max_examples=200, deadline=None)
@given(layouts(), st.data())
def test_any_partitions_are_placed_as_creating_them_all_at_once_would(
    layout: tuple[list[int], int, int, int], data: st.DataObject
) -> None:
    """The controller places the partitions a crashed creator left without a state one by
    one, in any order: each lands where the creator's own call would have put it."""
    brokers, rf, partitions, start = layout
    whole = assign_replicas(partitions, rf, brokers, start_index=start)
    some = data.draw(st.lists(st.integers(0, max(0, partitions - 1)), max_size=partitions))
    some = [p for p in some if p < partitions]
    assert assign_partitions(some, rf, brokers, start) == {p: whole[p] for p in some}


def test_assign_partitions_checks_like_assign_replicas() -> None:
    assert assign_partitions([], 1, [1], 0) == {}
    with pytest.raises(InvalidReplicationFactorError):
        assign_partitions([0], 3, [1, 2], 0)
    with pytest.raises(InvalidPartitionsError):
        assign_partitions([-1, 2], 1, [1, 2], 0)

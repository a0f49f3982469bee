"""Assignors place every partition exactly once; sticky moves the fewest partitions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.errors import InvalidRequestError
from logstore.server.groups.assignors import (
    ASSIGNOR_NAMES,
    Assignment,
    TopicPartition,
    assign,
    check_assignor_name,
)

TOPICS = ("t0", "t1", "t2", "t3")
Subscriptions = dict[str, frozenset[str]]
Counts = dict[str, int]
Current = dict[str, frozenset[TopicPartition]]


def tps(*names: str) -> frozenset[TopicPartition]:
    """`tps("t0p1", "t1p0")` -> {("t0", 1), ("t1", 0)}."""
    out = set()
    for name in names:
        topic, partition = name.split("p")
        out.add((topic, int(partition)))
    return frozenset(out)


# --- strategies ------------------------------------------------------------------------------

member_ids = st.lists(
    st.sampled_from([f"m{i}" for i in range(10)] + ["a", "zz", "consumer-1"]),
    min_size=1,
    max_size=7,
    unique=True,
)
counts_st = st.fixed_dictionaries({topic: st.integers(0, 9) for topic in TOPICS})


@st.composite
def scenarios(draw: st.DrawFn, identical: bool = False) -> tuple[Subscriptions, Counts, Current]:
    """Members, partition counts, and a disjoint current assignment including stale entries."""
    members = draw(member_ids)
    counts = draw(counts_st)
    if identical:
        topics = frozenset(draw(st.sets(st.sampled_from(TOPICS), min_size=1)))
        subscriptions = {member: topics for member in members}
    else:
        subscriptions = {
            member: frozenset(draw(st.sets(st.sampled_from(TOPICS)))) for member in members
        }
    # owners may include members that are gone; partitions may be beyond today's count
    owners = [*members, "gone", None]
    current: dict[str, set[TopicPartition]] = {}
    for topic in (*TOPICS, "deleted"):
        for partition in range(counts.get(topic, 0) + 2):
            owner = draw(st.sampled_from(owners))
            if owner is not None:
                current.setdefault(owner, set()).add((topic, partition))
    return subscriptions, counts, {m: frozenset(p) for m, p in current.items()}


# --- helpers ---------------------------------------------------------------------------------


def all_partitions(subscriptions: Subscriptions, counts: Mapping[str, int]) -> set[TopicPartition]:
    subscribed = set().union(*subscriptions.values())
    return {(t, p) for t in subscribed for p in range(counts.get(t, 0))}


def assert_places_each_partition_once(
    result: Assignment, subscriptions: Subscriptions, counts: Mapping[str, int]
) -> None:
    assert set(result) == set(subscriptions)
    placed = Counter(tp for tps_ in result.values() for tp in tps_)
    assert set(placed) == all_partitions(subscriptions, counts)
    assert all(n == 1 for n in placed.values())
    for member, owned in result.items():
        assert all(topic in subscriptions[member] for topic, _ in owned)


def valid_current(
    subscriptions: Subscriptions, counts: Mapping[str, int], current: Current
) -> dict[str, set[TopicPartition]]:
    """What each member holds today that it could keep."""
    return {
        member: {(t, p) for t, p in current.get(member, ()) if t in topics and p < counts.get(t, 0)}
        for member, topics in subscriptions.items()
    }


def minimum_moves(valid: Mapping[str, set[TopicPartition]], total: int) -> int:
    """Fewest moves to reach a within-one balance: the r biggest holders may keep q + 1."""
    q, r = divmod(total, len(valid))
    held = sorted((len(v) for v in valid.values()), reverse=True)
    quotas = [q + 1] * r + [q] * (len(held) - r)
    return sum(max(0, h - quota) for h, quota in zip(held, quotas, strict=True))


# --- Kafka's documented examples -----------------------------------------------------------


def test_range_matches_kafka_example() -> None:
    members = {"C0": frozenset({"t0", "t1"}), "C1": frozenset({"t0", "t1"})}
    result = assign("range", members, {"t0": 3, "t1": 3}, {})
    assert result == {"C0": tps("t0p0", "t0p1", "t1p0", "t1p1"), "C1": tps("t0p2", "t1p2")}


def test_roundrobin_matches_kafka_example() -> None:
    members = {"C0": frozenset({"t0", "t1"}), "C1": frozenset({"t0", "t1"})}
    result = assign("roundrobin", members, {"t0": 3, "t1": 3}, {})
    assert result == {"C0": tps("t0p0", "t0p2", "t1p1"), "C1": tps("t0p1", "t1p0", "t1p2")}


def test_roundrobin_matches_kafka_example_with_different_subscriptions() -> None:
    members = {
        "C0": frozenset({"t0"}),
        "C1": frozenset({"t0", "t1"}),
        "C2": frozenset({"t0", "t1", "t2"}),
    }
    result = assign("roundrobin", members, {"t0": 1, "t1": 2, "t2": 3}, {})
    assert result == {
        "C0": tps("t0p0"),
        "C1": tps("t1p0"),
        "C2": tps("t1p1", "t2p0", "t2p1", "t2p2"),
    }


# --- names -----------------------------------------------------------------------------------


def test_unknown_assignor_lists_the_names() -> None:
    with pytest.raises(InvalidRequestError, match="range, roundrobin, sticky"):
        assign("cooperative", {"a": frozenset({"t0"})}, {"t0": 1}, {})
    assert check_assignor_name("sticky") == "sticky"


@pytest.mark.parametrize("name", ASSIGNOR_NAMES)
def test_missing_and_empty_topics_give_nothing(name: str) -> None:
    members = {"a": frozenset({"t0", "missing"}), "b": frozenset({"empty"})}
    result = assign(name, members, {"t0": 2, "empty": 0}, {})
    assert result == {"a": tps("t0p0", "t0p1"), "b": frozenset()}


@pytest.mark.parametrize("name", ASSIGNOR_NAMES)
def test_more_members_than_partitions_leaves_extras_empty(name: str) -> None:
    members = {f"m{i}": frozenset({"t0"}) for i in range(5)}
    result = assign(name, members, {"t0": 2}, {})
    assert sorted(len(v) for v in result.values()) == [0, 0, 0, 1, 1]


def test_no_members_gives_empty_assignment() -> None:
    for name in ASSIGNOR_NAMES:
        assert assign(name, {}, {"t0": 3}, {}) == {}


# --- sticky examples ----------------------------------------------------------------------


def test_sticky_new_member_takes_only_the_excess() -> None:
    members = {"a": frozenset({"t0"}), "b": frozenset({"t0"})}
    current = {"a": tps("t0p0", "t0p1", "t0p2", "t0p3")}
    result = assign("sticky", members, {"t0": 4}, current)
    assert len(result["a"]) == 2 and result["a"] < current["a"]
    assert len(result["b"]) == 2


def test_sticky_departed_member_partitions_go_to_the_others_only() -> None:
    members = {"a": frozenset({"t0"}), "b": frozenset({"t0"})}
    current = {"a": tps("t0p0", "t0p1"), "b": tps("t0p2", "t0p3"), "c": tps("t0p4", "t0p5")}
    result = assign("sticky", members, {"t0": 6}, current)
    assert result["a"] >= current["a"] and result["b"] >= current["b"]
    assert len(result["a"]) == len(result["b"]) == 3


def test_sticky_respects_subscriptions_when_balancing() -> None:
    # only b may take t1, so the t0 partitions a holds beyond balance go to c
    members = {"a": frozenset({"t0"}), "b": frozenset({"t1"}), "c": frozenset({"t0"})}
    current = {"a": tps("t0p0", "t0p1", "t0p2", "t0p3")}
    result = assign("sticky", members, {"t0": 4, "t1": 1}, current)
    assert result["b"] == tps("t1p0")
    assert len(result["a"]) == len(result["c"]) == 2


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios(), name=st.sampled_from(ASSIGNOR_NAMES))
def test_every_partition_is_placed_once_on_a_subscriber(
    scenario: tuple[Subscriptions, Counts, Current], name: str
) -> None:
    subscriptions, counts, current = scenario
    result = assign(name, subscriptions, counts, current)
    assert_places_each_partition_once(result, subscriptions, counts)
    assert assign(name, subscriptions, counts, current) == result  # deterministic


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios(identical=True), name=st.sampled_from(("roundrobin", "sticky")))
def test_identical_subscriptions_balance_within_one(
    scenario: tuple[Subscriptions, Counts, Current], name: str
) -> None:
    subscriptions, counts, current = scenario
    loads = [len(v) for v in assign(name, subscriptions, counts, current).values()]
    assert max(loads) - min(loads) <= 1


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios(identical=True))
def test_range_balances_each_topic_within_one(
    scenario: tuple[Subscriptions, Counts, Current],
) -> None:
    subscriptions, counts, _ = scenario
    result = assign("range", subscriptions, counts, {})
    for topic in next(iter(subscriptions.values())):
        loads = [sum(1 for t, _ in v if t == topic) for v in result.values()]
        assert max(loads) - min(loads) <= 1


@settings(max_examples=500, deadline=None)
@given(scenario=scenarios(identical=True))
def test_sticky_keeps_what_fits_and_moves_the_minimum(
    scenario: tuple[Subscriptions, Counts, Current],
) -> None:
    subscriptions, counts, current = scenario
    result = assign("sticky", subscriptions, counts, current)
    valid = valid_current(subscriptions, counts, current)
    total = len(all_partitions(subscriptions, counts))
    q = total // len(subscriptions)
    for member, held in valid.items():
        # everything up to the lower quota stays; the r biggest holders may keep q + 1
        assert len(held & result[member]) >= min(len(held), q)
    moves = sum(len(held - result[member]) for member, held in valid.items())
    assert moves == minimum_moves(valid, total)


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios())
def test_sticky_leaves_no_allowed_move_that_improves_balance(
    scenario: tuple[Subscriptions, Counts, Current],
) -> None:
    subscriptions, counts, current = scenario
    result = assign("sticky", subscriptions, counts, current)
    for given_ in result.values():
        for receiver, taken in result.items():
            if len(given_) >= len(taken) + 2:
                assert not any(t in subscriptions[receiver] for t, _ in given_)


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_sticky_is_stable_on_its_own_output(
    scenario: tuple[Subscriptions, Counts, Current],
) -> None:
    subscriptions, counts, current = scenario
    first = assign("sticky", subscriptions, counts, current)
    assert assign("sticky", subscriptions, counts, first) == first

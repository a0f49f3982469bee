"""`CoordinatorCache` on its own: where a group's requests go, when a failed one is sent
again, and how long the client waits before it (on a manual clock)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.client.coordinators import HOME, CoordinatorCache
from logstore.clock import ManualClock

GROUP = "billing"
#: error kinds a group request can meet
KINDS = (
    "NotCoordinatorError",
    "BrokerUnavailableError",
    "RequestTimedOutError",
    "UnknownMemberIdError",
    "FencedMemberEpochError",
    "AuthorizationError",
    "InvalidRequestError",
)


@dataclass(frozen=True)
class Broker:
    """The fields of a BrokerDescription."""

    broker_id: int
    host: str
    port: int


def test_a_coordinator_is_unknown_until_found() -> None:
    cache = CoordinatorCache()
    assert cache.get(GROUP) is None
    assert cache.found(GROUP, Broker(2, "b2", 9093)) == "b2:9093"
    assert cache.get(GROUP) == "b2:9093"
    assert cache.get("other") is None


@pytest.mark.parametrize(
    ("answer", "address"),
    [
        (None, HOME),  # a broker without the FindCoordinator RPC
        (Broker(0, "", 0), HOME),  # a standalone broker names itself without a host
        (Broker(3, "10.0.0.3", 9092), "10.0.0.3:9092"),
        (Broker(1, "::1", 9092), "[::1]:9092"),
    ],
)
def test_an_answer_without_a_host_is_the_broker_asked(answer: Broker | None, address: str) -> None:
    assert CoordinatorCache().found(GROUP, answer) == address


def test_not_coordinator_forgets_the_coordinator_and_asks_for_a_retry() -> None:
    cache = CoordinatorCache()
    cache.found(GROUP, Broker(2, "b2", 1))
    assert cache.failed(GROUP, "b2:1", "NotCoordinatorError")
    assert cache.get(GROUP) is None


def test_an_unreachable_coordinator_is_forgotten_but_an_unreachable_home_is_kept() -> None:
    cache = CoordinatorCache()
    cache.found(GROUP, Broker(2, "b2", 1))
    assert cache.failed(GROUP, "b2:1", "BrokerUnavailableError")
    assert cache.get(GROUP) is None
    cache.found(GROUP, Broker(0, "", 0))
    assert not cache.failed(GROUP, HOME, "BrokerUnavailableError")
    assert cache.get(GROUP) == HOME
    # a home broker that says it does not coordinate has become a cluster broker
    assert cache.failed(GROUP, HOME, "NotCoordinatorError")
    assert cache.get(GROUP) is None


@pytest.mark.parametrize(
    "kind",
    [
        "RequestTimedOutError",  # the request may have been carried out
        "UnknownMemberIdError",
        "FencedMemberEpochError",
        "AuthorizationError",
        "InvalidRequestError",
    ],
)
def test_other_errors_are_the_callers_and_keep_the_coordinator(kind: str) -> None:
    cache = CoordinatorCache()
    cache.found(GROUP, Broker(2, "b2", 1))
    assert not cache.failed(GROUP, "b2:1", kind)
    assert cache.get(GROUP) == "b2:1"


def test_a_late_failure_does_not_drop_a_newer_answer() -> None:
    cache = CoordinatorCache()
    cache.found(GROUP, Broker(1, "b1", 1))
    cache.found(GROUP, Broker(2, "b2", 1))  # another thread found the new coordinator
    assert cache.failed(GROUP, "b1:1", "NotCoordinatorError")  # its request still goes again
    assert cache.get(GROUP) == "b2:1"


def test_groups_are_independent() -> None:
    cache = CoordinatorCache()
    cache.found("a", Broker(1, "b1", 1))
    cache.found("b", Broker(1, "b1", 1))
    cache.failed("a", "b1:1", "NotCoordinatorError")
    assert cache.get("a") is None and cache.get("b") == "b1:1"


@pytest.mark.parametrize(
    ("kind", "again"),
    [
        ("NotCoordinatorError", True),  # the offsets partition has no live leader yet
        ("ClusterMetadataUnavailableError", True),
        ("BrokerUnavailableError", False),  # no broker answered: the caller's failure
        ("RequestTimedOutError", False),
        ("AuthorizationError", False),
    ],
)
def test_which_lookup_failures_are_asked_again(kind: str, again: bool) -> None:
    assert CoordinatorCache.lookup_failed(kind) is again


@pytest.mark.parametrize(
    ("kind", "home"),
    [
        ("AuthorizationError", True),  # the broker asked names what the request itself needs
        ("NotCoordinatorError", False),
        ("BrokerUnavailableError", False),
        ("InvalidRequestError", False),
    ],
)
def test_a_lookup_refused_for_want_of_rights_sends_the_request_home(kind: str, home: bool) -> None:
    assert CoordinatorCache.ask_home_instead(kind) is home


def test_delays_double_from_the_backoff_to_the_cap() -> None:
    cache = CoordinatorCache(backoff_ms=100, backoff_max_ms=1000)
    assert [cache.delay_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]


def test_no_attempt_starts_at_or_after_the_deadline() -> None:
    clock = ManualClock()
    cache = CoordinatorCache(backoff_ms=100, backoff_max_ms=400, clock=clock)
    deadline = clock.monotonic_ms() + 1000
    waits: list[float] = []
    for failures in range(1, 100):
        wait = cache.next_attempt_ms(failures, deadline)
        if wait is None:
            break
        waits.append(wait)
        clock.advance(int(wait))
    assert waits == [100, 200, 400]  # after 700 ms, another 400 would pass the deadline
    assert clock.monotonic_ms() < deadline


@given(
    backoff=st.integers(1, 5000),
    cap=st.integers(1, 60_000),
    failures=st.lists(st.integers(1, 200), min_size=1, max_size=20),
)
def test_delays_stay_between_the_backoff_and_the_cap_and_never_shrink(
    backoff: int, cap: int, failures: list[int]
) -> None:
    cache = CoordinatorCache(backoff_ms=backoff, backoff_max_ms=cap)
    ordered = sorted(failures)
    delays = [cache.delay_ms(n) for n in ordered]
    assert all(backoff <= d <= max(backoff, cap) for d in delays)
    assert delays == sorted(delays)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(
            st.just("found"),
            st.sampled_from(["g1", "g2"]),
            st.sampled_from([None, Broker(0, "", 0), Broker(1, "b1", 1), Broker(2, "b2", 2)]),
        ),
        st.tuples(
            st.just("failed"),
            st.sampled_from(["g1", "g2"]),
            st.sampled_from([HOME, "b1:1", "b2:2"]),
            st.sampled_from(KINDS),
        ),
    ),
    max_size=40,
)


@given(OPERATIONS)
def test_the_cache_follows_its_rules_whatever_the_sequence(
    operations: list[tuple[object, ...]],
) -> None:
    """Against a model: a group maps to the last coordinator found, dropped only by a
    NotCoordinatorError at that same address, or by its being unreachable unless it is
    HOME; a failure is retried exactly when its kind calls for finding the coordinator
    again (and, at HOME, the broker was reachable)."""
    cache = CoordinatorCache()
    model: dict[str, str] = {}
    for op in operations:
        if op[0] == "found":
            _, group, answer = op
            assert isinstance(group, str) and (answer is None or isinstance(answer, Broker))
            named = answer is not None and answer.host
            expected = f"{answer.host}:{answer.port}" if answer is not None and named else HOME
            assert cache.found(group, answer) == expected
            model[group] = expected
        else:
            _, group, address, kind = op
            assert isinstance(group, str) and isinstance(address, str) and isinstance(kind, str)
            refind = kind == "NotCoordinatorError" or (
                kind == "BrokerUnavailableError" and address != HOME
            )
            assert cache.failed(group, address, kind) is refind
            if refind and model.get(group) == address:
                del model[group]
        assert {g: cache.get(g) for g in ("g1", "g2")} == {g: model.get(g) for g in ("g1", "g2")}

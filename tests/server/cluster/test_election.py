"""The controller's decisions: leaders and ISR after brokers come and go, the preferred
leader, reassignment. Each rule by a table, then invariants over random states."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.errors import InvalidRequestError
from logstore.server.cluster.election import (
    complete_reassignment,
    initial_state,
    on_brokers_changed,
    preferred_leader,
    reassignment_in_progress,
    start_reassignment,
)
from logstore.server.cluster.state import NO_LEADER, PartitionState


def ps(
    replicas: str, leader: int, epoch: int, isr: str, adding: str = "", removing: str = ""
) -> PartitionState:
    """`ps("123", 1, 5, "12")`: replicas (1, 2, 3), leader 1 at epoch 5, ISR (1, 2)."""

    def ids(text: str) -> tuple[int, ...]:
        return tuple(int(c) for c in text)

    return PartitionState(ids(replicas), leader, epoch, ids(isr), ids(adding), ids(removing))


def live(text: str) -> set[int]:
    return {int(c) for c in text}


# --- initial_state ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("replicas", "alive", "expected"),
    [
        ((1, 2, 3), "123", ps("123", 1, 0, "123")),
        ((3, 1, 2), "123", ps("312", 3, 0, "312")),
        ((1, 2, 3), "23", ps("123", 2, 0, "23")),
        ((1, 2, 3), "", ps("123", NO_LEADER, 0, "123")),  # all empty logs: any may lead later
        ((1, 2, 3), "4", ps("123", NO_LEADER, 0, "123")),
    ],
)
def test_initial_state(replicas: tuple[int, ...], alive: str, expected: PartitionState) -> None:
    assert initial_state(replicas, live(alive)) == expected


@pytest.mark.parametrize("replicas", [(), (1, 1), (1, 2, 1), (-1, 2)])
def test_initial_state_rejects_bad_replicas(replicas: tuple[int, ...]) -> None:
    with pytest.raises(InvalidRequestError):
        initial_state(replicas, {1, 2})


# --- on_brokers_changed ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "alive", "unclean", "after"),
    [
        # all alive: nothing changes
        (ps("123", 1, 5, "123"), "123", False, None),
        # a follower dies: it leaves the ISR, same leader, same epoch
        (ps("123", 1, 5, "123"), "12", False, ps("123", 1, 5, "12")),
        # a dead follower that is already out of the ISR: nothing to do
        (ps("123", 1, 5, "12"), "12", False, None),
        # the leader dies: the next ISR member in replicas order leads, epoch + 1
        (ps("123", 1, 5, "123"), "23", False, ps("123", 2, 6, "23")),
        # replicas order decides, not ISR order
        (ps("123", 1, 5, "321"), "23", False, ps("123", 2, 6, "32")),
        # the last ISR member dies: it stays the ISR (KIP-966), leader -1, epoch + 1
        (ps("123", 1, 5, "1"), "23", False, ps("123", NO_LEADER, 6, "1")),
        # ... and nothing more happens while it is down
        (ps("123", NO_LEADER, 6, "1"), "23", False, None),
        # ... until it comes back and leads again
        (ps("123", NO_LEADER, 6, "1"), "123", False, ps("123", 1, 7, "1")),
        # several ISR members die at once: they all stay, any of them may lead when back;
        # the live replica 3, outside the ISR, is not elected cleanly
        (ps("123", 1, 5, "12"), "3", False, ps("123", NO_LEADER, 6, "12")),
        (ps("123", NO_LEADER, 6, "12"), "23", False, ps("123", 2, 7, "2")),
        # unclean: the first live replica leads and is the whole ISR
        (ps("123", 1, 5, "1"), "23", True, ps("123", 2, 6, "2")),
        (ps("123", NO_LEADER, 6, "1"), "3", True, ps("123", 3, 7, "3")),
        # unclean only when no ISR member is live
        (ps("123", 1, 5, "12"), "23", True, ps("123", 2, 6, "2")),
        # unclean with nobody alive: leader -1
        (ps("123", 1, 5, "1"), "", True, ps("123", NO_LEADER, 6, "1")),
        # a live leader keeps leading even if it is not the preferred one
        (ps("123", 3, 5, "123"), "23", False, ps("123", 3, 5, "23")),
        # leader -1 with a live ISR member (e.g. after a failed write): elect
        (ps("123", NO_LEADER, 4, "23"), "123", False, ps("123", 2, 5, "23")),
    ],
)
def test_on_brokers_changed(
    before: PartitionState, alive: str, unclean: bool, after: PartitionState | None
) -> None:
    assert on_brokers_changed(before, live(alive), unclean=unclean) == after


def test_on_brokers_changed_during_reassignment_keeps_adding_and_removing() -> None:
    before = ps("3412", 1, 2, "123", adding="4", removing="12")
    after = on_brokers_changed(before, live("234"), unclean=False)
    assert after == ps("3412", 3, 3, "23", adding="4", removing="12")


# --- preferred_leader ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "alive", "after"),
    [
        (ps("123", 2, 5, "123"), "123", ps("123", 1, 6, "123")),
        (ps("123", 1, 5, "123"), "123", None),  # already leads
        (ps("123", 2, 5, "23"), "123", None),  # not in the ISR yet
        (ps("123", 2, 5, "123"), "23", None),  # not live
        (ps("123", NO_LEADER, 5, "1"), "1", ps("123", 1, 6, "1")),
    ],
)
def test_preferred_leader(before: PartitionState, alive: str, after: PartitionState | None) -> None:
    assert preferred_leader(before, live(alive)) == after


# --- reassignment ----------------------------------------------------------------------------


def test_start_reassignment_moves_to_a_new_broker() -> None:
    before = ps("123", 1, 5, "123")
    started = start_reassignment(before, [4, 2, 3])
    assert started == ps("4231", 1, 5, "123", adding="4", removing="1")
    assert reassignment_in_progress(started)
    assert not reassignment_in_progress(before)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ((3, 2, 1), ps("321", 1, 5, "123")),  # a new order only: done at once
        ((1, 2), ps("123", 1, 5, "123", removing="3")),
        ((1, 2, 3, 4), ps("1234", 1, 5, "123", adding="4")),
        ((5, 4), ps("54123", 1, 5, "123", adding="54", removing="123")),
    ],
)
def test_start_reassignment_table(target: tuple[int, ...], expected: PartitionState) -> None:
    assert start_reassignment(ps("123", 1, 5, "123"), target) == expected


@pytest.mark.parametrize("target", [(), (1, 1), (4, 2, 4), (-3,)])
def test_start_reassignment_rejects_bad_targets(target: tuple[int, ...]) -> None:
    with pytest.raises(InvalidRequestError):
        start_reassignment(ps("123", 1, 5, "123"), target)


def test_a_new_reassignment_replaces_the_running_one() -> None:
    """Relative to the original replicas (1, 2, 3); 4 was being added, out of sync: gone."""
    running = ps("4231", 1, 5, "123", adding="4", removing="1")
    assert start_reassignment(running, [5, 2, 3]) == ps("5231", 1, 5, "123", "5", "1")


def test_a_replaced_reassignment_keeps_an_added_replica_already_in_sync() -> None:
    """4 joined the ISR (it may hold acknowledged records): it leaves only at completion."""
    running = ps("4231", 1, 5, "1234", adding="4", removing="1")
    replaced = start_reassignment(running, [5, 2, 3])
    assert replaced == ps("52341", 1, 5, "1234", adding="5", removing="41")


def test_reassignment_back_to_the_original_replicas() -> None:
    running = ps("4231", 1, 5, "123", adding="4", removing="1")
    assert start_reassignment(running, [1, 2, 3]) == ps("123", 1, 5, "123")


@pytest.mark.parametrize(
    ("state", "alive", "after"),
    [
        # nothing runs
        (ps("123", 1, 5, "123"), "123", None),
        # 4 is not in sync yet
        (ps("4231", 1, 5, "123", "4", "1"), "1234", None),
        # 4 in sync: 1 (the leader) leaves, the first target replica in the ISR leads
        (ps("4231", 1, 5, "1234", "4", "1"), "1234", ps("423", 4, 6, "234")),
        # ... the first live one (a dead ISR member leaves through on_brokers_changed)
        (ps("4231", 1, 5, "1234", "4", "1"), "123", ps("423", 2, 6, "234")),
        # the leader stays: same epoch
        (ps("4231", 2, 5, "1234", "4", "1"), "1234", ps("423", 2, 5, "234")),
        # only removing: done at once
        (ps("123", 1, 5, "123", removing="3"), "123", ps("12", 1, 5, "12")),
        # removing the whole ISR would leave nobody in sync: wait
        (ps("123", 3, 5, "3", removing="3"), "123", None),
        # the leader leaves and no remaining ISR member is live: wait
        (ps("4231", 1, 5, "14", "4", "1"), "1", None),
    ],
)
def test_complete_reassignment(
    state: PartitionState, alive: str, after: PartitionState | None
) -> None:
    assert complete_reassignment(state, live(alive)) == after


# --- invariants over random states -----------------------------------------------------------

BROKERS = range(6)


@st.composite
def states(draw: st.DrawFn) -> PartitionState:
    """A valid state, possibly mid-reassignment and with leader -1."""
    replicas = tuple(draw(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True)))
    isr = tuple(draw(st.lists(st.sampled_from(replicas), max_size=len(replicas), unique=True)))
    leader = draw(st.sampled_from(isr)) if isr and draw(st.booleans()) else NO_LEADER
    state = PartitionState(replicas, leader, draw(st.integers(0, 1000)), isr)
    if draw(st.booleans()):
        target = draw(st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True))
        state = start_reassignment(state, target)
    return state


lives = st.sets(st.sampled_from(BROKERS))


def check_election(before: PartitionState, after: PartitionState | None, alive: set[int]) -> None:
    """What every leader change must satisfy (PartitionState's own checks ran on build)."""
    if after is None:
        return
    assert after != before, "an unchanged state is reported as None"
    if after.leader != before.leader:
        assert after.leader_epoch == before.leader_epoch + 1
    else:
        assert after.leader_epoch == before.leader_epoch
    assert after.leader == NO_LEADER or after.leader in alive


@settings(max_examples=500, deadline=None)
@given(states(), lives, st.booleans())
def test_brokers_changed_invariants(state: PartitionState, alive: set[int], unclean: bool) -> None:
    after = on_brokers_changed(state, alive, unclean=unclean)
    check_election(state, after, alive)
    result = after or state
    if state.isr:
        assert result.isr, "the ISR is never emptied"
    if after is not None and after.leader not in (NO_LEADER, state.leader):
        if not unclean:
            assert after.leader in state.isr, "clean elections stay within the ISR"
        elif after.leader not in state.isr:
            assert not set(state.isr) & alive, "unclean only when no ISR member is live"
            assert after.isr == (after.leader,)
    # dead brokers leave the ISR unless they are the last ones
    if set(state.isr) & alive:
        assert set(result.isr) <= alive
    # a live ISR member is always found
    if set(state.isr) & alive:
        assert result.leader in alive
    assert (result.adding, result.removing) == (state.adding, state.removing)
    # applying the same change twice changes nothing more
    assert on_brokers_changed(result, alive, unclean=unclean) is None


@settings(max_examples=300, deadline=None)
@given(states(), lives)
def test_preferred_leader_invariants(state: PartitionState, alive: set[int]) -> None:
    after = preferred_leader(state, alive)
    check_election(state, after, alive)
    if after is not None:
        assert after.leader == state.replicas[0]
        assert after.leader in state.isr and after.isr == state.isr


@settings(max_examples=500, deadline=None)
@given(states(), st.lists(st.sampled_from(BROKERS), min_size=1, max_size=5, unique=True), lives)
def test_reassignment_invariants(state: PartitionState, target: list[int], alive: set[int]) -> None:
    started = start_reassignment(state, target)
    assert started.replicas[: len(target)] == tuple(target)
    assert (started.leader, started.leader_epoch, started.isr) == (
        state.leader,
        state.leader_epoch,
        state.isr,
    )
    assert set(started.adding) <= set(target)
    assert not set(started.removing) & set(target)
    # once the added replicas are in sync (the leader's ISR expansion), the move completes
    synced = started.with_isr(
        started.isr + tuple(b for b in started.adding if b not in started.isr)
    )
    done = complete_reassignment(synced, alive)
    check_election(synced, done, alive | {synced.leader})
    if done is not None:
        assert done.replicas == tuple(target)
        assert not reassignment_in_progress(done)
        assert done.isr and set(done.isr) <= set(synced.isr)
        if done.leader != synced.leader:
            assert synced.leader in synced.removing
            assert done.leader in alive and done.leader in synced.isr
    elif reassignment_in_progress(started):
        remaining = [b for b in synced.isr if b not in synced.removing]
        assert not remaining or (synced.leader in synced.removing and not set(remaining) & alive), (
            "it completes whenever it safely can"
        )

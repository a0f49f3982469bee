"""Fetch positions and the record buffer, without a broker.

A partition's log is modelled as batches of BATCH records each ([10 i, 10 i + 10)); an
answer holds whole batches from the one holding the fetch offset, as the broker's do.
The property drives random fetches, answers ahead, drains and seeks, and checks what
poll() would see: every record handed out once, in offset order, continuing exactly
where the previous drain or the last seek left off.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore import errors
from logstore.client.consumer.fetch_positions import FetchPositions, PartitionState
from logstore.client.consumer.fetcher import decode
from logstore.codec.record_batch import encode_batch
from logstore.types import ConsumerRecord, TopicPartition

TP: TopicPartition = ("t", 0)
BATCH = 10
LOG_END = 200


def batches(start: int, count: int) -> bytes:
    """Whole batches from the one holding `start`, `count` of them, cut at LOG_END."""
    first = start - start % BATCH
    out = b""
    for base in range(first, min(first + count * BATCH, LOG_END), BATCH):
        out += encode_batch(
            [(None, f"{base + i}".encode(), None, 1_000) for i in range(BATCH)], base_offset=base
        )
    return out


def positioned(offset: int = 0, *tps: TopicPartition) -> FetchPositions:
    positions = FetchPositions(10**9, 10**9, reset_policy="earliest")
    positions.set_assignment(set(tps or (TP,)), "earliest")
    pending = positions.unresolved_states()
    assert positions.resolved({tp: offset for tp in pending}, pending)
    return positions


def fetch(positions: FetchPositions, tp: TopicPartition, count: int, ahead: bool = False) -> bool:
    """Plan, answer with `count` batches and deliver; True if records were buffered."""
    plan, _ = positions.plan(now=0.0, ahead=ahead)
    sent = {p: (offset, epoch) for p, offset, epoch in plan}
    for p in sent:  # answered (only `tp` with records), as the fetcher counts them
        positions.states[p].inflight -= 1
    if tp not in sent:
        return False
    offset, epoch = sent[tp]
    state = positions.states[tp]
    start = offset + count * BATCH if ahead else offset  # skip_bytes: past the fetch in flight
    data = batches(start, count) if start < LOG_END else b""
    arrival = positions.accept(tp, state, offset, None, data, LOG_END, 0.0, ahead)
    if arrival is None:
        return False
    assert arrival.epoch == epoch
    records, skip, error, error_offset = decode(arrival)
    return positions.deliver(arrival, records, skip, error, error_offset)


def fetch_pair(positions: FetchPositions, first: int, guess: int) -> None:
    """A fetch from the position answering `first` batches, and one ahead of it sent
    before that answer, assuming `guess` batches: it starts past the position when the
    guess was too high, and must then be dropped."""
    plan, _ = positions.plan(now=0.0)
    if not plan:
        return
    _, offset, _ = plan[0]
    ahead_plan, _ = positions.plan(now=0.0, ahead=True)
    state = positions.states[TP]
    for data, is_ahead in (
        (batches(offset, first), False),
        (batches(offset - offset % BATCH + guess * BATCH, 2), True),
    ):
        if is_ahead and not ahead_plan:
            return
        state.inflight -= 1
        arrival = positions.accept(TP, state, offset, None, data, LOG_END, 0.0, is_ahead)
        if arrival is not None:
            positions.deliver(arrival, *decode(arrival)[:2], None, arrival.next_offset)


def offsets(records: list[ConsumerRecord]) -> list[int]:
    return [r.offset for r in records]


# --- positions -------------------------------------------------------------------------


def test_a_new_partition_is_unresolved_until_a_position_is_found() -> None:
    positions = FetchPositions(1000, 100)
    positions.set_assignment({TP}, "committed")
    assert positions.unresolved_states() == {TP: (1, "committed", "")}
    assert positions.plan(0.0) == ([], None)  # nothing to fetch without a position
    assert positions.resolved({TP: 42}, positions.unresolved_states())
    state = positions.states[TP]
    assert (state.position, state.fetch_position, state.strategy) == (42, 42, None)
    assert positions.plan(0.0)[0] == [(TP, 42, 1)]


def test_a_position_found_for_an_older_epoch_is_ignored() -> None:
    positions = FetchPositions(1000, 100)
    positions.set_assignment({TP}, "earliest")
    pending = positions.unresolved_states()
    positions.reposition(TP, 7, None)  # a seek while the lookup was in flight
    assert not positions.resolved({TP: 0}, pending)
    assert positions.states[TP].position == 7


def test_a_fetch_answer_advances_the_fetch_position_not_the_position() -> None:
    positions = positioned(15)
    assert fetch(positions, TP, 2)
    state = positions.states[TP]
    assert (state.position, state.fetch_position) == (15, 30)
    assert offsets(positions.drain(100)) == list(range(15, 30))
    assert state.position == 30


def test_an_answer_of_an_older_epoch_is_not_delivered() -> None:
    positions = positioned(0)
    state = positions.states[TP]
    arrival = positions.accept(TP, state, 0, None, batches(0, 1), LOG_END, 0.0, False)
    assert arrival is not None
    positions.reposition(TP, 100, None)  # seek while decoding
    records, skip, error, at = decode(arrival)
    assert not positions.deliver(arrival, records, skip, error, at)
    assert positions.drain(100) == []
    assert positions.records.buffered == 0
    assert fetch(positions, TP, 1)
    assert offsets(positions.drain(100)) == list(range(100, 110))


def test_an_answer_ahead_that_starts_past_the_fetch_position_is_dropped() -> None:
    positions = positioned(0)
    state = positions.states[TP]
    data = batches(20, 1)  # the fetch in flight ended at 10, not 20
    assert positions.accept(TP, state, 0, None, data, LOG_END, 0.0, True) is None
    assert (state.fetch_position, state.ahead, positions.records.buffered) == (0, False, 0)


def test_a_revoke_discards_the_buffered_records_and_their_bytes() -> None:
    other: TopicPartition = ("t", 1)
    positions = positioned(0, TP, other)
    assert fetch(positions, TP, 3) and fetch(positions, other, 1)
    positions.set_assignment({other}, "earliest")
    assert positions.records.buffered == positions.states[other].buffered > 0
    assert {r.partition for r in positions.drain(1000)} == {1}
    assert positions.records.buffered == 0


def test_drain_hands_out_at_most_the_limit_and_keeps_the_rest() -> None:
    positions = positioned(3)
    assert fetch(positions, TP, 4)
    assert offsets(positions.drain(5)) == list(range(3, 8))
    assert positions.states[TP].position == 8
    assert offsets(positions.drain(100)) == list(range(8, 40))


def test_a_paused_partition_keeps_its_records_until_resumed() -> None:
    positions = positioned(0)
    assert fetch(positions, TP, 1)
    positions.states[TP].paused = True
    assert positions.drain(100) == []
    assert positions.plan(0.0)[0] == []  # nor is it fetched
    positions.states[TP].paused = False
    assert offsets(positions.drain(100)) == list(range(10))


def test_an_error_is_raised_after_the_records_before_it_then_fetching_resumes_there() -> None:
    positions = positioned(0)
    assert fetch(positions, TP, 1)
    state = positions.states[TP]
    failure = errors.CorruptRecordError("bad batch")
    positions.accept(TP, state, 10, failure, b"", LOG_END, 0.0, False)
    assert state.halted and positions.plan(0.0)[0] == []
    assert offsets(positions.drain(100)) == list(range(10))
    with pytest.raises(errors.CorruptRecordError):
        positions.drain(100)
    assert (state.halted, state.position) == (False, 10)
    assert positions.plan(0.0)[0] == [(TP, 10, state.epoch)]


def test_out_of_range_resets_the_position_per_the_policy() -> None:
    positions = positioned(50)
    state = positions.states[TP]
    positions.accept(
        TP, state, 50, errors.OffsetOutOfRangeError("t-0", 50, 60, 100), b"", 0, 0.0, False
    )
    assert (state.position, state.strategy, positions.unresolved) == (None, "earliest", True)
    assert positions.interrupt


def test_a_missing_topic_is_retried_after_a_backoff_and_remembered_until_found() -> None:
    positions = positioned(0)
    state = positions.states[TP]
    positions.plan(0.0)
    state.inflight = 0
    missing = errors.UnknownTopicOrPartitionError("no such topic")
    positions.accept(TP, state, 0, missing, b"", -1, 5.0, False)
    assert positions.missing == {TP}
    assert positions.plan(5.0) == ([], 5.0 + positions.retry_backoff_s)
    assert fetch_at(positions, 6.0)
    assert positions.missing == set()


def fetch_at(positions: FetchPositions, now: float) -> bool:
    plan, _ = positions.plan(now)
    if not plan:
        return False
    tp, offset, _ = plan[0]
    state = positions.states[tp]
    state.inflight -= 1
    return (
        positions.accept(tp, state, offset, None, batches(offset, 1), LOG_END, now, False)
        is not None
    )


def test_a_new_epoch_forgets_fetches_in_flight() -> None:
    state = PartitionState("earliest", epoch=1)
    state.inflight, state.ahead = 1, True
    state.renew(2)
    assert (state.epoch, state.inflight, state.ahead) == (2, 0, False)


# --- the property ----------------------------------------------------------------------

operation = st.one_of(
    st.tuples(st.just("fetch"), st.integers(1, 4)),
    st.tuples(st.just("pair"), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    st.tuples(st.just("drain"), st.integers(1, 40)),
    st.tuples(st.just("seek"), st.integers(0, LOG_END - 1)),
    st.tuples(st.just("forget"), st.just(0)),
)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, LOG_END - 1), ops=st.lists(operation, max_size=40))
def test_every_record_is_handed_out_once_in_order_and_positions_move_back_only_by_seek(
    start: int, ops: list[tuple[str, Any]]
) -> None:
    positions = positioned(start)
    state = positions.states[TP]
    expected_next = start
    for name, arg in ops:
        before = state.position
        assert before is not None
        if name == "fetch":
            fetch(positions, TP, arg)
        elif name == "pair":
            fetch_pair(positions, *arg)  # type: ignore[misc]
        elif name == "forget":
            state.forget_fetches()  # a fetch cancelled or failed
        elif name == "drain":
            got = offsets(positions.drain(arg))
            assert len(got) <= arg
            assert got == list(range(expected_next, expected_next + len(got)))
            expected_next += len(got)
        else:
            positions.reposition(TP, arg, None)
            expected_next = arg
            assert state.position == arg
            continue
        assert state.position is not None and state.position >= before
        assert state.fetch_position is not None and state.fetch_position >= state.position
        assert positions.records.buffered == state.buffered >= 0
    rest = offsets(positions.drain(10_000))
    assert rest == list(range(expected_next, expected_next + len(rest)))


# --- leaders ---------------------------------------------------------------------------


def test_a_fetcher_plans_only_the_partitions_its_broker_leads() -> None:
    first, second = ("t", 0), ("t", 1)
    positions = positioned(0, first, second)
    positions.states[first].leader = "broker-1:9092"
    positions.states[second].leader = "broker-2:9092"
    plan, _ = positions.plan(0.0, leader="broker-1:9092")
    assert [tp for tp, _, _ in plan] == [first]
    ready, _ = positions.candidates(0.0, 10**9, "broker-2:9092")
    assert [tp for tp, _ in ready] == [second]
    positions.states[second].leader = None  # a broker said it no longer leads it
    assert positions.plan(0.0, leader="broker-2:9092") == ([], None)
    assert positions.states[second].position == 0  # its position waits for the new leader


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, LOG_END - 1),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(1, 3)),
            st.tuples(st.just("answer"), st.integers(0, 7)),
            st.tuples(st.just("drain"), st.integers(1, 40)),
        ),
        max_size=40,
    ),
)
def test_answers_from_an_old_and_a_new_leader_in_any_order_skip_and_repeat_nothing(
    start: int, ops: list[tuple[str, int]]
) -> None:
    """A partition that moves keeps its positions: the new leader is asked from
    fetch_position while fetches sent to the old one may still be answered, late and in
    any order. Whatever arrives, poll() sees every record once, in offset order."""
    positions = positioned(start)
    state = positions.states[TP]
    sent: list[tuple[int, int]] = []  # (offset asked, batches answered), not yet answered
    expected_next = start
    for name, arg in ops:
        if name == "send":  # to whichever broker leads now: from the current fetch position
            assert state.fetch_position is not None
            sent.append((state.fetch_position, arg))
        elif name == "answer" and sent:
            offset, count = sent.pop(arg % len(sent))
            data = batches(offset, count) if offset < LOG_END else b""
            arrival = positions.accept(TP, state, offset, None, data, LOG_END, 0.0, False)
            if arrival is not None:
                positions.deliver(arrival, *decode(arrival)[:2], None, arrival.next_offset)
        elif name == "drain":
            got = offsets(positions.drain(arg))
            assert got == list(range(expected_next, expected_next + len(got)))
            expected_next += len(got)
    rest = offsets(positions.drain(10_000))
    assert rest == list(range(expected_next, expected_next + len(rest)))

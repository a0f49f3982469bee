"""The producer's accumulator without a broker: batching, linger, what is sent in which
request, retries, expiry and sequence resets. Time is a ManualClock; nothing sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore import errors
from logstore.client.producer.accumulator import MAX_IDLE_WAIT_MS, Batch, Outcome
from logstore.client.producer.futures import BatchGroup, BatchMetadata, RecordFuture
from logstore.types import RecordMetadata

from .world import LEADER, World, header_of, values_of

RETRIABLE = errors.BrokerUnavailableError("broker went away")
FATAL = errors.RecordTooLargeError("too large")

#: every test here runs with batch-view record futures and with the plain fallback
pytestmark = pytest.mark.usefixtures("record_futures")


# --- appending and closing -----------------------------------------------------------------


def test_a_record_that_does_not_fit_starts_the_next_batch() -> None:
    world = World(batch_size=1_000)
    first = [world.append(size=300) for _ in range(3)]
    assert len({id(b) for b in first}) == 1 and world.part().open is first[0]
    fourth = world.append(size=300)  # 1,200 > 1,000: the open batch closes first
    assert fourth is not first[0]
    assert world.part().closed == [first[0]] and world.part().open is fourth
    assert world.acc.buffered == 1_200


def test_a_batch_closes_when_full_and_a_huge_record_goes_alone() -> None:
    world = World(batch_size=1_000)
    full = world.append(size=1_000)
    assert world.part().open is None and world.part().closed == [full]
    huge = world.append(size=5_000)
    assert world.part().closed == [full, huge] and len(huge.records) == 1


def test_linger_closes_a_batch_only_when_due() -> None:
    world = World(linger_ms=10)
    batch = world.append()
    world.clock.advance(9)
    assert world.acc.close_due(world.now) == [] and world.part().open is batch
    assert world.acc.next_deadline(world.now) == batch.created + 10
    world.clock.advance(1)
    assert world.acc.close_due(world.now) == [world.part()]
    assert world.part().closed == [batch]


def test_forcing_closes_every_open_batch_at_once() -> None:
    world = World(partitions=3, linger_ms=60_000)
    for p in range(3):
        world.append(p)
    world.acc.forcing += 1
    assert sorted(p.partition for p in world.acc.close_due(world.now)) == [0, 1, 2]


def test_behind_a_backlog_the_open_batch_keeps_filling() -> None:
    """As Kafka's accumulator: with earlier batches still waiting, linger does not close the
    open one, so a short linger under load makes bigger batches."""
    world = World(linger_ms=0, max_in_flight=1)
    world.append()
    world.encode_due()
    (request,) = world.drain()
    world.append()
    world.encode_due()  # queued: the only in-flight slot is taken
    assert world.drain() == []
    growing = world.append()
    world.clock.advance(100)
    assert world.acc.close_due(world.now) == []
    world.append()
    assert len(growing.records) == 2
    world.ack(request[0])
    assert [values_of(b) for b in world.drain()[0]] == [[b"1"]]


# --- what is sent in which request ---------------------------------------------------------


def test_a_request_holds_at_most_one_batch_per_partition() -> None:
    world = World(partitions=2, batch_size=100)
    for _ in range(3):
        world.append(0, size=100)
    world.append(1, size=100)
    world.encode_due(force=True)
    requests = world.drain(slots=5)
    assert [[b.part.partition for b in r] for r in requests] == [[0, 1], [0], [0]]
    assert world.part(0).inflight == 3 and world.part(1).inflight == 1


def test_max_in_flight_limits_each_partition() -> None:
    world = World(batch_size=100, max_in_flight=2)
    for _ in range(4):
        world.append(size=100)
    world.encode_due(force=True)
    assert len(world.drain(slots=10)) == 2
    assert world.drain(slots=10) == []


def test_max_request_size_splits_requests() -> None:
    world = World(partitions=2, max_request_size=150)
    world.append(0, b"x" * 50)
    world.append(1, b"y" * 50)
    world.encode_due(force=True)
    assert all(len(b.data) > 75 for p in (0, 1) for b in world.part(p).ready)
    requests = world.drain(slots=5)
    assert [len(r) for r in requests] == [1, 1]


def test_acks_release_buffer_space_exactly_once() -> None:
    world = World()
    batch = world.append(size=300)
    world.encode_due(force=True)
    world.drain()
    outcome = world.ack(batch, base_offset=7)
    assert outcome is not None and outcome.base_offset == 7 and outcome.error is None
    assert world.acc.buffered == 0 and world.freed == 1
    assert world.acc.claim([batch]) == [] and world.acc.buffered == 0 and world.freed == 1
    world.acc.finished([batch])
    assert batch.done and not world.acc.incomplete
    assert world.acc.next_deadline(world.now) is None


def test_each_record_future_gets_its_offset_or_its_batch_error(record_futures: str) -> None:
    world = World(batch_size=200)
    for _ in range(3):
        world.append(size=100)  # two batches: the first closes full with two records
    assert all(isinstance(f, RecordFuture) == (record_futures == "view") for f in world.futures)
    world.encode_due(force=True)
    first, second = (request[0] for request in world.drain())
    assert not any(f.done() for f in world.futures)
    acked, failed = world.ack(first, base_offset=10), world.fail(second, FATAL)
    assert acked is not None and failed is not None
    world.finish([acked, failed])
    a, b, c = world.futures
    assert [a.result(0), b.result(0)] == [
        RecordMetadata("t", 0, 10, 1_000),
        RecordMetadata("t", 0, 11, 1_000),
    ]
    assert c.exception(0) is FATAL and not world.acc.incomplete


# --- leaders ------------------------------------------------------------------------------

OTHER = "127.0.0.1:9093"


def test_a_request_holds_the_partitions_of_one_leader_only() -> None:
    world = World(partitions=3)
    world.acc.set_leader(world.part(1), OTHER)
    for p in range(3):
        world.append(p)
    world.encode_due(force=True)
    assert world.acc.ready_leaders() == {LEADER, OTHER}
    (mine,) = world.drain(leader=LEADER)
    assert sorted(b.part.partition for b in mine) == [0, 2]
    (theirs,) = world.drain(leader=OTHER)
    assert [b.part.partition for b in theirs] == [1]
    assert world.acc.ready_leaders() == set()


def test_a_partition_without_a_leader_waits_then_expires() -> None:
    world = World(delivery_timeout_ms=1_000)
    world.acc.set_leader(world.part(), None)
    batch = world.append()
    world.encode_due(force=True)
    assert world.acc.ready_leaders() == set() and world.drain() == []
    world.clock.advance(1_000)
    (outcome,) = world.acc.expire(world.now)
    assert outcome.batch is batch and isinstance(outcome.error, errors.RequestTimedOutError)


def test_a_moved_partition_goes_on_at_its_new_leader_in_sequence_order() -> None:
    world = World(batch_size=100, max_in_flight=5)
    batches = [world.append(size=100) for _ in range(2)]
    world.encode_due(force=True)
    first, second = world.drain()
    assert first == [batches[0]] and second == [batches[1]]
    later = world.append(size=100)
    world.encode_due(force=True)
    world.acc.set_leader(world.part(), OTHER)
    # nothing new goes to the new leader while the old one may still append batches 0, 1
    assert world.drain(leader=OTHER) == [] and world.drain(leader=LEADER) == []
    stale = errors.NotLeaderOrFollowerError("broker 1 is not the leader")
    assert world.fail(batches[0], stale) is None
    assert world.drain(leader=OTHER) == []  # batch 1 is still in flight
    assert world.fail(batches[1], stale) is None
    world.clock.advance(100)  # the retry backoff
    requests = world.drain(leader=OTHER, slots=5)
    assert [r[0] for r in requests] == [batches[0], batches[1], later]
    assert [header_of(r[0]).base_sequence for r in requests] == [0, 1, 2]  # as first sent
    assert world.drain(leader=LEADER) == []


def test_routing_a_partition_to_the_leader_it_has_changes_nothing() -> None:
    world = World()
    world.append()
    world.encode_due(force=True)
    assert len(world.drain()) == 1
    world.acc.set_leader(world.part(), LEADER)
    assert not world.part().draining and world.part().inflight == 1


# --- retries, expiry, resets ---------------------------------------------------------------


def test_a_retriable_failure_requeues_after_the_backoff_in_sequence_order() -> None:
    world = World(batch_size=100)
    batches = [world.append(size=100) for _ in range(3)]
    world.encode_due(force=True)
    assert len(world.drain()) == 3
    assert world.fail(batches[0], RETRIABLE) is None
    # later batches of the same round fail with OutOfOrderSequence: retried too
    oos = errors.OutOfOrderSequenceError("expected an earlier sequence")
    assert world.fail(batches[2], oos) is None
    assert list(world.part().ready) == [batches[0], batches[2]]
    assert world.drain() == []  # batch 1 is still in flight and the backoff runs
    assert world.ack(batches[1]) is not None
    assert world.drain() == []
    assert world.part().retry_at == world.now + 100
    world.clock.advance(100)
    (request,) = world.drain(slots=1)
    assert request == [batches[0]] and batches[0].attempts == 2
    assert header_of(batches[0]).base_sequence == 0  # resent byte for byte


def test_a_batch_expires_after_the_delivery_timeout() -> None:
    world = World(delivery_timeout_ms=1_000)
    batch = world.append()
    world.encode_due(force=True)
    world.drain()
    world.clock.advance(500)
    assert world.fail(batch, RETRIABLE) is None
    world.clock.advance(499)
    assert world.acc.expire(world.now) == []
    world.clock.advance(1)
    (outcome,) = world.acc.expire(world.now)
    assert isinstance(outcome.error, errors.RequestTimedOutError)
    assert "delivery_timeout_ms=1000" in str(outcome.error) and "BrokerUnavailable" in str(
        outcome.error
    )


def test_an_answer_after_the_delivery_timeout_fails_the_batch() -> None:
    world = World(delivery_timeout_ms=1_000)
    batch = world.append()
    world.encode_due(force=True)
    world.drain()
    world.clock.advance(1_000)
    outcome = world.fail(batch, RETRIABLE)
    assert outcome is not None and isinstance(outcome.error, errors.RequestTimedOutError)


def test_a_fatal_failure_resets_the_partitions_sequences() -> None:
    world = World(batch_size=100)
    batches = [world.append(size=100) for _ in range(3)]
    world.encode_due(force=True)
    first, *_ = world.drain(slots=1)
    assert [header_of(b).base_sequence for b in batches] == [0, 1, 2]
    outcome = world.fail(first[0], FATAL)
    assert outcome is not None and outcome.error is FATAL
    part = world.part()
    assert part.reset_pending and world.acc.parts_to_reset() == [part]
    assert world.drain() == []  # nothing goes out with sequences the broker will refuse
    world.acc.reset_sequences(part, 2_000, 3)
    assert [
        (h.producer_id, h.producer_epoch, h.base_sequence) for h in map(header_of, batches[1:])
    ] == [
        (2_000, 3, 0),
        (2_000, 3, 1),
    ]
    assert values_of(batches[1]) == [b"1"]
    assert not part.reset_pending and part.sequence.next_seq == 2
    assert [r[0] for r in world.drain()] == [batches[1], batches[2]]


def test_a_batch_of_unknown_fate_is_resent_as_it_is_before_a_reset() -> None:
    """Its answer was lost, so the broker may hold it: renumbering it under a new producer
    id could append it twice. It goes again with its old stamp first; the reset waits."""
    world = World(batch_size=100)
    lost, fatal, unsent = (world.append(size=100) for _ in range(3))
    world.encode_due(force=True)
    assert [b for r in world.drain(slots=2) for b in r] == [lost, fatal]
    assert world.acc.lost([lost], RETRIABLE, world.now) == []
    assert world.fail(fatal, FATAL) is not None
    part = world.part()
    assert lost.unresolved and part.reset_pending
    assert world.acc.parts_to_reset() == []
    world.acc.reset_sequences(part, 2_000, 0)  # refused while the fate is open
    assert header_of(lost).producer_id == 1_000
    world.clock.advance(1_000)
    assert world.drain() == [[lost]]  # the probe: old producer id and sequence
    assert header_of(lost).base_sequence == 0
    assert world.ack(lost, base_offset=0) is not None  # the broker had it: a duplicate
    assert world.acc.parts_to_reset() == [part]
    world.acc.reset_sequences(part, 2_000, 0)
    assert (header_of(unsent).producer_id, header_of(unsent).base_sequence) == (2_000, 0)


def test_without_idempotence_nothing_is_reset() -> None:
    world = World(producer_id=-1)
    batch = world.append()
    world.encode_due(force=True)
    world.drain()
    assert header_of(batch).base_sequence == -1
    assert world.fail(batch, FATAL) is not None
    assert not world.part().reset_pending and world.acc.parts_to_reset() == []


def test_a_rejected_request_of_several_batches_retries_each_alone() -> None:
    world = World(partitions=2)
    a, b = world.append(0), world.append(1)
    world.encode_due(force=True)
    (request,) = world.drain()
    assert world.acc.rejected(request, FATAL, world.now) == []
    assert a.solo and b.solo
    assert [len(r) for r in world.drain()] == [1, 1]


def test_unsent_batches_go_again_without_counting_an_attempt() -> None:
    world = World()
    batch = world.append()
    world.encode_due(force=True)
    (request,) = world.drain()
    world.acc.unsent(request, world.now)
    assert batch.attempts == 0 and world.part().inflight == 0
    assert world.drain() == [[batch]]


def test_the_sender_wakes_at_the_latest_after_the_idle_wait() -> None:
    world = World(linger_ms=60_000)
    world.append()
    assert world.acc.next_deadline(world.now) == world.now + MAX_IDLE_WAIT_MS


# --- close() after its timeout -------------------------------------------------------------


def test_a_batch_claimed_while_it_is_encoded_is_not_queued_again() -> None:
    """close() gives up while the sender encodes batches it took (without the lock): they are
    claimed and finished. Queuing them afterwards must not make them incomplete again, or
    the sender, which stops only once nothing is incomplete, never stops."""
    world = World()
    batch = world.append()
    world.acc.closing = True
    (part,) = world.acc.close_due(world.now)
    taken = world.acc.take_closed(part)  # the sender's round, lock released to encode
    aborted = world.acc.abort()  # close()'s timeout passes meanwhile
    assert aborted == [batch] and world.acc.buffered == 0
    world.acc.finished(aborted)
    for each in taken:
        world.acc.encode(each)
    world.acc.queue_ready(part, taken)
    assert not world.acc.incomplete and not part.ready and batch.data == b""
    assert world.acc.next_deadline(world.now) is None
    assert world.drain() == []


def test_a_send_batch_chunk_is_incomplete_from_its_creation() -> None:
    """A flush or close() started while a chunk is encoded must see it: it waits for the
    chunk, and close() after its timeout claims it and gives its buffer space back."""
    world = World()
    group = BatchGroup()
    chunk = world.acc.new_chunk_batch(world.part(), 100, group)
    assert list(world.acc.incomplete) == [chunk] and world.acc.buffered == 100
    assert world.acc.abort() == [chunk] and world.acc.buffered == 0
    world.finish([Outcome(chunk, -1, -1, errors.ClientClosedError("closed"))])
    world.acc.encode_values(chunk, [b"v"], None, None, 1_000)  # the caller's thread goes on
    world.acc.queue_ready(world.part(), [chunk])
    assert not world.acc.incomplete and not world.part().ready
    group.seal()
    assert isinstance(group.future.exception(0), errors.ClientClosedError)


def test_a_send_batch_chunk_is_acknowledged_like_any_batch() -> None:
    world = World()
    group = BatchGroup()
    chunk = world.acc.new_chunk_batch(world.part(), 100, group)
    world.acc.encode_values(chunk, [b"a", b"b"], None, None, 1_000)
    world.acc.queue_ready(world.part(), [chunk])
    group.seal()
    assert world.drain() == [[chunk]]
    outcome = world.ack(chunk, base_offset=3)
    assert outcome is not None
    world.finish([outcome])
    assert not world.acc.incomplete and world.acc.buffered == 0
    assert group.future.result(0) == [BatchMetadata("t", 0, 3, 2)]


# --- properties ----------------------------------------------------------------------------

#: (partition, record size) appends interleaved with sender rounds and clock steps
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 2), st.integers(1, 600)),
        st.tuples(st.just("round"), st.integers(0, 3), st.booleans()),
        st.tuples(st.just("tick"), st.integers(0, 30), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(steps=steps, batch_size=st.integers(100, 2_000))
def test_every_record_ends_up_in_exactly_one_drained_batch_in_order(
    steps: list[tuple[str, int, int]], batch_size: int
) -> None:
    world = World(partitions=3, batch_size=batch_size, linger_ms=10, max_in_flight=2)
    appended: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    drained: dict[int, list[bytes | None]] = {0: [], 1: [], 2: []}
    in_flight: list[Batch] = []

    def sender_round(slots: int, force: bool) -> None:
        world.encode_due(force)
        for request in world.drain(slots):
            for batch in request:
                drained[batch.part.partition] += values_of(batch)
                in_flight.append(batch)
        while in_flight:  # the broker answers everything sent so far
            world.ack(in_flight.pop(0))

    for op, a, b in steps:
        if op == "append":
            value = b"%d-%d" % (a, len(appended[a]))
            appended[a].append(value)
            world.append(a, value, size=b)
        elif op == "round":
            sender_round(a, b)
        else:
            world.clock.advance(a)
    for _ in range(100):  # bounded: every round drains up to 5 more requests
        if all(len(drained[p]) == len(appended[p]) for p in appended):
            break
        sender_round(5, True)
    assert drained == appended
    assert world.acc.buffered == 0


class Broker:
    """The broker's side of idempotence: per (producer id, epoch) it appends a batch only at
    the next sequence, answers a repeat with the original offset, and refuses a gap."""

    def __init__(self) -> None:
        self.log: list[bytes | None] = []
        self._next: dict[tuple[int, int], int] = {}
        self._seen: dict[tuple[int, int, int], int] = {}

    def duplicate(self, batch: Batch) -> int | None:
        h = header_of(batch)
        return self._seen.get((h.producer_id, h.producer_epoch, h.base_sequence))

    def produce(self, batch: Batch) -> int:
        """The base offset; raises OutOfOrderSequenceError for a gap."""
        known = self.duplicate(batch)
        if known is not None:
            return known
        h = header_of(batch)
        key = (h.producer_id, h.producer_epoch)
        if h.base_sequence != self._next.get(key, 0):
            raise errors.OutOfOrderSequenceError(f"{h.base_sequence} is not next")
        self._next[key] = h.base_sequence + h.record_count
        self._seen[(*key, h.base_sequence)] = len(self.log)
        offset = len(self.log)
        self.log += values_of(batch)
        return offset


@settings(max_examples=200, deadline=None)
@given(
    answers=st.lists(st.sampled_from(["ack", "retry", "lost", "fatal"]), max_size=60),
    records=st.integers(1, 40),
)
def test_retries_and_resets_append_every_acknowledged_record_once_in_order(
    answers: list[str], records: int
) -> None:
    """Against a broker that enforces sequences: a retried batch keeps its producer id and
    sequence (resent byte for byte), so nothing is appended twice, every acknowledged record
    is in the log once, nothing of a batch failed for good is, and send order holds."""
    world = World(batch_size=250, max_in_flight=3, delivery_timeout_ms=10**9)
    broker = Broker()
    sent = [values_of_record(world.append(size=100)) for _ in range(records)]
    world.encode_due(force=True)
    stamps: dict[int, tuple[int, int, int]] = {}
    acked: list[bytes | None] = []
    pids = iter(range(2_000, 3_000))
    answers_left = list(answers)
    for _ in range(10 * records + 100):  # bounded: each round settles or retries something
        if not world.acc.incomplete:
            break
        for part in world.acc.parts_to_reset():
            world.acc.reset_sequences(part, next(pids), 0)
        world.clock.advance(1_000)  # past any backoff
        for batch in [b for request in world.drain() for b in request]:
            h = header_of(batch)
            stamp = (h.producer_id, h.producer_epoch, h.base_sequence)
            # a batch changes its stamp only under a new producer id (a reset)
            previous = stamps.get(id(batch), stamp)
            assert previous == stamp or previous[0] != stamp[0]
            stamps[id(batch)] = stamp
            outcome = answer(world, broker, batch, answers_left.pop(0) if answers_left else "ack")
            if outcome is not None:
                if outcome.error is None:
                    acked += values_of(batch)
                world.acc.finished([outcome.batch])
    assert not world.acc.incomplete
    assert len(broker.log) == len(set(broker.log))
    assert sorted(broker.log) == sorted(acked)  # type: ignore[type-var]
    assert broker.log == [v for v in sent if v in set(acked)]


def values_of_record(batch: Batch) -> bytes | None:
    """The value of the record just appended to the (open) `batch`."""
    return batch.records[-1][1]


def answer(world: World, broker: Broker, batch: Batch, kind: str) -> Outcome | None:
    """Play the broker: `ack` produces, `lost` produces but the answer never arrives,
    `retry` refuses with a retriable error, `fatal` with a final one (unless a duplicate)."""
    if kind in ("ack", "lost"):
        try:
            offset = broker.produce(batch)
        except errors.OutOfOrderSequenceError as exc:
            return world.fail(batch, exc)
        return world.ack(batch, offset) if kind == "ack" else world.fail(batch, RETRIABLE)
    if kind == "fatal" and broker.duplicate(batch) is None:
        return world.fail(batch, FATAL)
    return world.fail(batch, RETRIABLE)

"""The consumer's fetch ahead: a second fetch sent before the first is answered.

It asks the broker to start where the fetch in flight will end (skip_bytes). When that
fetch ends early (cut by the response's byte budget, or at the end of the log) the answer
ahead starts past the position and must be dropped: a miss costs a round trip, never a
record. Against a real broker, with batches of irregular sizes and small fetch sizes so
there are hundreds of fetches per test.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from logstore.client.consumer import Consumer
from logstore.client.consumer.fetch_positions import FetchPositions, PartitionState, fetchable
from logstore.client.consumer.fetcher import Fetcher
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.client.test_consumer import check_values, create, poll_until, produce
from tests.server.conftest import BrokerProcess

#: batch sizes (records) cycled through when filling a topic: fetches end unevenly
IRREGULAR_BATCHES = (5, 60, 13, 150, 2, 41)
FETCH_BYTES = 4096


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def fill_irregularly(
    stub: pb_grpc.LogStoreStub, topic: str, count: int, partition: int = 0
) -> None:
    start = 0
    for size in itertools.cycle(IRREGULAR_BATCHES):
        if start >= count:
            return
        size = min(size, count - start)
        produce(stub, topic, partition, start, size, batch_size=size)
        start += size


def unary_consumer(broker: BrokerProcess, **options: Any) -> Consumer:
    """A consumer on unary Fetch (fetch ahead is that fetcher's), small fetches, from the
    start of each partition."""
    return Consumer(
        broker.address,
        fetch_stream=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES,
        **options,
    )


@pytest.fixture
def fetch_log(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts fetches sent ahead and what became of their answers."""
    counts: collections.Counter[str] = collections.Counter()
    send, arrival = Fetcher._send, FetchPositions._arrival

    def counting_send(self: Any, block: bool, ahead: bool = False) -> Any:
        inflight = send(self, block, ahead)
        if inflight is not None:
            counts["ahead sent" if ahead else "sent"] += 1
        return inflight

    def counting_arrival(
        self: Any, tp: Any, state: Any, offset: int, data: Any, high_watermark: int, ahead: bool
    ) -> Any:
        taken = arrival(self, tp, state, offset, data, high_watermark, ahead)
        if ahead:
            counts["ahead used" if taken is not None else "ahead dropped"] += 1
        return taken

    monkeypatch.setattr(Fetcher, "_send", counting_send)
    monkeypatch.setattr(FetchPositions, "_arrival", counting_arrival)
    return counts


def test_a_backlog_is_read_with_fetches_ahead_and_wrong_guesses_lose_nothing(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, fetch_log: collections.Counter[str]
) -> None:
    create(stub, "t")
    fill_irregularly(stub, "t", 6000)
    with unary_consumer(broker) as consumer:
        consumer.assign([("t", 0)])
        records = poll_until(consumer, 6000, timeout_s=60)
        assert consumer.poll(timeout=0.3) == []
    assert [r.offset for r in records] == list(range(6000))
    check_values(records)
    assert fetch_log["ahead used"] > 20, fetch_log


def test_answers_ahead_that_start_past_the_position_are_dropped(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, fetch_log: collections.Counter[str]
) -> None:
    """A response byte budget below two partitions' worth cuts the second partition's
    fetch short, so the fetch ahead of it (which assumed a whole one) starts too late."""
    create(stub, "t", partitions=2)
    for partition in (0, 1):
        fill_irregularly(stub, "t", 3000, partition)
    with unary_consumer(broker, fetch_max_bytes=FETCH_BYTES * 3 // 2) as consumer:
        consumer.assign([("t", 0), ("t", 1)])
        records = poll_until(consumer, 6000, timeout_s=60)
    offsets = {p: [r.offset for r in records if r.partition == p] for p in (0, 1)}
    assert offsets == {0: list(range(3000)), 1: list(range(3000))}
    check_values(records)
    assert fetch_log["ahead dropped"] > 0, fetch_log
    assert fetch_log["ahead used"] > 0, fetch_log


def test_seeks_while_fetches_ahead_are_in_flight_read_from_the_new_position(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, fetch_log: collections.Counter[str]
) -> None:
    create(stub, "t")
    fill_irregularly(stub, "t", 3000)
    with unary_consumer(broker, max_poll_records=50) as consumer:
        consumer.assign([("t", 0)])
        assert poll_until(consumer, 1), "nothing arrived before the first seek"
        for target in (2000, 100, 2950, 7):
            consumer.seek("t", 0, target)
            records = poll_until(consumer, 50)
            assert [r.offset for r in records] == list(range(target, min(target + 50, 3000)))
            check_values(records)
        rest = poll_until(consumer, 3000 - 57, timeout_s=60)
        assert [r.offset for r in rest] == list(range(57, 3000))
    assert fetch_log["ahead sent"] > 0, fetch_log


def test_a_consumer_at_the_end_of_the_log_does_not_fetch_ahead(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, fetch_log: collections.Counter[str]
) -> None:
    create(stub, "t")
    with Consumer(
        broker.address, fetch_stream=False, auto_offset_reset="earliest", fetch_max_wait_ms=50
    ) as consumer:
        consumer.assign([("t", 0)])
        for start in range(0, 50, 10):
            produce(stub, "t", 0, start, 10)
            records = poll_until(consumer, 10)
            assert [r.offset for r in records] == list(range(start, start + 10))
    assert fetch_log["sent"] > 0
    assert fetch_log["ahead sent"] == 0, fetch_log


def _state(inflight: int, ahead: bool) -> PartitionState:
    state = PartitionState("earliest", epoch=1)
    state.fetch_position = 10
    state.inflight, state.ahead = inflight, ahead
    return state


@pytest.mark.parametrize(
    ("inflight", "ahead", "plain", "fetched_ahead"),
    [
        (0, False, True, False),  # nothing in flight: a plain fetch from the position
        (0, True, True, False),  # nothing in flight: nothing to fetch ahead of
        (1, True, False, True),  # one in flight and a backlog: fetch ahead of it
        (1, False, False, False),  # one in flight, no backlog seen: wait for its answer
        (2, True, False, False),  # two in flight already
    ],
)
def test_when_a_partition_is_fetched(
    inflight: int, ahead: bool, plain: bool, fetched_ahead: bool
) -> None:
    state = _state(inflight, ahead)
    assert fetchable(state, ahead=False) is plain
    assert fetchable(state, ahead=True) is fetched_ahead


def test_a_new_epoch_forgets_fetches_in_flight() -> None:
    state = _state(1, True)
    state.renew(epoch=2)
    assert (state.epoch, state.inflight, state.ahead) == (2, 0, False)
    assert fetchable(state, ahead=False)

"""The committer's ordering and auto-commit rules, through `Consumer` against a real broker.

Async commits run one at a time on the commit thread, in submission order; so a
commit_async() whose result() has returned is a barrier: every commit submitted before it
has landed (or failed) by then.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from logstore.client.consumer import Consumer
from logstore.types import OffsetAndMetadata, TopicPartition
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.client.test_consumer import committed_offset, create, poll_until, produce
from tests.server.conftest import BrokerProcess

#: upper bound for any wait in these tests (s)
WAIT_S = 15.0
#: longer than any test here: interval auto-commits never happen
NEVER_MS = 600_000


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def test_async_commits_land_and_call_back_in_submission_order(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "ordered")
    produce(stub, "ordered", 0, 0, 50)
    tp: TopicPartition = ("ordered", 0)
    called: list[int] = []

    def callback(offsets: dict[TopicPartition, OffsetAndMetadata], exc: Exception | None) -> None:
        assert exc is None
        called.append(offsets[tp].offset)

    with Consumer(broker.address, group_id="ordered-g", enable_auto_commit=False) as consumer:
        consumer.assign([tp])
        futures = [consumer.commit_async({tp: i}, callback) for i in range(1, 51)]
        for future in futures:
            future.result(timeout=WAIT_S)
        assert called == list(range(1, 51))
        assert committed_offset(consumer, tp) == 50


def test_assign_commits_the_positions_of_the_partitions_it_drops(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "dropped", partitions=2)
    for partition in (0, 1):
        produce(stub, "dropped", partition, 0, 5)
    kept: TopicPartition = ("dropped", 0)
    dropped: TopicPartition = ("dropped", 1)
    with Consumer(
        broker.address,
        group_id="dropped-g",
        auto_offset_reset="earliest",
        auto_commit_interval_ms=NEVER_MS,
    ) as consumer:
        consumer.assign([kept, dropped])
        assert len(poll_until(consumer, 10)) == 10
        consumer.assign([kept])
        consumer.commit_async({kept: 2}).result(timeout=WAIT_S)  # the barrier
        assert committed_offset(consumer, dropped) == 5
        # a partition still owned is committed by poll() or close(), not by the change
        assert committed_offset(consumer, kept) == 2


def test_without_auto_commit_assign_commits_nothing(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "kept", partitions=2)
    for partition in (0, 1):
        produce(stub, "kept", partition, 0, 5)
    kept: TopicPartition = ("kept", 0)
    dropped: TopicPartition = ("kept", 1)
    with Consumer(
        broker.address, group_id="kept-g", auto_offset_reset="earliest", enable_auto_commit=False
    ) as consumer:
        consumer.assign([kept, dropped])
        assert len(poll_until(consumer, 10)) == 10
        consumer.assign([kept])
        consumer.commit_async({kept: 1}).result(timeout=WAIT_S)  # the barrier
        assert committed_offset(consumer, kept) == 1
        assert committed_offset(consumer, dropped) is None

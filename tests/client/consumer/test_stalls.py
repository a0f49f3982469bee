"""A consumer that cannot make progress says so: against a closed port and a real broker.

Each test polls a bounded number of times and counts the consumer's log records: the
warning comes once when the condition starts (not once per poll), and `stalled()` tells
the same from code until the condition clears.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import grpc
import pytest

from logstore.client.consumer import Consumer
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.client.test_consumer import create, poll_until, produce
from tests.server.conftest import BrokerProcess

LOGGER = "logstore.client.consumer"
#: polls per test while a condition lasts; each waits up to POLL_S
POLLS = 20
POLL_S = 0.1
WAIT_S = 15.0


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


@pytest.fixture
def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just bound, then freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def poll_while_stalled(consumer: Consumer, reason: str) -> None:
    """Poll POLLS times once the stall is reported (bounded in count and time)."""
    deadline = time.monotonic() + WAIT_S
    while consumer.stalled() is None and time.monotonic() < deadline:
        assert consumer.poll(timeout=POLL_S) == []
    stall = consumer.stalled()
    assert stall is not None and stall.reason == reason
    for _ in range(POLLS):
        assert consumer.poll(timeout=POLL_S) == []


def poll_until_clear(consumer: Consumer) -> list[object]:
    records: list[object] = []
    deadline = time.monotonic() + WAIT_S
    while consumer.stalled() is not None and time.monotonic() < deadline:
        records += consumer.poll(timeout=POLL_S)
    return records


def test_an_unreachable_broker_is_warned_once_and_reported(
    closed_port: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    before_ms = time.time_ns() // 1_000_000
    with Consumer(closed_port, auto_offset_reset="earliest", retry_backoff_ms=10) as consumer:
        consumer.assign([("t", 0)])
        poll_while_stalled(consumer, "broker_unreachable")
        stall = consumer.stalled()
        assert stall is not None
        assert stall.broker == closed_port
        assert before_ms <= stall.since_ms <= time.time_ns() // 1_000_000
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert closed_port in warnings[0]


def test_a_group_member_of_an_unreachable_broker_is_reported(
    closed_port: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    with Consumer(closed_port, group_id="g", retry_backoff_ms=10) as consumer:
        consumer.subscribe(["t"])
        poll_while_stalled(consumer, "broker_unreachable")
    unreachable = [m for m in messages(caplog, logging.WARNING) if closed_port in m]
    assert len(unreachable) == 1, unreachable


def test_an_assigned_topic_that_does_not_exist_is_reported_until_created(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    with Consumer(broker.address, auto_offset_reset="earliest", retry_backoff_ms=10) as consumer:
        consumer.assign([("later", 0)])
        poll_while_stalled(consumer, "missing_topics")
        stall = consumer.stalled()
        assert stall is not None and stall.topics == {"later"}
        assert stall.broker == broker.address
        create(stub, "later")
        produce(stub, "later", 0, 0, 5)
        records = poll_until_clear(consumer)
        assert consumer.stalled() is None
        records += poll_until(consumer, 5 - len(records))
        assert len(records) == 5
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "later" in warnings[0], warnings
    cleared = [m for m in messages(caplog, logging.INFO) if "later" in m and "exist" in m]
    assert len(cleared) == 1, messages(caplog, logging.INFO)


def test_a_missing_partition_of_an_existing_topic_is_reported_as_a_partition(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    create(stub, "orders", partitions=3)
    with Consumer(broker.address, auto_offset_reset="earliest", retry_backoff_ms=10) as consumer:
        consumer.assign([("orders", 7)])
        poll_while_stalled(consumer, "missing_partitions")
        stall = consumer.stalled()
        assert stall is not None
        assert (stall.topics, stall.partitions) == (frozenset(), {("orders", 7)})
        stub.AddPartitions(pb.AddPartitionsRequest(name="orders", total_count=8), timeout=10)
        produce(stub, "orders", 7, 0, 4)
        records = poll_until_clear(consumer)
        assert consumer.stalled() is None
        records += poll_until(consumer, 4 - len(records))
        assert len(records) == 4
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "partition orders-7 does not exist" in warnings[0]
    assert "topic" not in warnings[0]
    cleared = [m for m in messages(caplog, logging.INFO) if "orders-7 exists now" in m]
    assert len(cleared) == 1, messages(caplog, logging.INFO)


def test_missing_topics_and_missing_partitions_are_told_apart(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    create(stub, "orders", partitions=3)
    with Consumer(broker.address, auto_offset_reset="earliest", retry_backoff_ms=10) as consumer:
        consumer.assign([("orders", 0), ("orders", 7), ("nowhere", 0)])
        deadline = time.monotonic() + WAIT_S
        stall = consumer.stalled()
        # both partitions are found missing by the same lookup, but bounded anyway
        while (stall is None or len(stall.topics) + len(stall.partitions) < 2) and (
            time.monotonic() < deadline
        ):
            consumer.poll(timeout=POLL_S)
            stall = consumer.stalled()
        assert stall is not None
        assert stall.reason == "missing_topics"
        assert (stall.topics, stall.partitions) == ({"nowhere"}, {("orders", 7)})
    warned = " ".join(messages(caplog, logging.WARNING))
    assert "topic nowhere and partition orders-7 do not exist" in warned


def test_a_subscribed_topic_that_does_not_exist_is_reported_until_created(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    with Consumer(
        broker.address,
        group_id="g",
        auto_offset_reset="earliest",
        heartbeat_interval_ms=100,
        metadata_max_age_ms=100,
    ) as consumer:
        consumer.subscribe(["later"])
        poll_while_stalled(consumer, "missing_topics")
        stall = consumer.stalled()
        assert stall is not None and stall.topics == {"later"}
        stub.CreateTopic(pb.CreateTopicRequest(name="later", partitions=1), timeout=10)
        produce(stub, "later", 0, 0, 3)
        records = poll_until_clear(consumer)
        assert consumer.stalled() is None
        records += poll_until(consumer, 3 - len(records))
        assert len(records) == 3
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "later" in warnings[0], warnings


def test_a_consumer_reading_an_existing_topic_reports_nothing(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    create(stub, "here")
    produce(stub, "here", 0, 0, 10)
    with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([("here", 0)])
        assert len(poll_until(consumer, 10)) == 10
        assert consumer.stalled() is None
    assert messages(caplog, logging.WARNING) == []

"""The progress monitor's logging rules, on a ManualClock."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from logstore.client.consumer.progress import ProgressMonitor
from logstore.clock import ManualClock

LOGGER = "logstore.client.consumer"


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_an_unreachable_broker_is_warned_once_then_every_interval_then_cleared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = ManualClock()
    monitor = ProgressMonitor("127.0.0.1:1", clock, log_interval_ms=30_000)
    for _ in range(50):
        monitor.broker_failed("connection refused")
        monitor.tick()
        clock.advance(100)
    assert len(records(caplog, logging.WARNING)) == 1
    assert "127.0.0.1:1" in records(caplog, logging.WARNING)[0]
    stall = monitor.stall()
    assert stall is not None and stall.reason == "broker_unreachable"
    assert stall.since_ms == 1_700_000_000_000
    clock.advance(30_000)
    monitor.tick()
    assert len(records(caplog, logging.WARNING)) == 2
    monitor.broker_answered()
    monitor.broker_answered()
    assert monitor.stall() is None
    assert len(records(caplog, logging.INFO)) == 1


def test_missing_topics_from_any_source_hold_the_condition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = ManualClock()
    monitor = ProgressMonitor("b:1", clock)
    monitor.set_missing("assigned", frozenset({"a"}))
    monitor.set_missing("subscribed", frozenset({"s"}))
    stall = monitor.stall()
    assert stall is not None and (stall.reason, stall.topics) == ("missing_topics", {"a", "s"})
    monitor.set_missing("assigned", frozenset())
    assert monitor.stall() is not None
    monitor.set_missing("subscribed", frozenset())
    assert monitor.stall() is None
    assert len(records(caplog, logging.WARNING)) == 1
    assert len(records(caplog, logging.INFO)) == 1


def test_a_missing_partition_of_an_existing_topic_is_not_called_a_missing_topic(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    monitor = ProgressMonitor("b:1", ManualClock())
    monitor.set_missing("assigned", frozenset(), frozenset({("orders", 7)}))
    stall = monitor.stall()
    assert stall is not None
    assert (stall.reason, stall.topics, stall.partitions) == (
        "missing_partitions",
        frozenset(),
        {("orders", 7)},
    )
    assert records(caplog, logging.WARNING) == [
        "partition orders-7 does not exist on broker b:1 (for 0 s); the consumer waits and "
        "poll() returns nothing from them meanwhile"
    ]
    monitor.set_missing("assigned", frozenset())
    assert monitor.stall() is None
    assert records(caplog, logging.INFO) == ["partition orders-7 exists now; consuming"]


def test_missing_topics_and_partitions_together_name_both() -> None:
    monitor = ProgressMonitor("b:1", ManualClock())
    monitor.set_missing("assigned", frozenset({"gone"}), frozenset({("orders", 7), ("gone", 1)}))
    monitor.set_missing("subscribed", frozenset({"later"}))
    stall = monitor.stall()
    assert stall is not None
    assert (stall.reason, stall.topics) == ("missing_topics", {"gone", "later"})
    # a partition of a topic that is missing as a whole is named by its topic only
    assert stall.partitions == {("orders", 7)}


def test_a_changed_missing_set_keeps_the_condition_and_its_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    clock = ManualClock()
    monitor = ProgressMonitor("b:1", clock)
    monitor.set_missing("assigned", frozenset({"orders"}))
    since = monitor.stall()
    clock.advance(1000)
    monitor.set_missing("assigned", frozenset(), frozenset({("orders", 7)}))
    stall = monitor.stall()
    assert since is not None and stall is not None
    assert (stall.reason, stall.since_ms) == ("missing_partitions", since.since_ms)
    assert len(records(caplog, logging.WARNING)) == 1
    assert records(caplog, logging.INFO) == []


def test_an_unreachable_broker_is_reported_before_missing_topics() -> None:
    monitor = ProgressMonitor("b:1", ManualClock())
    monitor.set_missing("assigned", frozenset({"a"}))
    monitor.broker_failed("down")
    stall = monitor.stall()
    assert stall is not None and stall.reason == "broker_unreachable"


def test_consumer_stall_is_public_and_loads_no_grpc() -> None:
    """`from logstore import ConsumerStall` names the type stalled() returns; the type
    itself is plain data, so importing it pulls in no gRPC."""
    script = (
        "import sys, logstore\n"
        "from logstore.client.consumer.progress import ConsumerStall\n"
        "assert logstore.ConsumerStall is ConsumerStall\n"
        "assert 'ConsumerStall' in logstore.__all__\n"
        "assert 'grpc' not in sys.modules, 'grpc loaded'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr

"""The heartbeat thread's check of subscribed topics, against a real broker.

The check awaits ListTopics without the member's lock, so its answer can land after the
subscription changed. These tests hold that answer (the broker has already given it) until
the application thread has unsubscribed or resubscribed, then let it through: a report for
topics no longer subscribed must not reach the progress monitor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from logstore.client._connection import CoordinatorRouter
from logstore.client.consumer.group_member import GroupMember, Rebalance
from logstore.client.consumer.options import ConsumerOptions
from logstore.client.consumer.progress import ProgressMonitor
from logstore.client.coordinators import CoordinatorCache
from logstore.types import TopicPartition
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess

LOGGER = "logstore.client.consumer"
WAIT_S = 15.0
#: rounds of a bounded wait for a condition another thread brings about
ROUNDS = 1500


class HeldListTopics:
    """The broker's stub, except that ListTopics' answer is held until `release` is set.

    Every call reaches the broker; only the moment its answer is handed back moves.
    `left` is set once the broker answered a LeaveGroup.
    """

    def __init__(self, stub: pb_grpc.LogStoreStub) -> None:
        self._stub = stub
        self.answered = threading.Event()
        self.release = threading.Event()
        self.left = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    def ListTopics(self, request: pb.ListTopicsRequest, timeout: float) -> Any:
        response = self._stub.ListTopics(request, timeout=timeout)
        self.answered.set()
        assert self.release.wait(WAIT_S), "the test never released ListTopics"
        return response

    def LeaveGroup(self, request: pb.GroupHeartbeatRequest, timeout: float) -> Any:
        response = self._stub.LeaveGroup(request, timeout=timeout)
        self.left.set()
        return response


def _ignore(partitions: set[TopicPartition], listener: object) -> None:
    """No partitions are ever assigned here: the subscribed topics do not exist."""


@pytest.fixture
def held(broker: BrokerProcess) -> Iterator[HeldListTopics]:
    with grpc.insecure_channel(broker.address) as channel:
        held = HeldListTopics(pb_grpc.LogStoreStub(channel))
        yield held
        held.release.set()  # never leave the heartbeat thread waiting on a failed test


def make_member(
    broker: BrokerProcess, stub: HeldListTopics, progress: ProgressMonitor
) -> GroupMember:
    options = ConsumerOptions(
        group_id="g",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        auto_commit_interval_ms=5000,
        max_poll_records=500,
        fetch_min_bytes=1,
        fetch_max_wait_ms=500,
        fetch_max_bytes=1 << 20,
        max_partition_fetch_bytes=1 << 20,
        session_timeout_ms=45_000,
        heartbeat_interval_ms=5000,
        max_poll_interval_ms=300_000,
        request_timeout_ms=10_000,
        retry_backoff_ms=10,
        metadata_max_age_ms=60_000,
        client_id="stall-test",
        group_remote_assignor=None,
    )
    rebalance = Rebalance(_ignore, _ignore, _ignore)
    # a broker without FindCoordinator: every group request goes to the held stub
    coordinators = CoordinatorRouter(
        CoordinatorCache(), lambda group, timeout_s: None, lambda address: stub, lambda a: a
    )
    return GroupMember(stub, coordinators, options, rebalance, lambda: None, progress)


def test_a_topic_check_answered_after_unsubscribe_reports_nothing(
    broker: BrokerProcess, held: HeldListTopics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    progress = ProgressMonitor(broker.address)
    member = make_member(broker, held, progress)
    try:
        member.subscribe(["later"], None)
        assert held.answered.wait(WAIT_S), "the heartbeat thread never checked the topics"
        # Not waiting for the LeaveGroup: unsubscribe() has returned before the answer lands.
        member.leave(0.0)
        assert member.subscription() == []
        assert progress.stall() is None
        held.release.set()
        # The heartbeat thread sends the LeaveGroup only after it handled the answer.
        assert held.left.wait(WAIT_S), "the member never left the group"
        assert progress.stall() is None
    finally:
        member.close(WAIT_S)
    assert progress.stall() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not [m for m in warnings if "later" in m], warnings


def test_a_topic_check_answered_after_resubscribe_reports_only_current_topics(
    broker: BrokerProcess, held: HeldListTopics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    progress = ProgressMonitor(broker.address)
    member = make_member(broker, held, progress)
    try:
        member.subscribe(["later"], None)
        assert held.answered.wait(WAIT_S), "the heartbeat thread never checked the topics"
        held.answered.clear()
        member.subscribe(["other"], None)
        held.release.set()
        # the resubscription asks for a fresh check, which finds "other" missing
        assert held.answered.wait(WAIT_S), "the new subscription was never checked"
        deadline = time.monotonic() + WAIT_S
        stall = progress.stall()
        for _ in range(ROUNDS):
            if stall is not None or time.monotonic() > deadline:
                break
            threading.Event().wait(0.01)
            stall = progress.stall()
        assert stall is not None and stall.topics == {"other"}
    finally:
        member.close(WAIT_S)
    assert progress.stall() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert not [m for m in warnings if "later" in m], warnings

"""A Kafka consumer group whose coordinator moves: three real brokers with Kafka listeners,
the group's coordinator paused (SIGSTOP) until another broker leads the group's partition
of __consumer_offsets, then resumed.

A JoinGroup that was waiting on the old coordinator ends NOT_COORDINATOR soon after the
old coordinator resumes and learns it no longer leads the partition, as Kafka's
coordinator answers when it resigns, rather than with a success from stale state once its
rebalance timeout (a minute here) runs out; the member then joins at the new coordinator.
Requests go over the wire with kafka-python's protocol classes, one connection each.
"""

from __future__ import annotations

import io
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.protocol.consumer import HeartbeatRequest, JoinGroupRequest, SyncGroupRequest
from kafka.protocol.metadata import FindCoordinatorRequest

from logstore.codec.partitioner import partition_for_key
from logstore.server.cluster.node import OFFSETS_TOPIC_PARTITIONS
from logstore.server.groups.offsets_store import OFFSETS_TOPIC
from logstore.server.kafka.apis import API_BY_KEY
from tests.cluster.harness import ClusterHarness
from tests.helpers import wait_until

GROUP = "moving"
#: the group's partition of __consumer_offsets
GROUP_PARTITION = partition_for_key(GROUP.encode(), OFFSETS_TOPIC_PARTITIONS)
NONE = 0
NOT_COORDINATOR = kafka_errors.NotCoordinatorError.errno
MEMBER_ID_REQUIRED = kafka_errors.MemberIdRequiredError.errno
REBALANCE_IN_PROGRESS = kafka_errors.RebalanceInProgressError.errno
#: the waiting member's rebalance timeout (ms): far longer than the test may take
REBALANCE_TIMEOUT_MS = 60_000
#: the longest one request may take (s); a waiting JoinGroup is bounded by it too
CALL_TIMEOUT_S = 40.0
#: how soon after the old coordinator resumes its waiting JoinGroup must end (s)
RELEASE_S = 15.0

_KAFKA_LISTENER = re.compile(r"Kafka listener on (\S+)")
_Protocol = JoinGroupRequest.JoinGroupRequestProtocol


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterHarness]:
    harness = ClusterHarness(
        tmp_path, 3, ["--kafka-listen=127.0.0.1:0", "--group-initial-rebalance-delay-ms=0"]
    )
    try:
        harness.start()
        yield harness
    finally:
        harness.close()


def ask(address: str, request: Any, client: str = "move-test") -> Any:
    """Send one request to the broker at `address` and decode its answer."""
    host, port = address.rsplit(":", 1)
    request.with_header(correlation_id=1, client_id=client)
    with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S) as sock:
        sock.settimeout(CALL_TIMEOUT_S)
        sock.sendall(bytes(request.encode(header=True, framed=True)))
        size = struct.unpack(">i", _read(sock, 4))[0]
        frame = _read(sock, size)
    response = API_BY_KEY[request.API_KEY].response
    return response.decode(io.BytesIO(frame), version=request.version, header=True)


def _read(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the broker closed the connection"
        data += chunk
    return bytes(data)


def kafka_addresses(cluster: ClusterHarness) -> dict[int, str]:
    found = {}
    for broker_id, process in cluster.brokers.items():
        match = _KAFKA_LISTENER.search(process.start_line)
        assert match, process.start_line
        found[broker_id] = match.group(1)
    return found


def coordinator(cluster: ClusterHarness, kafka: dict[int, str], not_on: int | None = None) -> int:
    """The broker a live broker names as the group's coordinator (other than `not_on`)."""
    found: list[int] = []

    def named() -> bool:
        for broker_id in cluster.reachable():
            answer = ask(kafka[broker_id], FindCoordinatorRequest(version=2, key=GROUP, key_type=0))
            if not answer.error_code and answer.node_id != not_on:
                found[:] = [answer.node_id]
                return True
        return False

    wait_until(named, f"a coordinator for {GROUP} other than {not_on}", timeout_s=30)
    return found[0]


def join(address: str, member_id: str = "", client: str = "kp") -> Any:
    return ask(
        address,
        JoinGroupRequest(
            version=5,
            group_id=GROUP,
            session_timeout_ms=30_000,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            member_id=member_id,
            group_instance_id=None,
            protocol_type="consumer",
            protocols=[_Protocol(name="range", metadata=b"")],
        ),
        client,
    )


def member_id(address: str, client: str) -> str:
    """KIP-394's first step: the coordinator names the member. A broker named coordinator
    may take up the role a moment later: until then it answers NOT_COORDINATOR, and the
    client asks again, as Kafka clients do."""
    answers: list[Any] = []

    def named() -> bool:
        answers[:] = [join(address, client=client)]
        return bool(answers[0].error_code != NOT_COORDINATOR)

    wait_until(named, f"{address} to coordinate {GROUP}", timeout_s=30)
    assert answers[0].error_code == MEMBER_ID_REQUIRED, answers[0]
    return str(answers[0].member_id)


def heartbeat(address: str, generation: int, member: str) -> int:
    request = HeartbeatRequest(
        version=3,
        group_id=GROUP,
        generation_id=generation,
        member_id=member,
        group_instance_id=None,
    )
    return int(ask(address, request).error_code)


class WaitingJoin:
    """A JoinGroup sent from a thread; `answer()` is bounded by the call timeout."""

    def __init__(self, address: str, member: str) -> None:
        self._answers: list[Any] = []
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(address, member), daemon=True)
        self._thread.start()

    def _run(self, address: str, member: str) -> None:
        self._answers.append(join(address, member))
        self.finished_at = time.monotonic()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def answer(self, timeout_s: float) -> Any:
        self._thread.join(timeout=timeout_s)
        assert self._answers, f"the JoinGroup was not answered within {timeout_s} s"
        return self._answers[0]


def test_a_waiting_join_ends_not_coordinator_when_the_coordinator_moves(
    cluster: ClusterHarness,
) -> None:
    kafka = kafka_addresses(cluster)
    old = coordinator(cluster, kafka)
    at_old = kafka[old]
    a_id = member_id(at_old, "a")
    a = join(at_old, a_id)
    assert (a.error_code, a.generation_id) == (NONE, 1)
    sync = SyncGroupRequest(
        version=3,
        group_id=GROUP,
        generation_id=1,
        member_id=a_id,
        group_instance_id=None,
        assignments=[],
    )
    assert ask(at_old, sync).error_code == NONE
    waiting = WaitingJoin(at_old, member_id(at_old, "b"))  # waits for "a" to rejoin
    wait_until(
        lambda: heartbeat(at_old, 1, a_id) == REBALANCE_IN_PROGRESS,
        "the second member's JoinGroup to reach the coordinator",
    )
    assert not waiting.done()

    cluster.pause(old)
    new = cluster.wait_for_leader(OFFSETS_TOPIC, GROUP_PARTITION, not_on=old, timeout_s=30)
    cluster.resume(old)
    resumed_at = time.monotonic()
    answer = waiting.answer(RELEASE_S)
    assert (answer.error_code, answer.generation_id) == (NOT_COORDINATOR, -1)
    assert waiting.finished_at - resumed_at < RELEASE_S
    assert heartbeat(at_old, 1, a_id) == NOT_COORDINATOR

    # the member finds the new coordinator and joins there
    assert coordinator(cluster, kafka, not_on=old) == new
    at_new = kafka[new]
    b = join(at_new, member_id(at_new, "b"))
    assert (b.error_code, b.leader) == (NONE, b.member_id)

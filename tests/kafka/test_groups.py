"""Consumer groups of unmodified Kafka clients against a real broker process.

kafka-python, confluent-kafka and aiokafka subscribe, consume, commit and resume at the
committed offset; two kafka-python members split a topic and rebalance when one leaves and
when one is killed; `logstore groups describe|reset-offsets|list` (the CLI, a real process)
work on a kafka-python group; a group is one protocol at a time. Records are produced with
LogStore's own producer, so these tests exercise the group path of the Kafka listener.

Every wait is bounded; consumers use short session timeouts (6 s, Kafka's minimum).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiokafka
import confluent_kafka as confluent
import pytest
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka import errors as kafka_errors
from kafka.protocol.consumer import OffsetFetchRequest
from kafka.protocol.metadata import FindCoordinatorRequest

from logstore import Admin, Consumer, Producer
from logstore.errors import LogStoreError
from logstore.server.kafka.apis import API_BY_KEY
from tests.cluster.harness import ClusterHarness
from tests.kafka.conftest import KafkaBrokerProcess

#: a broker whose classic groups start at once (tests need not wait Kafka's 3 s)
NO_DELAY = ["--group-initial-rebalance-delay-ms=0"]
SESSION_MS = 6_000
#: how long any one expected change may take (s)
WAIT_S = 30.0

KAFKA_PYTHON: dict[str, Any] = {
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "session_timeout_ms": SESSION_MS,
    "heartbeat_interval_ms": 500,
    "max_poll_interval_ms": 10_000,
    "request_timeout_ms": 20_000,
    "fetch_max_wait_ms": 100,
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[KafkaBrokerProcess]:
    process = KafkaBrokerProcess(tmp_path / "data", list(NO_DELAY))
    process.start()
    try:
        yield process
    finally:
        process.close()


def create_topic(broker: KafkaBrokerProcess, topic: str, partitions: int) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic(topic, partitions=partitions)


def produce(broker: KafkaBrokerProcess, topic: str, partition: int, values: list[bytes]) -> None:
    with Producer(broker.address, acks="all") as producer:
        for value in values:
            producer.send(topic, value=value, partition=partition)
        producer.flush()


def values(n: int, start: int = 0) -> list[bytes]:
    return [f"v{i}".encode() for i in range(start, start + n)]


def kafka_python(broker: KafkaBrokerProcess, group: str, client_id: str, **extra: Any) -> Any:
    config = {**KAFKA_PYTHON, **extra}
    return KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=group, client_id=client_id, **config
    )


def poll_records(consumer: Any, count: int) -> list[Any]:
    """At least `count` records from a kafka-python consumer, within WAIT_S."""
    got: list[Any] = []
    deadline = time.monotonic() + WAIT_S
    while len(got) < count:
        assert time.monotonic() < deadline, f"got {len(got)} of {count} records"
        for batch in consumer.poll(timeout_ms=200).values():
            got.extend(batch)
    return got


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> float:
    """Poll `check` until true; the seconds it took. Fails after `timeout_s`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def cli(bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`logstore ARGS --bootstrap-server BOOTSTRAP` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", *args, "--bootstrap-server", bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
    )


class PollingConsumer:
    """A kafka-python consumer polled by its own thread (as an application would), so a
    rebalance that needs every member to rejoin is not held up by the test's thread."""

    def __init__(self, broker: KafkaBrokerProcess, group: str, client_id: str, topic: str):
        self._consumer = kafka_python(broker, group, client_id)
        self._consumer.subscribe([topic])
        self._lock = threading.Lock()
        self._assignment: frozenset[int] = frozenset()
        #: (monotonic s, partition, offset) of every record received
        self.received: list[tuple[float, int, int]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                polled = self._consumer.poll(timeout_ms=100)
                now = time.monotonic()
                with self._lock:
                    self._assignment = frozenset(tp.partition for tp in self._consumer.assignment())
                    for tp, records in polled.items():
                        self.received.extend((now, tp.partition, r.offset) for r in records)
            except Exception as exc:  # reported by the test, never swallowed
                with self._lock:
                    self.errors.append(exc)
                return

    def assignment(self) -> frozenset[int]:
        with self._lock:
            assert not self.errors, self.errors
            return self._assignment

    def records_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for at, _, _ in self.received if at >= since)

    def close(self) -> None:
        """Stop polling and close (kafka-python sends LeaveGroup)."""
        self._stop.set()
        self._thread.join(timeout=WAIT_S)
        assert not self._thread.is_alive()
        self._consumer.close()


# --- consume, commit, resume: each client ---------------------------------------------------------


def test_kafka_python_commits_and_a_restarted_consumer_resumes(broker: KafkaBrokerProcess) -> None:
    create_topic(broker, "orders", 1)
    produce(broker, "orders", 0, values(10))
    tp = TopicPartition("orders", 0)
    first = kafka_python(broker, "kp", "kp-1", max_poll_records=5)
    first.subscribe(["orders"])
    got = poll_records(first, 5)[:5]
    assert [r.value for r in got] == values(5)
    first.commit({tp: OffsetAndMetadata(5, "after five", -1)})
    assert first.committed(tp, metadata=True) == OffsetAndMetadata(5, "after five", -1)
    first.close()
    again = kafka_python(broker, "kp", "kp-2")
    again.subscribe(["orders"])
    rest = poll_records(again, 5)
    assert [(r.offset, r.value) for r in rest] == list(enumerate(values(5, 5), start=5))
    again.close()


def test_confluent_kafka_commits_and_a_restarted_consumer_resumes(
    broker: KafkaBrokerProcess,
) -> None:
    create_topic(broker, "orders", 1)
    produce(broker, "orders", 0, values(10))
    config = {
        "bootstrap.servers": broker.bootstrap,
        "group.id": "ck",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": 500,
    }

    def consume(consumer: Any, count: int) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while len(got) < count:
            assert time.monotonic() < deadline, f"got {len(got)} of {count}"
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got.append(message)
        return got

    first = confluent.Consumer(config)
    first.subscribe(["orders"])
    got = consume(first, 5)
    assert [m.value() for m in got] == values(5)
    first.commit(message=got[-1], asynchronous=False)
    (committed,) = first.committed([confluent.TopicPartition("orders", 0)], timeout=10)
    assert committed.offset == 5
    first.close()
    again = confluent.Consumer(config)
    again.subscribe(["orders"])
    rest = consume(again, 5)
    assert [(m.offset(), m.value()) for m in rest] == list(enumerate(values(5, 5), start=5))
    again.close()


def test_aiokafka_commits_and_a_restarted_consumer_resumes(broker: KafkaBrokerProcess) -> None:
    create_topic(broker, "orders", 1)
    produce(broker, "orders", 0, values(10))
    tp = aiokafka.TopicPartition("orders", 0)

    def consumer() -> Any:
        return aiokafka.AIOKafkaConsumer(
            "orders",
            bootstrap_servers=broker.bootstrap,
            group_id="ak",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=500,
        )

    async def take(c: Any, count: int) -> list[Any]:
        got: list[Any] = []
        while len(got) < count:
            batches = await c.getmany(timeout_ms=200, max_records=count - len(got))
            for records in batches.values():
                got.extend(records)
        return got

    async def run() -> tuple[list[Any], int | None, list[Any]]:
        first = consumer()
        await first.start()
        try:
            got = await take(first, 5)
            await first.commit({tp: 5})
            committed = await first.committed(tp)
        finally:
            await first.stop()
        again = consumer()
        await again.start()
        try:
            rest = await take(again, 5)
        finally:
            await again.stop()
        return got, committed, rest

    got, committed, rest = asyncio.run(asyncio.wait_for(run(), WAIT_S * 2))
    assert [r.value for r in got] == values(5) and committed == 5
    assert [(r.offset, r.value) for r in rest] == list(enumerate(values(5, 5), start=5))


# --- a two-member group -------------------------------------------------------------------------

_MEMBER_SCRIPT = """
import sys, time
from kafka import KafkaConsumer
config = {config}
consumer = KafkaConsumer(bootstrap_servers=sys.argv[1], group_id=sys.argv[2],
                         client_id="doomed", **config)
consumer.subscribe([sys.argv[3]])
seen = None
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    consumer.poll(timeout_ms=100)
    assigned = sorted(tp.partition for tp in consumer.assignment())
    if assigned != seen:
        seen = assigned
        print("ASSIGNED", ",".join(map(str, assigned)), flush=True)
"""


def _member_process(broker: KafkaBrokerProcess, group: str, topic: str) -> subprocess.Popen[str]:
    script = _MEMBER_SCRIPT.format(config=repr(KAFKA_PYTHON))
    return subprocess.Popen(
        [sys.executable, "-c", script, broker.bootstrap, group, topic],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def _assigned_in(process: subprocess.Popen[str], deadline: float) -> frozenset[int]:
    """The next non-empty assignment a member process prints, before `deadline`."""
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if not ready:
            continue
        line = process.stdout.readline()
        assert line, "the member process exited"
        parts = line.split()
        if len(parts) == 2 and parts[0] == "ASSIGNED":
            return frozenset(int(p) for p in parts[1].split(","))
    raise AssertionError("the member process reported no assignment in time")


def test_two_members_split_the_partitions_and_rebalance_when_one_leaves_or_dies(
    broker: KafkaBrokerProcess,
) -> None:
    create_topic(broker, "work", 4)
    everything = frozenset(range(4))
    survivor = PollingConsumer(broker, "pair", "survivor", "work")
    try:
        wait_for(
            "the first member to own every partition", lambda: survivor.assignment() == everything
        )
        # a second member: the partitions are split between them
        other = PollingConsumer(broker, "pair", "other", "work")
        try:
            wait_for(
                "the two members to split the partitions",
                lambda: (
                    len(survivor.assignment()) == 2
                    and survivor.assignment() | other.assignment() == everything
                ),
            )
            assert not survivor.assignment() & other.assignment()
        finally:
            other.close()  # LeaveGroup: the survivor takes everything at once
        took = wait_for(
            "the survivor to own every partition", lambda: survivor.assignment() == everything
        )
        assert took < SESSION_MS / 1000, "a member that left should not wait for its session"

        # a member that dies without leaving: only its session timeout removes it
        doomed = _member_process(broker, "pair", "work")
        try:
            mine = _assigned_in(doomed, time.monotonic() + WAIT_S)
            wait_for("the survivor to give up half", lambda: len(survivor.assignment()) == 2)
            assert mine | survivor.assignment() == everything
            doomed.kill()
            doomed.wait(timeout=WAIT_S)
            killed_at = time.monotonic()
            wait_for(
                "the survivor to own every partition", lambda: survivor.assignment() == everything
            )
            assert time.monotonic() - killed_at > 3, "only the session timeout may remove it"
        finally:
            if doomed.poll() is None:
                doomed.kill()
                doomed.wait(timeout=WAIT_S)
    finally:
        survivor.close()


# --- LogStore's CLI on a kafka-python group -------------------------------------------------------


def _rows(output: str) -> list[list[str]]:
    lines = [line.split() for line in output.strip().splitlines()]
    return [line for line in lines[1:] if line]


def test_cli_describes_and_resets_a_kafka_python_group(broker: KafkaBrokerProcess) -> None:
    create_topic(broker, "events", 2)
    produce(broker, "events", 0, values(5))
    produce(broker, "events", 1, values(4))
    consumer = kafka_python(broker, "dash", "kp-dash")
    consumer.subscribe(["events"])
    assert len(poll_records(consumer, 9)) == 9
    consumer.commit(
        {
            TopicPartition("events", 0): OffsetAndMetadata(3, "", -1),
            TopicPartition("events", 1): OffsetAndMetadata(4, "", -1),
        }
    )
    described = cli(broker.address, "groups", "describe", "dash")
    assert described.returncode == 0, described.stderr
    as_json = json.loads(cli(broker.address, "groups", "describe", "dash", "--json").stdout)
    member_id = as_json["members"][0]["member_id"]
    assert member_id.startswith("kp-dash-")
    assert _rows(described.stdout) == [
        ["dash", "events", "0", "3", "5", "2", member_id, "/127.0.0.1", "kp-dash"],
        ["dash", "events", "1", "4", "4", "0", member_id, "/127.0.0.1", "kp-dash"],
    ]
    listed = cli(broker.address, "groups", "list")
    assert ["dash", "Stable", "1"] in _rows(listed.stdout)
    reset_to_start = ("groups", "reset-offsets", "dash", "--topic", "events", "--to-earliest")
    refused = cli(broker.address, *reset_to_start, "--execute")
    assert refused.returncode != 0 and "active member" in refused.stderr
    consumer.close()  # LeaveGroup: the group is empty at once
    reset = cli(broker.address, *reset_to_start, "--execute")
    assert reset.returncode == 0, reset.stderr
    replay = kafka_python(broker, "dash", "kp-replay")
    replay.subscribe(["events"])
    again = poll_records(replay, 9)
    assert sorted((r.partition, r.offset) for r in again) == [
        *((0, o) for o in range(5)),
        *((1, o) for o in range(4)),
    ]
    replay.close()


# --- one protocol per group -----------------------------------------------------------------------


def test_a_kafka_consumer_cannot_join_a_group_logstore_consumers_hold(
    broker: KafkaBrokerProcess,
) -> None:
    create_topic(broker, "mixed", 2)
    with Consumer(broker.address, group_id="mixed", session_timeout_ms=SESSION_MS) as native:
        native.subscribe(["mixed"])
        wait_for(
            "the LogStore consumer to join",
            lambda: bool(native.poll(timeout=0.2) or native.assignment()),
        )
        kafka_member = kafka_python(broker, "mixed", "kp-mixed")
        kafka_member.subscribe(["mixed"])
        with pytest.raises(kafka_errors.InconsistentGroupProtocolError):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                kafka_member.poll(timeout_ms=200)
        kafka_member.close()


def test_a_logstore_consumer_cannot_join_a_group_kafka_consumers_hold(
    broker: KafkaBrokerProcess,
) -> None:
    create_topic(broker, "held", 1)
    member = PollingConsumer(broker, "held", "kp-held", "held")
    try:
        wait_for("the Kafka consumer to join", lambda: member.assignment() == frozenset({0}))
        with Consumer(broker.address, group_id="held", session_timeout_ms=SESSION_MS) as native:
            native.subscribe(["held"])
            with pytest.raises(LogStoreError, match="classic group protocol"):
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    native.poll(timeout=0.2)
    finally:
        member.close()


# --- a measurement ------------------------------------------------------------------------------


def test_measure_a_second_kafka_python_member_joining(tmp_path: Path) -> None:
    """With the default initial delay (3 s, Kafka's): how long a first member waits for its
    first records, and how long after a second member subscribes both are consuming."""
    broker = KafkaBrokerProcess(tmp_path / "data")
    broker.start()
    stop = threading.Event()
    try:
        create_topic(broker, "feed", 4)
        with Producer(broker.address, linger_ms=5) as producer:

            def feed() -> None:
                while not stop.wait(0.02):
                    for partition in range(4):
                        producer.send("feed", value=b"x", partition=partition)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            started = time.monotonic()
            first = PollingConsumer(broker, "measured", "first", "feed")
            try:
                first_wait = wait_for(
                    "the first member's records", lambda: first.records_since(started) > 0
                )
                joined_at = time.monotonic()
                second = PollingConsumer(broker, "measured", "second", "feed")
                try:
                    both = wait_for(
                        "both members to consume",
                        lambda: (
                            len(first.assignment()) == 2
                            and len(second.assignment()) == 2
                            and second.records_since(joined_at) > 0
                            and first.records_since(time.monotonic() - 0.5) > 0
                        ),
                    )
                finally:
                    second.close()
            finally:
                first.close()
            stop.set()
            feeder.join(timeout=WAIT_S)
        heartbeat_ms = KAFKA_PYTHON["heartbeat_interval_ms"]
        print(
            f"\ninitial delay 3000 ms, heartbeat.interval.ms {heartbeat_ms}: the first "
            f"member's first records after {first_wait:.2f} s; a second member joining -> "
            f"both consuming in {both:.2f} s"
        )
        assert first_wait >= 2.9  # the initial delay is on by default
        assert both < 15
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            broker.close()


# --- a three-broker cluster ---------------------------------------------------------------------

_KAFKA_LISTENER = re.compile(r"Kafka listener on (\S+)")


def _ask(address: str, request: Any) -> Any:
    """Send one request to the broker at `address` and decode its answer."""
    host, port = address.rsplit(":", 1)
    request.with_header(correlation_id=1, client_id="groups-test")
    with socket.create_connection((host, int(port)), timeout=WAIT_S) as sock:
        sock.settimeout(WAIT_S)
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


def test_a_cluster_coordinates_each_group_on_the_leader_of_its_offsets_partition(
    tmp_path: Path,
) -> None:
    cluster = ClusterHarness(tmp_path, 3, ["--kafka-listen=127.0.0.1:0", *NO_DELAY])
    cluster.start()
    try:
        kafka = {}
        for broker_id, process in cluster.brokers.items():
            match = _KAFKA_LISTENER.search(process.start_line)
            assert match, process.start_line
            kafka[broker_id] = match.group(1)
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic("orders", partitions=3, replication_factor=3)
        found = None
        deadline = time.monotonic() + WAIT_S
        while found is None or found.error_code:
            assert time.monotonic() < deadline, found
            found = _ask(kafka[1], FindCoordinatorRequest(version=2, key="cg", key_type=0))
        coordinator = f"{found.host}:{found.port}"
        assert coordinator == kafka[found.node_id]
        # every broker names the same one; the others refuse the group
        for address in kafka.values():
            again = _ask(address, FindCoordinatorRequest(version=1, key="cg", key_type=0))
            assert again.node_id == found.node_id
        other = next(a for b, a in kafka.items() if b != found.node_id)
        refused = _ask(other, OffsetFetchRequest(version=5, group_id="cg", topics=None))
        assert refused.error_code == kafka_errors.NotCoordinatorError.errno
        # a kafka-python group, bootstrapped from a broker that does not coordinate it
        produce_to = Producer(cluster.bootstrap, acks="all")
        with produce_to:
            for partition in range(3):
                produce_to.send("orders", value=b"x", partition=partition)
            produce_to.flush()
        consumer = KafkaConsumer(
            bootstrap_servers=other, group_id="cg", client_id="kp-cluster", **KAFKA_PYTHON
        )
        consumer.subscribe(["orders"])
        assert len(poll_records(consumer, 3)) == 3
        consumer.commit()
        described = cli(cluster.bootstrap, "groups", "describe", "cg")
        assert described.returncode == 0, described.stderr
        rows = _rows(described.stdout)
        assert [(r[2], r[3], r[4], r[5], r[8]) for r in rows] == [
            (str(p), "1", "1", "0", "kp-cluster") for p in range(3)
        ]
        consumer.close()
    finally:
        cluster.close()

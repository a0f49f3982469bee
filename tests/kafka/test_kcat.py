"""kcat (Debian's, on librdkafka 2.0.2) against a real broker's Kafka listener.

kcat is run exactly as its users run it: metadata (`-L`), produce (`-P` with keys, headers
and each codec), consume (`-C`), balanced consumer groups (`-G`, which commit) and offsets
by time (`-Q`). Records cross between kcat and LogStore's own gRPC client both ways, since
both protocols serve one store. One test runs a three-broker cluster (real etcd), where
kcat must find each partition's leader from Metadata and produce and fetch there.

kcat is a system package (`apt-get install kcat`; `.ci/run` installs it): without it these
tests fail in one line naming it, never skip. Every kcat call has a subprocess timeout and
librdkafka timeouts of a few seconds, so a broker that never answers fails the test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logstore import Admin, Consumer, Producer
from logstore.types import ConsumerRecord
from tests.cluster.etcd import free_port
from tests.cluster.harness import ClusterHarness
from tests.kafka.conftest import KafkaBrokerProcess

#: seconds one kcat call may take; each finishes in well under a second when served
KCAT_TIMEOUT_S = 30.0
#: librdkafka settings that turn a broker that never answers into a prompt error
_QUICK = [
    "-X",
    "socket.timeout.ms=5000",
    "-X",
    "message.timeout.ms=10000",
    "-X",
    "topic.metadata.refresh.interval.ms=1000",
]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


def _tail(stderr: bytes, lines: int = 25) -> str:
    """A client's stderr, where its reason for failing is: each distinct line once (with
    how often it came), the last `lines` of them."""
    counts: dict[str, int] = {}
    for line in stderr.decode(errors="replace").splitlines():
        counts[line] = counts.get(line, 0) + 1
    shown = [f"{line} (x{n})" if n > 1 else line for line, n in counts.items()]
    return "\n".join(shown[-lines:])


@pytest.fixture(scope="module")
def kcat_path() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed: apt-get install kcat (.ci/run does)", pytrace=False)
    return path


class Kcat:
    """Runs kcat against one bootstrap address and returns its stdout (bytes)."""

    def __init__(self, path: str, bootstrap: str) -> None:
        self.path = path
        self.bootstrap = bootstrap

    def run(self, *args: str, stdin: bytes = b"", timeout_s: float = KCAT_TIMEOUT_S) -> bytes:
        command = [self.path, "-b", self.bootstrap, *_QUICK, *args]
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            stderr = _tail(exc.stderr or b"")
            pytest.fail(f"{' '.join(command)} ran over {timeout_s}s:\n{stderr}", pytrace=False)
        if done.returncode != 0:
            stderr = _tail(done.stderr)
            pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{stderr}", pytrace=False)
        return done.stdout

    def consume_json(self, *args: str) -> list[dict[str, Any]]:
        """`kcat -C -J ... -e`: one JSON object per record, until every partition's end."""
        out = self.run("-C", "-J", "-e", *args)
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def kcat(kcat_path: str, module_kafka_broker: KafkaBrokerProcess) -> Kcat:
    return Kcat(kcat_path, module_kafka_broker.bootstrap)


@pytest.fixture(scope="module")
def admin(module_kafka_broker: KafkaBrokerProcess) -> Iterator[Admin]:
    with Admin(module_kafka_broker.address) as client:
        yield client


def _topic(admin: Admin, partitions: int = 1) -> str:
    name = f"kcat-{uuid.uuid4().hex[:12]}"
    admin.create_topic(name, partitions=partitions)
    return name


def _read_with_logstore(address: str, topic: str, count: int) -> list[ConsumerRecord]:
    """Every record of partition 0 of `topic`, through LogStore's gRPC consumer."""
    records: list[ConsumerRecord] = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        deadline = time.monotonic() + 15
        while len(records) < count and time.monotonic() < deadline:
            records.extend(consumer.poll(timeout=0.5))
    return records


def _headers(record: dict[str, Any]) -> list[tuple[str, str]]:
    """kcat -J prints headers as a flat [name, value, name, value, ...] list."""
    flat = record.get("headers") or []
    return list(zip(flat[0::2], flat[1::2], strict=True))


def test_metadata_lists_the_broker_and_topics(kcat: Kcat, admin: Admin) -> None:
    topic = _topic(admin, partitions=3)
    metadata = json.loads(kcat.run("-L", "-J"))
    assert metadata["brokers"] == [{"id": 0, "name": kcat.bootstrap}]
    assert metadata["controllerid"] == 0
    [described] = [t for t in metadata["topics"] if t["topic"] == topic]
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    assert {p["leader"] for p in described["partitions"]} == {0}
    assert all(p["isrs"] == [{"id": 0}] for p in described["partitions"])


@pytest.mark.parametrize("codec", CODECS)
def test_produce_keys_headers_and_codec_then_consume_back(
    kcat: Kcat, admin: Admin, module_kafka_broker: KafkaBrokerProcess, codec: str
) -> None:
    topic = _topic(admin)
    lines = [f"key-{i}:value {i} {codec}" for i in range(20)]
    headers = ["-H", "source=kcat", "-H", f"codec={codec}"]
    kcat.run(
        "-P", "-t", topic, "-p", "0", "-K:", "-z", codec, *headers, stdin="\n".join(lines).encode()
    )

    consumed = kcat.consume_json("-t", topic, "-o", "beginning")
    assert [(r["offset"], r["key"], r["payload"]) for r in consumed] == [
        (i, f"key-{i}", f"value {i} {codec}") for i in range(20)
    ]
    assert all(_headers(r) == [("source", "kcat"), ("codec", codec)] for r in consumed)

    # The same records through LogStore's own client: one store under both protocols.
    records = _read_with_logstore(module_kafka_broker.address, topic, 20)
    assert [(r.offset, r.key, r.value) for r in records] == [
        (i, f"key-{i}".encode(), f"value {i} {codec}".encode()) for i in range(20)
    ]
    assert records[0].headers == (("source", b"kcat"), ("codec", codec.encode()))


def test_kcat_reads_what_logstore_producer_wrote(
    kcat: Kcat, admin: Admin, module_kafka_broker: KafkaBrokerProcess
) -> None:
    topic = _topic(admin)
    with Producer(module_kafka_broker.address, acks="all", compression="zstd") as producer:
        for i in range(10):
            producer.send(
                topic,
                value=f"v{i}".encode(),
                key=f"k{i}".encode(),
                headers=[("n", str(i).encode())],
                partition=0,
            )
        producer.flush()

    consumed = kcat.consume_json("-t", topic, "-o", "beginning")
    assert [(r["offset"], r["key"], r["payload"], _headers(r)) for r in consumed] == [
        (i, f"k{i}", f"v{i}", [("n", str(i))]) for i in range(10)
    ]


def test_balanced_consumer_reads_commits_and_resumes(
    kcat: Kcat, admin: Admin, module_kafka_broker: KafkaBrokerProcess
) -> None:
    topic = _topic(admin, partitions=2)
    group = f"kcat-group-{uuid.uuid4().hex[:8]}"
    kcat.run(
        "-P", "-t", topic, "-K:", stdin=b"\n".join(b"k%d:first %d" % (i, i) for i in range(12))
    )
    group_args = [
        "-G", group, topic,
        "-X", "auto.offset.reset=earliest",
        "-X", "session.timeout.ms=6000",
        "-X", "heartbeat.interval.ms=500",
    ]  # fmt: skip

    first = kcat.consume_json(*group_args)
    assert sorted(r["payload"] for r in first) == sorted(f"first {i}" for i in range(12))
    ends = _end_offsets(admin, topic)
    assert sum(ends.values()) == 12
    committed = admin.committed_offsets(group, [topic])
    # librdkafka commits what it consumed when kcat closes; a partition it read nothing
    # from has nothing to commit.
    assert {tp: om.offset for tp, om in committed.items()} == {
        (topic, p): n for p, n in ends.items() if n
    }

    # A new member of the same group starts at the group's commits: only the new records.
    kcat.run("-P", "-t", topic, "-K:", stdin=b"k1:second 1\nk2:second 2")
    second = kcat.consume_json(*group_args)
    assert sorted(r["payload"] for r in second) == ["second 1", "second 2"]


def _end_offsets(admin: Admin, topic: str) -> dict[int, int]:
    description = admin.describe_topic(topic)
    return {p.partition: p.high_watermark for p in description.partitions}


def test_query_offsets_by_timestamp(
    kcat: Kcat, admin: Admin, module_kafka_broker: KafkaBrokerProcess
) -> None:
    topic = _topic(admin)
    base_ms = int(time.time() * 1000) - 60_000
    with Producer(module_kafka_broker.address, acks="all") as producer:
        for i in range(5):
            producer.send(topic, value=b"x", partition=0, timestamp_ms=base_ms + i * 1000)
        producer.flush()

    def offset_at(timestamp_ms: int) -> int:
        answer = json.loads(kcat.run("-Q", "-J", "-t", f"{topic}:0:{timestamp_ms}"))
        assert "error" not in answer[topic]["0"], answer
        return int(answer[topic]["0"]["offset"])

    # Kafka's rule: the first offset whose timestamp is at or after the one asked for.
    assert offset_at(base_ms - 5000) == 0
    assert offset_at(base_ms) == 0
    assert offset_at(base_ms + 2000) == 2
    assert offset_at(base_ms + 2500) == 3
    assert offset_at(base_ms + 3600_000) == -1  # after every record: no such offset

    # kcat -o s@TS starts consuming there.
    consumed = kcat.consume_json("-t", topic, "-o", f"s@{base_ms + 3000}")
    assert [r["offset"] for r in consumed] == [3, 4]


def test_three_broker_cluster_each_partition_served_by_its_leader(
    kcat_path: str, tmp_path: Path
) -> None:
    ports = {broker_id: free_port() for broker_id in (1, 2, 3)}
    listeners = {b: [f"--kafka-listen=127.0.0.1:{port}"] for b, port in ports.items()}
    cluster = ClusterHarness(tmp_path, brokers=3, broker_args=listeners)
    cluster.start()
    try:
        kcat = Kcat(kcat_path, ",".join(f"127.0.0.1:{port}" for port in ports.values()))
        topic = f"kcat-cluster-{uuid.uuid4().hex[:8]}"
        with Admin(cluster.bootstrap) as admin:
            admin.create_topic(topic, partitions=3, replication_factor=3)
        for partition in range(3):
            cluster.wait_for_isr(topic, 3, partition)

        metadata = json.loads(kcat.run("-L", "-J", "-t", topic))
        assert {b["id"]: b["name"] for b in metadata["brokers"]} == {
            b: f"127.0.0.1:{port}" for b, port in ports.items()
        }
        assert metadata["controllerid"] in ports
        [described] = metadata["topics"]
        leaders = {p["partition"]: p["leader"] for p in described["partitions"]}
        assert leaders == {p: cluster.wait_for_leader(topic, p) for p in range(3)}

        lines = b"\n".join(b"key-%d:value %d" % (i, i) for i in range(30))
        kcat.run("-P", "-t", topic, "-K:", "-X", "acks=all", stdin=lines)
        consumed = kcat.consume_json("-t", topic, "-o", "beginning")
        assert sorted((r["key"], r["payload"]) for r in consumed) == sorted(
            (f"key-{i}", f"value {i}") for i in range(30)
        )
        assert {r["partition"] for r in consumed} == {0, 1, 2}
    finally:
        cluster.close()

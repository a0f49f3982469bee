"""kafkajs (npm, pinned in tests/kafka/js/package-lock.json) against a real broker.

kafkajs speaks no flexible versions and opens with ApiVersions v2, then v1/v0; it ships
gzip as its only codec. The scripts in tests/kafka/js/ use it as its users do: a producer
(acks 1 and -1, keys, headers, gzip), a consumer in a group (subscribe fromBeginning,
eachMessage, commitOffsets) and the admin client (createTopics, fetchTopicMetadata,
fetchTopicOffsets, fetchOffsets, listGroups, describeGroups). Records cross between kafkajs
and LogStore's own gRPC client both ways.

Node and kafkajs are installed by `.ci/run` (Debian's nodejs and npm, then `npm ci` in
tests/kafka/js); without them these tests fail in one line naming what is missing.
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
from tests.kafka.conftest import KafkaBrokerProcess

JS_DIR = Path(__file__).parent / "js"
#: seconds one script may run; its own deadline (deadlineMs) comes first
SCRIPT_TIMEOUT_S = 40.0


def _tail(stderr: bytes, lines: int = 25) -> str:
    """A client's stderr, where its reason for failing is: each distinct line once (with
    how often it came), the last `lines` of them."""
    counts: dict[str, int] = {}
    for line in stderr.decode(errors="replace").splitlines():
        counts[line] = counts.get(line, 0) + 1
    shown = [f"{line} (x{n})" if n > 1 else line for line, n in counts.items()]
    return "\n".join(shown[-lines:])


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail(
            "node is not installed: apt-get install nodejs npm (.ci/run does)", pytrace=False
        )
    if not (JS_DIR / "node_modules" / "kafkajs" / "package.json").is_file():
        pytest.fail(
            f"kafkajs is not installed: cd {JS_DIR} && npm ci (.ci/run does)", pytrace=False
        )
    return path


class KafkaJs:
    """Runs one script of tests/kafka/js with a JSON argument; returns its JSON lines."""

    def __init__(self, node: str, bootstrap: str) -> None:
        self.node = node
        self.bootstrap = bootstrap

    def run(self, script: str, **options: Any) -> list[Any]:
        options = {"brokers": [self.bootstrap], "deadlineMs": 30_000, **options}
        command = [self.node, str(JS_DIR / script), json.dumps(options)]
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=SCRIPT_TIMEOUT_S, cwd=JS_DIR
            )
        except subprocess.TimeoutExpired as exc:
            stderr = _tail(exc.stderr or b"")
            pytest.fail(f"kafkajs {script} ran over {SCRIPT_TIMEOUT_S}s:\n{stderr}", pytrace=False)
        if done.returncode != 0:
            stderr = _tail(done.stderr)
            pytest.fail(f"kafkajs {script} exited {done.returncode}:\n{stderr}", pytrace=False)
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def admin(self, *steps: dict[str, Any]) -> dict[str, Any]:
        """Runs admin steps; returns {step name: result or {"error": ...}} (last wins)."""
        answers = self.run("admin.js", steps=list(steps))
        return {a["step"]: a.get("result", {"error": a.get("error")}) for a in answers}


@pytest.fixture(scope="module")
def kafkajs(node: str, module_kafka_broker: KafkaBrokerProcess) -> KafkaJs:
    return KafkaJs(node, module_kafka_broker.bootstrap)


@pytest.fixture(scope="module")
def admin(module_kafka_broker: KafkaBrokerProcess) -> Iterator[Admin]:
    with Admin(module_kafka_broker.address) as client:
        yield client


def _name(prefix: str) -> str:
    return f"kafkajs-{prefix}-{uuid.uuid4().hex[:10]}"


def _read_with_logstore(
    address: str, topic: str, partitions: int, count: int
) -> list[ConsumerRecord]:
    """Every record of `topic` through LogStore's gRPC consumer, by (partition, offset)."""
    records: list[ConsumerRecord] = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in range(partitions)])
        deadline = time.monotonic() + 15
        while len(records) < count and time.monotonic() < deadline:
            records.extend(consumer.poll(timeout=0.5))
    return sorted(records, key=lambda r: (r.partition, r.offset))


@pytest.mark.parametrize(("acks", "compression"), [(1, "none"), (-1, "none"), (-1, "gzip")])
def test_producer_keys_and_headers_are_read_by_logstore(
    kafkajs: KafkaJs,
    admin: Admin,
    module_kafka_broker: KafkaBrokerProcess,
    acks: int,
    compression: str,
) -> None:
    topic = _name("produce")
    admin.create_topic(topic, partitions=1)
    messages = [
        {"key": f"key-{i}", "value": f"value-{i}", "headers": {"trace": f"t{i}", "app": "js"}}
        for i in range(25)
    ]
    [answer] = kafkajs.run(
        "produce.js", topic=topic, acks=acks, compression=compression, messages=messages
    )
    assert answer == [
        {
            "topicName": topic,
            "partition": 0,
            "errorCode": 0,
            "baseOffset": "0",
            "logAppendTime": "-1",
            "logStartOffset": "0",
        }
    ]

    records = _read_with_logstore(module_kafka_broker.address, topic, 1, 25)
    assert [(r.offset, r.key, r.value) for r in records] == [
        (i, f"key-{i}".encode(), f"value-{i}".encode()) for i in range(25)
    ]
    assert [dict(r.headers) for r in records] == [
        {"trace": f"t{i}".encode(), "app": b"js"} for i in range(25)
    ]


def test_group_consumer_reads_from_beginning_commits_and_resumes(
    kafkajs: KafkaJs, admin: Admin, module_kafka_broker: KafkaBrokerProcess
) -> None:
    topic, group = _name("consume"), _name("group")
    admin.create_topic(topic, partitions=3)
    with Producer(module_kafka_broker.address, acks="all") as producer:
        for i in range(30):
            producer.send(
                topic,
                value=f"v{i}".encode(),
                key=f"k{i}".encode(),
                headers=[("i", str(i).encode())],
            )
        producer.flush()
    ends = {p.partition: p.high_watermark for p in admin.describe_topic(topic).partitions}

    [first] = kafkajs.run("consume.js", topic=topic, groupId=group, expect=30, settleMs=500)
    got = first["messages"]
    assert sorted((m["key"], m["value"], m["headers"]["i"]) for m in got) == sorted(
        (f"k{i}", f"v{i}", str(i)) for i in range(30)
    )
    # Per partition, in offset order from 0: what the group reads is the log itself.
    for partition, end in ends.items():
        assert [m["offset"] for m in got if m["partition"] == partition] == list(range(end))

    # The commits are LogStore's: the gRPC admin reads them back.
    committed = admin.committed_offsets(group, [topic])
    assert {tp: om.offset for tp, om in committed.items()} == {
        (topic, p): n for p, n in ends.items() if n
    }

    # The next member of the group resumes at the commits: only what came after.
    with Producer(module_kafka_broker.address, acks="all") as producer:
        producer.send(topic, value=b"late", key=b"late", partition=1).result(timeout=10)
    [second] = kafkajs.run("consume.js", topic=topic, groupId=group, expect=1, settleMs=1000)
    assert [(m["partition"], m["offset"], m["value"]) for m in second["messages"]] == [
        (1, ends[1], "late")
    ]


def test_admin_topics_offsets_and_groups(kafkajs: KafkaJs, admin: Admin) -> None:
    topic, group = _name("admin"), _name("admin-group")
    created = kafkajs.admin(
        {"name": "createTopics", "topics": [{"topic": topic, "numPartitions": 3}]}
    )
    assert created == {"createTopics": True}
    assert len(admin.describe_topic(topic).partitions) == 3

    again = kafkajs.admin(
        {"name": "createTopics", "topics": [{"topic": topic, "numPartitions": 3}]}
    )
    assert again == {"createTopics": False}  # kafkajs' answer to TOPIC_ALREADY_EXISTS

    kafkajs.run("produce.js", topic=topic, acks=-1, messages=[{"value": "a", "partition": 2}] * 4)
    admin.commit_offsets(group, {(topic, 2): 3})

    answers = kafkajs.admin(
        {"name": "fetchTopicMetadata", "topics": [topic]},
        {"name": "fetchTopicOffsets", "topic": topic},
        {"name": "fetchOffsets", "groupId": group, "topics": [topic]},
    )
    [meta] = answers["fetchTopicMetadata"]["topics"]
    assert meta["name"] == topic
    assert sorted(
        (p["partitionId"], p["leader"], p["replicas"], p["isr"]) for p in meta["partitions"]
    ) == [(p, 0, [0], [0]) for p in range(3)]
    offsets = sorted(answers["fetchTopicOffsets"], key=lambda p: p["partition"])
    assert [(p["partition"], p["low"], p["high"]) for p in offsets] == [
        (0, "0", "0"),
        (1, "0", "0"),
        (2, "0", "4"),
    ]
    [fetched] = answers["fetchOffsets"]
    assert fetched["topic"] == topic
    assert sorted((p["partition"], p["offset"]) for p in fetched["partitions"]) == [
        (0, "-1"),
        (1, "-1"),
        (2, "3"),
    ]


def test_list_and_describe_a_group_kafkajs_joined(kafkajs: KafkaJs, admin: Admin) -> None:
    topic, group = _name("groups"), _name("listed")
    admin.create_topic(topic, partitions=1)
    kafkajs.run("produce.js", topic=topic, acks=1, messages=[{"value": "x"}])
    kafkajs.run("consume.js", topic=topic, groupId=group, expect=1)

    answers = kafkajs.admin({"name": "listGroups"}, {"name": "describeGroups", "groupIds": [group]})
    listed = {g["groupId"]: g["protocolType"] for g in answers["listGroups"]["groups"]}
    assert listed.get(group) == "consumer"
    [described] = answers["describeGroups"]["groups"]
    assert described["groupId"] == group
    assert described["errorCode"] == 0
    assert described["protocolType"] == "consumer"
    assert described["state"] == "Empty"  # its only member left when the script ended
    assert described["members"] == []
    assert {tp: om.offset for tp, om in admin.committed_offsets(group, [topic]).items()} == {
        (topic, 0): 1
    }

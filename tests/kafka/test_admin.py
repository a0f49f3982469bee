"""Topic and config administration through the Kafka listener, with three unmodified
admin clients (kafka-python, confluent-kafka, aiokafka) against a real broker process, and
LogStore's own CLI and client agreeing with what they did."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin import NewTopic as AioNewTopic
from aiokafka.admin.config_resource import ConfigResource as AioConfigResource
from aiokafka.admin.config_resource import ConfigResourceType as AioResourceType
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)
from confluent_kafka.admin import NewPartitions as ConfluentNewPartitions
from kafka import KafkaAdminClient
from kafka import errors as kafka_errors
from kafka.admin import ConfigResource as KpConfigResource

from logstore import Admin
from logstore.storage.log_config import KAFKA_NAMES
from logstore.v1 import logstore_pb2 as pb
from tests.cluster.harness import ClusterHarness
from tests.helpers import wait_until
from tests.kafka.conftest import KafkaBrokerProcess

#: every client call's deadline (s)
TIMEOUT_S = 15
#: a CLI process's deadline (s)
CLI_TIMEOUT_S = 60
_KAFKA_LISTENER = re.compile(r"Kafka listener on (\S+)")


# --- helpers -----------------------------------------------------------------------------


def outcomes(futures: dict[Any, Future]) -> dict[str, KafkaError | None]:
    """confluent-kafka's per-item futures as key -> None (done) or the KafkaError."""
    answers: dict[str, KafkaError | None] = {}
    for key, future in futures.items():
        name = key.name if isinstance(key, ConfigResource) else str(key)
        try:
            future.result(timeout=TIMEOUT_S)
            answers[name] = None
        except KafkaException as exc:
            answers[name] = exc.args[0]
    return answers


def error_names(answers: dict[str, KafkaError | None]) -> dict[str, str | None]:
    return {k: None if e is None else e.name() for k, e in answers.items()}


def confluent(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000})


def topic_configs(admin: AdminClient, name: str) -> dict[str, Any]:
    """Every ConfigEntry of topic `name`, by config name (confluent-kafka)."""
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)]).values()
    return future.result(timeout=TIMEOUT_S)


@pytest.fixture
def kafka_python(kafka_broker: KafkaBrokerProcess) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=10_000)
    try:
        yield client
    finally:
        client.close()


def logstore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


# --- kafka-python ------------------------------------------------------------------------


def test_kafka_python_creates_describes_alters_grows_and_deletes(
    kafka_broker: KafkaBrokerProcess, kafka_python: KafkaAdminClient
) -> None:
    created = kafka_python.create_topics(
        {
            "orders": {
                "num_partitions": 2,
                "replication_factor": 1,
                "configs": {"retention.ms": "3600000", "segment.ms": "600000"},
            }
        }
    )
    assert created["topics"] == [{"name": "orders", "error_code": 0, "error_message": None}]

    resource = KpConfigResource("TOPIC", "orders")
    every = kafka_python.describe_configs([resource], config_filter="all")["topic"]["orders"]
    assert set(every) == set(KAFKA_NAMES)  # every config, not only the overrides
    modified = kafka_python.describe_configs([resource])["topic"]["orders"]
    assert {k: v["value"] for k, v in modified.items()} == {
        "retention.ms": "3600000",
        "segment.ms": "600000",
    }
    assert modified["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"

    # AlterConfigs (not incremental): the given set replaces every override
    changed = KpConfigResource("TOPIC", "orders", {"cleanup.policy": "compact"})
    assert kafka_python.alter_configs([changed], incremental=False) == {"topic": {"orders": "OK"}}
    with Admin(kafka_broker.address) as admin:
        # kafka-python re-sends the overrides it found, as its docs say, so they survive
        assert admin.describe_topic("orders").config_overrides == {
            "cleanup.policy": "compact",
            "retention.ms": "3600000",
            "segment.ms": "600000",
        }
    appended = KpConfigResource("TOPIC", "orders", {"cleanup.policy": ("APPEND", "delete")})
    assert kafka_python.alter_configs([appended], incremental=True) == {"topic": {"orders": "OK"}}
    after = kafka_python.describe_configs([resource])["topic"]["orders"]
    assert after["cleanup.policy"]["value"] == "compact,delete"

    kafka_python.create_partitions({"orders": 5})
    deleted = kafka_python.delete_topics(["orders"])
    assert deleted["topics"] == [{"name": "orders", "error_code": 0}]
    with Admin(kafka_broker.address) as admin:
        assert "orders" not in admin.list_topics()


def test_kafka_python_raises_kafkas_error_classes(kafka_python: KafkaAdminClient) -> None:
    one = {"num_partitions": 1, "replication_factor": 1}
    kafka_python.create_topics({"taken": one})
    with pytest.raises(kafka_errors.TopicAlreadyExistsError):
        kafka_python.create_topics({"taken": one})
    with pytest.raises(kafka_errors.InvalidReplicationFactorError):
        kafka_python.create_topics({"copies": {"num_partitions": 1, "replication_factor": 3}})
    with pytest.raises(kafka_errors.InvalidTopicError):
        kafka_python.create_topics({"no/slashes": one})
    with pytest.raises(kafka_errors.InvalidConfigurationError):
        kafka_python.create_topics({"cfg": {**one, "configs": {"retention.ms": "soon"}}})
    with pytest.raises(kafka_errors.InvalidPartitionsError):
        kafka_python.create_partitions({"taken": 1})
    with pytest.raises(kafka_errors.UnknownTopicOrPartitionError):
        kafka_python.delete_topics(["never-made"])
    answer = kafka_python.create_topics({"checked": one}, validate_only=True)
    assert answer["topics"][0]["error_code"] == 0
    assert "checked" not in kafka_python.list_topics()


# --- confluent-kafka ---------------------------------------------------------------------


def test_confluent_creates_with_the_broker_defaults_and_validates_without_creating(
    tmp_path: Path,
) -> None:
    broker = KafkaBrokerProcess(tmp_path / "data", ["--num-partitions", "3"])
    broker.start()
    try:
        admin = confluent(broker.bootstrap)
        defaults = NewTopic("defaults", num_partitions=-1, replication_factor=-1)
        assert outcomes(admin.create_topics([defaults], request_timeout=TIMEOUT_S)) == {
            "defaults": None
        }
        checked = [NewTopic("checked", 2), NewTopic("copies", 1, 2)]
        answers = admin.create_topics(checked, validate_only=True, request_timeout=TIMEOUT_S)
        assert error_names(outcomes(answers)) == {
            "checked": None,
            "copies": "INVALID_REPLICATION_FACTOR",
        }
        with Admin(broker.address) as logstore_admin:
            assert len(logstore_admin.describe_topic("defaults").partitions) == 3
            assert "checked" not in logstore_admin.list_topics()
    finally:
        broker.close()


def test_confluent_gets_kafkas_error_code_for_each_topic(kafka_broker: KafkaBrokerProcess) -> None:
    admin = confluent(kafka_broker.bootstrap)
    outcomes(admin.create_topics([NewTopic("taken", 1)], request_timeout=TIMEOUT_S))
    answers = admin.create_topics(
        [
            NewTopic("fresh", 2, config={"cleanup.policy": "compact"}),
            NewTopic("taken", 1),
            NewTopic("copies", 1, 3),
            NewTopic("bad name", 1),
            NewTopic("__mine", 1),
            NewTopic("cfg", 1, config={"retention.ms": "soon"}),
            NewTopic("placed", 2, replica_assignment=[[0], [7]]),
        ],
        request_timeout=TIMEOUT_S,
    )
    errors = outcomes(answers)
    assert error_names(errors) == {
        "fresh": None,
        "taken": "TOPIC_ALREADY_EXISTS",
        "copies": "INVALID_REPLICATION_FACTOR",
        "bad name": "TOPIC_EXCEPTION",
        "__mine": "INVALID_REQUEST",
        "cfg": "INVALID_CONFIG",
        "placed": "INVALID_REPLICA_ASSIGNMENT",
    }
    cfg_error = errors["cfg"]
    assert cfg_error is not None and "retention.ms" in cfg_error.str()  # the broker's message
    with Admin(kafka_broker.address) as logstore_admin:
        fresh = logstore_admin.describe_topic("fresh")
        assert (len(fresh.partitions), fresh.config_overrides) == (2, {"cleanup.policy": "compact"})
        assert sorted(logstore_admin.list_topics()) == ["fresh", "taken"]


def test_confluent_describes_every_config_with_kafkas_sources(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    admin = confluent(kafka_broker.bootstrap)
    made = NewTopic("described", 1, config={"retention.ms": "60000"})
    outcomes(admin.create_topics([made], request_timeout=TIMEOUT_S))
    configs = topic_configs(admin, "described")
    assert set(configs) == set(KAFKA_NAMES)
    retention = configs["retention.ms"]
    assert (retention.value, retention.source) == ("60000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    assert not retention.is_default and not retention.is_read_only
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["segment.bytes"].is_default

    broker = admin.describe_configs([ConfigResource(ResourceType.BROKER, "0")])
    (broker_configs,) = [f.result(timeout=TIMEOUT_S) for f in broker.values()]
    assert broker_configs["log.retention.ms"].value == "604800000"
    assert broker_configs["log.retention.ms"].is_read_only
    missing = admin.describe_configs([ConfigResource(ResourceType.TOPIC, "missing")])
    assert error_names(outcomes(missing)) == {"missing": "UNKNOWN_TOPIC_OR_PART"}


def test_confluent_alters_configs_whole_and_incrementally(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    admin = confluent(kafka_broker.bootstrap)
    made = NewTopic("tuned", 1, config={"retention.ms": "60000"})
    outcomes(admin.create_topics([made], request_timeout=TIMEOUT_S))

    # alter_configs is Kafka's original AlterConfigs: retention.ms, not given, is reset
    replaced = ConfigResource(ResourceType.TOPIC, "tuned", set_config={"segment.ms": "100000"})
    with pytest.warns(DeprecationWarning):
        assert outcomes(admin.alter_configs([replaced])) == {"tuned": None}
    configs = topic_configs(admin, "tuned")
    assert configs["segment.ms"].value == "100000"
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    def ops(*entries: tuple[str, str | None, AlterConfigOpType]) -> ConfigResource:
        return ConfigResource(
            ResourceType.TOPIC,
            "tuned",
            incremental_configs=[
                ConfigEntry(name, value, incremental_operation=op) for name, value, op in entries
            ],
        )

    changed = ops(
        ("cleanup.policy", "compact", AlterConfigOpType.APPEND),
        ("segment.ms", None, AlterConfigOpType.DELETE),
        ("retention.ms", "120000", AlterConfigOpType.SET),
    )
    assert outcomes(admin.incremental_alter_configs([changed])) == {"tuned": None}
    with Admin(kafka_broker.address) as logstore_admin:
        assert logstore_admin.describe_topic("tuned").config_overrides == {
            "cleanup.policy": "delete,compact",
            "retention.ms": "120000",
        }
    assert topic_configs(admin, "tuned")["cleanup.policy"].value == "compact,delete"
    subtracted = ops(("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT))
    assert outcomes(admin.incremental_alter_configs([subtracted])) == {"tuned": None}
    assert topic_configs(admin, "tuned")["cleanup.policy"].value == "compact"

    checked = ops(("retention.ms", "1", AlterConfigOpType.SET))
    answer = admin.incremental_alter_configs([checked], validate_only=True)
    assert outcomes(answer) == {"tuned": None}
    assert topic_configs(admin, "tuned")["retention.ms"].value == "120000"
    wrong = ops(("retention.ms", "1", AlterConfigOpType.APPEND))
    assert error_names(outcomes(admin.incremental_alter_configs([wrong]))) == {
        "tuned": "INVALID_CONFIG"
    }
    broker = ConfigResource(
        ResourceType.BROKER,
        "0",
        incremental_configs=[
            ConfigEntry("log.retention.ms", "1", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    assert error_names(outcomes(admin.incremental_alter_configs([broker]))) == {
        "0": "INVALID_REQUEST"
    }


def test_confluent_grows_and_deletes_topics(kafka_broker: KafkaBrokerProcess) -> None:
    admin = confluent(kafka_broker.bootstrap)
    made = [NewTopic("grown", 2), NewTopic("kept", 3)]
    outcomes(admin.create_topics(made, request_timeout=TIMEOUT_S))
    checked = admin.create_partitions([ConfluentNewPartitions("grown", 6)], validate_only=True)
    assert outcomes(checked) == {"grown": None}
    answers = admin.create_partitions(
        [
            ConfluentNewPartitions("grown", 4),
            ConfluentNewPartitions("kept", 2),
            ConfluentNewPartitions("absent", 2),
        ],
        request_timeout=TIMEOUT_S,
    )
    assert error_names(outcomes(answers)) == {
        "grown": None,
        "kept": "INVALID_PARTITIONS",
        "absent": "UNKNOWN_TOPIC_OR_PART",
    }
    with Admin(kafka_broker.address) as logstore_admin:
        assert len(logstore_admin.describe_topic("grown").partitions) == 4
    deleted = admin.delete_topics(["grown", "absent"], request_timeout=TIMEOUT_S)
    assert error_names(outcomes(deleted)) == {"grown": None, "absent": "UNKNOWN_TOPIC_OR_PART"}
    with Admin(kafka_broker.address) as logstore_admin:
        assert logstore_admin.list_topics() == ["kept"]


# --- aiokafka ----------------------------------------------------------------------------


def test_aiokafka_creates_describes_alters_and_deletes(kafka_broker: KafkaBrokerProcess) -> None:
    async def administer() -> dict[str, Any]:
        client = AIOKafkaAdminClient(
            bootstrap_servers=kafka_broker.bootstrap, request_timeout_ms=10_000
        )
        await client.start()
        try:
            seen: dict[str, Any] = {}
            made = [
                AioNewTopic("events", 2, 1, topic_configs={"retention.ms": "7000"}),
                AioNewTopic("copies", 1, 2),
            ]
            seen["create"] = (await client.create_topics(made)).topic_errors
            topic = AioConfigResource(AioResourceType.TOPIC, "events")
            seen["describe"] = await client.describe_configs([topic])
            changed = AioConfigResource(AioResourceType.TOPIC, "events", {"retention.ms": "8000"})
            seen["alter"] = await client.alter_configs([changed])
            seen["grow"] = await client.create_partitions({"events": NewPartitions(3)})
            seen["delete"] = (await client.delete_topics(["events", "gone"])).topic_error_codes
            return seen
        finally:
            await client.close()

    seen = asyncio.run(asyncio.wait_for(administer(), timeout=60))
    assert [(t, code) for t, code, _message in seen["create"]] == [
        ("events", 0),
        ("copies", kafka_errors.InvalidReplicationFactorError.errno),
    ]
    (described,) = seen["describe"]
    (resource,) = described.resources
    assert resource[0] == 0  # error code
    entries = {entry[0]: entry for entry in resource[4]}
    assert set(entries) == set(KAFKA_NAMES)
    assert entries["retention.ms"][1] == "7000"
    (altered,) = seen["alter"]
    assert [r[0] for r in altered.resources] == [0]
    assert [(t, code) for t, code in seen["delete"]] == [
        ("events", 0),
        ("gone", kafka_errors.UnknownTopicOrPartitionError.errno),
    ]


# --- one store: LogStore's CLI and the Kafka clients agree --------------------------------


def test_the_cli_describes_a_topic_made_and_altered_over_kafka(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    admin = confluent(kafka_broker.bootstrap)
    made = NewTopic("shared", 3, config={"retention.ms": "86400000"})
    outcomes(admin.create_topics([made], request_timeout=TIMEOUT_S))
    change = ConfigResource(
        ResourceType.TOPIC,
        "shared",
        incremental_configs=[
            ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    assert outcomes(admin.incremental_alter_configs([change])) == {"shared": None}

    shown = logstore_cli(
        "topics", "describe", "shared", "--json", "--bootstrap-server", kafka_broker.address
    )
    assert shown.returncode == 0, shown.stderr
    described = json.loads(shown.stdout)
    assert len(described["partitions"]) == 3
    assert described["config_overrides"] == {
        "retention.ms": "86400000",
        "max.message.bytes": "2000000",
    }
    assert described["config"]["max.message.bytes"] == "2000000"


def test_a_config_altered_with_the_cli_is_what_describe_configs_answers(
    kafka_broker: KafkaBrokerProcess,
) -> None:
    address = ["--bootstrap-server", kafka_broker.address]
    made = logstore_cli("topics", "create", "via-grpc", "--partitions", "1", *address)
    assert made.returncode == 0, made.stderr
    altered = logstore_cli(
        "topics", "alter", "via-grpc", "--config", "retention.ms=5400000", *address
    )
    assert altered.returncode == 0, altered.stderr
    admin = confluent(kafka_broker.bootstrap)
    retention = topic_configs(admin, "via-grpc")["retention.ms"]
    assert (retention.value, retention.source) == (
        "5400000",
        ConfigSource.DYNAMIC_TOPIC_CONFIG.value,
    )
    reset = logstore_cli("topics", "alter", "via-grpc", "--delete-config", "retention.ms", *address)
    assert reset.returncode == 0, reset.stderr
    retention = topic_configs(admin, "via-grpc")["retention.ms"]
    assert (retention.value, retention.source) == ("604800000", ConfigSource.DEFAULT_CONFIG.value)


def test_broker_topic_defaults_are_static_broker_configs(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[topic-defaults]\n"retention.ms" = 3600000\n')
    broker = KafkaBrokerProcess(tmp_path / "data", ["--config", str(config)])
    broker.start()
    try:
        admin = confluent(broker.bootstrap)
        outcomes(admin.create_topics([NewTopic("inherits", 1)], request_timeout=TIMEOUT_S))
        retention = topic_configs(admin, "inherits")["retention.ms"]
        assert (retention.value, retention.source) == (
            "3600000",
            ConfigSource.STATIC_BROKER_CONFIG.value,
        )
        # librdkafka always asks for synonyms, and keeps one per name
        assert list(retention.synonyms) == ["log.retention.ms"]
        (future,) = admin.describe_configs([ConfigResource(ResourceType.BROKER, "0")]).values()
        log_retention = future.result(timeout=TIMEOUT_S)["log.retention.ms"]
        assert (log_retention.value, log_retention.source) == (
            "3600000",
            ConfigSource.STATIC_BROKER_CONFIG.value,
        )
    finally:
        broker.close()


# --- a three-broker cluster --------------------------------------------------------------


def test_a_cluster_creates_alters_and_deletes_through_any_broker(tmp_path: Path) -> None:
    cluster = ClusterHarness(
        tmp_path, 3, ["--kafka-listen=127.0.0.1:0", "--default-replication-factor", "2"]
    )
    cluster.start()
    try:
        listeners = [_KAFKA_LISTENER.search(p.start_line) for p in cluster.brokers.values()]
        assert all(listeners), [p.start_line for p in cluster.brokers.values()]
        bootstrap = ",".join(m.group(1) for m in listeners if m is not None)
        admin = confluent(bootstrap)
        answers = admin.create_topics(
            [
                NewTopic("replicated", 2, 3, config={"min.insync.replicas": "2"}),
                NewTopic("defaulted", 1, -1),
                NewTopic("too-many", 1, 4),
            ],
            request_timeout=TIMEOUT_S,
        )
        assert error_names(outcomes(answers)) == {
            "replicated": None,
            "defaulted": None,
            "too-many": "INVALID_REPLICATION_FACTOR",
        }
        wait_until(lambda: _replica_count(admin, "replicated") == 3, "3 replicas each")
        wait_until(lambda: _replica_count(admin, "defaulted") == 2, "the default 2 replicas")

        change = ConfigResource(
            ResourceType.TOPIC,
            "replicated",
            incremental_configs=[
                ConfigEntry("retention.ms", "90000", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        assert outcomes(admin.incremental_alter_configs([change])) == {"replicated": None}
        wanted = {"min.insync.replicas": "2", "retention.ms": "90000"}
        for broker_id in cluster.brokers:  # every broker applies what etcd recorded
            wait_until(
                lambda b=broker_id: (
                    dict(cluster.describe_topic("replicated", b).config_overrides) == wanted
                ),
                f"broker {broker_id} to apply the new config",
            )
        for broker_id in cluster.brokers:  # each broker describes its own settings
            resource = ConfigResource(ResourceType.BROKER, str(broker_id))
            (future,) = admin.describe_configs([resource]).values()
            settings = future.result(timeout=TIMEOUT_S)
            assert settings["broker.id"].value == str(broker_id)
            assert settings["default.replication.factor"].value == "2"

        deleted = admin.delete_topics(["replicated", "defaulted"], request_timeout=TIMEOUT_S)
        assert error_names(outcomes(deleted)) == {"replicated": None, "defaulted": None}
        for broker_id in cluster.brokers:
            wait_until(
                lambda b=broker_id: not _topic_names(cluster, b),
                f"broker {broker_id} to delete both topics",
            )
    finally:
        cluster.close()


def _topic_names(cluster: ClusterHarness, broker_id: int) -> list[str]:
    answer = cluster.call("ListTopics", pb.ListTopicsRequest(), broker_id)
    assert isinstance(answer, pb.ListTopicsResponse)
    return [t.name for t in answer.topics]


def _replica_count(admin: AdminClient, topic: str) -> int | None:
    """How many replicas the topic's partition 0 has, as Kafka Metadata tells it."""
    found = admin.list_topics(topic=topic, timeout=TIMEOUT_S).topics.get(topic)
    if found is None or found.error is not None or 0 not in found.partitions:
        return None
    return len(found.partitions[0].replicas)

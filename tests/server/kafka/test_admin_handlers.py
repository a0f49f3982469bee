"""The Kafka admin handlers over a real log manager, without a socket: each request is
encoded and decoded as on the wire, served, and its answer encoded and decoded back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.protocol.admin import (
    AlterConfigsRequest,
    CreatePartitionsRequest,
    CreateTopicsRequest,
    DeleteTopicsRequest,
    DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
)

from logstore.errors import ClusterMetadataUnavailableError
from logstore.server.broker import LogStoreServicer
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.kafka.apis import API_BY_KEY
from logstore.server.kafka.context import KafkaBroker, RequestContext, Session
from logstore.server.kafka.handlers.admin import (
    OP_APPEND,
    OP_DELETE,
    OP_SET,
    OP_SUBTRACT,
    RESOURCE_BROKER,
    RESOURCE_TOPIC,
    SOURCE_DEFAULT,
    SOURCE_DYNAMIC_TOPIC,
    SOURCE_STATIC_BROKER,
    TYPE_LIST,
    TYPE_LONG,
    outcome,
)
from logstore.server.kafka.router import dispatch
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage.log_config import KAFKA_NAMES, LogConfig
from logstore.storage.log_manager import LogManager, ManagerSettings

NONE = 0
UNKNOWN_TOPIC = kafka_errors.UnknownTopicOrPartitionError.errno
INVALID_TOPIC = kafka_errors.InvalidTopicError.errno
TOPIC_EXISTS = kafka_errors.TopicAlreadyExistsError.errno
INVALID_PARTITIONS = kafka_errors.InvalidPartitionsError.errno
INVALID_RF = kafka_errors.InvalidReplicationFactorError.errno
INVALID_ASSIGNMENT = kafka_errors.InvalidReplicationAssignmentError.errno
INVALID_CONFIG = kafka_errors.InvalidConfigurationError.errno
INVALID_REQUEST = kafka_errors.InvalidRequestError.errno
TOPIC_AUTH = kafka_errors.TopicAuthorizationFailedError.errno
CLUSTER_AUTH = kafka_errors.ClusterAuthorizationFailedError.errno

_Topic = CreateTopicsRequest.CreatableTopic
_Assignment = _Topic.CreatableReplicaAssignment
_TopicConfig = _Topic.CreatableTopicConfig
_Grow = CreatePartitionsRequest.CreatePartitionsTopic
_Describe = DescribeConfigsRequest.DescribeConfigsResource
_Alter = AlterConfigsRequest.AlterConfigsResource
_AlterEntry = _Alter.AlterableConfig
_Incremental = IncrementalAlterConfigsRequest.AlterConfigsResource
_IncrementalEntry = _Incremental.AlterableConfig


class Core:
    """A standalone broker's core, seen through the Kafka handlers."""

    def __init__(self, data_dir: Path, defaults: dict[str, str] | None = None) -> None:
        self.manager = LogManager(
            data_dir,
            default_config=LogConfig.from_properties(defaults or {}),
            settings=ManagerSettings(background_threads=False),
        )
        self.servicer = LogStoreServicer(
            self.manager,
            OffsetStore(self.manager),
            ProducerIdManager(data_dir / "producer-id-block"),
            GroupCoordinator(partition_counts=lambda _t: 1),
        )
        #: (resource type, name, operation) -> allowed; unlisted ones are allowed
        self.acls: dict[tuple[str, str, str], bool] = {}
        #: every ACL question the handlers asked, in order
        self.asked: list[tuple[str, str, str]] = []
        settings = KafkaSettings(listen="127.0.0.1:0", num_partitions=3)
        self.broker = KafkaBroker(self.servicer, settings, ("127.0.0.1", 9092), self._authorize)

    def _authorize(self, principal: str, resource_type: str, name: str, operation: str) -> bool:
        key = (resource_type, name, operation)
        self.asked.append(key)
        return self.acls.get(key, True)

    def call(self, request: Any) -> Any:
        """Serve `request` as the listener would, and decode the answer as a client would."""
        api = API_BY_KEY[request.API_KEY]
        version = request.version
        assert api.supports(version), f"{api.name} v{version} is not served"
        received = api.request.decode(request.encode(), version=version)
        ctx = RequestContext(self.broker, Session(peer="test"), version, "test", 7)
        response = dispatch(ctx, api.key, received)
        return api.response.decode(response.encode(), version=version)

    def overrides(self, topic: str) -> dict[str, str]:
        return dict(self.manager.topic(topic).config_overrides)

    def close(self) -> None:
        self.manager.close()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path / "data")
    try:
        yield made
    finally:
        made.close()


def create(core: Core, *topics: Any, validate_only: bool = False, version: int = 4) -> dict:
    """name -> (error code, message) of a CreateTopics."""
    request = CreateTopicsRequest(
        version=version, topics=list(topics), timeout_ms=5000, validate_only=validate_only
    )
    return {t.name: (t.error_code, t.error_message) for t in core.call(request).topics}


def topic(
    name: str,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: dict[str, str | None] | None = None,
    assignments: dict[int, list[int]] | None = None,
) -> Any:
    return _Topic(
        name=name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        assignments=[
            _Assignment(partition_index=p, broker_ids=b) for p, b in (assignments or {}).items()
        ],
        configs=[_TopicConfig(name=k, value=v) for k, v in (configs or {}).items()],
    )


def codes(answers: dict) -> dict[str, int]:
    return {name: code for name, (code, _message) in answers.items()}


def describe(core: Core, *resources: Any, version: int = 3, **options: bool) -> list[Any]:
    request = DescribeConfigsRequest(version=version, resources=list(resources), **options)
    return list(core.call(request).results)


def topic_resource(name: str, keys: list[str] | None = None) -> Any:
    return _Describe(resource_type=RESOURCE_TOPIC, resource_name=name, configuration_keys=keys)


def alter(
    core: Core, name: str, configs: dict[str, str | None], *, validate_only: bool = False
) -> tuple[int, str | None]:
    entries = [_AlterEntry(name=k, value=v) for k, v in configs.items()]
    resource = _Alter(resource_type=RESOURCE_TOPIC, resource_name=name, configs=entries)
    request = AlterConfigsRequest(version=1, resources=[resource], validate_only=validate_only)
    (answer,) = core.call(request).responses
    return answer.error_code, answer.error_message


def incremental(
    core: Core,
    name: str,
    *ops: tuple[str, int, str | None],
    validate_only: bool = False,
    resource_type: int = RESOURCE_TOPIC,
) -> tuple[int, str | None]:
    entries = [_IncrementalEntry(name=k, config_operation=op, value=v) for k, op, v in ops]
    resource = _Incremental(resource_type=resource_type, resource_name=name, configs=entries)
    request = IncrementalAlterConfigsRequest(
        version=0, resources=[resource], validate_only=validate_only
    )
    (answer,) = core.call(request).responses
    return answer.error_code, answer.error_message


# --- CreateTopics ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 3, 4])
def test_create_topics_at_every_served_version(core: Core, version: int) -> None:
    answers = create(core, topic("orders", 2, configs={"retention.ms": "60000"}), version=version)
    assert answers == {"orders": (NONE, None)}
    assert len(core.manager.topic("orders").partitions) == 2
    assert core.overrides("orders") == {"retention.ms": "60000"}


def test_minus_one_takes_num_partitions_and_the_default_replication_factor(core: Core) -> None:
    assert codes(create(core, topic("defaults", partitions=-1, replication_factor=-1))) == {
        "defaults": NONE
    }
    assert len(core.manager.topic("defaults").partitions) == 3  # the listener's num.partitions


def test_each_topic_gets_its_own_error(core: Core) -> None:
    create(core, topic("taken"))
    answers = create(
        core,
        topic("fine"),
        topic("taken"),
        topic("bad name"),
        topic("__internal"),
        topic("no-partitions", partitions=0),
        topic("zero-rf", replication_factor=0),
        topic("rf-two", replication_factor=2),
        topic("bad-config", configs={"retention.ms": "soon"}),
        topic("unknown-config", configs={"retention_ms": "1"}),
        topic("null-config", configs={"retention.ms": None}),
        topic("huge-batches", configs={"max.message.bytes": str(2**31 - 1)}),
    )
    assert codes(answers) == {
        "fine": NONE,
        "taken": TOPIC_EXISTS,
        "bad name": INVALID_TOPIC,
        "__internal": INVALID_REQUEST,
        "no-partitions": INVALID_PARTITIONS,
        "zero-rf": INVALID_RF,
        "rf-two": INVALID_RF,
        "bad-config": INVALID_CONFIG,
        "unknown-config": INVALID_CONFIG,
        "null-config": INVALID_CONFIG,
        "huge-batches": INVALID_CONFIG,
    }
    assert "standalone" in answers["rf-two"][1]
    assert "retention.ms" in answers["unknown-config"][1]  # the hint names the real key
    assert core.manager.topic_names() == ["__consumer_offsets", "fine", "taken"]


def test_an_existing_topic_answers_exists_whatever_else_is_wrong(core: Core) -> None:
    create(core, topic("taken"))
    answers = create(core, topic("taken", partitions=0, replication_factor=5))
    assert codes(answers) == {"taken": TOPIC_EXISTS}


def test_a_topic_named_twice_is_refused_and_not_created(core: Core) -> None:
    answers = create(core, topic("twice"), topic("once"), topic("twice", partitions=2))
    assert list(answers) == ["twice", "once"]  # one answer per name, in request order
    assert codes(answers) == {"twice": INVALID_REQUEST, "once": NONE}
    assert "twice" not in core.manager.topic_names()


def test_validate_only_checks_everything_and_creates_nothing(core: Core) -> None:
    create(core, topic("taken"))
    answers = create(
        core,
        topic("would-work", partitions=-1, configs={"cleanup.policy": "compact"}),
        topic("taken"),
        topic("rf-two", replication_factor=2),
        topic("bad-config", configs={"segment.bytes": "1"}),
        validate_only=True,
    )
    assert codes(answers) == {
        "would-work": NONE,
        "taken": TOPIC_EXISTS,
        "rf-two": INVALID_RF,
        "bad-config": INVALID_CONFIG,
    }
    assert core.manager.topic_names() == ["__consumer_offsets", "taken"]


def test_a_manual_assignment_is_honoured_only_as_logstore_would_place_it(core: Core) -> None:
    answers = create(
        core,
        topic("on-this-broker", -1, -1, assignments={0: [0], 1: [0]}),
        topic("elsewhere", -1, -1, assignments={0: [1]}),
        topic("two-copies", -1, -1, assignments={0: [0, 0]}),
        topic("gap", -1, -1, assignments={0: [0], 2: [0]}),
        topic("both", 2, 1, assignments={0: [0], 1: [0]}),
    )
    assert codes(answers) == {
        "on-this-broker": NONE,
        "elsewhere": INVALID_ASSIGNMENT,
        "two-copies": INVALID_ASSIGNMENT,
        "gap": INVALID_ASSIGNMENT,
        "both": INVALID_REQUEST,
    }
    assert len(core.manager.topic("on-this-broker").partitions) == 2


# --- DeleteTopics and CreatePartitions ---------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_delete_topics_at_every_served_version(core: Core, version: int) -> None:
    create(core, topic("doomed"))
    request = DeleteTopicsRequest(
        version=version, topic_names=["doomed", "never-was", "__consumer_offsets"], timeout_ms=5000
    )
    answers = {r.name: r.error_code for r in core.call(request).responses}
    assert answers == {
        "doomed": NONE,
        "never-was": UNKNOWN_TOPIC,
        "__consumer_offsets": INVALID_REQUEST,
    }
    assert core.manager.topic_names() == ["__consumer_offsets"]


def grow(core: Core, *topics: tuple[str, int], validate_only: bool = False, version: int = 1):
    request = CreatePartitionsRequest(
        version=version,
        topics=[_Grow(name=n, count=c, assignments=None) for n, c in topics],
        timeout_ms=5000,
        validate_only=validate_only,
    )
    return {r.name: r.error_code for r in core.call(request).results}


@pytest.mark.parametrize("version", [0, 1])
def test_create_partitions_grows_topics_and_refuses_shrinking(core: Core, version: int) -> None:
    create(core, topic("a", 2), topic("b", 3))
    answers = grow(core, ("a", 5), ("b", 3), ("c", 2), ("__consumer_offsets", 9), version=version)
    assert answers == {
        "a": NONE,
        "b": INVALID_PARTITIONS,
        "c": UNKNOWN_TOPIC,
        "__consumer_offsets": INVALID_REQUEST,
    }
    assert len(core.manager.topic("a").partitions) == 5
    assert len(core.manager.topic("b").partitions) == 3


def test_create_partitions_validate_only_and_assignments(core: Core) -> None:
    create(core, topic("a", 2))
    assert grow(core, ("a", 4), validate_only=True) == {"a": NONE}
    assert len(core.manager.topic("a").partitions) == 2

    def grow_assigned(count: int, *placements: list[int]) -> Any:
        assignments = [_Grow.CreatePartitionsAssignment(broker_ids=b) for b in placements]
        request = CreatePartitionsRequest(
            version=1,
            topics=[_Grow(name="a", count=count, assignments=assignments)],
            timeout_ms=5000,
            validate_only=False,
        )
        (answer,) = core.call(request).results
        return answer

    # Elsewhere than the only broker: LogStore places partitions itself.
    elsewhere = grow_assigned(3, [1])
    assert elsewhere.error_code == INVALID_REQUEST and "assignment" in elsewhere.error_message
    assert grow_assigned(4, [0]).error_code == INVALID_ASSIGNMENT  # one placement for two
    assert len(core.manager.topic("a").partitions) == 2
    # Where LogStore would put them anyway: on the only broker.
    assert grow_assigned(4, [0], [0]).error_code == NONE
    assert len(core.manager.topic("a").partitions) == 4


# --- DescribeConfigs ---------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_topic_lists_every_config_with_its_source(core: Core, version: int) -> None:
    create(core, topic("t", configs={"retention.ms": "60000"}))
    (result,) = describe(core, topic_resource("t"), version=version)
    assert (result.error_code, result.resource_name) == (NONE, "t")
    configs = {c.name: c for c in result.configs}
    assert set(configs) == set(KAFKA_NAMES)
    assert (configs["retention.ms"].value, configs["retention.ms"].config_source) == (
        "60000",
        SOURCE_DYNAMIC_TOPIC,
    )
    assert (configs["segment.bytes"].value, configs["segment.bytes"].config_source) == (
        str(LogConfig().segment_bytes),
        SOURCE_DEFAULT,
    )
    assert not any(c.read_only or c.is_sensitive for c in result.configs)
    assert all(c.synonyms == [] for c in result.configs)  # not asked for


def test_synonyms_name_the_broker_settings_the_value_comes_from(tmp_path: Path) -> None:
    core = Core(tmp_path / "data", defaults={"retention.ms": "3600000"})
    try:
        create(core, topic("t", configs={"retention.ms": "60000"}), topic("plain"))
        overridden, plain = describe(
            core, topic_resource("t"), topic_resource("plain"), include_synonyms=True
        )
        ms = {c.name: c for c in overridden.configs}["retention.ms"]
        assert [(s.name, s.value, s.source) for s in ms.synonyms] == [
            ("retention.ms", "60000", SOURCE_DYNAMIC_TOPIC),
            ("log.retention.ms", "3600000", SOURCE_STATIC_BROKER),
            ("log.retention.ms", str(LogConfig().retention_ms), SOURCE_DEFAULT),
        ]
        plain_ms = {c.name: c for c in plain.configs}["retention.ms"]
        assert (plain_ms.value, plain_ms.config_source) == ("3600000", SOURCE_STATIC_BROKER)
        segment = {c.name: c for c in plain.configs}["segment.ms"]
        assert [(s.name, s.source) for s in segment.synonyms] == [("log.roll.ms", SOURCE_DEFAULT)]
    finally:
        core.close()


def test_configuration_keys_filter_and_v3_types_and_documentation(core: Core) -> None:
    create(core, topic("t"))
    (plain,) = describe(core, topic_resource("t", ["retention.ms", "cleanup.policy", "nope"]))
    assert [(c.name, c.config_type, c.documentation) for c in plain.configs] == [
        ("cleanup.policy", TYPE_LIST, None),
        ("retention.ms", TYPE_LONG, None),
    ]
    (documented,) = describe(
        core, topic_resource("t", ["retention.ms"]), include_documentation=True
    )
    assert "ms" in documented.configs[0].documentation
    (empty,) = describe(core, topic_resource("t", []))
    assert (empty.error_code, empty.configs) == (NONE, [])


def test_broker_configs_are_read_only_under_kafka_broker_names(core: Core) -> None:
    by_id, by_empty, other, logger = describe(
        core,
        _Describe(resource_type=RESOURCE_BROKER, resource_name="0", configuration_keys=None),
        _Describe(resource_type=RESOURCE_BROKER, resource_name="", configuration_keys=None),
        _Describe(resource_type=RESOURCE_BROKER, resource_name="7", configuration_keys=None),
        _Describe(resource_type=8, resource_name="0", configuration_keys=None),
    )
    configs = {c.name: c for c in by_id.configs}
    assert by_id.error_code == NONE
    assert configs["log.retention.ms"].value == str(LogConfig().retention_ms)
    assert configs["num.partitions"].value == "3"
    assert configs["num.partitions"].config_source == SOURCE_STATIC_BROKER  # Kafka's is 1
    assert configs["message.max.bytes"].config_source == SOURCE_DEFAULT
    host, port = core.broker.advertised
    assert configs["advertised.listeners"].value == f"PLAINTEXT://{host}:{port}"
    assert configs["group.min.session.timeout.ms"].value == "6000"
    assert all(c.read_only for c in by_id.configs)
    assert [c.name for c in by_empty.configs] == [c.name for c in by_id.configs]
    assert other.error_code == INVALID_REQUEST and other.configs == []
    assert logger.error_code == INVALID_REQUEST


def test_an_unknown_topic_answers_for_its_resource_only(core: Core) -> None:
    create(core, topic("t"))
    missing, found = describe(core, topic_resource("gone"), topic_resource("t"))
    assert (missing.error_code, missing.configs) == (UNKNOWN_TOPIC, [])
    assert found.error_code == NONE and found.configs


# --- AlterConfigs ------------------------------------------------------------------------


def test_alter_configs_replaces_every_override(core: Core) -> None:
    create(core, topic("t", configs={"retention.ms": "60000", "segment.ms": "100000"}))
    assert alter(core, "t", {"cleanup.policy": "compact", "retention.ms": "70000"}) == (NONE, None)
    assert core.overrides("t") == {"cleanup.policy": "compact", "retention.ms": "70000"}
    assert alter(core, "t", {}) == (NONE, None)
    assert core.overrides("t") == {}


def test_alter_configs_refusals_change_nothing(core: Core) -> None:
    create(core, topic("t", configs={"retention.ms": "60000"}))
    assert alter(core, "t", {"retention.ms": None})[0] == INVALID_REQUEST
    assert alter(core, "t", {"retention.ms": "-5"})[0] == INVALID_CONFIG
    assert alter(core, "t", {"no.such.config": "1"})[0] == INVALID_CONFIG
    assert alter(core, "t", {"retention.ms": "1"}, validate_only=True) == (NONE, None)
    assert alter(core, "gone", {"retention.ms": "1"})[0] == UNKNOWN_TOPIC
    assert alter(core, "__consumer_offsets", {"retention.ms": "1"})[0] == INVALID_REQUEST
    assert core.overrides("t") == {"retention.ms": "60000"}


def test_broker_configs_are_never_altered(core: Core) -> None:
    resource = _Alter(
        resource_type=RESOURCE_BROKER,
        resource_name="0",
        configs=[_AlterEntry(name="log.retention.ms", value="1")],
    )
    (answer,) = core.call(AlterConfigsRequest(version=0, resources=[resource])).responses
    assert answer.error_code == INVALID_REQUEST
    assert "static" in answer.error_message
    assert incremental(core, "0", ("log.retention.ms", OP_SET, "1"), resource_type=4)[0] == (
        INVALID_REQUEST
    )


def test_a_resource_named_twice_is_refused(core: Core) -> None:
    create(core, topic("t"))
    resource = _Alter(
        resource_type=RESOURCE_TOPIC,
        resource_name="t",
        configs=[_AlterEntry(name="retention.ms", value="1000")],
    )
    request = AlterConfigsRequest(version=1, resources=[resource, resource])
    assert [r.error_code for r in core.call(request).responses] == [INVALID_REQUEST]
    assert core.overrides("t") == {}


# --- IncrementalAlterConfigs -------------------------------------------------------------


def test_incremental_operations_apply_in_turn(core: Core) -> None:
    create(core, topic("t", configs={"retention.ms": "60000", "segment.ms": "100000"}))
    answer = incremental(
        core,
        "t",
        ("retention.ms", OP_SET, "70000"),
        ("segment.ms", OP_DELETE, None),
        ("cleanup.policy", OP_APPEND, "compact"),
    )
    assert answer == (NONE, None)
    # APPEND starts from the value in effect ("delete", the default)
    assert core.overrides("t") == {"retention.ms": "70000", "cleanup.policy": "delete,compact"}
    assert core.manager.topic("t").config.cleanup_policy == "compact,delete"
    assert incremental(core, "t", ("cleanup.policy", OP_SUBTRACT, "delete")) == (NONE, None)
    assert core.overrides("t")["cleanup.policy"] == "compact"
    assert core.manager.topic("t").config.compact and not core.manager.topic("t").config.delete


def test_incremental_refusals_change_nothing(core: Core) -> None:
    create(core, topic("t", configs={"cleanup.policy": "delete"}))
    refused = [
        incremental(core, "t", ("retention.ms", OP_APPEND, "1")),
        incremental(core, "t", ("cleanup.policy", OP_SUBTRACT, "delete")),  # nothing left
        incremental(core, "t", ("nope.ms", OP_DELETE, None)),
        incremental(core, "t", ("retention.ms", OP_SET, None)),
        incremental(core, "t", ("retention.ms", 9, "1")),
        incremental(core, "t", ("retention.ms", OP_SET, "1"), ("retention.ms", OP_DELETE, None)),
    ]
    assert [code for code, _m in refused] == [
        INVALID_CONFIG,
        INVALID_CONFIG,
        INVALID_CONFIG,
        INVALID_REQUEST,
        INVALID_REQUEST,
        INVALID_REQUEST,
    ]
    assert "cleanup.policy" in refused[0][1]  # names the configs that take APPEND
    assert incremental(core, "t", ("retention.ms", OP_SET, "1"), validate_only=True)[0] == NONE
    assert core.overrides("t") == {"cleanup.policy": "delete"}


# --- ACLs --------------------------------------------------------------------------------


def test_each_api_asks_for_the_acl_its_grpc_equivalent_needs(core: Core) -> None:
    create(core, topic("t"))
    core.asked.clear()
    create(core, topic("u"))
    grow(core, ("t", 2))
    describe(core, topic_resource("t"))
    describe(core, _Describe(resource_type=RESOURCE_BROKER, resource_name="0"))
    alter(core, "t", {})
    incremental(core, "t", ("retention.ms", OP_SET, "1"))
    core.call(DeleteTopicsRequest(version=3, topic_names=["u"], timeout_ms=1000))
    assert core.asked == [
        ("cluster", "logstore-cluster", "create"),
        ("topic", "t", "alter"),
        ("topic", "t", "describe"),
        ("cluster", "logstore-cluster", "describe"),
        ("topic", "t", "alter"),
        ("topic", "t", "alter"),
        ("topic", "u", "delete"),
    ]


def test_a_denied_principal_changes_nothing_and_learns_nothing(core: Core) -> None:
    create(core, topic("t", configs={"retention.ms": "60000"}))
    core.acls = {
        ("cluster", "logstore-cluster", "create"): False,
        ("cluster", "logstore-cluster", "describe"): False,
        ("cluster", "logstore-cluster", "alter"): False,
        ("topic", "t", "alter"): False,
        ("topic", "t", "describe"): False,
        ("topic", "t", "delete"): False,
        ("topic", "hidden", "delete"): False,
    }
    assert codes(create(core, topic("new"))) == {"new": TOPIC_AUTH}
    assert grow(core, ("t", 3)) == {"t": TOPIC_AUTH}
    topic_result, broker_result = describe(
        core, topic_resource("t"), _Describe(resource_type=RESOURCE_BROKER, resource_name="0")
    )
    assert (topic_result.error_code, topic_result.configs) == (TOPIC_AUTH, [])
    assert (broker_result.error_code, broker_result.configs) == (CLUSTER_AUTH, [])
    assert alter(core, "t", {})[0] == TOPIC_AUTH
    assert incremental(core, "t", ("retention.ms", OP_DELETE, None))[0] == TOPIC_AUTH
    assert incremental(core, "0", ("x", OP_SET, "1"), resource_type=RESOURCE_BROKER)[0] == (
        CLUSTER_AUTH
    )
    request = DeleteTopicsRequest(version=3, topic_names=["t", "hidden"], timeout_ms=1000)
    # "hidden" does not exist, but a principal that may not delete it is not told so
    assert [r.error_code for r in core.call(request).responses] == [TOPIC_AUTH, TOPIC_AUTH]
    assert core.manager.topic_names() == ["__consumer_offsets", "t"]
    assert len(core.manager.topic("t").partitions) == 1
    assert core.overrides("t") == {"retention.ms": "60000"}


def test_a_change_the_cluster_could_not_make_in_time_answers_request_timed_out() -> None:
    def unrecorded() -> None:
        raise ClusterMetadataUnavailableError("etcd did not answer within 5 s")

    assert outcome(unrecorded) == (
        kafka_errors.RequestTimedOutError.errno,
        "etcd did not answer within 5 s",
    )
    assert outcome(lambda: None) == (NONE, None)

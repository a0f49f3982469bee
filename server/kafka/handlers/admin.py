"""Kafka admin APIs: create, delete and grow topics; describe and alter their configs.

Served here: CreateTopics (19) v2-4, DeleteTopics (20) v1-3, CreatePartitions (37) v0-1,
DescribeConfigs (32) v1-3, AlterConfigs (33) v0-1 and IncrementalAlterConfigs (44) v0.

Invariants:
- Every change goes through the servicer's shared core (`create_topic`, `delete_topic`,
  `add_partitions`, `alter_topic_config`), so the Kafka and gRPC APIs apply one set of
  rules, and in cluster mode every change is recorded in etcd before it is answered.
- `validate_only` runs every check the change would and changes nothing.
- Errors are answered per topic or per resource, in request order, never raised. A name
  (or resource) repeated in one request answers INVALID_REQUEST, as Kafka does.
- ACLs as the gRPC equivalents (`server/security/acl_rules.py`): creating needs create on
  the cluster; deleting, growing and altering a topic need delete / alter on it; describing
  its configs needs describe. Broker configs need describe / alter on the cluster.
- A topic is created, deleted or grown before the answer (in a cluster: once etcd holds
  the change and this broker applied it), so `timeout_ms` never cuts an answer short.

Configs: a topic lists every config LogStore has (Kafka's names, `log_config.KAFKA_NAMES`).
Each value's source is Kafka's: DYNAMIC_TOPIC_CONFIG for a topic override,
STATIC_BROKER_CONFIG where the broker's `[topic-defaults]` differs from Kafka's default,
DEFAULT_CONFIG otherwise; the synonyms name the broker settings as Kafka does
(`log.retention.ms` for `retention.ms`). LogStore's broker settings are static: a BROKER
resource is described (read-only) but never altered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from kafka import errors as kafka_errors
from kafka.protocol.admin import (
    AlterConfigsRequest,
    AlterConfigsResponse,
    CreatePartitionsRequest,
    CreatePartitionsResponse,
    CreateTopicsRequest,
    CreateTopicsResponse,
    DeleteTopicsRequest,
    DeleteTopicsResponse,
    DescribeConfigsRequest,
    DescribeConfigsResponse,
    IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
)

from logstore.acls import CLUSTER, CLUSTER_NAME, TOPIC
from logstore.errors import (
    ClusterMetadataUnavailableError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    LogStoreError,
    TopicExistsError,
)
from logstore.server.kafka.context import RequestContext
from logstore.server.kafka.error_codes import NONE, error_code, error_message
from logstore.server.kafka.router import handles
from logstore.storage.log_config import (
    DEFAULT_LOG_CONFIG,
    KAFKA_NAMES,
    LogConfig,
    config_field_for,
    is_internal_topic,
    validate_partition_count,
    validate_topic_name,
)

# --- Kafka's numbering -------------------------------------------------------------------

#: ConfigResource.Type
RESOURCE_TOPIC: Final = 2
RESOURCE_BROKER: Final = 4
#: DescribeConfigsResponse.ConfigSource
SOURCE_DYNAMIC_TOPIC: Final = 1
SOURCE_STATIC_BROKER: Final = 4
SOURCE_DEFAULT: Final = 5
#: ConfigDef.Type as DescribeConfigs v3 numbers it
TYPE_BOOLEAN: Final = 1
TYPE_STRING: Final = 2
TYPE_INT: Final = 3
TYPE_LONG: Final = 5
TYPE_DOUBLE: Final = 6
TYPE_LIST: Final = 7
#: IncrementalAlterConfigs operations (AlterConfigOp.OpType)
OP_SET: Final = 0
OP_DELETE: Final = 1
OP_APPEND: Final = 2
OP_SUBTRACT: Final = 3
#: CreateTopics' "use the broker's default" for partitions and replication factor
USE_DEFAULT: Final = -1


@dataclass(frozen=True)
class ConfigSpec:
    """How Kafka presents one topic config: its broker-wide synonym, type and doc."""

    broker_name: str
    config_type: int
    doc: str


#: every topic config, Kafka-named, with the broker setting Kafka names its default by
TOPIC_CONFIGS: Final[Mapping[str, ConfigSpec]] = {
    "cleanup.policy": ConfigSpec(
        "log.cleanup.policy",
        TYPE_LIST,
        "'delete' (retention removes old segments), 'compact' (keep the latest record per "
        "key) or both, comma-separated.",
    ),
    "delete.retention.ms": ConfigSpec(
        "log.cleaner.delete.retention.ms",
        TYPE_LONG,
        "How long compaction keeps a tombstone after its batch's newest record (ms).",
    ),
    "file.delete.delay.ms": ConfigSpec(
        "log.segment.delete.delay.ms",
        TYPE_LONG,
        "How long a segment marked deleted stays on disk before removal (ms).",
    ),
    "flush.messages": ConfigSpec(
        "log.flush.interval.messages",
        TYPE_LONG,
        "Fsync a partition after this many appended messages.",
    ),
    "flush.ms": ConfigSpec(
        "log.flush.interval.ms",
        TYPE_LONG,
        "Fsync a partition when its oldest unflushed message is this old (ms).",
    ),
    "index.interval.bytes": ConfigSpec(
        "log.index.interval.bytes",
        TYPE_INT,
        "Add an offset index entry after at least this many bytes of batches.",
    ),
    "max.message.bytes": ConfigSpec(
        "message.max.bytes",
        TYPE_INT,
        "The largest record batch the topic accepts (bytes, whole batch).",
    ),
    "message.timestamp.type": ConfigSpec(
        "log.message.timestamp.type",
        TYPE_STRING,
        "'CreateTime' keeps the producer's timestamps, 'LogAppendTime' stamps the broker's.",
    ),
    "min.cleanable.dirty.ratio": ConfigSpec(
        "log.cleaner.min.cleanable.ratio",
        TYPE_DOUBLE,
        "Compact once the bytes written since the last pass are this share of the log.",
    ),
    "min.compaction.lag.ms": ConfigSpec(
        "log.cleaner.min.compaction.lag.ms",
        TYPE_LONG,
        "Compaction leaves a segment alone until its newest record is this old (ms).",
    ),
    "min.insync.replicas": ConfigSpec(
        "min.insync.replicas",
        TYPE_INT,
        "In a cluster, an acks=all produce needs at least this many in-sync replicas.",
    ),
    "retention.bytes": ConfigSpec(
        "log.retention.bytes",
        TYPE_LONG,
        "Delete the oldest segments while a partition is larger than this (bytes); -1: no cap.",
    ),
    "retention.ms": ConfigSpec(
        "log.retention.ms",
        TYPE_LONG,
        "Keep a closed segment this long after its newest record (ms); -1: forever.",
    ),
    "segment.bytes": ConfigSpec(
        "log.segment.bytes",
        TYPE_INT,
        "Roll to a new segment when the active one would grow past this (bytes).",
    ),
    "segment.index.bytes": ConfigSpec(
        "log.index.size.max.bytes",
        TYPE_INT,
        "The preallocated size of each segment's offset and time index (bytes).",
    ),
    "segment.ms": ConfigSpec(
        "log.roll.ms",
        TYPE_LONG,
        "Roll to a new segment when the active one's first record is this old (ms).",
    ),
}
# A topic config without a row here could not be described: fail at import, not at a client.
assert set(TOPIC_CONFIGS) == set(KAFKA_NAMES), set(KAFKA_NAMES) ^ set(TOPIC_CONFIGS)

#: the configs whose value is a comma-separated list (IncrementalAlterConfigs APPEND, SUBTRACT)
LIST_CONFIGS: Final = frozenset(k for k, s in TOPIC_CONFIGS.items() if s.config_type == TYPE_LIST)

_TOPIC_AUTHORIZATION_FAILED: Final = kafka_errors.TopicAuthorizationFailedError.errno
_CLUSTER_AUTHORIZATION_FAILED: Final = kafka_errors.ClusterAuthorizationFailedError.errno
_INVALID_REPLICA_ASSIGNMENT: Final = kafka_errors.InvalidReplicationAssignmentError.errno
_INVALID_REQUEST: Final = kafka_errors.InvalidRequestError.errno
_REQUEST_TIMED_OUT: Final = kafka_errors.RequestTimedOutError.errno


class Refused(Exception):
    """An item's answer that no core error names (authorization, replica assignment)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


#: (error code, error message or None)
Outcome = tuple[int, str | None]
Item = TypeVar("Item")
Key = TypeVar("Key", bound=Hashable)


def outcome(action: Callable[[], object]) -> Outcome:
    """Run one item's work and answer its error code and message (NONE, None on success).

    Core errors and OS errors (a full disk) become their Kafka codes; anything else is a
    bug and escapes, closing the connection. A change etcd could not record, or this broker
    did not apply in time, answers REQUEST_TIMED_OUT as Kafka's controller does: the
    client may retry, and a retried creation answers TOPIC_ALREADY_EXISTS if the first
    one went through (LEADER_NOT_AVAILABLE, its code elsewhere, says nothing of that)."""
    try:
        action()
    except Refused as exc:
        return exc.code, exc.message
    except ClusterMetadataUnavailableError as exc:
        return _REQUEST_TIMED_OUT, error_message(exc)
    except (LogStoreError, OSError) as exc:
        return error_code(exc), error_message(exc)
    return NONE, None


def repeated(keys: Iterable[object]) -> set[Any]:
    """The keys that occur more than once."""
    return {key for key, count in Counter(keys).items() if count > 1}


def answer_each(
    items: Iterable[Item], key: Callable[[Item], Key], work: Callable[[Item], object]
) -> list[tuple[Key, Outcome]]:
    """One outcome per distinct key, in request order: `work(item)`'s, or INVALID_REQUEST
    for a key the request names twice (Kafka refuses those, doing neither)."""
    items = list(items)
    twice = repeated(key(item) for item in items)
    answered: set[Key] = set()
    results: list[tuple[Key, Outcome]] = []
    for item in items:
        k = key(item)
        if k in answered:
            continue
        answered.add(k)
        if k in twice:
            results.append((k, (_INVALID_REQUEST, f"{k!r} is named twice in this request")))
        else:
            results.append((k, outcome(partial(work, item))))
    return results


# --- CreateTopics ------------------------------------------------------------------------


@handles(CreateTopicsRequest.API_KEY)
def create_topics(ctx: RequestContext, request: Any) -> Any:
    work = partial(_create, ctx, validate_only=bool(request.validate_only))
    results = answer_each(request.topics or [], _name, work)
    result = CreateTopicsResponse.CreatableTopicResult
    return CreateTopicsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        topics=[result(name=n, error_code=c, error_message=m) for n, (c, m) in results],
    )


def _name(item: Any) -> str:
    return item.name


def _create(ctx: RequestContext, topic: Any, validate_only: bool) -> None:
    """Create one topic (or, with `validate_only`, check that it could be created)."""
    broker = ctx.broker
    if not broker.allowed(ctx.session, CLUSTER, CLUSTER_NAME, "create"):
        raise Refused(
            _TOPIC_AUTHORIZATION_FAILED,
            f"{ctx.session.principal} may not create topics (needs create on the cluster)",
        )
    check_new_name(ctx, topic.name)
    partitions, replication_factor = _creation_shape(ctx, topic)
    _check_replication_factor(ctx, replication_factor)
    config = _creation_config(topic.configs or [])
    check_overrides(ctx, config)
    if not validate_only:
        broker.servicer.create_topic(topic.name, partitions, replication_factor, config)


def _creation_shape(ctx: RequestContext, topic: Any) -> tuple[int, int]:
    """(partitions, replication factor) to create, 0 meaning the cluster's default factor.

    -1 takes the listener's num.partitions / the cluster's default.replication.factor. A
    manual assignment is honoured only where LogStore's own placement gives the same."""
    assignments = list(topic.assignments or [])
    if assignments:
        if topic.num_partitions != USE_DEFAULT or topic.replication_factor != USE_DEFAULT:
            raise InvalidRequestError(
                "give either num_partitions and replication_factor or a manual assignment, not both"
            )
        return _assigned_shape(ctx, assignments)
    partitions = topic.num_partitions
    if partitions == USE_DEFAULT:
        partitions = ctx.broker.settings.num_partitions
    validate_partition_count(partitions)
    replication_factor = topic.replication_factor
    if replication_factor == USE_DEFAULT:
        return partitions, 0
    if replication_factor < 1:
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} must be at least 1, or -1 for the "
            "cluster's default"
        )
    return partitions, replication_factor


def _assigned_shape(ctx: RequestContext, assignments: list[Any]) -> tuple[int, int]:
    """The shape of a manual assignment LogStore can honour: a single live broker holding
    every partition (LogStore places replicas itself, as its gRPC API does)."""
    indexes = sorted(a.partition_index for a in assignments)
    if indexes != list(range(len(indexes))):
        raise Refused(
            _INVALID_REPLICA_ASSIGNMENT,
            f"partitions {indexes} are not numbered 0..{len(indexes) - 1}, each once",
        )
    live = _live_broker_ids(ctx)
    for a in assignments:
        replicas = list(a.broker_ids or [])
        unknown = sorted(set(replicas) - live)
        if not replicas or len(set(replicas)) != len(replicas) or unknown:
            raise Refused(
                _INVALID_REPLICA_ASSIGNMENT,
                f"partition {a.partition_index}: replicas {replicas} must be distinct live "
                f"brokers (live: {sorted(live)})",
            )
    if len(live) > 1:
        raise InvalidRequestError(
            "LogStore places replicas itself: give num_partitions and replication_factor "
            "instead of a manual assignment"
        )
    validate_partition_count(len(indexes))
    return len(indexes), 1


def _check_new_partition_assignments(ctx: RequestContext, topic: Any) -> None:
    """A manual placement of the new partitions is honoured only where it is the one
    LogStore would choose anyway: every new partition on the only live broker."""
    live = _live_broker_ids(ctx)
    current = len(ctx.broker.manager.topic(topic.name).partitions)
    assignments = [list(a.broker_ids or []) for a in topic.assignments]
    if len(assignments) != topic.count - current:
        raise Refused(
            _INVALID_REPLICA_ASSIGNMENT,
            f"{len(assignments)} assignments for {topic.count - current} new partitions",
        )
    if len(live) > 1 or any(replicas != sorted(live) for replicas in assignments):
        raise InvalidRequestError(
            "LogStore places new partitions itself: send the new count with no assignment "
            f"(or, on a single broker, assign each new partition to [{min(live)}])"
        )


def _live_broker_ids(ctx: RequestContext) -> set[int]:
    cluster = ctx.broker.cluster
    return {ctx.broker.node_id} if cluster is None else set(cluster.view.brokers)


def _creation_config(configs: list[Any]) -> dict[str, str]:
    twice = repeated(c.name for c in configs)
    if twice:
        raise InvalidRequestError(f"configs {sorted(twice)} are given more than once")
    for c in configs:
        if c.value is None:
            raise InvalidConfigError(f"config {c.name} has a null value")
    return {c.name: c.value for c in configs}


def check_new_name(ctx: RequestContext, name: str) -> None:
    """Raise unless `name` is a valid name for a new topic: checked before the rest of a
    request, as Kafka answers TOPIC_ALREADY_EXISTS whatever else is wrong."""
    validate_topic_name(name)
    if is_internal_topic(name):
        raise InvalidRequestError(f"cannot create internal topic {name!r}")
    if _exists(ctx, name):
        raise TopicExistsError(f"topic {name!r} already exists")


def _exists(ctx: RequestContext, name: str) -> bool:
    cluster = ctx.broker.cluster
    in_cluster = cluster is not None and name in cluster.view.topics
    return in_cluster or name in ctx.broker.manager.topic_names()


def _check_replication_factor(ctx: RequestContext, replication_factor: int) -> None:
    cluster = ctx.broker.cluster
    if cluster is None:
        if replication_factor > 1:
            raise InvalidReplicationFactorError(
                f"replication factor {replication_factor} needs a cluster: this broker runs "
                "standalone, with one copy of each partition"
            )
        return
    wanted = replication_factor or cluster.settings.default_replication_factor
    live = len(_live_broker_ids(ctx))
    if wanted > live:
        raise InvalidReplicationFactorError(
            f"replication factor {wanted} is larger than the {live} live brokers"
        )


def check_overrides(ctx: RequestContext, overrides: Mapping[str, str]) -> LogConfig:
    """The topic config these overrides give over the broker's defaults; raises
    InvalidConfigError naming the first unknown key, bad value or too large a batch limit."""
    config = ctx.broker.manager.default_config.with_overrides(overrides)
    ctx.broker.servicer._check_message_limit(dict(overrides))
    return config


# --- DeleteTopics ------------------------------------------------------------------------


@handles(DeleteTopicsRequest.API_KEY)
def delete_topics(ctx: RequestContext, request: Any) -> Any:
    results = answer_each(request.topic_names or [], str, partial(_delete, ctx))
    result = DeleteTopicsResponse.DeletableTopicResult
    return DeleteTopicsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        responses=[result(name=n, error_code=c) for n, (c, _m) in results],
    )


def _delete(ctx: RequestContext, name: str) -> None:
    # Checked before existence, so a principal cannot learn which hidden topics exist.
    _require_topic(ctx, name, "delete")
    ctx.broker.servicer.delete_topic(name)


def _require_topic(ctx: RequestContext, name: str, operation: str) -> None:
    if not ctx.broker.allowed(ctx.session, TOPIC, name, operation):
        raise Refused(
            _TOPIC_AUTHORIZATION_FAILED,
            f"{ctx.session.principal} may not {operation} topic {name!r}",
        )


# --- CreatePartitions --------------------------------------------------------------------


@handles(CreatePartitionsRequest.API_KEY)
def create_partitions(ctx: RequestContext, request: Any) -> Any:
    work = partial(_grow, ctx, validate_only=bool(request.validate_only))
    results = answer_each(request.topics or [], _name, work)
    result = CreatePartitionsResponse.CreatePartitionsTopicResult
    return CreatePartitionsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        results=[result(name=n, error_code=c, error_message=m) for n, (c, m) in results],
    )


def _grow(ctx: RequestContext, topic: Any, validate_only: bool) -> None:
    """Grow one topic to `topic.count` partitions (or check that it could be grown)."""
    _require_topic(ctx, topic.name, "alter")
    if topic.assignments is not None:
        _check_new_partition_assignments(ctx, topic)
    if is_internal_topic(topic.name):
        raise InvalidRequestError(f"cannot add partitions to internal topic {topic.name!r}")
    current = len(ctx.broker.manager.topic(topic.name).partitions)
    validate_partition_count(topic.count)
    if topic.count <= current:
        raise InvalidPartitionsError(
            f"topic {topic.name!r} has {current} partitions; the new count must be larger"
        )
    if not validate_only:
        ctx.broker.servicer.add_partitions(topic.name, topic.count)


# --- DescribeConfigs ---------------------------------------------------------------------

_Result = DescribeConfigsResponse.DescribeConfigsResult
_Entry = _Result.DescribeConfigsResourceResult
_Synonym = _Entry.DescribeConfigsSynonym


@dataclass(frozen=True)
class ConfigValue:
    """One config as DescribeConfigs shows it. `synonyms` are (name, value, source), the
    one in effect first, as Kafka orders them."""

    name: str
    value: str
    source: int
    read_only: bool
    config_type: int
    doc: str
    synonyms: tuple[tuple[str, str, int], ...]


@handles(DescribeConfigsRequest.API_KEY)
def describe_configs(ctx: RequestContext, request: Any) -> Any:
    synonyms = bool(request.include_synonyms)
    docs = ctx.version >= 3 and bool(request.include_documentation)
    results = [_describe_resource(ctx, r, synonyms, docs) for r in request.resources or []]
    return DescribeConfigsResponse(version=ctx.version, throttle_time_ms=0, results=results)


def _describe_resource(ctx: RequestContext, resource: Any, synonyms: bool, docs: bool) -> Any:
    values: list[ConfigValue] = []

    def describe() -> None:
        values.extend(configs_of(ctx, resource.resource_type, resource.resource_name))

    code, message = outcome(describe)
    keys = resource.configuration_keys
    if keys is not None:
        wanted = set(keys)
        values = [v for v in values if v.name in wanted]
    return _Result(
        error_code=code,
        error_message=message,
        resource_type=resource.resource_type,
        resource_name=resource.resource_name,
        configs=[_entry(v, synonyms, docs) for v in values],
    )


def configs_of(ctx: RequestContext, resource_type: int, name: str) -> list[ConfigValue]:
    """Every config of one resource, sorted by name; raises or Refused for an error."""
    if resource_type == RESOURCE_TOPIC:
        _require_topic(ctx, name, "describe")
        topic = ctx.broker.manager.topic(name)
        return topic_configs(topic.config, topic.config_overrides, _broker_defaults(ctx))
    if resource_type == RESOURCE_BROKER:
        _require_cluster(ctx, "describe")
        _check_broker_name(ctx, name)
        return broker_configs(ctx)
    raise _unsupported_resource(resource_type)


def topic_configs(
    config: LogConfig, overrides: Mapping[str, str], broker_defaults: LogConfig
) -> list[ConfigValue]:
    """A topic's every config: its overrides, else the broker's `[topic-defaults]`, else
    Kafka's defaults, each with the synonyms that explain where its value comes from."""
    effective = config.to_properties()
    defaults = broker_defaults.to_properties()
    kafka_defaults = DEFAULT_LOG_CONFIG.to_properties()
    values = []
    for key in sorted(TOPIC_CONFIGS):
        spec = TOPIC_CONFIGS[key]
        chain: list[tuple[str, str, int]] = []
        if key in overrides:
            chain.append((key, overrides[key], SOURCE_DYNAMIC_TOPIC))
        if defaults[key] != kafka_defaults[key]:
            chain.append((spec.broker_name, defaults[key], SOURCE_STATIC_BROKER))
        chain.append((spec.broker_name, kafka_defaults[key], SOURCE_DEFAULT))
        value = ConfigValue(
            key, effective[key], chain[0][2], False, spec.config_type, spec.doc, tuple(chain)
        )
        values.append(value)
    return values


def _broker_defaults(ctx: RequestContext) -> LogConfig:
    return ctx.broker.manager.default_config


def broker_configs(ctx: RequestContext) -> list[ConfigValue]:
    """This broker's settings under Kafka's broker names: the topic defaults and the few
    broker-wide settings clients and UIs look for. All read-only (set at start)."""
    values = []
    defaults = _broker_defaults(ctx).to_properties()
    kafka_defaults = DEFAULT_LOG_CONFIG.to_properties()
    for key, spec in TOPIC_CONFIGS.items():
        values.append(
            _static(
                spec.broker_name, defaults[key], kafka_defaults[key], spec.config_type, spec.doc
            )
        )
    for name, (value, kafka_default, config_type, doc) in _broker_settings(ctx).items():
        values.append(_static(name, value, kafka_default, config_type, doc))
    return sorted(values, key=lambda v: v.name)


def _static(
    name: str, value: str, kafka_default: str | None, config_type: int, doc: str
) -> ConfigValue:
    source = SOURCE_DEFAULT if value == kafka_default else SOURCE_STATIC_BROKER
    return ConfigValue(name, value, source, True, config_type, doc, ((name, value, source),))


def _broker_settings(ctx: RequestContext) -> dict[str, tuple[str, str | None, int, str]]:
    """Broker setting -> (value, Kafka's default or None, type, doc)."""
    broker = ctx.broker
    cluster = broker.cluster
    replication = 1 if cluster is None else cluster.settings.default_replication_factor
    unclean = False if cluster is None else cluster.settings.unclean_leader_election
    host, port = broker.advertised
    protocol = _security_protocol(ctx)
    groups = broker.settings
    return {
        "broker.id": (str(broker.node_id), None, TYPE_INT, "This broker's id."),
        "listeners": (
            f"{protocol}://{groups.listen}",
            None,
            TYPE_LIST,
            "Where this broker listens for Kafka clients (--kafka-listen).",
        ),
        "advertised.listeners": (
            f"{protocol}://{host}:{port}",
            None,
            TYPE_LIST,
            "Where Kafka clients are told to reach this broker (--kafka-advertised-listen).",
        ),
        "group.initial.rebalance.delay.ms": (
            str(groups.group_initial_rebalance_delay_ms),
            "3000",
            TYPE_INT,
            "How long the first rebalance of an empty group waits for more members (ms).",
        ),
        "group.min.session.timeout.ms": (
            str(groups.group_min_session_timeout_ms),
            "6000",
            TYPE_INT,
            "The shortest session timeout a consumer may ask for (ms).",
        ),
        "group.max.session.timeout.ms": (
            str(groups.group_max_session_timeout_ms),
            "1800000",
            TYPE_INT,
            "The longest session timeout a consumer may ask for (ms).",
        ),
        "log.dirs": (
            str(broker.manager.data_dir),
            None,
            TYPE_LIST,
            "The directory holding this broker's partition logs.",
        ),
        "num.partitions": (
            str(broker.settings.num_partitions),
            "1",
            TYPE_INT,
            "The partition count of topics created without one.",
        ),
        "auto.create.topics.enable": (
            _bool(broker.settings.auto_create_topics),
            "true",
            TYPE_BOOLEAN,
            "Whether Metadata for an unknown topic creates it.",
        ),
        "default.replication.factor": (
            str(replication),
            "1",
            TYPE_INT,
            "The replication factor of topics created without one.",
        ),
        "unclean.leader.election.enable": (
            _bool(unclean),
            "false",
            TYPE_BOOLEAN,
            "Whether a replica outside the ISR may lead when no ISR member is alive.",
        ),
    }


def _security_protocol(ctx: RequestContext) -> str:
    """Kafka's name for how this listener is secured: (SASL_)PLAINTEXT or (SASL_)SSL."""
    transport = "SSL" if ctx.session.tls else "PLAINTEXT"
    return f"SASL_{transport}" if ctx.broker.sasl is not None else transport


def _bool(flag: bool) -> str:
    return "true" if flag else "false"


def _check_broker_name(ctx: RequestContext, name: str) -> None:
    """A BROKER resource names this broker's id, or "" for the broker answering."""
    if name not in ("", str(ctx.broker.node_id)):
        raise InvalidRequestError(
            f"broker {name!r} is not this broker ({ctx.broker.node_id}): send the request "
            "to the broker it names"
        )


def _require_cluster(ctx: RequestContext, operation: str) -> None:
    if not ctx.broker.allowed(ctx.session, CLUSTER, CLUSTER_NAME, operation):
        raise Refused(
            _CLUSTER_AUTHORIZATION_FAILED,
            f"{ctx.session.principal} may not {operation} the cluster's configs",
        )


def _unsupported_resource(resource_type: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"resource type {resource_type} has no configs here: LogStore has TOPIC "
        f"({RESOURCE_TOPIC}) and BROKER ({RESOURCE_BROKER}) configs"
    )


def _entry(value: ConfigValue, synonyms: bool, docs: bool) -> Any:
    return _Entry(
        name=value.name,
        value=value.value,
        read_only=value.read_only,
        config_source=value.source,
        is_sensitive=False,
        synonyms=[_Synonym(name=n, value=v, source=s) for n, v, s in value.synonyms]
        if synonyms
        else [],
        config_type=value.config_type,
        documentation=value.doc if docs else None,
    )


# --- AlterConfigs and IncrementalAlterConfigs --------------------------------------------


@handles(AlterConfigsRequest.API_KEY)
def alter_configs(ctx: RequestContext, request: Any) -> Any:
    """Kafka's original AlterConfigs: a topic's given configs replace all its overrides."""
    return AlterConfigsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        responses=_alter_all(ctx, request, _replace, AlterConfigsResponse),
    )


@handles(IncrementalAlterConfigsRequest.API_KEY)
def incremental_alter_configs(ctx: RequestContext, request: Any) -> Any:
    """SET, DELETE, APPEND and SUBTRACT on a topic's overrides, the others kept."""
    return IncrementalAlterConfigsResponse(
        version=ctx.version,
        throttle_time_ms=0,
        responses=_alter_all(ctx, request, _incremental, IncrementalAlterConfigsResponse),
    )


#: (the topic's current overrides, its current config, the request's config entries)
#: -> its new overrides
Rewrite = Callable[[Mapping[str, str], LogConfig, list[Any]], dict[str, str]]


def _alter_all(ctx: RequestContext, request: Any, rewrite: Rewrite, response: Any) -> list:
    work = partial(_alter, ctx, rewrite=rewrite, validate_only=bool(request.validate_only))
    results = answer_each(request.resources or [], _resource_key, work)
    answer = response.AlterConfigsResourceResponse
    return [
        answer(error_code=c, error_message=m, resource_type=t, resource_name=n)
        for (t, n), (c, m) in results
    ]


def _resource_key(resource: Any) -> tuple[int, str]:
    return resource.resource_type, resource.resource_name


def _alter(ctx: RequestContext, resource: Any, rewrite: Rewrite, validate_only: bool) -> None:
    if resource.resource_type == RESOURCE_BROKER:
        _require_cluster(ctx, "alter")
        raise InvalidRequestError(
            "LogStore's broker settings are static: change them in the broker's config file "
            "or command line and restart it (topic configs can be altered here)"
        )
    if resource.resource_type != RESOURCE_TOPIC:
        raise _unsupported_resource(resource.resource_type)
    name = resource.resource_name
    _require_topic(ctx, name, "alter")
    if is_internal_topic(name):
        raise InvalidRequestError(f"cannot alter internal topic {name!r}")
    topic = ctx.broker.manager.topic(name)
    entries = list(resource.configs or [])
    twice = repeated(e.name for e in entries)
    if twice:
        raise InvalidRequestError(f"configs {sorted(twice)} are given more than once")
    current = dict(topic.config_overrides)
    wanted = rewrite(current, topic.config, entries)
    check_overrides(ctx, wanted)
    changes = override_changes(current, wanted)
    if changes and not validate_only:
        ctx.broker.servicer.alter_topic_config(name, changes)


def override_changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict:
    """What turns overrides `current` into `wanted`: key -> new value, or None to remove."""
    changes: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
    changes.update({k: None for k in current if k not in wanted})
    return changes


def _replace(current: Mapping[str, str], config: LogConfig, entries: list[Any]) -> dict:
    """AlterConfigs: the entries are the topic's whole set of overrides."""
    for e in entries:
        config_field_for(e.name)
        if e.value is None:
            raise InvalidRequestError(
                f"config {e.name} has a null value: AlterConfigs sets values (leave a config "
                "out to reset it, or use IncrementalAlterConfigs DELETE)"
            )
    return {e.name: e.value for e in entries}


def _incremental(current: Mapping[str, str], config: LogConfig, entries: list[Any]) -> dict:
    """IncrementalAlterConfigs: each entry's operation applied to the overrides in turn."""
    overrides = dict(current)
    effective = config.to_properties()
    for e in entries:
        config_field_for(e.name)  # unknown keys are errors, even when deleting
        operation = e.config_operation
        if operation == OP_DELETE:
            overrides.pop(e.name, None)
            continue
        if e.value is None:
            raise InvalidRequestError(f"config {e.name}: operation {operation} needs a value")
        if operation == OP_SET:
            overrides[e.name] = e.value
        elif operation in (OP_APPEND, OP_SUBTRACT):
            base = overrides.get(e.name, effective[e.name])
            overrides[e.name] = _list_operation(e.name, operation, base, e.value)
        else:
            raise InvalidRequestError(
                f"config {e.name}: unknown operation {operation} (0 SET, 1 DELETE, 2 APPEND, "
                "3 SUBTRACT)"
            )
    return overrides


def _list_operation(name: str, operation: int, base: str, value: str) -> str:
    """APPEND (items not yet present, in order) or SUBTRACT on a comma-separated list."""
    if name not in LIST_CONFIGS:
        verb = "APPEND" if operation == OP_APPEND else "SUBTRACT"
        raise InvalidConfigError(
            f"{verb} applies to list configs ({', '.join(sorted(LIST_CONFIGS))}), not {name}"
        )
    items = _items(base)
    given = _items(value)
    if operation == OP_APPEND:
        items += [item for item in given if item not in items]
    else:
        items = [item for item in items if item not in given]
    return ",".join(items)


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]

"""Topic and log configuration with Kafka's names, defaults and ranges.

A `LogConfig` is immutable and always valid: the constructor checks every field, so code
holding one never re-checks it. Outside the core (CLI, gRPC, the topic metadata file) a
configuration travels as a mapping of Kafka's dotted names to string values, e.g.
``{"retention.ms": "3600000"}``; `LogConfig.from_properties` turns that into a `LogConfig`
and `LogConfig.to_properties` turns it back.

Units: every `*_ms` field is milliseconds, every `*_bytes` field is bytes. ``-1`` in
`retention_ms` or `retention_bytes` means unlimited, as in Kafka.

This module also holds Kafka's naming rule for topics and the partition-count rule.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from types import MappingProxyType
from typing import Final

from logstore.codec.format import TIMESTAMP_TYPE_CREATE_TIME, TIMESTAMP_TYPE_LOG_APPEND_TIME
from logstore.errors import InvalidConfigError, InvalidPartitionsError, InvalidTopicError

INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1
#: `retention_ms` / `retention_bytes` value meaning "no limit"
UNLIMITED: Final = -1

CLEANUP_POLICY_DELETE: Final = "delete"
CLEANUP_POLICY_COMPACT: Final = "compact"
CLEANUP_POLICIES: Final = frozenset({CLEANUP_POLICY_DELETE, CLEANUP_POLICY_COMPACT})

CREATE_TIME: Final = "CreateTime"
LOG_APPEND_TIME: Final = "LogAppendTime"
TIMESTAMP_TYPES: Final = {
    CREATE_TIME: TIMESTAMP_TYPE_CREATE_TIME,
    LOG_APPEND_TIME: TIMESTAMP_TYPE_LOG_APPEND_TIME,
}

#: Kafka's dotted configuration name -> `LogConfig` field name
KAFKA_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "retention.ms": "retention_ms",
        "retention.bytes": "retention_bytes",
        "segment.bytes": "segment_bytes",
        "segment.ms": "segment_ms",
        "segment.index.bytes": "segment_index_bytes",
        "index.interval.bytes": "index_interval_bytes",
        "max.message.bytes": "max_message_bytes",
        "cleanup.policy": "cleanup_policy",
        "flush.messages": "flush_messages",
        "flush.ms": "flush_ms",
        "message.timestamp.type": "message_timestamp_type",
        "file.delete.delay.ms": "file_delete_delay_ms",
        "delete.retention.ms": "delete_retention_ms",
        "min.compaction.lag.ms": "min_compaction_lag_ms",
        "min.cleanable.dirty.ratio": "min_cleanable_dirty_ratio",
        "min.insync.replicas": "min_insync_replicas",
    }
)
#: `LogConfig` field name -> Kafka's dotted configuration name
FIELD_TO_KAFKA_NAME: Final[Mapping[str, str]] = MappingProxyType(
    {field: key for key, field in KAFKA_NAMES.items()}
)

#: inclusive (min, max) of every integer field
INT_RANGES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType(
    {
        "retention_ms": (UNLIMITED, INT64_MAX),
        "retention_bytes": (UNLIMITED, INT64_MAX),
        # Kafka's floor is 14 bytes; 1 KiB still allows tiny segments in tests but rules out
        # a segment per record. The ceiling is int32 because index positions are uint32 and
        # Kafka's wire type is int32.
        "segment_bytes": (1024, INT32_MAX),
        "segment_ms": (1, INT64_MAX),
        "segment_index_bytes": (4096, INT32_MAX),
        "index_interval_bytes": (0, INT32_MAX),
        # Kafka allows 0, which would reject every batch; a topic that takes nothing is a
        # misconfiguration, so LogStore asks for at least one byte.
        "max_message_bytes": (1, INT32_MAX),
        "flush_messages": (1, INT64_MAX),
        "flush_ms": (0, INT64_MAX),
        "file_delete_delay_ms": (0, INT64_MAX),
        "delete_retention_ms": (0, INT64_MAX),
        "min_compaction_lag_ms": (0, INT64_MAX),
        "min_insync_replicas": (1, INT32_MAX),
    }
)

#: inclusive (min, max) of every fractional field
FLOAT_RANGES: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {"min_cleanable_dirty_ratio": (0.0, 1.0)}
)
#: a plain decimal fraction such as "0.5", ".25" or "1"; no exponent, "nan" or "inf"
_DECIMAL_RE: Final = re.compile(r"[+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")

#: a signed decimal; `int()` alone would also take "1_000" and non-ASCII digits
_INTEGER_RE: Final = re.compile(r"[+-]?[0-9]+")
#: digits beyond this cannot be in any range above, and `int()` gets slow on huge strings
_MAX_INTEGER_DIGITS: Final = 20


@dataclass(frozen=True)
class LogConfig:
    """The configuration of one topic's partition logs, field for field Kafka's.

    Invariant: every field is within its documented range (checked on construction, also
    by `dataclasses.replace`), and `cleanup_policy` is in canonical form: the sorted,
    de-duplicated, comma-joined policies ("compact", "delete" or "compact,delete").
    """

    #: keep closed segments for this long after their newest record (ms); -1 = forever
    retention_ms: int = 604_800_000
    #: delete the oldest closed segments while the partition exceeds this (bytes); -1 = no cap
    retention_bytes: int = UNLIMITED
    #: roll to a new segment when the active one would exceed this (bytes)
    segment_bytes: int = 1_073_741_824
    #: roll to a new segment when the active one's first record is this old (ms)
    segment_ms: int = 604_800_000
    #: preallocated size of each offset and time index file (bytes)
    segment_index_bytes: int = 10_485_760
    #: add an index entry after at least this many bytes of batches (bytes)
    index_interval_bytes: int = 4096
    #: largest record batch the topic accepts (bytes, whole batch including header)
    max_message_bytes: int = 1_048_588
    #: "delete", "compact" or "compact,delete"
    cleanup_policy: str = CLEANUP_POLICY_DELETE
    #: fsync after this many appended messages (count)
    flush_messages: int = INT64_MAX
    #: fsync when the oldest unflushed message is this old (ms)
    flush_ms: int = INT64_MAX
    #: "CreateTime" keeps the producer's timestamps, "LogAppendTime" stamps broker time
    message_timestamp_type: str = CREATE_TIME
    #: wait this long before removing a file marked `.deleted` (ms)
    file_delete_delay_ms: int = 60_000
    #: compaction keeps a tombstone (a null value) this long after its batch's newest
    #: record, so consumers see the delete before the key disappears (ms)
    delete_retention_ms: int = 86_400_000
    #: compaction leaves a segment alone until its newest record is this old (ms)
    min_compaction_lag_ms: int = 0
    #: compaction runs once the segments written since its last pass are this share of
    #: the sealed bytes (0..1)
    min_cleanable_dirty_ratio: float = 0.5
    #: in cluster mode, an acks=all produce needs at least this many in-sync replicas
    #: (the leader counts); a standalone broker has one replica and ignores it
    min_insync_replicas: int = 1

    def __post_init__(self) -> None:
        for field_name in INT_RANGES:
            _check_int(field_name, getattr(self, field_name))
        for field_name in FLOAT_RANGES:
            _check_float(field_name, getattr(self, field_name))
        # frozen: canonicalise through object.__setattr__, as dataclasses document
        object.__setattr__(self, "cleanup_policy", _parse_cleanup_policy(self.cleanup_policy))
        _check_timestamp_type(self.message_timestamp_type)

    @classmethod
    def from_properties(
        cls, props: Mapping[str, str | int], base: LogConfig | None = None
    ) -> LogConfig:
        """Parse Kafka-named properties over `base` (Kafka's defaults when None).

        Values may be strings (from the CLI, gRPC or a metadata file) or ints. Raises
        `InvalidConfigError` naming the key for an unknown key, and naming key, value and
        the allowed values for a malformed or out-of-range value.
        """
        changes = {config_field_for(key): _parse_value(key, value) for key, value in props.items()}
        return replace(base if base is not None else cls(), **changes)

    def with_overrides(self, props: Mapping[str, str | int]) -> LogConfig:
        """This configuration with the given Kafka-named properties changed."""
        return LogConfig.from_properties(props, base=self)

    def to_properties(self) -> dict[str, str]:
        """Every setting, Kafka-named, with string values; `from_properties` inverts it."""
        return {key: str(getattr(self, field)) for key, field in KAFKA_NAMES.items()}

    def overrides(self, base: LogConfig) -> dict[str, str]:
        """Only the Kafka-named settings whose value differs from `base`."""
        mine, theirs = self.to_properties(), base.to_properties()
        return {key: value for key, value in mine.items() if theirs[key] != value}

    @property
    def compact(self) -> bool:
        """True when the log cleaner should compact this topic."""
        return CLEANUP_POLICY_COMPACT in self.cleanup_policy.split(",")

    @property
    def delete(self) -> bool:
        """True when time and size retention delete old segments of this topic."""
        return CLEANUP_POLICY_DELETE in self.cleanup_policy.split(",")

    @property
    def timestamp_type(self) -> int:
        """The RecordBatch attribute value (bit 3) for `message_timestamp_type`."""
        return TIMESTAMP_TYPES[self.message_timestamp_type]


def config_field_for(key: str) -> str:
    """The LogConfig field for a Kafka config name; InvalidConfigError listing the allowed
    names when there is none."""
    field = KAFKA_NAMES.get(key) if isinstance(key, str) else None
    if field is not None:
        return field
    allowed = ", ".join(sorted(KAFKA_NAMES))
    hint = _suggest(key)
    raise InvalidConfigError(f"unknown config {key!r}{hint}; allowed keys: {allowed}")


def _suggest(key: object) -> str:
    # A snake_case field name or a typo is the usual mistake; point at the real key.
    if not isinstance(key, str):
        return ""
    if key in FIELD_TO_KAFKA_NAME:
        return f" (did you mean {FIELD_TO_KAFKA_NAME[key]!r}?)"
    close = difflib.get_close_matches(key, list(KAFKA_NAMES), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_value(key: str, value: object) -> int | float | str:
    field = KAFKA_NAMES[key]
    if field in INT_RANGES:
        return _parse_int(field, value)
    if field in FLOAT_RANGES:
        return _parse_float(field, value)
    if not isinstance(value, str):
        raise InvalidConfigError(f"invalid value {value!r} for {key}: expected a string")
    return value.strip()


def _parse_int(field: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = value.strip() if isinstance(value, str) else None
    if text is None or not _INTEGER_RE.fullmatch(text):
        raise _int_error(field, value)
    if len(text.lstrip("+-")) > _MAX_INTEGER_DIGITS:
        raise _int_error(field, value)
    return int(text)


def _check_int(field: str, value: object) -> None:
    low, high = INT_RANGES[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _int_error(field, value)


def _int_error(field: str, value: object) -> InvalidConfigError:
    low, high = INT_RANGES[field]
    note = " (-1 = unlimited)" if low == UNLIMITED else ""
    return InvalidConfigError(
        f"invalid value {_show(value)} for {FIELD_TO_KAFKA_NAME[field]}: "
        f"expected an integer in {low}..{high}{note}"
    )


def _parse_cleanup_policy(value: object) -> str:
    if not isinstance(value, str):
        raise _cleanup_policy_error(value)
    policies = {part.strip() for part in value.split(",")}
    if not policies or not policies <= CLEANUP_POLICIES:
        raise _cleanup_policy_error(value)
    return ",".join(sorted(policies))


def _cleanup_policy_error(value: object) -> InvalidConfigError:
    return InvalidConfigError(
        f"invalid value {_show(value)} for cleanup.policy: expected 'delete', 'compact' "
        f"or both comma-separated ('compact,delete')"
    )


def _parse_float(field: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = value.strip() if isinstance(value, str) else None
    if text is None or len(text) > _MAX_INTEGER_DIGITS or not _DECIMAL_RE.fullmatch(text):
        raise _float_error(field, value)
    return float(text)


def _check_float(field: str, value: object) -> None:
    low, high = FLOAT_RANGES[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _float_error(field, value)


def _float_error(field: str, value: object) -> InvalidConfigError:
    low, high = FLOAT_RANGES[field]
    return InvalidConfigError(
        f"invalid value {_show(value)} for {FIELD_TO_KAFKA_NAME[field]}: "
        f"expected a decimal number in {low}..{high}"
    )


def _check_timestamp_type(value: object) -> None:
    if value not in TIMESTAMP_TYPES:
        allowed = " or ".join(repr(name) for name in TIMESTAMP_TYPES)
        raise InvalidConfigError(
            f"invalid value {_show(value)} for message.timestamp.type: expected {allowed}"
        )


def _show(value: object, limit: int = 64) -> str:
    """Quote a user-supplied value for a message, cut short so messages stay readable."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


#: Kafka's defaults
DEFAULT_LOG_CONFIG: Final = LogConfig()

# Fields the dataclass has but no Kafka name maps to would be unreachable from properties.
assert {f.name for f in fields(LogConfig)} == set(FIELD_TO_KAFKA_NAME)


# --- Topic names and partition counts -----------------------------------------------------

MAX_TOPIC_NAME_LENGTH: Final = 249
#: ASCII only: `[a-zA-Z0-9]` ranges, unlike `\w`, never match non-ASCII letters or digits
TOPIC_NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9._-]{1,249}")
TOPIC_NAME_RULE: Final = (
    "a topic name is 1 to 249 characters, each an ASCII letter, digit, '.', '_' or '-', "
    "and is not '.' or '..'"
)
INTERNAL_TOPIC_PREFIX: Final = "__"
DEFAULT_MAX_PARTITIONS: Final = 10_000


def validate_topic_name(name: str) -> None:
    """Raise `InvalidTopicError` unless `name` follows Kafka's topic naming rule.

    The rule: 1 to 249 characters from ``[a-zA-Z0-9._-]``, and not ``.`` or ``..``.
    Because no accepted name contains a path separator, NUL, or is a relative-directory
    name, a topic name (and ``<topic>-<partition>``) used as a path component always names
    an entry directly inside the data directory and can never escape it.
    """
    if not isinstance(name, str):
        raise InvalidTopicError(f"invalid topic name {name!r}: {TOPIC_NAME_RULE}")
    if name in (".", "..") or not TOPIC_NAME_PATTERN.fullmatch(name):
        raise InvalidTopicError(f"invalid topic name {_show(name)}: {TOPIC_NAME_RULE}")


def is_internal_topic(name: str) -> bool:
    """True for names starting with "__", the prefix Kafka reserves for internal topics."""
    return name.startswith(INTERNAL_TOPIC_PREFIX)


def validate_partition_count(n: int, max_partitions: int = DEFAULT_MAX_PARTITIONS) -> None:
    """Raise `InvalidPartitionsError` unless `1 <= n <= max_partitions`."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_partitions:
        raise InvalidPartitionsError(
            f"invalid partition count {_show(n)}: expected an integer in 1..{max_partitions}"
        )

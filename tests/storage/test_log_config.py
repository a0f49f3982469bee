"""Topic configuration: Kafka's names and defaults, parsing, validation, topic names."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.codec.format import TIMESTAMP_TYPE_CREATE_TIME, TIMESTAMP_TYPE_LOG_APPEND_TIME
from logstore.errors import InvalidConfigError, InvalidPartitionsError, InvalidTopicError
from logstore.storage.log_config import (
    DEFAULT_LOG_CONFIG,
    INT_RANGES,
    KAFKA_NAMES,
    LogConfig,
    is_internal_topic,
    validate_partition_count,
    validate_topic_name,
)

# Kafka 3.x topic-level defaults, by Kafka name, as `kafka-configs --describe --all` shows.
KAFKA_DEFAULTS = {
    "retention.ms": "604800000",
    "retention.bytes": "-1",
    "segment.bytes": "1073741824",
    "segment.ms": "604800000",
    "segment.index.bytes": "10485760",
    "index.interval.bytes": "4096",
    "max.message.bytes": "1048588",
    "cleanup.policy": "delete",
    "flush.messages": "9223372036854775807",
    "flush.ms": "9223372036854775807",
    "message.timestamp.type": "CreateTime",
    "file.delete.delay.ms": "60000",
    "delete.retention.ms": "86400000",
    "min.compaction.lag.ms": "0",
    "min.cleanable.dirty.ratio": "0.5",
    "min.insync.replicas": "1",
}


# --- defaults and names -------------------------------------------------------------------


def test_defaults_match_kafka() -> None:
    assert LogConfig().to_properties() == KAFKA_DEFAULTS
    assert LogConfig() == DEFAULT_LOG_CONFIG


def test_kafka_names_cover_every_field() -> None:
    assert set(KAFKA_NAMES.values()) == {f.name for f in dataclasses.fields(LogConfig)}
    for key, field in KAFKA_NAMES.items():
        assert key.replace(".", "_") == field


def test_config_is_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LogConfig().retention_ms = 1  # type: ignore[misc]


# --- round trips --------------------------------------------------------------------------


def test_round_trip_through_properties() -> None:
    config = LogConfig(
        retention_ms=-1,
        retention_bytes=10_000,
        segment_bytes=1024,
        segment_ms=1,
        cleanup_policy="compact",
        message_timestamp_type="LogAppendTime",
        file_delete_delay_ms=0,
    )
    assert LogConfig.from_properties(config.to_properties()) == config


def test_from_properties_accepts_strings_and_ints() -> None:
    config = LogConfig.from_properties({"segment.bytes": "2048", "retention.ms": 3_600_000})
    assert config.segment_bytes == 2048
    assert config.retention_ms == 3_600_000


def test_from_properties_trims_whitespace_like_kafka() -> None:
    config = LogConfig.from_properties(
        {"segment.ms": " 60000 ", "message.timestamp.type": " LogAppendTime\n"}
    )
    assert config.segment_ms == 60_000
    assert config.message_timestamp_type == "LogAppendTime"


def test_from_properties_over_a_base() -> None:
    base = LogConfig(segment_bytes=4096)
    config = LogConfig.from_properties({"retention.bytes": "100"}, base=base)
    assert config.segment_bytes == 4096
    assert config.retention_bytes == 100


def test_overrides_lists_only_differences() -> None:
    base = LogConfig()
    config = base.with_overrides({"retention.ms": "1000", "cleanup.policy": "compact"})
    assert config.overrides(base) == {"retention.ms": "1000", "cleanup.policy": "compact"}
    assert base.overrides(base) == {}
    assert base.with_overrides(config.overrides(base)) == config


def test_with_overrides_leaves_original_untouched() -> None:
    base = LogConfig()
    base.with_overrides({"flush.ms": "5"})
    assert base.flush_ms == LogConfig().flush_ms


def test_empty_properties_give_the_base() -> None:
    assert LogConfig.from_properties({}) == LogConfig()


# --- cleanup policy and timestamp type ----------------------------------------------------


@pytest.mark.parametrize(
    ("value", "canonical", "compact", "delete"),
    [
        ("delete", "delete", False, True),
        ("compact", "compact", True, False),
        ("compact,delete", "compact,delete", True, True),
        ("delete,compact", "compact,delete", True, True),
        (" delete , compact ", "compact,delete", True, True),
        ("delete,delete", "delete", False, True),
    ],
)
def test_cleanup_policy_is_a_list_in_any_order(
    value: str, canonical: str, compact: bool, delete: bool
) -> None:
    config = LogConfig.from_properties({"cleanup.policy": value})
    assert config.cleanup_policy == canonical
    assert (config.compact, config.delete) == (compact, delete)


def test_cleanup_policy_canonical_on_direct_construction() -> None:
    assert LogConfig(cleanup_policy="delete,compact") == LogConfig(cleanup_policy="compact,delete")


@pytest.mark.parametrize("value", ["", "none", "delete,", "compact;delete", "Delete"])
def test_cleanup_policy_rejects_unknown_policies(value: str) -> None:
    with pytest.raises(InvalidConfigError) as err:
        LogConfig.from_properties({"cleanup.policy": value})
    message = str(err.value)
    assert "cleanup.policy" in message
    assert repr(value) in message
    assert "'delete'" in message and "'compact'" in message


def test_timestamp_type_maps_to_batch_attribute() -> None:
    assert LogConfig().timestamp_type == TIMESTAMP_TYPE_CREATE_TIME
    config = LogConfig(message_timestamp_type="LogAppendTime")
    assert config.timestamp_type == TIMESTAMP_TYPE_LOG_APPEND_TIME


def test_timestamp_type_is_case_sensitive_like_kafka() -> None:
    with pytest.raises(InvalidConfigError) as err:
        LogConfig.from_properties({"message.timestamp.type": "logappendtime"})
    message = str(err.value)
    assert "'logappendtime'" in message
    assert "message.timestamp.type" in message
    assert "'CreateTime' or 'LogAppendTime'" in message


# --- validation errors --------------------------------------------------------------------


def test_unknown_key_names_it_and_lists_allowed_keys() -> None:
    with pytest.raises(InvalidConfigError) as err:
        LogConfig.from_properties({"compression.type": "zstd"})
    message = str(err.value)
    assert "unknown config 'compression.type'" in message
    for key in KAFKA_NAMES:
        assert key in message


@pytest.mark.parametrize(
    ("key", "hint"),
    [("retention_ms", "retention.ms"), ("segmnt.bytes", "segment.bytes")],
)
def test_unknown_key_suggests_the_real_one(key: str, hint: str) -> None:
    with pytest.raises(InvalidConfigError, match=re.escape(f"did you mean {hint!r}")):
        LogConfig.from_properties({key: "1"})


def test_segment_bytes_message_matches_the_documented_form() -> None:
    with pytest.raises(InvalidConfigError) as err:
        LogConfig.from_properties({"segment.bytes": "abc"})
    assert str(err.value) == (
        "invalid value 'abc' for segment.bytes: expected an integer in 1024..2147483647"
    )


@pytest.mark.parametrize("raw", ["abc", "", " ", "1.5", "1e3", "1_000", "0x10", "١٢", "--1"])
@pytest.mark.parametrize("key", sorted(k for k, f in KAFKA_NAMES.items() if f in INT_RANGES))
def test_non_integer_values_are_rejected(key: str, raw: str) -> None:
    low, high = INT_RANGES[KAFKA_NAMES[key]]
    with pytest.raises(InvalidConfigError) as err:
        LogConfig.from_properties({key: raw})
    message = str(err.value)
    assert f"invalid value {raw!r} for {key}" in message
    assert f"expected an integer in {low}..{high}" in message


@pytest.mark.parametrize("key", sorted(k for k, f in KAFKA_NAMES.items() if f in INT_RANGES))
def test_out_of_range_values_are_rejected_at_both_ends(key: str) -> None:
    low, high = INT_RANGES[KAFKA_NAMES[key]]
    for bad in (low - 1, high + 1):
        for raw in (bad, str(bad)):
            with pytest.raises(InvalidConfigError) as err:
                LogConfig.from_properties({key: raw})
            assert f"invalid value '{bad}' for {key}" in str(err.value)
            assert f"{low}..{high}" in str(err.value)


@pytest.mark.parametrize("key", sorted(k for k, f in KAFKA_NAMES.items() if f in INT_RANGES))
def test_range_ends_are_accepted(key: str) -> None:
    field = KAFKA_NAMES[key]
    low, high = INT_RANGES[field]
    for good in (low, high, f"+{high}"):
        assert getattr(LogConfig.from_properties({key: good}), field) == int(good)


@pytest.mark.parametrize(
    ("key", "low", "high"),
    [
        ("segment.bytes", 1024, 2**31 - 1),
        ("segment.ms", 1, 2**63 - 1),
        ("segment.index.bytes", 4096, 2**31 - 1),
        ("index.interval.bytes", 0, 2**31 - 1),
        ("max.message.bytes", 1, 2**31 - 1),
        ("flush.messages", 1, 2**63 - 1),
        ("flush.ms", 0, 2**63 - 1),
        ("file.delete.delay.ms", 0, 2**63 - 1),
        ("retention.ms", -1, 2**63 - 1),
        ("retention.bytes", -1, 2**63 - 1),
    ],
)
def test_documented_ranges(key: str, low: int, high: int) -> None:
    assert INT_RANGES[KAFKA_NAMES[key]] == (low, high)


def test_unlimited_retention_is_explained() -> None:
    with pytest.raises(InvalidConfigError, match=re.escape("(-1 = unlimited)")):
        LogConfig.from_properties({"retention.bytes": "-5"})


def test_huge_integer_string_is_out_of_range_not_a_crash() -> None:
    raw = "9" * 5000
    with pytest.raises(InvalidConfigError) as err:
        LogConfig.from_properties({"flush.ms": raw})
    message = str(err.value)
    assert "flush.ms" in message and "(5000 characters)" in message
    assert len(message) < 300


@pytest.mark.parametrize("value", [True, 1.0, None, [1]])
def test_non_string_non_int_values_are_rejected(value: object) -> None:
    with pytest.raises(InvalidConfigError, match=re.escape("segment.ms")):
        LogConfig.from_properties({"segment.ms": value})  # type: ignore[dict-item]


def test_string_setting_given_an_int_is_rejected() -> None:
    with pytest.raises(InvalidConfigError, match=re.escape("cleanup.policy: expected a string")):
        LogConfig.from_properties({"cleanup.policy": 1})


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(InvalidConfigError, match=re.escape("segment.bytes")):
        LogConfig(segment_bytes=100)
    with pytest.raises(InvalidConfigError, match=re.escape("message.timestamp.type")):
        LogConfig(message_timestamp_type="Now")
    with pytest.raises(InvalidConfigError, match=re.escape("segment.index.bytes")):
        dataclasses.replace(LogConfig(), segment_index_bytes=8)


# --- topic names --------------------------------------------------------------------------

VALID_TOPICS = ["a", "a.b_c-1", "x" * 249, "__consumer_offsets", "...", ".a", "A-Z.0_9"]
INVALID_TOPICS = [
    "",
    ".",
    "..",
    "x" * 250,
    "a/b",
    "../x",
    "a b",
    "a\\b",
    "a\x00b",
    "tópico",
    "日本",
    "a\n",
    "\u212a",  # Kelvin sign: matches [a-z] only under re.IGNORECASE
]


@pytest.mark.parametrize("name", VALID_TOPICS)
def test_valid_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize("name", INVALID_TOPICS)
def test_invalid_topic_names_explain_the_rule(name: str) -> None:
    with pytest.raises(InvalidTopicError) as err:
        validate_topic_name(name)
    message = str(err.value)
    assert "invalid topic name" in message
    assert "1 to 249 characters" in message
    assert "'.' or '..'" in message


def test_long_topic_name_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidTopicError, match=r"\(1000 characters\)"):
        validate_topic_name("y" * 1000)


def test_non_string_topic_name_is_rejected() -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic_name(None)  # type: ignore[arg-type]


ACCEPTED = re.compile(r"[a-zA-Z0-9._-]{1,249}")


@given(st.text(max_size=300))
def test_accepted_topic_names_cannot_escape_the_data_directory(name: str) -> None:
    try:
        validate_topic_name(name)
    except InvalidTopicError:
        return
    assert ACCEPTED.fullmatch(name)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert name not in (".", "..")


@given(st.text(alphabet="abcXYZ019._-", min_size=1, max_size=249))
def test_names_from_the_allowed_alphabet_are_accepted(name: str) -> None:
    if name in (".", ".."):
        with pytest.raises(InvalidTopicError):
            validate_topic_name(name)
    else:
        validate_topic_name(name)


def test_internal_topics_start_with_two_underscores() -> None:
    assert is_internal_topic("__consumer_offsets")
    assert not is_internal_topic("_private")
    assert not is_internal_topic("orders")


# --- partition counts ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 10_000])
def test_valid_partition_counts(n: int) -> None:
    validate_partition_count(n)


@pytest.mark.parametrize("n", [0, -1, 10_001])
def test_invalid_partition_counts(n: int) -> None:
    with pytest.raises(InvalidPartitionsError) as err:
        validate_partition_count(n)
    assert str(err.value) == f"invalid partition count '{n}': expected an integer in 1..10000"


def test_partition_count_limit_is_configurable() -> None:
    validate_partition_count(50, max_partitions=50)
    with pytest.raises(InvalidPartitionsError, match=re.escape("1..50")):
        validate_partition_count(51, max_partitions=50)


@pytest.mark.parametrize("n", [True, 2.0, "3"])
def test_partition_count_must_be_an_int(n: object) -> None:
    with pytest.raises(InvalidPartitionsError):
        validate_partition_count(n)  # type: ignore[arg-type]


# --- fractions ----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "parsed"), [("0.5", 0.5), (" .25 ", 0.25), ("1", 1.0), (0, 0.0)])
def test_dirty_ratio_takes_a_decimal_fraction(raw: object, parsed: float) -> None:
    config = LogConfig.from_properties({"min.cleanable.dirty.ratio": raw})  # type: ignore[dict-item]
    assert config.min_cleanable_dirty_ratio == parsed
    assert LogConfig.from_properties(config.to_properties()) == config


@pytest.mark.parametrize("raw", ["1.01", "-0.1", "nan", "inf", "1e-3", "abc", "", "0,5"])
def test_dirty_ratio_outside_0_to_1_or_not_a_decimal_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidConfigError, match=r"decimal number in 0\.0\.\.1\.0"):
        LogConfig.from_properties({"min.cleanable.dirty.ratio": raw})
    with pytest.raises(InvalidConfigError):
        LogConfig(min_cleanable_dirty_ratio=float("nan"))

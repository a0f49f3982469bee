"""Kafka's partition reassignment JSON, as kafka-reassign-partitions reads and writes it:

    {"version": 1,
     "partitions": [{"topic": "orders", "partition": 0, "replicas": [1, 2, 3]}, ...]}

`replicas` lists broker ids, the preferred leader first. An entry may carry Kafka's
`log_dirs`, one per replica; LogStore keeps one log directory per broker, so each must be
"any" (what Kafka's tool writes when none is chosen).

Invariants: `parse_reassignment` returns a plan only for a file Kafka's tool would accept
as well, with every (topic, partition) once and every replica list non-empty and free of
repeats; anything else (duplicate keys within an object and unknown keys included, so a
typo never silently drops a setting) is refused with a `ReassignmentFileError` whose
message names where in the file the problem is. `format_reassignment` writes a plan that
`parse_reassignment` reads back unchanged. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from logstore.types import TopicPartition

#: the only version of the format Kafka has defined
REASSIGNMENT_VERSION = 1
#: the log directory a replica may name: LogStore has one per broker
ANY_LOG_DIR = "any"
#: partition numbers and broker ids travel in int32 fields
MAX_INT32 = 2**31 - 1

#: (topic, partition) -> target replicas, the preferred leader first
ReassignmentPlan = dict[TopicPartition, list[int]]

_TOP_KEYS = frozenset({"version", "partitions"})
_ENTRY_KEYS = frozenset({"topic", "partition", "replicas", "log_dirs"})
_REQUIRED_ENTRY_KEYS = ("topic", "partition", "replicas")


class ReassignmentFileError(ValueError):
    """The reassignment JSON is malformed; the message says where and what is allowed."""


def parse_reassignment(text: str) -> ReassignmentPlan:
    """The plan in `text`, Kafka's reassignment JSON, in the file's order."""
    try:
        document = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ReassignmentFileError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ReassignmentFileError(
            'expected a JSON object {"version": 1, "partitions": [...]}, '
            f"got {_json_type(document)}"
        )
    _refuse_unknown_keys(document, _TOP_KEYS, "the top level")
    _check_version(document)
    entries = document.get("partitions")
    if entries is None:
        raise ReassignmentFileError('missing "partitions": the list of partitions to move')
    if not isinstance(entries, list):
        raise ReassignmentFileError(f'"partitions" must be a list, got {_json_type(entries)}')
    if not entries:
        raise ReassignmentFileError('"partitions" is empty: nothing to reassign')
    plan: ReassignmentPlan = {}
    first_seen: dict[TopicPartition, int] = {}
    for index, entry in enumerate(entries):
        where = f"partitions[{index}]"
        key, replicas = _parse_entry(entry, where)
        if key in first_seen:
            raise ReassignmentFileError(
                f"{where}: {key[0]}-{key[1]} appears twice (also partitions[{first_seen[key]}])"
            )
        first_seen[key] = index
        plan[key] = replicas
    return plan


def format_reassignment(plan: Mapping[TopicPartition, Sequence[int]]) -> str:
    """`plan` as Kafka's reassignment JSON (with its "log_dirs" of "any"), one line, so
    Kafka's tool reads it too; the order is `plan`'s."""
    return json.dumps(
        {
            "version": REASSIGNMENT_VERSION,
            "partitions": [
                {
                    "topic": topic,
                    "partition": partition,
                    "replicas": list(replicas),
                    "log_dirs": [ANY_LOG_DIR] * len(replicas),
                }
                for (topic, partition), replicas in plan.items()
            ],
        },
        separators=(",", ":"),
    )


def _parse_entry(entry: Any, where: str) -> tuple[TopicPartition, list[int]]:
    if not isinstance(entry, dict):
        raise ReassignmentFileError(
            f'{where}: expected {{"topic": ..., "partition": ..., "replicas": [...]}}, '
            f"got {_json_type(entry)}"
        )
    _refuse_unknown_keys(entry, _ENTRY_KEYS, where)
    missing = [k for k in _REQUIRED_ENTRY_KEYS if k not in entry]
    if missing:
        raise ReassignmentFileError(
            f"{where}: missing " + ", ".join(f'"{k}"' for k in missing) + "; each entry has "
            '"topic", "partition" and "replicas"'
        )
    topic = entry["topic"]
    if not isinstance(topic, str) or not topic:
        raise ReassignmentFileError(f'{where}: "topic" must be a non-empty string, got {topic!r}')
    partition = entry["partition"]
    if not _is_id(partition):
        raise ReassignmentFileError(
            f'{where}: "partition" must be an integer in 0..{MAX_INT32}, got {partition!r}'
        )
    name = f"{topic}-{partition}"
    replicas = _parse_replicas(entry["replicas"], f"{where} ({name})")
    if "log_dirs" in entry:
        _check_log_dirs(entry["log_dirs"], len(replicas), f"{where} ({name})")
    return (topic, partition), replicas


def _parse_replicas(value: Any, where: str) -> list[int]:
    if not isinstance(value, list):
        raise ReassignmentFileError(
            f'{where}: "replicas" must be a list of broker ids, got {_json_type(value)}'
        )
    if not value:
        raise ReassignmentFileError(f'{where}: "replicas" is empty: give at least one broker id')
    bad = [r for r in value if not _is_id(r)]
    if bad:
        raise ReassignmentFileError(
            f'{where}: "replicas" holds {bad[0]!r}: broker ids are integers in 0..{MAX_INT32}'
        )
    repeated = sorted({r for r in value if value.count(r) > 1})
    if repeated:
        raise ReassignmentFileError(
            f'{where}: "replicas" {value} names broker '
            + ", ".join(str(r) for r in repeated)
            + " more than once: each broker holds at most one copy"
        )
    return list(value)


def _check_log_dirs(value: Any, replica_count: int, where: str) -> None:
    if not isinstance(value, list) or len(value) != replica_count:
        raise ReassignmentFileError(
            f'{where}: "log_dirs" must be a list with one entry per replica ({replica_count})'
        )
    if any(d != ANY_LOG_DIR for d in value):
        raise ReassignmentFileError(
            f'{where}: "log_dirs" must all be "{ANY_LOG_DIR}": a LogStore broker has one '
            "log directory"
        )


def _check_version(document: Mapping[str, Any]) -> None:
    if "version" not in document:
        raise ReassignmentFileError(
            f'missing "version": Kafka\'s format is version {REASSIGNMENT_VERSION}'
        )
    version = document["version"]
    if isinstance(version, bool) or version != REASSIGNMENT_VERSION:
        raise ReassignmentFileError(
            f"unsupported version {version!r}: only version {REASSIGNMENT_VERSION} exists"
        )


def _is_id(value: Any) -> bool:
    """An int32 partition number or broker id (JSON true/false are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT32


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice would silently keep only its last value."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ReassignmentFileError(f'"{key}" appears twice in one JSON object')
        result[key] = value
    return result


def _refuse_unknown_keys(obj: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ReassignmentFileError(
            f'unknown key "{unknown[0]}" in {where}; known keys: '
            + ", ".join(f'"{k}"' for k in sorted(known))
        )


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"

"""Plans for resetting a consumer group's committed offsets (replay), as Kafka's
`kafka-consumer-groups --reset-offsets` computes them.

Every new offset is clamped to the partition's valid range `[log_start_offset,
log_end_offset]`, so a plan never points a group at records that do not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from logstore.errors import InvalidRequestError, UnknownTopicOrPartitionError
from logstore.server.groups.offsets_store import OffsetStore
from logstore.storage.log_manager import LogManager

TopicPartition = tuple[str, int]


class PartitionOffsets(Protocol):
    """Where a partition's readable records start and end, and where a time falls in it,
    as its leader knows them (a cluster's coordinator may hold no replica of it)."""

    def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        """(log start offset, high watermark)."""
        ...

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        """The first offset with a timestamp >= `timestamp_ms`, None if there is none."""
        ...


class LocalOffsets:
    """`PartitionOffsets` of a standalone broker: its own logs."""

    def __init__(self, manager: LogManager) -> None:
        self._manager = manager

    def offset_range(self, topic: str, partition: int) -> tuple[int, int]:
        log = self._manager.partition(topic, partition)
        return log.log_start_offset, log.high_watermark

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int | None:
        found = self._manager.partition(topic, partition).find_offset_by_timestamp(timestamp_ms)
        return None if found is None else found[0]


class ResetKind(Enum):
    EARLIEST = "to-earliest"
    LATEST = "to-latest"
    OFFSET = "to-offset"
    DATETIME = "to-datetime"
    DURATION = "by-duration"
    SHIFT = "shift-by"


@dataclass(frozen=True)
class ResetSpec:
    """What to reset to. `value`: an offset (OFFSET), ms since the epoch (DATETIME),
    ms back from now (DURATION), a signed shift (SHIFT); unused otherwise."""

    kind: ResetKind
    value: int = 0


@dataclass(frozen=True)
class PlanEntry:
    topic: str
    partition: int
    #: -1 when the group has no committed offset for the partition
    current_offset: int
    new_offset: int


def resolve_targets(
    manager: LogManager,
    offsets: OffsetStore,
    group: str,
    targets: Sequence[tuple[str, Sequence[int]]],
) -> list[TopicPartition]:
    """The partitions a reset applies to: named topics (all their partitions when none are
    listed), or, with no targets, every partition the group has committed offsets for."""
    if not targets:
        committed = sorted(offsets.fetch(group))
        if not committed:
            raise InvalidRequestError(
                f"group {group!r} has no committed offsets: name a topic to reset"
            )
        return [tp for tp in committed if tp[0] in manager.topic_names()]
    result: list[TopicPartition] = []
    for topic, partitions in targets:
        count = len(manager.topic(topic).partitions)
        chosen = list(partitions) or list(range(count))
        for p in chosen:
            if not 0 <= p < count:
                raise UnknownTopicOrPartitionError(
                    f"partition {p} of topic {topic!r} does not exist: valid 0..{count - 1}"
                )
            result.append((topic, p))
    return result


def plan_reset(
    lookup: PartitionOffsets,
    offsets: OffsetStore,
    group: str,
    partitions: Iterable[TopicPartition],
    spec: ResetSpec,
    now_ms: int,
) -> list[PlanEntry]:
    """Current -> new offset for each partition; changes nothing."""
    committed = offsets.fetch(group)
    plan = []
    for topic, partition in partitions:
        start, end = lookup.offset_range(topic, partition)
        current = committed[(topic, partition)].offset if (topic, partition) in committed else -1
        target = _target(spec, lookup, (topic, partition), current, start, end, now_ms)
        plan.append(PlanEntry(topic, partition, current, min(max(target, start), end)))
    return plan


def _target(
    spec: ResetSpec,
    lookup: PartitionOffsets,
    tp: TopicPartition,
    current: int,
    start: int,
    end: int,
    now_ms: int,
) -> int:
    kind = spec.kind
    if kind is ResetKind.EARLIEST:
        return start
    if kind is ResetKind.LATEST:
        return end
    if kind is ResetKind.OFFSET:
        return spec.value
    if kind is ResetKind.SHIFT:
        # With nothing committed there is no position to shift: start from the earliest.
        return (current if current >= 0 else start) + spec.value
    timestamp = spec.value if kind is ResetKind.DATETIME else now_ms - spec.value
    found = lookup.offset_for_time(tp[0], tp[1], timestamp)
    # No record that new: like Kafka, the group goes to the end and reads only new records.
    return found if found is not None else end


def execute_plan(offsets: OffsetStore, group: str, plan: Sequence[PlanEntry]) -> None:
    """Commit the plan's new offsets for `group` (the caller checked it has no members)."""
    offsets.commit(group, {(e.topic, e.partition): (e.new_offset, "") for e in plan})

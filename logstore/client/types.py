"""Typed values the clients hand to applications."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

TopicPartition = tuple[str, int]
Headers = tuple[tuple[str, bytes | None], ...]


class RecordMetadata(NamedTuple):
    """Where a produced record landed. `timestamp` is in ms since the epoch."""

    topic: str
    partition: int
    offset: int
    timestamp: int


class ConsumerRecord(NamedTuple):
    """One record returned by `Consumer.poll()`."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    segment_count: int


@dataclass(frozen=True)
class TopicDescription:
    name: str
    topic_id: str
    internal: bool
    partitions: list[PartitionInfo]
    config: dict[str, str] = field(default_factory=dict)
    config_overrides: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OffsetAndTimestamp:
    """An offset and the timestamp of its record (-1 when not asked by time)."""

    offset: int
    timestamp: int


@dataclass(frozen=True)
class OffsetAndMetadata:
    """A committed offset: the next offset the group will read, with its metadata."""

    offset: int
    metadata: str = ""
    commit_timestamp: int = -1

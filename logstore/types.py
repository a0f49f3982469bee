"""Typed values the clients hand to applications, and names the client and broker share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from logstore.errors import InvalidRequestError

TopicPartition = tuple[str, int]
Headers = tuple[tuple[str, bytes | None], ...]

#: partition assignors a consumer may ask its group for (Kafka's names)
RANGE = "range"
ROUNDROBIN = "roundrobin"
STICKY = "sticky"
ASSIGNOR_NAMES: tuple[str, ...] = (RANGE, ROUNDROBIN, STICKY)
DEFAULT_ASSIGNOR = STICKY


def check_assignor_name(name: str) -> str:
    """`name` itself if it names an assignor; else InvalidRequestError listing the names."""
    if name not in ASSIGNOR_NAMES:
        raise InvalidRequestError(
            f"unknown assignor {name!r}: use one of {', '.join(ASSIGNOR_NAMES)}"
        )
    return name


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


@dataclass(frozen=True)
class GroupListing:
    group_id: str
    #: Empty, Rebalancing, Stable or Dead
    state: str
    members: int


@dataclass(frozen=True)
class MemberInfo:
    member_id: str
    client_id: str
    host: str
    member_epoch: int
    subscribed_topics: list[str]
    assignment: list[TopicPartition]


@dataclass(frozen=True)
class PartitionLag:
    """One row of `groups describe`: Kafka's columns."""

    topic: str
    partition: int
    #: -1 when nothing is committed
    committed_offset: int
    log_end_offset: int
    #: -1 when nothing is committed
    lag: int
    member_id: str
    client_id: str
    host: str


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: str
    assignor: str
    group_epoch: int
    members: list[MemberInfo]
    offsets: list[PartitionLag]


@dataclass(frozen=True)
class OffsetResetEntry:
    topic: str
    partition: int
    #: -1 when nothing was committed
    current_offset: int
    new_offset: int

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


#: the broker id of a partition without a leader (Kafka's -1, printed "none")
NO_LEADER = -1


@dataclass(frozen=True)
class PartitionInfo:
    """One partition of `Admin.describe_topic`: offsets, size on disk (bytes) and who holds
    it. A standalone broker is broker 0: leader 0, replicas [0], isr [0]."""

    partition: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    size_bytes: int
    segment_count: int
    #: the leader's broker id; NO_LEADER (-1) while the partition has none
    leader: int = NO_LEADER
    #: broker ids holding a copy, the preferred leader first
    replicas: list[int] = field(default_factory=list)
    #: in-sync replicas: the leader and the followers caught up within
    #: replica.lag.time.max.ms; always a subset of `replicas`
    isr: list[int] = field(default_factory=list)
    #: bumped at every leadership change
    leader_epoch: int = 0


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
    #: Empty, Rebalancing, Stable or Dead; a group of Kafka clients: Empty, PreparingRebalance,
    #: CompletingRebalance, Stable or Dead (Kafka's names)
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


@dataclass(frozen=True)
class PartitionReassignment:
    """A reassignment in progress (Kafka's names): `replicas` is the full set while it
    runs, `adding_replicas` are being caught up, `removing_replicas` leave at the end."""

    replicas: list[int]
    adding_replicas: list[int] = field(default_factory=list)
    removing_replicas: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class BrokerInfo:
    """A live broker, where clients reach it (its advertised listener)."""

    broker_id: int
    host: str
    port: int

    @property
    def address(self) -> str:
        """HOST:PORT, IPv6 hosts in brackets, as `--bootstrap-server` takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ClusterDescription:
    """`Admin.describe_cluster`: the cluster as the broker that answered sees it.

    A standalone broker has `cluster_mode` False and lists itself as the one broker.
    """

    cluster_id: str
    #: the controller's broker id; -1 while no broker is controller
    controller: int
    #: the live brokers, by broker id
    brokers: list[BrokerInfo]
    cluster_mode: bool
    #: the broker that answered
    broker_id: int
    #: etcd client endpoints (HOST:PORT each) the answering broker uses; empty standalone
    etcd_endpoints: list[str] = field(default_factory=list)
    #: whether the answering broker reaches etcd now
    etcd_healthy: bool = False
    #: a line for humans: etcd's version and leader, or why it is unreachable
    etcd_status: str = ""

"""The cluster's records, as stored in etcd (JSON values under `/logstore/<cluster>/`).

Invariants:
- A partition's `leader` is -1 or a member of `isr`; `isr` is a subset of `replicas`.
- `leader_epoch` only grows; every change of leader bumps it (Kafka's rule), so a batch's
  `partitionLeaderEpoch` names the leadership that wrote it.
- Epochs of brokers and of the controller are etcd revisions (create revisions of their
  keys), so they only grow across the whole cluster and order every registration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

#: the leader of a partition that has none
NO_LEADER = -1


@dataclass(frozen=True)
class BrokerRegistration:
    """A live broker: its id, where clients reach it, and its broker epoch (the create
    revision of its leased registration key; a restarted broker gets a larger one)."""

    broker_id: int
    host: str
    port: int
    epoch: int = -1
    #: the port of its replication stream on `host`; 0: it has none (followers fetch
    #: from it over gRPC)
    replication_port: int = 0
    #: where Kafka clients reach it (its advertised Kafka listener); port 0: it has none
    kafka_host: str = ""
    kafka_port: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def replication_address(self) -> str:
        """HOST:PORT of its replication stream, "" when it has none."""
        return f"{self.host}:{self.replication_port}" if self.replication_port else ""

    def to_json(self) -> str:
        value = {"broker_id": self.broker_id, "host": self.host, "port": self.port}
        if self.replication_port:
            value["replication_port"] = self.replication_port
        if self.kafka_port:
            value["kafka_host"] = self.kafka_host
            value["kafka_port"] = self.kafka_port
        return json.dumps(value)

    @classmethod
    def from_json(cls, data: str | bytes, epoch: int = -1) -> BrokerRegistration:
        value = json.loads(data)
        return cls(
            int(value["broker_id"]),
            str(value["host"]),
            int(value["port"]),
            epoch,
            int(value.get("replication_port", 0)),
            str(value.get("kafka_host", "")),
            int(value.get("kafka_port", 0)),
        )


@dataclass(frozen=True)
class PartitionState:
    """Who holds a partition and who leads it (Kafka's LeaderAndIsr plus the replicas)."""

    replicas: tuple[int, ...]
    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    #: replicas being added by a reassignment (they fetch, but are not yet "the" replicas)
    adding: tuple[int, ...] = ()
    #: replicas a reassignment will remove once the added ones are in sync
    removing: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.leader != NO_LEADER and self.leader not in self.isr:
            raise ValueError(f"leader {self.leader} is not in the ISR {list(self.isr)}")
        if not set(self.isr) <= set(self.replicas):
            raise ValueError(f"ISR {list(self.isr)} is not within replicas {list(self.replicas)}")

    @property
    def preferred_leader(self) -> int:
        return self.replicas[0] if self.replicas else NO_LEADER

    def with_isr(self, isr: tuple[int, ...]) -> PartitionState:
        """The same leadership with another ISR (the leader's ISR changes)."""
        return replace(self, isr=tuple(isr))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "replicas": list(self.replicas),
            "leader": self.leader,
            "leader_epoch": self.leader_epoch,
            "isr": list(self.isr),
        }
        if self.adding:
            out["adding"] = list(self.adding)
        if self.removing:
            out["removing"] = list(self.removing)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: str | bytes) -> PartitionState:
        value = json.loads(data)
        return cls(
            replicas=tuple(int(b) for b in value["replicas"]),
            leader=int(value["leader"]),
            leader_epoch=int(value["leader_epoch"]),
            isr=tuple(int(b) for b in value["isr"]),
            adding=tuple(int(b) for b in value.get("adding", ())),
            removing=tuple(int(b) for b in value.get("removing", ())),
        )


@dataclass(frozen=True)
class TopicRecord:
    """A topic as the cluster knows it: id, partition count and config overrides.

    `partitions` is the single source of truth for how many partitions exist: the states
    of partitions 0..partitions-1 are written after the record, so a reader may find some
    not written yet (the topic is being created or grown) and must treat those partitions
    as having no leader yet, never as absent. `replication_factor` and `placement_start`
    (the round-robin start index of `placement.assign_replicas`) let the controller place
    a missing partition as its creator would have; 0 and -1 in records written before they
    existed.
    """

    name: str
    topic_id: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication_factor: int = 0
    placement_start: int = -1

    def to_json(self) -> str:
        out: dict[str, Any] = {
            "name": self.name,
            "topic_id": self.topic_id,
            "partitions": self.partitions,
            "config": self.config,
        }
        if self.replication_factor > 0:
            out["replication_factor"] = self.replication_factor
        if self.placement_start >= 0:
            out["placement_start"] = self.placement_start
        return json.dumps(out)

    @classmethod
    def from_json(cls, data: str | bytes) -> TopicRecord:
        value = json.loads(data)
        return cls(
            name=str(value["name"]),
            topic_id=str(value["topic_id"]),
            partitions=int(value["partitions"]),
            config={str(k): str(v) for k, v in value.get("config", {}).items()},
            replication_factor=int(value.get("replication_factor", 0)),
            placement_start=int(value.get("placement_start", -1)),
        )


@dataclass(frozen=True)
class Versioned:
    """A value read from etcd with the mod revision a compare-and-swap must name, and the
    create revision of its key (which names one incarnation of a topic: a topic deleted
    and created again under the same name gets a larger one)."""

    value: Any
    mod_revision: int
    create_revision: int = 0

"""LogStore's group RPCs on groups of Kafka clients: a servicer over real storage, its
coordinators driven as the Kafka handlers drive them (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore.codec.record_batch import encode_batch
from logstore.errors import GroupNotEmptyError, UnknownGroupError
from logstore.server.broker import LogStoreServicer
from logstore.server.groups.classic import (
    ClassicGroupCoordinator,
    JoinRequest,
    JoinResult,
    MemberIdentity,
    SyncRequest,
)
from logstore.server.groups.consumer_protocol import encode_assignment, encode_subscription
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.producer_ids import ProducerIdManager
from logstore.storage.log_manager import LogManager, ManagerSettings
from logstore.v1 import logstore_pb2 as pb

G = "billing"


class Core:
    def __init__(self, data_dir: Path) -> None:
        self.manager = LogManager(data_dir, settings=ManagerSettings(background_threads=False))
        self.manager.create_topic("orders", 2, {})
        self.classic = ClassicGroupCoordinator(initial_rebalance_delay_ms=0)
        self.servicer = LogStoreServicer(
            self.manager,
            OffsetStore(self.manager),
            ProducerIdManager(data_dir / "producer-ids"),
            GroupCoordinator(partition_counts=lambda _t: 2, classic=self.classic),
        )

    def member(
        self,
        client_id: str,
        assignment: list[tuple[str, int]],
        protocol_type: str = "consumer",
        metadata: bytes | None = None,
    ) -> JoinResult:
        """A lone member, Stable with `assignment` (v0-3 joins: no member id round)."""
        joined = self.classic.join_group(
            JoinRequest(
                G,
                "",
                protocol_type,
                (("range", encode_subscription(["orders"]) if metadata is None else metadata),),
                10_000,
                client_id=client_id,
                host="/10.1.1.1",
                require_known_member_id=False,
            )
        )
        assert isinstance(joined, JoinResult)
        assigned = encode_assignment(assignment) if protocol_type == "consumer" else b"\xff"
        self.classic.sync_group(
            SyncRequest(G, joined.generation_id, joined.member_id, ((joined.member_id, assigned),))
        )
        return joined

    def close(self) -> None:
        self.manager.close()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    made = Core(tmp_path / "data")
    try:
        yield made
    finally:
        made.close()


def test_describe_shows_a_kafka_group_with_its_members_and_lag(core: Core) -> None:
    core.manager.partition("orders", 0).append(encode_batch([(None, b"v", None, 0)] * 5))
    joined = core.member("kp", [("orders", 0), ("orders", 1)])
    core.servicer.offsets.commit(G, {("orders", 0): (2, "meta")})
    desc = core.servicer.DescribeGroup(pb.DescribeGroupRequest(group_id=G), None)
    assert (desc.state, desc.assignor, desc.group_epoch) == ("Stable", "range", 1)
    (member,) = desc.members
    assert (member.member_id, member.client_id, member.host) == (
        joined.member_id,
        "kp",
        "/10.1.1.1",
    )
    assert list(member.subscribed_topics) == ["orders"]
    assert [(t.topic, list(t.partitions)) for t in member.assignment.topics] == [("orders", [0, 1])]
    rows = [
        (o.partition, o.committed_offset, o.log_end_offset, o.lag, o.member_id, o.metadata)
        for o in desc.offsets
    ]
    assert rows == [
        (0, 2, 5, 3, joined.member_id, "meta"),
        (1, -1, 0, -1, joined.member_id, ""),
    ]


def test_a_group_of_another_protocol_type_shows_members_without_partitions(core: Core) -> None:
    core.member("connect-worker", [], protocol_type="connect", metadata=b"\x00opaque")
    desc = core.servicer.DescribeGroup(pb.DescribeGroupRequest(group_id=G), None)
    (member,) = desc.members
    assert list(member.subscribed_topics) == [] and not member.assignment.topics


def test_list_groups_shows_kafka_groups(core: Core) -> None:
    core.member("kp", [("orders", 0)])
    core.servicer.offsets.commit("old", {("orders", 0): (1, "")})
    listed = core.servicer.ListGroups(pb.ListGroupsRequest(), None)
    assert [(g.group_id, g.state, g.members) for g in listed.groups] == [
        (G, "Stable", 1),
        ("old", "Empty", 0),
    ]


def test_delete_refuses_a_kafka_group_with_members_and_forgets_it_once_empty(core: Core) -> None:
    joined = core.member("kp", [("orders", 0)])
    core.servicer.offsets.commit(G, {("orders", 0): (1, "")})
    with pytest.raises(GroupNotEmptyError, match="1 active member"):
        core.servicer.delete_group(G)
    assert core.servicer.coordinator.active_member_count(G) == 1
    core.classic.leave_group(G, [MemberIdentity(joined.member_id)])
    assert core.servicer.delete_group(G) == 1
    assert core.classic.describe(G) is None and core.servicer.offsets.fetch(G) == {}
    with pytest.raises(UnknownGroupError):
        core.servicer.delete_group(G)


def test_offset_retention_keeps_a_live_kafka_groups_offsets(core: Core) -> None:
    """The broker's retention pass asks `active_member_count`, which counts Kafka members."""
    joined = core.member("kp", [("orders", 0)])
    core.servicer.offsets.commit(G, {("orders", 0): (1, "")})
    coordinator = core.servicer.coordinator

    def expire() -> list[str]:
        far_future = 2**62  # every commit is older than any retention
        return core.servicer.offsets.expire_inactive_groups(
            far_future, 0, lambda g: coordinator.active_member_count(g) > 0
        )

    assert expire() == []
    core.classic.leave_group(G, [MemberIdentity(joined.member_id)])
    assert expire() == [G]

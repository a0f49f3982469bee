"""Consumer-group RPCs against a real broker: membership, fencing, describe, reset."""

from __future__ import annotations

import grpc
import pytest

from logstore.codec import record_batch as rb
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc


def _owned(assignment: pb.Assignment) -> set[tuple[str, int]]:
    return {(t.topic, p) for t in assignment.topics for p in t.partitions}


def _as_assignment(parts: set[tuple[str, int]]) -> pb.Assignment:
    topics: dict[str, list[int]] = {}
    for t, p in sorted(parts):
        topics.setdefault(t, []).append(p)
    return pb.Assignment(
        topics=[pb.TopicPartitions(topic=t, partitions=ps) for t, ps in topics.items()]
    )


def _beat(
    stub: pb_grpc.LogStoreStub, member_id: str, epoch: int, owned: set[tuple[str, int]]
) -> pb.GroupHeartbeatResponse:
    return stub.Heartbeat(
        pb.GroupHeartbeatRequest(
            group_id="g", member_id=member_id, member_epoch=epoch, owned=_as_assignment(owned)
        ),
        timeout=10,
    )


def _join(stub: pb_grpc.LogStoreStub, client_id: str) -> pb.GroupHeartbeatResponse:
    return stub.JoinGroup(
        pb.GroupHeartbeatRequest(
            group_id="g",
            subscription=pb.Subscription(topics=["t"]),
            client_id=client_id,
            session_timeout_ms=30_000,
        ),
        timeout=10,
    )


def _settle(stub: pb_grpc.LogStoreStub, members: dict[str, tuple[int, set]]) -> None:
    """Heartbeat every member, acking what it was told, until nothing changes (bounded)."""
    for _ in range(10):
        changed = False
        for member_id, (epoch, owned) in list(members.items()):
            r = _beat(stub, member_id, epoch, owned)
            new = (r.member_epoch, _owned(r.assignment))
            changed |= new != (epoch, owned)
            members[member_id] = new
        if not changed:
            return
    raise AssertionError("group did not settle in 10 rounds")


def _produce(stub: pb_grpc.LogStoreStub, partition: int, values: list[bytes], ts: int) -> None:
    data = rb.encode_batch([(None, v, None, ts + i) for i, v in enumerate(values)])
    stub.Produce(
        pb.ProduceRequest(
            acks=1,
            topics=[
                pb.ProduceTopicData(
                    topic="t",
                    partitions=[pb.ProducePartitionData(partition=partition, records=data)],
                )
            ],
        ),
        timeout=10,
    )


def test_two_members_share_six_partitions_and_commits_are_fenced(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=6), timeout=10)
    a = _join(stub, "app-a")
    members = {a.member_id: (a.member_epoch, _owned(a.assignment))}
    _settle(stub, members)
    assert len(members[a.member_id][1]) == 6
    b = _join(stub, "app-b")
    members[b.member_id] = (b.member_epoch, _owned(b.assignment))
    _settle(stub, members)
    owned_a, owned_b = members[a.member_id][1], members[b.member_id][1]
    assert len(owned_a) == len(owned_b) == 3 and not owned_a & owned_b

    desc = stub.DescribeGroup(pb.DescribeGroupRequest(group_id="g"), timeout=10)
    assert desc.state == "Stable" and desc.assignor == "sticky"
    assert {m.client_id for m in desc.members} == {"app-a", "app-b"}
    assert all(m.host.startswith("/") for m in desc.members)

    mine = sorted(owned_a)[0]
    commit = pb.CommitOffsetsRequest(
        group_id="g",
        member_id=a.member_id,
        generation_id=members[a.member_id][0],
        topics=[
            pb.CommitTopic(
                topic=mine[0], partitions=[pb.CommitPartition(partition=mine[1], offset=0)]
            )
        ],
    )
    stub.CommitOffsets(commit, timeout=10)
    theirs = sorted(owned_b)[0]
    commit.topics[0].partitions[0].partition = theirs[1]
    with pytest.raises(grpc.RpcError) as info:
        stub.CommitOffsets(commit, timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    admin_commit = pb.CommitOffsetsRequest(group_id="g", generation_id=-1, topics=commit.topics)
    with pytest.raises(grpc.RpcError) as info:
        stub.CommitOffsets(admin_commit, timeout=10)
    assert "active member" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.ResetOffsets(
            pb.ResetOffsetsRequest(
                group_id="g", to_earliest=True, targets=[pb.TopicPartitions(topic="t")]
            ),
            timeout=10,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    for member_id, (epoch, _) in members.items():
        stub.LeaveGroup(
            pb.GroupHeartbeatRequest(group_id="g", member_id=member_id, member_epoch=epoch),
            timeout=10,
        )
    listed = stub.ListGroups(pb.ListGroupsRequest(), timeout=10).groups
    assert [(g.group_id, g.state, g.members) for g in listed] == [("g", "Empty", 0)]


def test_reset_to_datetime_replays_exactly_from_that_time(stub: pb_grpc.LogStoreStub) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=1), timeout=10)
    _produce(stub, 0, [b"old%d" % i for i in range(5)], ts=1_000)
    _produce(stub, 0, [b"new%d" % i for i in range(5)], ts=5_000)
    stub.CommitOffsets(
        pb.CommitOffsetsRequest(
            group_id="g",
            generation_id=-1,
            topics=[
                pb.CommitTopic(topic="t", partitions=[pb.CommitPartition(partition=0, offset=10)])
            ],
        ),
        timeout=10,
    )
    target = [pb.TopicPartitions(topic="t")]
    plan = stub.ResetOffsets(
        pb.ResetOffsetsRequest(group_id="g", targets=target, to_datetime_ms=5_002, dry_run=True),
        timeout=10,
    )
    assert [(e.current_offset, e.new_offset) for e in plan.plan] == [(10, 7)]
    assert not plan.executed
    got = stub.FetchCommittedOffsets(pb.FetchCommittedOffsetsRequest(group_id="g"), timeout=10)
    assert got.offsets[0].offset == 10  # dry run changed nothing
    for kwargs, expected in [
        ({"to_datetime_ms": 5_002}, 7),
        ({"shift_by": -100}, 0),  # clamped to the log start
        ({"to_offset": 999}, 10),  # clamped to the log end
        ({"to_latest": True}, 10),
        ({"to_earliest": True}, 0),
    ]:
        done = stub.ResetOffsets(
            pb.ResetOffsetsRequest(group_id="g", targets=target, **kwargs), timeout=10
        )
        assert done.executed and done.plan[0].new_offset == expected, kwargs
    stub.ResetOffsets(
        pb.ResetOffsetsRequest(group_id="g", targets=target, to_datetime_ms=5_002), timeout=10
    )
    committed = (
        stub.FetchCommittedOffsets(pb.FetchCommittedOffsetsRequest(group_id="g"), timeout=10)
        .offsets[0]
        .offset
    )
    fetched = stub.Fetch(
        pb.FetchRequest(
            topics=[
                pb.FetchTopic(
                    topic="t", partitions=[pb.FetchPartition(partition=0, fetch_offset=committed)]
                )
            ]
        ),
        timeout=10,
    )
    values = [
        r.value
        for r in rb.decode_all(fetched.topics[0].partitions[0].records)
        if r.offset >= committed
    ]
    assert values == [b"new2", b"new3", b"new4"]
    desc = stub.DescribeGroup(pb.DescribeGroupRequest(group_id="g"), timeout=10)
    assert [(o.committed_offset, o.log_end_offset, o.lag) for o in desc.offsets] == [(7, 10, 3)]
    assert stub.DeleteGroup(pb.DeleteGroupRequest(group_id="g"), timeout=10).deleted_offsets == 1
    assert stub.ListGroups(pb.ListGroupsRequest(), timeout=10).groups == []


def _error_kind(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("logstore-error-kind", "")  # type: ignore[attr-defined]


def test_deleting_an_unknown_group_is_not_found(stub: pb_grpc.LogStoreStub) -> None:
    with pytest.raises(grpc.RpcError) as unknown:
        stub.DeleteGroup(pb.DeleteGroupRequest(group_id="nosuchgroup"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.value.details() == (
        "consumer group 'nosuchgroup' does not exist (no members, no committed offsets)"
    )
    assert _error_kind(unknown.value) == "UnknownGroupError"
    with pytest.raises(grpc.RpcError) as empty:
        stub.DeleteGroup(pb.DeleteGroupRequest(group_id=""), timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_group_exists_until_deleted_whether_by_members_or_commits(
    stub: pb_grpc.LogStoreStub,
) -> None:
    stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=1), timeout=10)
    # known only by its commits
    stub.CommitOffsets(
        pb.CommitOffsetsRequest(
            group_id="committed",
            generation_id=-1,
            topics=[
                pb.CommitTopic(topic="t", partitions=[pb.CommitPartition(partition=0, offset=0)])
            ],
        ),
        timeout=10,
    )
    # known only to the coordinator: joined and left, never committed
    joined = stub.JoinGroup(
        pb.GroupHeartbeatRequest(group_id="joined", subscription=pb.Subscription(topics=["t"])),
        timeout=10,
    )
    stub.LeaveGroup(
        pb.GroupHeartbeatRequest(group_id="joined", member_id=joined.member_id, member_epoch=-1),
        timeout=10,
    )
    deleted = {
        g: stub.DeleteGroup(pb.DeleteGroupRequest(group_id=g), timeout=10).deleted_offsets
        for g in ("committed", "joined")
    }
    assert deleted == {"committed": 1, "joined": 0}
    for group in ("committed", "joined"):  # a second delete finds nothing
        with pytest.raises(grpc.RpcError) as again:
            stub.DeleteGroup(pb.DeleteGroupRequest(group_id=group), timeout=10)
        assert again.value.code() == grpc.StatusCode.NOT_FOUND

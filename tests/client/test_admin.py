"""`Admin` against a real `logstore serve` process: topics, offsets, committed offsets,
consumer groups and offset resets, with the error each misuse gets.

Records are produced with raw Produce RPCs with chosen timestamps (ms), so lookups by time
and resets by date-time or duration have known answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.codec import record_batch as rb
from logstore.errors import (
    ClientClosedError,
    GroupNotEmptyError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidRequestError,
    InvalidTopicError,
    TopicExistsError,
    UnknownGroupError,
    UnknownTopicOrPartitionError,
)
from logstore.types import GroupListing, OffsetAndMetadata, OffsetResetEntry
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess

TS0 = 1_700_000_000_000
HOUR_MS = 3_600_000
#: upper bound of any wait in these tests (s), and of polling rounds
WAIT_S = 15.0
MAX_ROUNDS = 500


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[Admin]:
    with Admin(broker.address) as client:
        yield client


def produce(stub: pb_grpc.LogStoreStub, topic: str, partition: int, timestamps: list[int]) -> None:
    """Append one record per timestamp (ms) to `topic`-`partition`, in one batch."""
    batch = rb.encode_batch([(None, b"v", None, ts) for ts in timestamps])
    request = pb.ProduceRequest(
        acks=-1,
        topics=[
            pb.ProduceTopicData(
                topic=topic,
                partitions=[pb.ProducePartitionData(partition=partition, records=batch)],
            )
        ],
    )
    result = stub.Produce(request, timeout=10).topics[0].partitions[0]
    assert result.error.code == 0, result.error.message


def iso(ms: int, tz: timezone = UTC) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=tz).isoformat()


# --- topics ----------------------------------------------------------------------------------


def test_topic_lifecycle(admin: Admin) -> None:
    created = admin.create_topic("orders", partitions=3, config={"retention.ms": 60_000})
    assert (created.name, len(created.partitions), created.internal) == ("orders", 3, False)
    assert created.config_overrides == {"retention.ms": "60000"}
    assert created.config["retention.ms"] == "60000"
    admin.create_topic("audit")
    assert admin.list_topics() == ["audit", "orders"]

    described = admin.describe_topic("orders")
    assert described.topic_id == created.topic_id
    assert [(p.partition, p.log_start_offset, p.log_end_offset) for p in described.partitions] == [
        (p, 0, 0) for p in range(3)
    ]

    altered = admin.alter_topic_config("orders", set={"cleanup.policy": "compact"})
    assert altered.config_overrides == {"retention.ms": "60000", "cleanup.policy": "compact"}
    altered = admin.alter_topic_config("orders", delete=["retention.ms"])
    assert altered.config_overrides == {"cleanup.policy": "compact"}
    assert admin.describe_topic("orders").config_overrides == {"cleanup.policy": "compact"}

    grown = admin.add_partitions("orders", 5)
    assert [p.partition for p in grown.partitions] == [0, 1, 2, 3, 4]

    admin.delete_topic("orders")
    assert admin.list_topics() == ["audit"]
    with pytest.raises(UnknownTopicOrPartitionError, match="'orders' does not exist"):
        admin.describe_topic("orders")


def test_topic_errors_name_the_problem(admin: Admin) -> None:
    admin.create_topic("orders", partitions=2)
    with pytest.raises(TopicExistsError, match="'orders' already exists"):
        admin.create_topic("orders")
    with pytest.raises(InvalidTopicError, match="invalid topic name"):
        admin.create_topic("bad/name")
    with pytest.raises(InvalidPartitionsError, match="invalid partition count '0'"):
        admin.create_topic("empty", partitions=0)
    with pytest.raises(InvalidConfigError, match=r"unknown config 'retention\.days'"):
        admin.create_topic("x", config={"retention.days": 7})
    with pytest.raises(InvalidConfigError, match="unknown config"):
        admin.alter_topic_config("orders", set={"no.such.key": 1})
    with pytest.raises(InvalidPartitionsError, match="must be larger"):
        admin.add_partitions("orders", 2)
    with pytest.raises(InvalidRequestError, match="internal topic"):
        admin.create_topic("__internal")
    for call in (admin.describe_topic, admin.delete_topic):
        with pytest.raises(UnknownTopicOrPartitionError, match="'missing' does not exist"):
            call("missing")
    # the subclasses are also InvalidRequestError, as Kafka's are all "invalid request"
    assert issubclass(InvalidTopicError, InvalidRequestError)
    assert admin.list_topics() == ["orders"]


# --- offsets ---------------------------------------------------------------------------------


def test_list_offsets_earliest_latest_and_by_time(admin: Admin, stub: pb_grpc.LogStoreStub) -> None:
    admin.create_topic("t", partitions=2)
    produce(stub, "t", 0, [TS0 + 10 * i for i in range(10)])

    def offsets(spec: str | int, partitions: list[int] | None = None) -> dict[int, int]:
        return {p: ot.offset for p, ot in admin.list_offsets("t", spec, partitions).items()}

    assert offsets("earliest") == {0: 0, 1: 0}
    assert offsets("latest") == {0: 10, 1: 0}
    assert offsets("latest", [0]) == {0: 10}
    by_time = admin.list_offsets("t", TS0 + 15)
    assert (by_time[0].offset, by_time[0].timestamp) == (2, TS0 + 20)
    assert by_time[1].offset == -1  # no record that new
    assert offsets(TS0 + 1_000) == {0: -1, 1: -1}
    with pytest.raises(InvalidRequestError, match="offset spec 'middle'"):
        admin.list_offsets("t", "middle")
    with pytest.raises(InvalidRequestError, match="offset spec -5"):
        admin.list_offsets("t", -5)
    with pytest.raises(UnknownTopicOrPartitionError, match="partition 7"):
        admin.list_offsets("t", "latest", [7])
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.list_offsets("missing")


def test_commit_offsets_and_read_them_back(admin: Admin) -> None:
    admin.create_topic("t", partitions=2)
    admin.create_topic("u")
    before = int(time.time() * 1000)
    admin.commit_offsets("g", {("t", 0): 5, ("t", 1): OffsetAndMetadata(3, "note"), ("u", 0): 1})
    committed = admin.committed_offsets("g")
    assert {tp: (om.offset, om.metadata) for tp, om in committed.items()} == {
        ("t", 0): (5, ""),
        ("t", 1): (3, "note"),
        ("u", 0): (1, ""),
    }
    assert all(om.commit_timestamp >= before for om in committed.values())
    assert set(admin.committed_offsets("g", ["u"])) == {("u", 0)}
    assert admin.committed_offsets("nobody") == {}
    with pytest.raises(UnknownTopicOrPartitionError, match="partition 4"):
        admin.commit_offsets("g", {("t", 4): 1})
    with pytest.raises(InvalidRequestError, match="cannot commit offset -1"):
        admin.commit_offsets("g", {("t", 0): -1})
    assert admin.committed_offsets("g")[("t", 0)].offset == 5


# --- consumer groups -------------------------------------------------------------------------


def join(broker: BrokerProcess, group: str, topic: str, partitions: int) -> Consumer:
    """A subscribed consumer, polled until it owns all `partitions` of `topic`."""
    consumer = Consumer(
        broker.address,
        group_id=group,
        client_id="member-1",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=200,
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + WAIT_S
    for _ in range(MAX_ROUNDS):
        consumer.poll(timeout=0.05)
        if len(consumer.assignment()) == partitions or time.monotonic() > deadline:
            break
    assert len(consumer.assignment()) == partitions
    return consumer


def test_list_describe_and_delete_groups(
    broker: BrokerProcess, admin: Admin, stub: pb_grpc.LogStoreStub
) -> None:
    admin.create_topic("t", partitions=3)
    produce(stub, "t", 0, [TS0] * 10)
    produce(stub, "t", 1, [TS0] * 4)
    admin.commit_offsets("idle", {("t", 0): 7})
    consumer = join(broker, "live", "t", 3)
    try:
        consumer.commit({("t", 0): 6, ("t", 1): 4})
        assert admin.list_groups() == [
            GroupListing("idle", "Empty", 0),
            GroupListing("live", "Stable", 1),
        ]
        live = admin.describe_group("live")
        assert (live.group_id, live.state, live.assignor) == ("live", "Stable", "sticky")
        (only,) = live.members
        assert (only.client_id, only.subscribed_topics) == ("member-1", ["t"])
        assert sorted(only.assignment) == [("t", 0), ("t", 1), ("t", 2)]
        assert only.member_epoch > 0 and only.host.startswith("/")
        rows = [(o.partition, o.committed_offset, o.log_end_offset, o.lag) for o in live.offsets]
        # nothing committed for partition 2: committed offset and lag are -1
        assert rows == [(0, 6, 10, 4), (1, 4, 4, 0), (2, -1, 0, -1)]
        assert {(o.member_id, o.client_id) for o in live.offsets} == {(only.member_id, "member-1")}

        idle = admin.describe_group("idle")
        assert (idle.state, idle.members, idle.assignor) == ("Empty", [], "")
        row = idle.offsets[0]
        assert (row.partition, row.committed_offset, row.lag, row.member_id) == (0, 7, 3, "")

        with pytest.raises(GroupNotEmptyError, match="group 'live' has 1 active member"):
            admin.delete_group("live")
    finally:
        consumer.close()
    assert admin.delete_group("live") == 2
    assert admin.delete_group("idle") == 1
    assert admin.list_groups() == []
    assert admin.committed_offsets("live") == {}
    with pytest.raises(UnknownGroupError, match="consumer group 'never' does not exist"):
        admin.delete_group("never")


# --- offset resets ---------------------------------------------------------------------------


@pytest.fixture
def history(admin: Admin, stub: pb_grpc.LogStoreStub) -> int:
    """Topic t: partition 0 holds 10 records from 2 h ago then 10 from 30 min ago;
    partition 1 holds 5 from 2 h ago. Group g has committed 15 and 2. Returns now (ms)."""
    now = int(time.time() * 1000)
    admin.create_topic("t", partitions=2)
    produce(stub, "t", 0, [now - 2 * HOUR_MS + i for i in range(10)])
    produce(stub, "t", 0, [now - HOUR_MS // 2 + i for i in range(10)])
    produce(stub, "t", 1, [now - 2 * HOUR_MS + i for i in range(5)])
    admin.commit_offsets("g", {("t", 0): 15, ("t", 1): 2})
    return now


def planned(entries: list[OffsetResetEntry]) -> dict[int, tuple[int, int]]:
    return {e.partition: (e.current_offset, e.new_offset) for e in entries}


def test_reset_offsets_plans_every_spec_without_changing_anything(
    admin: Admin, history: int
) -> None:
    now = history
    half_hour_ago = now - HOUR_MS // 2
    cases: list[tuple[dict[str, object], dict[int, int]]] = [
        ({"to_earliest": True}, {0: 0, 1: 0}),
        ({"to_latest": True}, {0: 20, 1: 5}),
        ({"to_offset": 12}, {0: 12, 1: 5}),  # clamped to the log end
        ({"shift_by": 3}, {0: 18, 1: 5}),
        ({"shift_by": -20}, {0: 0, 1: 0}),  # clamped to the log start
        ({"to_datetime": iso(half_hour_ago)}, {0: 10, 1: 5}),  # none that new: the end
        ({"to_datetime": iso(half_hour_ago).replace("+00:00", "Z")}, {0: 10, 1: 5}),
        ({"to_datetime": iso(half_hour_ago, timezone(timedelta(hours=2)))}, {0: 10, 1: 5}),
        ({"to_datetime": half_hour_ago + 5}, {0: 15, 1: 5}),  # ms since the epoch
        ({"by_duration": "PT1H"}, {0: 10, 1: 5}),
        ({"by_duration": "P1DT0H"}, {0: 0, 1: 0}),
        ({"by_duration": 3 * HOUR_MS}, {0: 0, 1: 0}),
    ]
    for spec, expected in cases:
        plan = admin.reset_offsets("g", ["t"], **spec)  # type: ignore[arg-type]
        assert planned(plan) == {0: (15, expected[0]), 1: (2, expected[1])}, spec
    # the default is a dry run
    committed = {tp: om.offset for tp, om in admin.committed_offsets("g").items()}
    assert committed == {("t", 0): 15, ("t", 1): 2}


def test_reset_offsets_executes_on_the_partitions_chosen(admin: Admin, history: int) -> None:
    only_zero = admin.reset_offsets("g", {"t": [0]}, to_offset=4, dry_run=False)
    assert only_zero == [OffsetResetEntry("t", 0, 15, 4)]
    # no topics: every partition the group has committed
    everything = admin.reset_offsets("g", by_duration="PT1H", dry_run=False)
    assert planned(everything) == {0: (4, 10), 1: (2, 5)}
    committed = {tp: om.offset for tp, om in admin.committed_offsets("g").items()}
    assert committed == {("t", 0): 10, ("t", 1): 5}


def test_reset_offsets_validation(broker: BrokerProcess, admin: Admin, history: int) -> None:
    with pytest.raises(InvalidRequestError, match="exactly one of"):
        admin.reset_offsets("g", ["t"], to_earliest=True, to_offset=3)
    with pytest.raises(InvalidRequestError, match="exactly one of"):
        admin.reset_offsets("g", ["t"], to_latest=True, by_duration="PT1H")
    with pytest.raises(InvalidRequestError, match="exactly one of"):
        admin.reset_offsets("g", ["t"])
    with pytest.raises(InvalidRequestError, match="invalid date-time 'yesterday'"):
        admin.reset_offsets("g", ["t"], to_datetime="yesterday")
    with pytest.raises(InvalidRequestError, match="invalid duration '1 hour'"):
        admin.reset_offsets("g", ["t"], by_duration="1 hour")
    with pytest.raises(InvalidRequestError, match="invalid duration 'PT'"):
        admin.reset_offsets("g", ["t"], by_duration="PT")
    with pytest.raises(UnknownTopicOrPartitionError, match="partition 9 of topic 't'"):
        admin.reset_offsets("g", {"t": [9]}, to_earliest=True)
    with pytest.raises(UnknownTopicOrPartitionError, match="'missing' does not exist"):
        admin.reset_offsets("g", ["missing"], to_earliest=True)
    with pytest.raises(InvalidRequestError, match="has no committed offsets"):
        admin.reset_offsets("fresh", to_earliest=True)
    consumer = join(broker, "g", "t", 2)
    try:
        # a dry run is fine while members are active; executing is not
        assert planned(admin.reset_offsets("g", ["t"], to_earliest=True)) == {
            0: (15, 0),
            1: (2, 0),
        }
        with pytest.raises(GroupNotEmptyError, match="active member"):
            admin.reset_offsets("g", ["t"], to_earliest=True, dry_run=False)
    finally:
        consumer.close()
    committed = {tp: om.offset for tp, om in admin.committed_offsets("g").items()}
    assert committed == {("t", 0): 15, ("t", 1): 2}


def test_a_closed_admin_refuses_calls(broker: BrokerProcess) -> None:
    admin = Admin(broker.address)
    admin.close()
    admin.close()
    with pytest.raises(ClientClosedError):
        admin.list_topics()

"""Group requests go to the group's coordinator, through relays in front of one real
broker (`cluster_relay`): a standalone broker is asked FindCoordinator once and then
answers every group request as before; in a cluster the requests go to the relay
FindCoordinator names, and a refusal (NotCoordinatorError) or a dead coordinator makes the
client find it again and send the request there, within the request's timeout.

A refusing relay passes nothing on, so what the broker behind stored shows whether a
refused commit was carried out (it must not be) and whether the retry was (it must be).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future

import grpc
import pytest

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.errors import BrokerUnavailableError, NotCoordinatorError
from logstore.types import TopicPartition
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.client.cluster_relay import FIND_COORDINATOR, Relay, RelayCluster
from tests.client.test_consumer import check_values, create, poll_until, produce
from tests.server.conftest import BrokerProcess

WAIT_S = 30.0
TOPIC = "orders"
GROUP = "billing"
#: quick retries and a member that heartbeats only when it must, so tests count calls
QUIET = {
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
    "fetch_max_wait_ms": 50,
    "heartbeat_interval_ms": 10_000,
    "retry_backoff_ms": 10,
}
JOIN = "/logstore.v1.LogStore/JoinGroup"
HEARTBEAT = "/logstore.v1.LogStore/Heartbeat"
LEAVE = "/logstore.v1.LogStore/LeaveGroup"
COMMIT = "/logstore.v1.LogStore/CommitOffsets"
FETCH_COMMITTED = "/logstore.v1.LogStore/FetchCommittedOffsets"
DESCRIBE_GROUP = "/logstore.v1.LogStore/DescribeGroup"
LIST_GROUPS = "/logstore.v1.LogStore/ListGroups"


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


@pytest.fixture
def relays(broker: BrokerProcess) -> Iterator[RelayCluster]:
    cluster = RelayCluster(broker.address, 2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def standalone(broker: BrokerProcess) -> Iterator[RelayCluster]:
    """One relay passing everything on: the standalone broker, its calls counted."""
    cluster = RelayCluster(broker.address, 1, standalone=True)
    try:
        yield cluster
    finally:
        cluster.close()


def stored(broker: BrokerProcess, group: str = GROUP) -> dict[TopicPartition, int]:
    """What the broker behind the relays has committed for `group`."""
    with Admin(broker.address) as admin:
        return {tp: om.offset for tp, om in admin.committed_offsets(group).items()}


def answered(relay: Relay, method: str) -> int:
    """How many `method` calls `relay` passed on to the broker (not refused)."""
    return relay.calls[method] - relay.not_coordinator[method]


def consume(consumer: Consumer, stub: pb_grpc.LogStoreStub, start: int, count: int) -> None:
    """Produce records start..start+count-1 to partition 0 and poll them all."""
    produce(stub, TOPIC, 0, start, count)
    records = poll_until(consumer, count, WAIT_S)
    check_values(records)
    assert [r.offset for r in records] == list(range(start, start + count))


# --- a standalone broker ---------------------------------------------------------------------


def test_a_standalone_broker_is_asked_for_the_coordinator_once_per_client(
    broker: BrokerProcess, standalone: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    relay = standalone.relays[0]
    create(stub, TOPIC, 2)
    for partition in (0, 1):
        produce(stub, TOPIC, partition, 0, 50)
    with Consumer(relay.address, group_id=GROUP, **QUIET) as consumer:  # type: ignore[arg-type]
        consumer.subscribe([TOPIC])
        assert len(poll_until(consumer, 100, WAIT_S)) == 100
        consumer.commit()
        future: Future[None] = consumer.commit_async()
        future.result(WAIT_S)
        committed = consumer.committed((TOPIC, 1))
        assert committed is not None and committed.offset == 50
    assert relay.calls[FIND_COORDINATOR] == 1
    assert relay.calls[JOIN] >= 1 and relay.calls[LEAVE] == 1
    assert relay.calls[COMMIT] == 2 and relay.calls[FETCH_COMMITTED] >= 1
    assert not relay.not_coordinator
    assert stored(broker) == {(TOPIC, 0): 50, (TOPIC, 1): 50}

    with Admin(relay.address) as admin:
        description = admin.describe_group(GROUP)
        assert {(o.topic, o.partition, o.committed_offset) for o in description.offsets} == {
            (TOPIC, 0, 50),
            (TOPIC, 1, 50),
        }
        plan = admin.reset_offsets(GROUP, [TOPIC], to_earliest=True)
        assert {(e.partition, e.new_offset) for e in plan} == {(0, 0), (1, 0)}
        assert admin.committed_offsets(GROUP)[(TOPIC, 0)].offset == 50
        listing = admin.list_groups()
        direct = stub.ListGroups(pb.ListGroupsRequest(), timeout=WAIT_S)
        assert [(g.group_id, g.state, g.members) for g in listing] == [
            (g.group_id, g.state, g.members) for g in direct.groups
        ]
        assert GROUP in {g.group_id for g in listing}
        assert admin.delete_group(GROUP) == 2
    assert relay.calls[FIND_COORDINATOR] == 2  # one more: the admin's
    assert relay.calls[LIST_GROUPS] == 1
    assert stored(broker) == {}


def test_a_broker_without_find_coordinator_coordinates_every_group_itself(
    broker: BrokerProcess, standalone: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    standalone.missing.add(FIND_COORDINATOR)
    relay = standalone.relays[0]
    create(stub, TOPIC, 1)
    with Consumer(relay.address, group_id=GROUP, **QUIET) as consumer:  # type: ignore[arg-type]
        consumer.subscribe([TOPIC])
        consume(consumer, stub, 0, 20)
        consumer.commit()
    with Admin(relay.address) as admin:
        assert admin.committed_offsets(GROUP)[(TOPIC, 0)].offset == 20
        assert admin.describe_group(GROUP).group_id == GROUP
    # asked once by each client, refused, and never again
    assert relay.calls[FIND_COORDINATOR] == 2
    assert answered(relay, COMMIT) == 1
    assert stored(broker) == {(TOPIC, 0): 20}


# --- a cluster -------------------------------------------------------------------------------


def test_group_requests_go_to_the_coordinator_the_cluster_names(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    relays.move_coordinator(2)
    one, two = relays.relays
    create(stub, TOPIC, 1)
    with Consumer(one.address, group_id=GROUP, **QUIET) as consumer:  # type: ignore[arg-type]
        consumer.subscribe([TOPIC])
        consume(consumer, stub, 0, 30)
        consumer.commit()
        assert consumer.committed((TOPIC, 0)) is not None
    with Admin(one.address) as admin:
        assert admin.describe_group(GROUP).offsets[0].committed_offset == 30
        assert admin.committed_offsets(GROUP)[(TOPIC, 0)].offset == 30
    # the group's requests never went to relay 1 (which would have refused them)
    assert not one.not_coordinator
    assert sum(one.calls[m] for m in (JOIN, HEARTBEAT, LEAVE, COMMIT, FETCH_COMMITTED)) == 0
    assert two.calls[JOIN] >= 1 and two.calls[COMMIT] == 1 and two.calls[DESCRIBE_GROUP] == 1
    # fetched from the partition's leader, relay 1; one lookup per client, at relay 1
    assert one.fetched == {(TOPIC, 0)} and not two.fetched
    assert one.calls[FIND_COORDINATOR] == 2 and two.calls[FIND_COORDINATOR] == 0
    assert stored(broker) == {(TOPIC, 0): 30}


def test_a_commit_the_old_coordinator_refuses_is_stored_by_the_new_one(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    """The coordinator moves to relay 1, which refuses three group requests before it has
    taken up the role: a commit meets both refusals and is stored once, at relay 1."""
    relays.move_coordinator(2)
    one, two = relays.relays
    create(stub, TOPIC, 1)
    with Consumer(one.address, group_id=GROUP, **QUIET) as consumer:  # type: ignore[arg-type]
        consumer.subscribe([TOPIC])
        consume(consumer, stub, 0, 40)
        consumer.commit()
        assert stored(broker) == {(TOPIC, 0): 40}

        relays.move_coordinator(1, refusals=3)
        consume(consumer, stub, 40, 40)
        consumer.commit()
        assert stored(broker) == {(TOPIC, 0): 80}
        assert two.not_coordinator[COMMIT] >= 1
        assert sum(one.not_coordinator.values()) == 3
        assert answered(one, COMMIT) == 1

        relays.move_coordinator(2, refusals=2)
        consume(consumer, stub, 80, 40)
        outcome: list[Exception | None] = []
        future = consumer.commit_async(callback=lambda offsets, exc: outcome.append(exc))
        future.result(WAIT_S)
        assert outcome == [None]
        assert stored(broker) == {(TOPIC, 0): 120}
        assert consumer.assignment() == {(TOPIC, 0)}
    assert answered(two, COMMIT) == 2  # the first commit and the asynchronous one


def test_a_coordinator_that_keeps_refusing_fails_the_commit_within_the_timeout(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    relays.move_coordinator(2)
    one = relays.relays[0]
    create(stub, TOPIC, 1)
    options = {**QUIET, "request_timeout_ms": 1000}
    with Consumer(one.address, group_id=GROUP, **options) as consumer:  # type: ignore[arg-type]
        consumer.subscribe([TOPIC])
        consume(consumer, stub, 0, 10)
        consumer.commit()
        consume(consumer, stub, 10, 10)
        relays.move_coordinator(1, refusals=1_000_000)
        started = time.monotonic()
        with pytest.raises(NotCoordinatorError):
            consumer.commit()
        elapsed = time.monotonic() - started
        relays.move_coordinator(2)  # so that closing leaves the group
    assert elapsed < 3 * 1.0, f"the commit took {elapsed:.1f} s with a 1 s timeout"
    assert one.not_coordinator[COMMIT] >= 2  # sent again while time was left
    assert stored(broker) == {(TOPIC, 0): 10}  # no refused commit was stored


def test_a_dead_coordinator_is_found_again_and_the_member_carries_on(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    relays.move_coordinator(2)
    one, two = relays.relays
    create(stub, TOPIC, 1)
    options = {**QUIET, "heartbeat_interval_ms": 100}
    with Consumer(one.address, group_id=GROUP, **options) as consumer:  # type: ignore[arg-type]
        consumer.subscribe([TOPIC])
        consume(consumer, stub, 0, 25)
        consumer.commit()
        two.stop()
        relays.move_coordinator(1)
        consume(consumer, stub, 25, 25)
        deadline = time.monotonic() + WAIT_S
        while answered(one, HEARTBEAT) == 0:
            assert time.monotonic() < deadline, "no heartbeat reached the new coordinator"
            consumer.poll(timeout=0.1)
        consumer.commit()
        assert consumer.assignment() == {(TOPIC, 0)}
    assert one.calls[JOIN] == 0  # the membership went on, no rejoin
    assert answered(one, COMMIT) == 1 and answered(one, LEAVE) == 1
    assert stored(broker) == {(TOPIC, 0): 50}


def test_admin_lists_the_groups_of_every_live_broker_once(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, TOPIC, 1)
    with Admin(broker.address) as direct:
        direct.commit_offsets("g1", {(TOPIC, 0): 1})
        direct.commit_offsets("g2", {(TOPIC, 0): 2})
    one, two = relays.relays
    with Admin(one.address) as admin:
        listed = admin.list_groups()
    # both relays list the broker's groups: merged, each once
    assert [g.group_id for g in listed] == ["g1", "g2"]
    assert one.calls[LIST_GROUPS] == 1 and two.calls[LIST_GROUPS] == 1


def test_admin_list_groups_waits_for_an_unreachable_broker_to_leave_the_cluster(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, TOPIC, 1)
    with Admin(broker.address) as direct:
        direct.commit_offsets("g1", {(TOPIC, 0): 1})
    one, two = relays.relays
    two.stop()
    two.alive = True  # still registered: its session has not lapsed
    with Admin(one.address, request_timeout_ms=1000) as admin:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as failed:
            admin.list_groups()
        assert time.monotonic() - started < 3.0
        assert two.address in str(failed.value)
        two.alive = False  # its session lapsed: the cluster no longer lists it
        assert [g.group_id for g in admin.list_groups()] == ["g1"]

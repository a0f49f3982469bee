"""`Admin` and the cluster: bootstrap lists, replication factors, who leads each partition
and `describe_cluster`, against real standalone `logstore serve` processes (a standalone
broker is broker 0: leader 0, replicas [0], isr [0]); the proto-to-type conversions on
their own."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.client.admin import Admin, cluster_from_proto, describe_from_proto
from logstore.errors import (
    BrokerUnavailableError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    UnknownTopicOrPartitionError,
)
from logstore.types import NO_LEADER, BrokerInfo, PartitionInfo
from logstore.v1 import logstore_pb2 as pb
from tests.server.conftest import BrokerProcess

INT32 = st.integers(-(2**31), 2**31 - 1)
BROKER_IDS = st.lists(st.integers(0, 2**31 - 1), max_size=5, unique=True)


def free_address() -> str:
    """127.0.0.1:PORT where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[Admin]:
    with Admin(broker.address) as client:
        yield client


@pytest.fixture
def second_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "second" / "data")
    process.data_dir.parent.mkdir()
    process.start()
    try:
        yield process
    finally:
        process.close()


# --- bootstrap lists -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "addresses"),
    [
        ("127.0.0.1:9092", ("127.0.0.1:9092",)),
        ("h1:1,h2:2", ("h1:1", "h2:2")),
        (" h1:1 , h2:2 ", ("h1:1", "h2:2")),
        ("h1:1,h2:2,h1:1", ("h1:1", "h2:2")),
        ("[::1]:9092,h:1", ("[::1]:9092", "h:1")),
    ],
)
def test_a_bootstrap_list_keeps_its_order_and_each_address_once(
    value: str, addresses: tuple[str, ...]
) -> None:
    with Admin(value) as admin:  # no request: nothing needs to listen there
        assert admin.bootstrap_servers == addresses
        assert admin.address == addresses[0]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", ("empty",)),
        (" , ", ("empty",)),
        ("h1:1,,h2:2", ("empty entry",)),
        ("h1:1,h2", ("'h2' is not HOST:PORT",)),
        ("h1:0", ("port 0", "1..65535")),
    ],
)
def test_a_bad_bootstrap_list_is_refused_naming_the_entry(
    value: str, words: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        Admin(value or " ")  # "" is no list: it means LOGSTORE_BOOTSTRAP or the default
    for word in words:
        assert word in str(refused.value)


def test_admin_moves_past_an_unreachable_broker(broker: BrokerProcess) -> None:
    dead = free_address()
    with Admin(f"{dead},{broker.address}") as admin:
        assert admin.bootstrap_servers == (dead, broker.address)
        admin.create_topic("t")
        assert admin.address == broker.address
        assert admin.list_topics() == ["t"]


def test_admin_names_the_whole_list_when_no_broker_answers() -> None:
    dead = f"{free_address()},{free_address()}"
    with (
        Admin(dead, request_timeout_ms=5_000) as admin,
        pytest.raises(BrokerUnavailableError) as down,
    ):
        admin.list_topics()
    assert dead in str(down.value)


def test_an_answer_is_final_even_an_error(
    broker: BrokerProcess, second_broker: BrokerProcess
) -> None:
    """Only an unreachable broker is skipped: a broker's "unknown topic" is the answer,
    even when the next broker of the list (here another standalone one) has the topic."""
    with Admin(second_broker.address) as other:
        other.create_topic("only-on-second")
    with Admin(f"{broker.address},{second_broker.address}") as admin:
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.describe_topic("only-on-second")
        assert admin.address == broker.address


# --- replication factor and leadership ---------------------------------------------------------


@pytest.mark.parametrize("factor", [0, -1, True, 2**31, "3", 1.0])
def test_a_replication_factor_below_one_or_not_an_int_is_refused_before_asking(
    admin: Admin, factor: object
) -> None:
    with pytest.raises(InvalidReplicationFactorError) as refused:
        admin.create_topic("t", replication_factor=factor)  # type: ignore[arg-type]
    assert "expected an integer >= 1" in str(refused.value)
    assert admin.list_topics() == []


def test_a_standalone_broker_leads_every_partition_as_broker_0(admin: Admin) -> None:
    created = admin.create_topic("t", partitions=3, replication_factor=1)
    described = admin.describe_topic("t")
    for description in (created, described):
        assert [p.partition for p in description.partitions] == [0, 1, 2]
        for p in description.partitions:
            assert (p.leader, p.replicas, p.isr) == (0, [0], [0]), p
            assert p.leader_epoch >= 0
    admin.create_topic("default-factor")  # None: the broker's default, 1 standalone
    assert [p.replicas for p in admin.describe_topic("default-factor").partitions] == [[0]]


def test_a_standalone_broker_refuses_more_than_one_copy(admin: Admin) -> None:
    with pytest.raises(InvalidReplicationFactorError):
        admin.create_topic("t", replication_factor=2)
    assert admin.list_topics() == []


def test_describe_cluster_of_a_standalone_broker(broker: BrokerProcess, admin: Admin) -> None:
    cluster = admin.describe_cluster()
    assert cluster.cluster_mode is False
    assert cluster.broker_id == 0
    assert cluster.controller == 0
    assert cluster.brokers == [BrokerInfo(0, "127.0.0.1", broker.port)]
    assert cluster.brokers[0].address == broker.address
    assert (cluster.etcd_endpoints, cluster.etcd_healthy) == ([], False)


# --- proto to types ----------------------------------------------------------------------------


@given(
    st.builds(
        pb.PartitionDescription,
        partition=st.integers(0, 2**31 - 1),
        log_start_offset=st.integers(0, 2**62),
        log_end_offset=st.integers(0, 2**62),
        high_watermark=st.integers(0, 2**62),
        size_bytes=st.integers(0, 2**62),
        segment_count=st.integers(0, 2**31 - 1),
        leader=st.one_of(st.just(NO_LEADER), st.integers(0, 2**31 - 1)),
        replicas=BROKER_IDS,
        isr=BROKER_IDS,
        leader_epoch=INT32,
    )
)
def test_every_partition_field_reaches_partition_info(p: pb.PartitionDescription) -> None:
    (info,) = describe_from_proto(pb.TopicDescription(name="t", partitions=[p])).partitions
    assert info == PartitionInfo(
        p.partition,
        p.log_start_offset,
        p.log_end_offset,
        p.high_watermark,
        p.size_bytes,
        p.segment_count,
        leader=p.leader,
        replicas=list(p.replicas),
        isr=list(p.isr),
        leader_epoch=p.leader_epoch,
    )


def test_cluster_description_fields_with_brokers_by_id_and_a_hostless_one_as_reached() -> None:
    response = pb.DescribeClusterResponse(
        cluster_id="c1",
        controller_id=2,
        brokers=[
            pb.BrokerDescription(broker_id=2, host="b2.example", port=9093),
            pb.BrokerDescription(broker_id=1, host="", port=0),
            pb.BrokerDescription(broker_id=3, host="::1", port=9094),
        ],
        cluster_mode=True,
        broker_id=1,
        etcd_endpoints="e1:2379,e2:2379",
        etcd_healthy=True,
        etcd_status="etcd 3.4 at e1:2379",
    )
    cluster = cluster_from_proto(response, "[::1]:9092")
    assert cluster.brokers == [
        BrokerInfo(1, "::1", 9092),
        BrokerInfo(2, "b2.example", 9093),
        BrokerInfo(3, "::1", 9094),
    ]
    assert [b.address for b in cluster.brokers] == ["[::1]:9092", "b2.example:9093", "[::1]:9094"]
    assert (cluster.cluster_id, cluster.controller, cluster.broker_id) == ("c1", 2, 1)
    assert cluster.cluster_mode and cluster.etcd_healthy
    assert cluster.etcd_endpoints == ["e1:2379", "e2:2379"]
    assert cluster.etcd_status == "etcd 3.4 at e1:2379"

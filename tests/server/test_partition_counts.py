"""Partition counts at and beyond the wire's int32 limits, against a real broker: every
out-of-range count is INVALID_ARGUMENT with the allowed range, never a crash."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from logstore import Admin
from logstore.client import admin as admin_module
from logstore.errors import InvalidPartitionsError
from logstore.storage.log_config import DEFAULT_MAX_PARTITIONS
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ALLOWED = f"expected an integer in 1..{DEFAULT_MAX_PARTITIONS}"


@pytest.fixture
def admin(broker: BrokerProcess) -> Iterator[Admin]:
    with Admin(broker.address) as client:
        yield client


def test_the_client_knows_the_brokers_limit() -> None:
    assert admin_module.MAX_PARTITIONS == DEFAULT_MAX_PARTITIONS


@pytest.mark.parametrize("count", [INT32_MIN, -1, 0, DEFAULT_MAX_PARTITIONS + 1, INT32_MAX])
def test_the_broker_refuses_any_count_the_wire_carries(
    stub: pb_grpc.LogStoreStub, count: int
) -> None:
    with pytest.raises(grpc.RpcError) as created:
        stub.CreateTopic(pb.CreateTopicRequest(name="t", partitions=count), timeout=10)
    assert created.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert created.value.details() == f"invalid partition count '{count}': {ALLOWED}"
    stub.CreateTopic(pb.CreateTopicRequest(name="u", partitions=1), timeout=10)
    with pytest.raises(grpc.RpcError) as added:
        stub.AddPartitions(pb.AddPartitionsRequest(name="u", total_count=count), timeout=10)
    assert added.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid partition count" in added.value.details()
    assert stub.ListTopics(pb.ListTopicsRequest(), timeout=10).topics[0].name == "u"


@pytest.mark.parametrize("count", [INT32_MAX, INT32_MAX + 1, 10**20, -(10**20)])
def test_admin_refuses_huge_counts_in_the_brokers_words(admin: Admin, count: int) -> None:
    expected = f"invalid partition count '{count}': {ALLOWED}"
    with pytest.raises(InvalidPartitionsError) as created:
        admin.create_topic("t", partitions=count)
    assert str(created.value) == expected
    admin.create_topic("u")
    with pytest.raises(InvalidPartitionsError) as added:
        admin.add_partitions("u", count)
    assert "invalid partition count" in str(added.value)
    assert admin.list_topics() == ["u"]


def test_admin_cuts_an_absurdly_long_count_short(admin: Admin) -> None:
    with pytest.raises(InvalidPartitionsError, match=r"\.\.\. \(101 characters\)"):
        admin.create_topic("t", partitions=10**100)

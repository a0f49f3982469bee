"""Kafka's ConsumerProtocol bytes: what Kafka clients send is read back exactly, LogStore's
encodings read back in kafka-python, and no input raises anything but ValueError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.protocol.consumer.metadata import (
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)

from logstore.server.groups.consumer_protocol import (
    Subscription,
    decode_assignment,
    decode_subscription,
    encode_assignment,
    encode_subscription,
)

_Owned = ConsumerProtocolSubscription.TopicPartition
_Assigned = ConsumerProtocolAssignment.TopicPartition

topics = st.lists(st.text(min_size=1, max_size=20), max_size=5)
partitions = st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=5)
by_topic = st.dictionaries(st.text(min_size=1, max_size=10), partitions, max_size=4)


@settings(max_examples=200, deadline=None)
@given(
    version=st.integers(min_value=0, max_value=3),
    subscribed=topics,
    owned=by_topic,
    user_data=st.none() | st.binary(max_size=20),
    generation=st.integers(min_value=-1, max_value=1000),
    rack=st.none() | st.text(max_size=5),
)
def test_subscriptions_kafka_python_writes_are_read_back(
    version: int,
    subscribed: list[str],
    owned: dict[str, list[int]],
    user_data: bytes | None,
    generation: int,
    rack: str | None,
) -> None:
    data = ConsumerProtocolSubscription(
        version=version,
        topics=subscribed,
        user_data=user_data,
        owned_partitions=[_Owned(topic=t, partitions=ps) for t, ps in owned.items()],
        generation_id=generation,
        rack_id=rack,
    ).encode()
    expected_owned = [(t, p) for t, ps in owned.items() for p in ps] if version >= 1 else []
    assert decode_subscription(bytes(data)) == Subscription(subscribed, expected_owned)


@settings(max_examples=200, deadline=None)
@given(
    version=st.integers(min_value=0, max_value=3),
    assigned=by_topic,
    user_data=st.none() | st.binary(max_size=20),
)
def test_assignments_kafka_python_writes_are_read_back(
    version: int, assigned: dict[str, list[int]], user_data: bytes | None
) -> None:
    data = ConsumerProtocolAssignment(
        version=version,
        assigned_partitions=[_Assigned(topic=t, partitions=ps) for t, ps in assigned.items()],
        user_data=user_data,
    ).encode()
    assert decode_assignment(bytes(data)) == [(t, p) for t, ps in assigned.items() for p in ps]


def test_logstores_encodings_read_back_in_kafka_python() -> None:
    subscription = ConsumerProtocolSubscription.decode(encode_subscription(["orders", "é"]))
    assert subscription.topics == ["orders", "é"] and subscription.user_data is None
    assignment = ConsumerProtocolAssignment.decode(
        encode_assignment([("orders", 0), ("refunds", 1), ("orders", 2)])
    )
    assert [(a.topic, a.partitions) for a in assignment.assigned_partitions] == [
        ("orders", [0, 2]),
        ("refunds", [1]),
    ]


def test_a_newer_version_is_read_as_version_3() -> None:
    data = bytearray(
        ConsumerProtocolSubscription(
            version=3, topics=["t"], owned_partitions=[_Owned(topic="t", partitions=[4])]
        ).encode()
    )
    data[0:2] = (7).to_bytes(2, "big")
    assert decode_subscription(bytes(data) + b"future fields") == Subscription(["t"], [("t", 4)])


def test_empty_assignment_bytes_are_no_partitions() -> None:
    assert decode_assignment(b"") == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\xff\xff\x00\x00\x00\x00",  # negative version
        b"\x00\x00\x00\x00\x00\x01\x00\x05ab",  # a string cut short
        b"\x00\x00\x7f\xff\xff\xff",  # an array count far beyond the bytes
        b"\x00\x00\x00\x00\x00\x01\xff\xff",  # a null topic
        b"\x00\x00\x00\x00\x00\x01\x00\x01\xff\x00\x00\x00\x00",  # a topic that is not UTF-8
    ],
)
def test_unreadable_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_subscription(data)
    if data:
        with pytest.raises(ValueError):
            decode_assignment(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_value_error(data: bytes) -> None:
    for decode in (decode_subscription, decode_assignment):
        with contextlib.suppress(ValueError):  # anything else fails the test
            decode(data)

"""Producer and consumer routing by partition leader, through a `RelayCluster`: relays that
each play a broker of a cluster in front of one real broker (see `cluster_relay`).

Each test checks what reached the shared log (every record once, in order per partition)
and which relay was sent which partitions: requests go to a partition's leader; a deposed
leader's refusal (NotLeaderOrFollowerError) or a dead leader makes the client ask for
metadata again and carry on at the new leader, from where it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future

import grpc
import pytest

from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.types import ConsumerRecord, RecordMetadata
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.client.cluster_relay import FETCH_STREAM, METADATA, PRODUCE_STREAM, RelayCluster
from tests.client.test_consumer import check_values, poll_until, produce
from tests.client.test_producer import _records
from tests.server.conftest import BrokerProcess

WAIT_S = 30.0
#: quick retries: the tests wait for leadership changes, not for backoffs
FAST = {"retry_backoff_ms": 10}


@pytest.fixture
def relays(broker: BrokerProcess) -> Iterator[RelayCluster]:
    cluster = RelayCluster(broker.address, 2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def create(broker: BrokerProcess, topic: str, partitions: int) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic(topic, partitions=partitions)


def values(broker: BrokerProcess, topic: str, partition: int) -> list[bytes]:
    return [r.value or b"" for r in _records(broker, topic, partition)]


def sent(futures: list[Future[RecordMetadata]]) -> list[RecordMetadata]:
    return [f.result(WAIT_S) for f in futures]


def numbered(start: int, stop: int) -> list[bytes]:
    return [b"%d" % i for i in range(start, stop)]


# --- the producer ----------------------------------------------------------------------------


def test_the_producer_sends_each_partition_to_its_leader(
    broker: BrokerProcess, relays: RelayCluster
) -> None:
    create(broker, "routed", 2)
    relays.move(("routed", 1), 2)
    with Producer(relays.address(1), linger_ms=2, **FAST) as producer:
        futures = [producer.send("routed", b"%d" % i, partition=i % 2) for i in range(200)]
        sent(futures)
    one, two = relays.relays
    assert one.produced == {("routed", 0)} and two.produced == {("routed", 1)}
    assert one.calls[PRODUCE_STREAM] == 1 and two.calls[PRODUCE_STREAM] == 1
    assert values(broker, "routed", 0) == numbered(0, 200)[0::2]
    assert values(broker, "routed", 1) == numbered(0, 200)[1::2]


def test_a_deposed_leader_makes_the_producer_resend_to_the_new_one_in_order(
    broker: BrokerProcess, relays: RelayCluster
) -> None:
    create(broker, "moving", 1)
    with Producer(relays.address(1), linger_ms=0, **FAST) as producer:
        sent([producer.send("moving", v) for v in numbered(0, 100)])
        relays.move(("moving", 0), 2)  # relay 1 refuses it from now on
        sent([producer.send("moving", v) for v in numbered(100, 300)])
    assert ("moving", 0) in relays.relays[0].refused
    assert ("moving", 0) in relays.relays[1].produced
    assert values(broker, "moving", 0) == numbered(0, 300)


def test_a_dead_leaders_batches_go_to_the_new_leader_once_each(
    broker: BrokerProcess, relays: RelayCluster
) -> None:
    create(broker, "failover", 1)
    bootstrap = f"{relays.address(1)},{relays.address(2)}"
    with Producer(bootstrap, linger_ms=1, **FAST) as producer:
        sent([producer.send("failover", v) for v in numbered(0, 100)])
        in_flight = [producer.send("failover", v) for v in numbered(100, 200)]
        relays.move(("failover", 0), 2)
        relays.relays[0].stop()  # the leader dies with requests in flight
        later = [producer.send("failover", v) for v in numbered(200, 300)]
        offsets = [md.offset for md in sent(in_flight + later)]
    assert offsets == list(range(100, 300))
    assert ("failover", 0) in relays.relays[1].produced
    # a batch the dead leader appended before dying is recognised, not appended again
    assert values(broker, "failover", 0) == numbered(0, 300)


# --- the consumer ----------------------------------------------------------------------------


def by_value(records: list[ConsumerRecord], partition: int) -> list[int]:
    return [r.offset for r in records if r.partition == partition]


def test_the_consumer_fetches_each_partition_from_its_leader(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    create(broker, "read", 2)
    for p in (0, 1):
        produce(stub, "read", p, 0, 150, batch_size=30)
    relays.move(("read", 1), 2)
    consumer = Consumer(
        relays.address(1), auto_offset_reset="earliest", fetch_max_wait_ms=50, **FAST
    )
    with consumer:
        consumer.assign([("read", 0), ("read", 1)])
        records = poll_until(consumer, 300)
    one, two = relays.relays
    assert one.fetched == {("read", 0)} and two.fetched == {("read", 1)}
    assert one.calls[FETCH_STREAM] == 1 and two.calls[FETCH_STREAM] == 1
    check_values(records)
    assert by_value(records, 0) == list(range(150)) and by_value(records, 1) == list(range(150))


def test_a_deposed_leader_makes_the_consumer_fetch_on_from_the_new_one(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    create(broker, "moving", 1)
    produce(stub, "moving", 0, 0, 100, batch_size=10)
    consumer = Consumer(
        relays.address(1), auto_offset_reset="earliest", fetch_max_wait_ms=50, **FAST
    )
    with consumer:
        consumer.assign([("moving", 0)])
        records = poll_until(consumer, 100)
        relays.move(("moving", 0), 2)
        produce(stub, "moving", 0, 100, 100, batch_size=10)
        records += poll_until(consumer, 100)
        assert consumer.poll(timeout=0.2) == []
    assert ("moving", 0) in relays.relays[0].refused
    assert ("moving", 0) in relays.relays[1].fetched
    check_values(records)
    assert by_value(records, 0) == list(range(200))


def test_a_dead_leader_makes_the_consumer_fetch_on_from_the_new_one(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    create(broker, "failover", 2)
    for p in (0, 1):
        produce(stub, "failover", p, 0, 100, batch_size=10)
    relays.move(("failover", 1), 2)
    bootstrap = f"{relays.address(1)},{relays.address(2)}"
    consumer = Consumer(bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=50, **FAST)
    with consumer:
        consumer.assign([("failover", 0), ("failover", 1)])
        records = poll_until(consumer, 200)
        relays.move(("failover", 0), 2)
        relays.relays[0].stop()
        for p in (0, 1):
            produce(stub, "failover", p, 100, 100, batch_size=10)
        records += poll_until(consumer, 200)
        assert consumer.poll(timeout=0.2) == []
    check_values(records)
    assert by_value(records, 0) == list(range(200)) and by_value(records, 1) == list(range(200))


def test_a_group_moves_to_another_broker_when_the_one_it_talks_to_dies(
    broker: BrokerProcess, relays: RelayCluster, stub: pb_grpc.LogStoreStub
) -> None:
    create(broker, "grouped", 1)
    relays.move(("grouped", 0), 2)  # fetched from relay 2; the group talks to relay 1
    produce(stub, "grouped", 0, 0, 50)
    bootstrap = f"{relays.address(1)},{relays.address(2)}"
    consumer = Consumer(
        bootstrap,
        group_id="movers",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        heartbeat_interval_ms=100,
        **FAST,
    )
    with consumer:
        consumer.subscribe(["grouped"])
        records = poll_until(consumer, 50)
        consumer.commit()
        join_calls = relays.relays[0].calls["/logstore.v1.LogStore/JoinGroup"]
        relays.relays[0].stop()
        produce(stub, "grouped", 0, 50, 50)
        records += poll_until(consumer, 50)
        deadline = time.monotonic() + WAIT_S
        while relays.relays[1].calls["/logstore.v1.LogStore/Heartbeat"] == 0:
            assert time.monotonic() < deadline, "no heartbeat reached the other broker"
            consumer.poll(timeout=0.1)
        consumer.commit()
        assert consumer.committed(("grouped", 0)) is not None
        assert consumer.assignment() == {("grouped", 0)}
    assert join_calls == 1
    check_values(records)
    assert by_value(records, 0) == list(range(100))
    with Admin(broker.address) as admin:
        committed = admin.committed_offsets("movers")
    assert committed[("grouped", 0)].offset == 100


# --- a standalone broker ---------------------------------------------------------------------


def test_with_a_standalone_broker_one_stream_each_and_one_metadata_call(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    """The standalone path is today's: whatever the partitions, the producer opens one
    ProduceStream and the consumer one FetchStream, to the bootstrap broker, each after one
    Metadata call at start-up (whether the broker answers it or predates it)."""
    create(broker, "solo", 3)
    cluster = RelayCluster(broker.address, 1, standalone=True)
    relay = cluster.relays[0]
    try:
        with Producer(relay.address, linger_ms=2, **FAST) as producer:
            sent([producer.send("solo", b"%d" % i, partition=i % 3) for i in range(300)])
            assert producer.partitions_for("solo") == {0, 1, 2}
        assert relay.calls[METADATA] == 1
        assert relay.calls[PRODUCE_STREAM] == 1
        assert relay.produced == {("solo", 0), ("solo", 1), ("solo", 2)}
        consumer = Consumer(relay.address, auto_offset_reset="earliest", fetch_max_wait_ms=50)
        with consumer:
            consumer.assign([("solo", p) for p in range(3)])
            records = poll_until(consumer, 300)
            consumer.seek_to_beginning()
            records += poll_until(consumer, 300)  # no refresh, no new stream for a seek
        assert len(records) == 600
        assert relay.calls[FETCH_STREAM] == 1
        assert relay.calls[METADATA] == 2
    finally:
        cluster.close()

"""`Consumer` against a real `logstore serve` process.

Topics are filled with raw Produce RPCs so these tests do not depend on the Producer. Each
record's value names its partition and index (b"p<partition>-<index>"), so a read-back can
be checked for order, loss and duplication.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from logstore.client.consumer import Consumer, ConsumerRebalanceListener
from logstore.codec import record_batch as rb
from logstore.errors import (
    BrokerUnavailableError,
    ClientClosedError,
    InvalidRequestError,
    NoOffsetForPartitionError,
)
from logstore.types import (
    ConsumerRecord,
    OffsetAndMetadata,
    OffsetAndTimestamp,
    TopicPartition,
)
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.server.conftest import BrokerProcess

#: record timestamps start here (ms); record i of a fill is stamped TS0 + 10 * i
TS0 = 1_700_000_000_000
#: upper bound for any wait in these tests (s); loops stop there instead of hanging
WAIT_S = 15.0


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def create(stub: pb_grpc.LogStoreStub, name: str, partitions: int = 1, **config: str) -> None:
    request = pb.CreateTopicRequest(name=name, partitions=partitions, config=config)
    stub.CreateTopic(request, timeout=10)


def produce(
    stub: pb_grpc.LogStoreStub,
    topic: str,
    partition: int,
    start: int,
    count: int,
    *,
    batch_size: int = 100,
    key: bytes | None = None,
) -> None:
    """Append records start..start+count-1 of `partition` (values b"p<partition>-<i>"),
    fsynced (acks=-1) so a kill -9 keeps them."""
    for first in range(start, start + count, batch_size):
        last = min(first + batch_size, start + count)
        batch = rb.encode_batch(
            [(key, f"p{partition}-{i}".encode(), None, TS0 + 10 * i) for i in range(first, last)]
        )
        request = pb.ProduceRequest(
            acks=-1,
            topics=[
                pb.ProduceTopicData(
                    topic=topic,
                    partitions=[pb.ProducePartitionData(partition=partition, records=batch)],
                )
            ],
        )
        result = stub.Produce(request, timeout=10, wait_for_ready=True).topics[0].partitions[0]
        assert result.error.code == 0, result.error.message


def poll_until(consumer: Consumer, count: int, timeout_s: float = WAIT_S) -> list[ConsumerRecord]:
    """Poll until `count` records arrived (or the time is up); return them all."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        records += consumer.poll(timeout=0.5)
    return records


def by_partition(records: list[ConsumerRecord]) -> dict[int, list[int]]:
    offsets: dict[int, list[int]] = {}
    for r in records:
        offsets.setdefault(r.partition, []).append(r.offset)
    return offsets


def committed_offset(consumer: Consumer, tp: TopicPartition) -> int | None:
    committed = consumer.committed(tp)
    return None if committed is None else committed.offset


def check_values(records: list[ConsumerRecord]) -> None:
    for r in records:
        assert r.value == f"p{r.partition}-{r.offset}".encode()


@pytest.fixture
def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just bound, then freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- bootstrap lists -----------------------------------------------------------------------


def test_a_bootstrap_list_starting_with_a_dead_broker_still_reads_and_commits(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, closed_port: str
) -> None:
    create(stub, "listed", partitions=2)
    for partition in (0, 1):
        produce(stub, "listed", partition, 0, 60, batch_size=20)
    consumer = Consumer(
        f"{closed_port},{broker.address}",
        group_id="listed-readers",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    with consumer:
        consumer.subscribe(["listed"])
        records = poll_until(consumer, 120)
        consumer.commit()
        assert committed_offset(consumer, ("listed", 0)) == 60
        assert consumer.end_offsets([("listed", 1)]) == {("listed", 1): 60}
        assert consumer.stalled() is None
    check_values(records)
    assert by_partition(records) == {0: list(range(60)), 1: list(range(60))}


def test_an_assigned_consumer_takes_its_bootstrap_list_from_the_environment(
    broker: BrokerProcess,
    stub: pb_grpc.LogStoreStub,
    closed_port: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    create(stub, "from-env")
    produce(stub, "from-env", 0, 0, 10)
    monkeypatch.setenv("LOGSTORE_BOOTSTRAP", f"{closed_port}, {broker.address}")
    with Consumer(auto_offset_reset="earliest") as consumer:
        consumer.assign([("from-env", 0)])
        records = poll_until(consumer, 10)
        assert consumer.position(("from-env", 0)) == 10
    assert by_partition(records) == {0: list(range(10))}


def test_a_bootstrap_list_of_dead_brokers_is_reported_and_bad_entries_refused(
    closed_port: str,
) -> None:
    dead = f"{closed_port},127.0.0.1:1"
    with Consumer(dead, retry_backoff_ms=10, request_timeout_ms=2000) as consumer:
        with pytest.raises(BrokerUnavailableError, match=closed_port):
            consumer.end_offsets([("t", 0)])
        stall = consumer.stalled()
        assert stall is not None and stall.reason == "broker_unreachable" and stall.broker == dead
    with pytest.raises(InvalidRequestError, match="'nope' is not HOST:PORT"):
        Consumer("127.0.0.1:9092,nope")


# --- reading -------------------------------------------------------------------------------


def test_assign_reads_every_partition_in_order(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "orders", partitions=3)
    counts = {0: 250, 1: 1, 2: 730}
    for partition, count in counts.items():
        produce(stub, "orders", partition, 0, count)
    with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([("orders", p) for p in counts])
        assert consumer.assignment() == {("orders", 0), ("orders", 1), ("orders", 2)}
        records = poll_until(consumer, sum(counts.values()))
        assert consumer.poll(timeout=0.2) == []
        assert {p: consumer.position(("orders", p)) for p in counts} == counts
    assert by_partition(records) == {p: list(range(n)) for p, n in counts.items()}
    check_values(records)
    first = records[0]
    assert (first.topic, first.key, first.headers) == ("orders", None, ())
    assert first.timestamp == TS0 + 10 * first.offset


def test_pause_holds_a_partition_and_resume_goes_on_where_it_stopped(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "held", partitions=2)
    produce(stub, "held", 0, 0, 300)
    produce(stub, "held", 1, 0, 200)
    with Consumer(broker.address, auto_offset_reset="earliest", max_poll_records=50) as c:
        c.assign([("held", 0), ("held", 1)])
        first = c.poll(timeout=WAIT_S)
        assert first
        c.pause([("held", 0)])
        assert c.paused() == {("held", 0)}
        position = c.position(("held", 0))
        # partition 1 alone comes through while 0 is paused, buffered records included
        rest = poll_until(c, 200 - len(by_partition(first).get(1, [])))
        assert set(by_partition(rest)) == {1}
        assert c.poll(timeout=0.3) == []
        assert c.position(("held", 0)) == position
        c.resume([("held", 0)])
        assert c.paused() == set()
        resumed = poll_until(c, 300 - position)
        with pytest.raises(InvalidRequestError, match="cannot pause other-0: not assigned"):
            c.pause([("other", 0)])
    assert by_partition(first + rest + resumed) == {0: list(range(300)), 1: list(range(200))}


def test_max_poll_records_is_respected(broker: BrokerProcess, stub: pb_grpc.LogStoreStub) -> None:
    create(stub, "t", partitions=2)
    produce(stub, "t", 0, 0, 100)
    produce(stub, "t", 1, 0, 100)
    with Consumer(broker.address, auto_offset_reset="earliest", max_poll_records=7) as consumer:
        consumer.assign([("t", 0), ("t", 1)])
        sizes: list[int] = []
        deadline = time.monotonic() + WAIT_S
        while sum(sizes) < 200 and time.monotonic() < deadline:
            sizes.append(len(consumer.poll(timeout=0.5)))
        assert sum(sizes) == 200
        assert max(sizes) == 7
        consumer.seek_to_beginning()
        again = poll_until(consumer, 1)
        assert 1 <= len(again) <= 7
        assert len(consumer.poll(timeout=1.0, max_records=3)) == 3


def test_deserializers_apply_to_keys_and_values(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t")
    produce(stub, "t", 0, 0, 3, key=b"k")
    produce(stub, "t", 0, 3, 1)
    with Consumer(
        broker.address,
        auto_offset_reset="earliest",
        key_deserializer=bytes.decode,
        value_deserializer=lambda v: v.upper(),
    ) as consumer:
        consumer.assign([("t", 0)])
        records = poll_until(consumer, 4)
    assert [(r.key, r.value) for r in records] == [
        ("k", b"P0-0"),
        ("k", b"P0-1"),
        ("k", b"P0-2"),
        (None, b"P0-3"),
    ]


# --- positions -----------------------------------------------------------------------------


def test_seek_position_and_seek_to_beginning_and_end(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t", partitions=2)
    produce(stub, "t", 0, 0, 500)
    with Consumer(broker.address, auto_offset_reset="earliest", max_poll_records=10) as consumer:
        consumer.assign([("t", 0)])
        assert consumer.position(("t", 0)) == 0
        first = poll_until(consumer, 10)
        assert [r.offset for r in first] == list(range(10))
        assert consumer.position(("t", 0)) == 10
        # Records past 10 are buffered by now; a seek must discard them.
        consumer.seek("t", 0, 42)
        assert consumer.position(("t", 0)) == 42
        assert [r.offset for r in poll_until(consumer, 10)] == list(range(42, 52))
        consumer.seek_to_end()
        assert consumer.position(("t", 0)) == 500
        assert consumer.poll(timeout=0.3) == []
        consumer.seek_to_beginning([("t", 0)])
        assert poll_until(consumer, 1)[0].offset == 0
        consumer.seek("t", 0, 495)
        assert [r.offset for r in poll_until(consumer, 5)] == list(range(495, 500))
        with pytest.raises(InvalidRequestError, match="not assigned"):
            consumer.seek("t", 1, 0)
        with pytest.raises(InvalidRequestError, match="not assigned"):
            consumer.position(("t", 1))
        assert consumer.beginning_offsets([("t", 0)]) == {("t", 0): 0}
        assert consumer.end_offsets([("t", 0), ("t", 1)]) == {("t", 0): 500, ("t", 1): 0}


def test_offsets_for_times(broker: BrokerProcess, stub: pb_grpc.LogStoreStub) -> None:
    create(stub, "t", partitions=2)
    produce(stub, "t", 0, 0, 100)
    with Consumer(broker.address) as consumer:
        found = consumer.offsets_for_times({("t", 0): TS0 + 555, ("t", 1): TS0})
        assert found == {
            ("t", 0): OffsetAndTimestamp(56, TS0 + 560),
            ("t", 1): None,  # an empty partition has no record that new
        }
        assert consumer.offsets_for_times({("t", 0): 0}) == {("t", 0): OffsetAndTimestamp(0, TS0)}
        assert consumer.offsets_for_times({("t", 0): TS0 + 10_000}) == {("t", 0): None}
        with pytest.raises(InvalidRequestError):
            consumer.offsets_for_times({("t", 0): -5})


def test_auto_offset_reset_earliest_latest_and_error(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t")
    produce(stub, "t", 0, 0, 20)
    with Consumer(broker.address, auto_offset_reset="earliest") as earliest:
        earliest.assign([("t", 0)])
        assert poll_until(earliest, 1)[0].offset == 0
    with Consumer(broker.address, auto_offset_reset="latest") as latest:
        latest.assign([("t", 0)])
        assert latest.position(("t", 0)) == 20
        assert latest.poll(timeout=0.3) == []
        produce(stub, "t", 0, 20, 1)
        assert [r.offset for r in poll_until(latest, 1)] == [20]
    with Consumer(broker.address, group_id="fresh", auto_offset_reset="error") as strict:
        strict.assign([("t", 0)])
        with pytest.raises(NoOffsetForPartitionError, match="no committed offset"):
            strict.poll(timeout=0.2)
        strict.seek("t", 0, 5)  # an explicit position needs no reset policy
        assert poll_until(strict, 1)[0].offset == 5
    with pytest.raises(InvalidRequestError, match="auto_offset_reset"):
        Consumer(broker.address, auto_offset_reset="middle")


# --- commits -------------------------------------------------------------------------------


def test_commit_then_a_new_consumer_of_the_group_resumes(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t", partitions=2)
    produce(stub, "t", 0, 0, 100)
    produce(stub, "t", 1, 0, 100)
    options: dict[str, Any] = {
        "group_id": "billing",
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
    }
    with Consumer(broker.address, max_poll_records=10, **options) as first:
        first.assign([("t", 0), ("t", 1)])
        seen = poll_until(first, 30)
        assert len(seen) == 30
        first.commit()
        positions = {p: first.position(("t", p)) for p in (0, 1)}
        assert sum(positions.values()) == 30
        assert {p: committed_offset(first, ("t", p)) for p in (0, 1)} == positions
    with Consumer(broker.address, **options) as second:
        second.assign([("t", 0), ("t", 1)])
        rest = poll_until(second, 170)
    offsets = by_partition(seen + rest)
    assert offsets == {0: list(range(100)), 1: list(range(100))}
    assert {p: by_partition(rest)[p][0] for p in (0, 1)} == positions
    with Consumer(broker.address, **options) as third:
        third.commit({("t", 0): OffsetAndMetadata(7, "note")})
        committed = third.committed(("t", 0))
        assert committed is not None and (committed.offset, committed.metadata) == (7, "note")
        assert committed_offset(third, ("t", 1)) == positions[1]


def test_commit_async_calls_back_with_offsets(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t")
    produce(stub, "t", 0, 0, 10)
    done = threading.Event()
    results: list[tuple[dict[TopicPartition, OffsetAndMetadata], Exception | None]] = []

    def callback(offsets: dict[TopicPartition, OffsetAndMetadata], exc: Exception | None) -> None:
        results.append((offsets, exc))
        done.set()

    with Consumer(
        broker.address, group_id="g", auto_offset_reset="earliest", enable_auto_commit=False
    ) as consumer:
        consumer.assign([("t", 0)])
        assert len(poll_until(consumer, 10)) == 10
        future = consumer.commit_async(callback=callback)
        assert done.wait(WAIT_S)
        future.result(timeout=WAIT_S)
        assert results == [({("t", 0): OffsetAndMetadata(10)}, None)]
        assert committed_offset(consumer, ("t", 0)) == 10
        # A rejected commit reaches the callback (and the future) as an exception.
        done.clear()
        bad = consumer.commit_async({("missing", 0): 1}, callback=callback)
        assert done.wait(WAIT_S)
        assert results[-1][1] is not None
        assert bad.exception(timeout=WAIT_S) is results[-1][1]


def test_auto_commit_on_close(broker: BrokerProcess, stub: pb_grpc.LogStoreStub) -> None:
    create(stub, "t")
    produce(stub, "t", 0, 0, 50)
    consumer = Consumer(
        broker.address,
        group_id="auto",
        auto_offset_reset="earliest",
        auto_commit_interval_ms=60_000,
        max_poll_records=20,
    )
    consumer.assign([("t", 0)])
    assert len(poll_until(consumer, 20)) == 20
    consumer.close()
    with Consumer(broker.address, group_id="auto", enable_auto_commit=False) as check:
        assert committed_offset(check, ("t", 0)) == 20


def test_auto_commit_in_poll(broker: BrokerProcess, stub: pb_grpc.LogStoreStub) -> None:
    create(stub, "t")
    produce(stub, "t", 0, 0, 30)
    with (
        Consumer(
            broker.address,
            group_id="tick",
            auto_offset_reset="earliest",
            auto_commit_interval_ms=100,
        ) as consumer,
        Consumer(broker.address, group_id="tick") as observer,
    ):
        consumer.assign([("t", 0)])
        assert len(poll_until(consumer, 30)) == 30
        deadline = time.monotonic() + WAIT_S
        committed = None
        while time.monotonic() < deadline:
            consumer.poll(timeout=0.1)
            committed = observer.committed(("t", 0))
            if committed is not None and committed.offset == 30:
                break
        assert committed is not None and committed.offset == 30


def test_close_is_idempotent_and_poll_after_close_raises(broker: BrokerProcess) -> None:
    consumer = Consumer(broker.address)
    consumer.close()
    consumer.close()
    with pytest.raises(ClientClosedError):
        consumer.poll(timeout=0.1)
    with pytest.raises(ClientClosedError):
        consumer.assign([("t", 0)])


# --- subscriptions -------------------------------------------------------------------------


class RecordingListener(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, set[TopicPartition]]] = []

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", assigned))


def test_subscribe_reads_every_partition_and_picks_up_new_ones(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "orders", partitions=3)
    for partition in range(3):
        produce(stub, "orders", partition, 0, 40)
    listener = RecordingListener()
    consumer = Consumer(
        broker.address,
        group_id="billing",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=200,
    )
    with consumer:
        consumer.subscribe(["orders"], listener=listener)
        assert consumer.subscription() == {"orders"}
        records = poll_until(consumer, 120)
        assert by_partition(records) == {p: list(range(40)) for p in range(3)}
        assert consumer.assignment() == {("orders", p) for p in range(3)}
        assert listener.events == [("assigned", {("orders", p) for p in range(3)})]
        with pytest.raises(InvalidRequestError, match="one or the other"):
            consumer.assign([("orders", 0)])
        stub.AddPartitions(pb.AddPartitionsRequest(name="orders", total_count=4), timeout=10)
        produce(stub, "orders", 3, 0, 5)
        added = poll_until(consumer, 5)
        assert by_partition(added) == {3: list(range(5))}
        assert listener.events[-1] == ("assigned", {("orders", 3)})
    assert listener.events[-1] == ("revoked", {("orders", p) for p in range(4)})


def test_subscribe_needs_a_group_and_excludes_assign(broker: BrokerProcess) -> None:
    with Consumer(broker.address) as consumer:
        with pytest.raises(InvalidRequestError, match="group_id"):
            consumer.subscribe(["orders"])
        consumer.assign([("orders", 0)])
    with Consumer(broker.address, group_id="g") as consumer:
        consumer.assign([("orders", 0)])
        with pytest.raises(InvalidRequestError, match="one or the other"):
            consumer.subscribe(["orders"])
        consumer.unsubscribe()
        assert consumer.assignment() == set()
        consumer.subscribe(["orders"])


# --- long poll and failures ----------------------------------------------------------------


def test_poll_waits_for_new_data_and_times_out_when_idle(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t")
    with Consumer(broker.address, fetch_max_wait_ms=5000) as consumer:
        consumer.assign([("t", 0)])
        assert consumer.position(("t", 0)) == 0
        started = time.monotonic()
        assert consumer.poll(timeout=0.3) == []
        assert 0.3 <= time.monotonic() - started < 2.0
        timer = threading.Timer(0.5, produce, args=(stub, "t", 0, 0, 1))
        started = time.monotonic()
        timer.start()
        records = consumer.poll(timeout=10.0)
        elapsed = time.monotonic() - started
        timer.join()
        assert [r.value for r in records] == [b"p0-0"]
        # The fetcher's long poll (up to 5 s here) answers as soon as the record lands.
        assert 0.4 <= elapsed < 3.0


def test_broker_restart_loses_and_duplicates_nothing(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub
) -> None:
    create(stub, "t", partitions=3)
    for partition in range(3):
        produce(stub, "t", partition, 0, 300)
    # One 100-record batch per partition per fetch, so most records are fetched after the
    # restart, from positions the consumer kept through the outage.
    with Consumer(
        broker.address,
        auto_offset_reset="earliest",
        max_poll_records=50,
        max_partition_fetch_bytes=1024,
        retry_backoff_ms=50,
    ) as consumer:
        consumer.assign([("t", p) for p in range(3)])
        records = poll_until(consumer, 200)
        broker.kill9()
        # Buffered records still come out; then polls return [] instead of failing.
        for _ in range(10):
            records += consumer.poll(timeout=0.1)
        assert len(records) < 900
        broker.start()
        for partition in range(3):
            produce(stub, "t", partition, 300, 300)
        records += poll_until(consumer, 1800 - len(records), timeout_s=30)
        assert consumer.poll(timeout=0.2) == []
    assert by_partition(records) == {p: list(range(600)) for p in range(3)}
    check_values(records)


def _drop_oldest_segments(data_dir: Path, partition_dir: str, keep: int) -> int:
    """Delete all but the newest `keep` segments (as retention would); return the new log
    start offset."""
    directory = data_dir / partition_dir
    bases = sorted(int(p.stem) for p in directory.glob("*.log"))
    assert len(bases) > keep, f"expected several segments, found {bases}"
    for base in bases[:-keep]:
        for suffix in (".log", ".index", ".timeindex"):
            (directory / f"{base:020d}{suffix}").unlink(missing_ok=True)
    return bases[-keep]


@pytest.mark.parametrize("policy", ["earliest", "latest", "error"])
def test_committed_offset_below_log_start_resets_per_policy(
    broker: BrokerProcess, stub: pb_grpc.LogStoreStub, policy: str
) -> None:
    create(stub, "t", **{"segment.bytes": "1024"})
    produce(stub, "t", 0, 0, 200, batch_size=10)
    with Consumer(broker.address, group_id="g", enable_auto_commit=False) as consumer:
        consumer.assign([("t", 0)])
        consumer.commit({("t", 0): 3})
    broker.stop()
    log_start = _drop_oldest_segments(broker.data_dir, "t-0", keep=3)
    broker.start()
    with Consumer(
        broker.address, group_id="g", auto_offset_reset=policy, enable_auto_commit=False
    ) as consumer:
        consumer.assign([("t", 0)])
        assert consumer.position(("t", 0)) == 3  # the committed offset, now out of range
        if policy == "error":
            deadline = time.monotonic() + WAIT_S
            with pytest.raises(NoOffsetForPartitionError, match="out of range"):
                while time.monotonic() < deadline:
                    consumer.poll(timeout=0.2)
            return
        records = poll_until(consumer, 1) if policy == "earliest" else consumer.poll(timeout=1.0)
        if policy == "earliest":
            assert records[0].offset == log_start
            check_values(records)
        else:
            assert records == []
            assert consumer.position(("t", 0)) == 200

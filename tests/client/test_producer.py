"""`Producer` against a real broker: delivery, routing, batching, errors and recovery."""

from __future__ import annotations

import concurrent.futures
import logging
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from logstore.acls import AclBinding
from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.client.producer import BatchMetadata, Producer, accumulator, futures
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec.partitioner import partition_for_key
from logstore.errors import (
    AuthorizationError,
    BrokerUnavailableError,
    BufferExhaustedError,
    ClientClosedError,
    InvalidRequestError,
    RecordTooLargeError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
    UnsupportedCompressionError,
)
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.codec import kafka_peers as peers
from tests.helpers import wait_until
from tests.server.conftest import BrokerProcess

WAIT_S = 30


def _create(broker: BrokerProcess, topic: str, partitions: int = 1, **config: str) -> None:
    with Admin(broker.address) as admin:
        admin.create_topic(topic, partitions=partitions, config=config)


def _fetch_raw(broker: BrokerProcess, topic: str, partition: int) -> bytes:
    """Every batch of the partition as stored, by repeated Fetch calls (bounded)."""
    chunks = []
    offset = 0
    with grpc.insecure_channel(broker.address) as channel:
        stub = pb_grpc.LogStoreStub(channel)
        for _ in range(1000):
            request = pb.FetchRequest(
                topics=[
                    pb.FetchTopic(
                        topic=topic,
                        partitions=[pb.FetchPartition(partition=partition, fetch_offset=offset)],
                    )
                ],
                max_bytes=8 * 1024 * 1024,
            )
            result = stub.Fetch(request, timeout=WAIT_S).topics[0].partitions[0]
            assert result.error.code == 0, result.error.message
            batches = list(rb.iter_batches(result.records))
            if not batches:
                assert offset >= result.high_watermark
                return b"".join(chunks)
            end = batches[-1][0] + batches[-1][1].size
            chunks.append(result.records[:end])
            offset = batches[-1][1].next_offset
    raise AssertionError("fetch did not reach the end of the partition")


def _records(broker: BrokerProcess, topic: str, partition: int) -> list[rb.Record]:
    return rb.decode_all(_fetch_raw(broker, topic, partition))


def _headers(broker: BrokerProcess, topic: str, partition: int) -> list[rb.BatchHeader]:
    return [header for _, header in rb.iter_batches(_fetch_raw(broker, topic, partition))]


@pytest.fixture
def producer(broker: BrokerProcess) -> Iterator[Producer]:
    with Producer(broker.address, linger_ms=2) as p:
        yield p


# --- delivery and routing ----------------------------------------------------------------------


def test_round_trip_across_partitions(broker: BrokerProcess, producer: Producer) -> None:
    _create(broker, "orders", partitions=3)
    futures = {
        b"value-%d" % i: producer.send("orders", value=b"value-%d" % i, key=b"key-%d" % (i % 11))
        for i in range(300)
    }
    producer.flush(WAIT_S)
    stored = {}
    for partition in range(3):
        for record in _records(broker, "orders", partition):
            stored[record.value] = (partition, record.offset, record.key)
    assert len(stored) == 300
    for value, future in futures.items():
        md = future.result(WAIT_S)
        assert md.topic == "orders"
        assert stored[value][:2] == (md.partition, md.offset)
    assert {p for p, _, _ in stored.values()} == {0, 1, 2}


def test_same_key_same_partition_as_partition_for_key(
    broker: BrokerProcess, producer: Producer
) -> None:
    _create(broker, "keyed", partitions=5)
    keys = [b"user_%d" % i for i in range(40)]
    futures = [(key, producer.send("keyed", value=b"v", key=key)) for key in keys * 3]
    by_key: dict[bytes, set[int]] = {}
    for key, future in futures:
        by_key.setdefault(key, set()).add(future.result(WAIT_S).partition)
    for key, partitions in by_key.items():
        assert partitions == {partition_for_key(key, 5)}


def test_explicit_partition_and_order_within_it(broker: BrokerProcess, producer: Producer) -> None:
    _create(broker, "explicit", partitions=3)
    futures = [producer.send("explicit", b"%d" % i, key=b"k", partition=2) for i in range(50)]
    offsets = [f.result(WAIT_S).offset for f in futures]
    assert all(f.result().partition == 2 for f in futures)
    assert offsets == list(range(50))
    assert [r.value for r in _records(broker, "explicit", 2)] == [b"%d" % i for i in range(50)]


def test_added_partitions_are_picked_up(broker: BrokerProcess) -> None:
    _create(broker, "growing", partitions=1)
    with Producer(broker.address, metadata_max_age_ms=100) as p, Admin(broker.address) as admin:
        assert p.send("growing", b"x", key=b"k").result(WAIT_S).partition == 0
        admin.add_partitions("growing", 4)
        keys = [b"key-%d" % i for i in range(20)]
        # The background refresh runs every 100 ms; partitions_for reads what it learnt
        # (cached, so each check is cheap and sends nothing).
        wait_until(
            lambda: p.partitions_for("growing") == {0, 1, 2, 3},
            "the producer's metadata to learn the added partitions",
        )
        for key in keys:
            partition = p.send("growing", b"x", key=key).result(WAIT_S).partition
            assert partition == partition_for_key(key, 4)
        assert p.send("growing", b"x", partition=3).result(WAIT_S).partition == 3


def test_unknown_partition_fails_the_future(broker: BrokerProcess, producer: Producer) -> None:
    _create(broker, "small", partitions=2)
    with pytest.raises(UnknownTopicOrPartitionError, match="partition 7"):
        producer.send("small", b"x", partition=7).result(WAIT_S)


def test_headers_and_timestamps_are_preserved(broker: BrokerProcess, producer: Producer) -> None:
    _create(broker, "meta")
    first = producer.send("meta", b"a", headers={"k": b"v", "n": None}, timestamp_ms=1_000)
    second = producer.send("meta", b"b", headers=[("x", b"1"), ("x", b"2")], timestamp_ms=5_000)
    third = producer.send("meta", b"c")
    assert first.result(WAIT_S).timestamp == 1_000
    assert second.result(WAIT_S).timestamp == 5_000
    assert abs(third.result(WAIT_S).timestamp - time.time() * 1000) < 60_000
    records = _records(broker, "meta", 0)
    assert records[0].headers == (("k", b"v"), ("n", None))
    assert records[1].headers == (("x", b"1"), ("x", b"2"))
    assert records[2].headers == ()
    assert [r.timestamp for r in records[:2]] == [1_000, 5_000]


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks(broker: BrokerProcess, acks: int | str) -> None:
    _create(broker, "acks")
    with Producer(broker.address, acks=acks) as p:
        futures = [p.send("acks", b"%d" % i) for i in range(20)]
        p.flush(WAIT_S)
        offsets = [f.result(0).offset for f in futures]
    expected = [-1] * 20 if acks == 0 else list(range(20))
    assert offsets == expected
    assert [r.value for r in _records(broker, "acks", 0)] == [b"%d" % i for i in range(20)]


@pytest.mark.parametrize("compression", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_is_stored_in_its_codec(broker: BrokerProcess, compression: str) -> None:
    """Kafka's compression.type names; the stored batches are read by LogStore's consumer
    and by aiokafka's decoder."""
    topic = f"zipped-{compression}"
    _create(broker, topic)
    values = [b"repetitive value %d " % i * 10 for i in range(100)] + [b"batched" * 20] * 50
    with Producer(broker.address, compression=compression) as p:
        for value in values[:100]:
            p.send(topic, value)
        p.send_batch(topic, values[100:]).result(WAIT_S)
    headers = _headers(broker, topic, 0)
    assert headers and {h.codec for h in headers} == {fmt.COMPRESSION_TYPES.index(compression)}
    assert [r.value for r in peers.aiokafka_read(_fetch_raw(broker, topic, 0))] == values
    with Consumer(broker.address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0)])
        consumed: list[bytes | None] = []
        deadline = time.monotonic() + WAIT_S
        while len(consumed) < len(values) and time.monotonic() < deadline:
            consumed += [r.value for r in consumer.poll(timeout=0.5)]
    assert consumed == values


def test_linger_collects_many_sends_into_few_batches(broker: BrokerProcess) -> None:
    _create(broker, "lingered")
    with Producer(broker.address, linger_ms=500) as p:
        futures = [p.send("lingered", b"x" * 100) for _ in range(1000)]
        p.flush(WAIT_S)
    assert all(f.done() for f in futures)
    headers = _headers(broker, "lingered", 0)
    assert sum(h.record_count for h in headers) == 1000
    assert len(headers) <= 3


def test_batch_size_caps_batches(broker: BrokerProcess) -> None:
    _create(broker, "capped")
    with Producer(broker.address, linger_ms=500, batch_size=2_000) as p:
        for _ in range(200):
            p.send("capped", b"x" * 100)
    headers = _headers(broker, "capped", 0)
    assert sum(h.record_count for h in headers) == 200
    # 116 estimated bytes a record: 18 records reach 2000 bytes
    assert all(h.record_count <= 18 for h in headers)
    assert len(headers) >= 200 // 18


def test_a_record_that_does_not_fit_starts_the_next_batch(broker: BrokerProcess) -> None:
    """With batch_size at the topic's max.message.bytes, no batch is refused as too large:
    a batch grows past batch_size only when a single record is that large."""
    _create(broker, "snug", **{"max.message.bytes": "300000"})
    with Producer(broker.address, linger_ms=500, batch_size=300_000) as p:
        futures = [p.send("snug", bytes([i]) * 120_000) for i in range(7)]
        p.flush()
    assert [f.result(timeout=10).offset for f in futures] == list(range(7))
    headers = _headers(broker, "snug", 0)
    assert [h.record_count for h in headers] == [2, 2, 2, 1]
    assert all(h.size <= 300_000 for h in headers)


def test_with_no_linger_records_queue_into_the_open_batch_behind_a_backlog(
    broker: BrokerProcess,
) -> None:
    """linger_ms=0 sends at once, but while earlier batches wait for an in-flight slot the
    open batch keeps filling (as Kafka's accumulator does), instead of queueing one-record
    batches that cap throughput at max_in_flight records per round trip."""
    _create(broker, "eager", **{"flush.messages": "1"})  # an fsync per request: slow answers
    with Producer(
        broker.address, linger_ms=0, acks="all", max_in_flight_requests_per_connection=1
    ) as p:
        for i in range(2000):
            p.send("eager", b"%d" % i)
            time.sleep(0.0002)  # an application producing steadily, not in one burst
        p.flush()
    headers = _headers(broker, "eager", 0)
    assert sum(h.record_count for h in headers) == 2000
    assert len(headers) < 1500, f"{len(headers)} batches for 2000 records"


def test_records_of_many_threads_all_arrive_in_order(
    broker: BrokerProcess, producer: Producer
) -> None:
    _create(broker, "threads", partitions=2)

    def work(n: int) -> None:
        for i in range(500):
            producer.send("threads", b"%d:%d" % (n, i), key=b"thread-%d" % n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    producer.flush(WAIT_S)
    seen: dict[bytes, list[int]] = {}
    for partition in range(2):
        for record in _records(broker, "threads", partition):
            thread, i = record.value.split(b":")  # type: ignore[union-attr]
            seen.setdefault(thread, []).append(int(i))
    assert {t: sorted(v) == v and len(v) for t, v in seen.items()} == {
        b"%d" % n: 500 for n in range(4)
    }


# --- send_batch ----------------------------------------------------------------------------------


def test_send_batch_round_trip(broker: BrokerProcess, producer: Producer) -> None:
    _create(broker, "bulk", partitions=3)
    values = [b"bulk-%06d" % i for i in range(10_000)]
    result = producer.send_batch("bulk", values).result(WAIT_S)
    assert all(isinstance(md, BatchMetadata) for md in result)
    assert sum(md.record_count for md in result) == 10_000
    assert len({md.partition for md in result}) == 1  # one sticky partition per call
    partition = result[0].partition
    assert [r.value for r in _records(broker, "bulk", partition)] == values
    assert result[0].base_offset == 0


def test_send_batch_with_keys_headers_and_partition(
    broker: BrokerProcess, producer: Producer
) -> None:
    _create(broker, "bulk", partitions=4)
    keys = [b"k%d" % (i % 13) for i in range(400)]
    values = [b"v%d" % i for i in range(400)]
    headers = [{"i": b"%d" % i} for i in range(400)]
    result = producer.send_batch("bulk", values, keys=keys, headers=headers).result(WAIT_S)
    assert sum(md.record_count for md in result) == 400
    stored = {}
    for partition in range(4):
        for record in _records(broker, "bulk", partition):
            stored[record.value] = (partition, record.key, record.headers)
    for key, value, header in zip(keys, values, headers, strict=True):
        assert stored[value] == (partition_for_key(key, 4), key, (("i", header["i"]),))
    pinned = producer.send_batch("bulk", [b"p"] * 10, partition=3, headers={"all": b"1"})
    (md,) = pinned.result(WAIT_S)
    assert (md.partition, md.record_count) == (3, 10)
    assert _records(broker, "bulk", 3)[-1].headers == (("all", b"1"),)


def test_send_batch_keeps_order_after_send(broker: BrokerProcess) -> None:
    _create(broker, "mixed")
    with Producer(broker.address, linger_ms=1_000) as p:
        p.send("mixed", b"first", partition=0)
        p.send_batch("mixed", [b"second", b"third"], partition=0).result(WAIT_S)
    assert [r.value for r in _records(broker, "mixed", 0)] == [b"first", b"second", b"third"]


# --- futures, flush, close -----------------------------------------------------------------------


def test_record_futures_behave_like_futures(broker: BrokerProcess) -> None:
    _create(broker, "futures")
    with Producer(broker.address, linger_ms=60_000) as p:
        first = p.send("futures", b"a")
        second = p.send("futures", b"b")
        called = []
        first.add_done_callback(lambda f: called.append(f.result().offset))
        assert not first.done() and not first.cancel()
        with pytest.raises(concurrent.futures.TimeoutError):
            second.result(timeout=0.05)
        waiter = threading.Thread(target=p.flush, args=(WAIT_S,))
        waiter.start()
        done, pending = concurrent.futures.wait([first, second], timeout=WAIT_S)
        waiter.join(WAIT_S)
        assert (len(done), len(pending)) == (2, 0)
        assert [f.result().offset for f in concurrent.futures.as_completed(done)] != []
        assert called == [0] and second.result().offset == 1 and second.exception() is None
        late = []
        second.add_done_callback(lambda f: late.append(f.result().offset))
        assert late == [1]
        assert "finished" in repr(second)


def test_plain_record_futures_deliver_the_same(
    broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where CPython's Future internals do not match the record view, each record gets a
    plain Future: same offsets, callbacks and errors, through a real broker."""
    monkeypatch.setattr(accumulator, "new_record_future", futures.plain_record_future)
    _create(broker, "plain")
    with Producer(broker.address, linger_ms=5) as p:
        records = [p.send("plain", b"%d" % i) for i in range(100)]
        called: list[int] = []
        records[-1].add_done_callback(lambda f: called.append(f.result().offset))
        done, pending = concurrent.futures.wait(records, timeout=WAIT_S)
        assert len(done) == 100
        assert not pending and type(records[0]) is concurrent.futures.Future
        assert [f.result(0).offset for f in records] == list(range(100))
        assert not records[0].cancel()
        with pytest.raises(UnknownTopicOrPartitionError):
            p.send("plain", b"x", partition=5).result(WAIT_S)
    assert called == [99]


def test_flush_waits_and_close_is_final(broker: BrokerProcess) -> None:
    _create(broker, "closing")
    p = Producer(broker.address, linger_ms=60_000)
    futures = [p.send("closing", b"%d" % i) for i in range(10)]
    p.flush(WAIT_S)
    assert all(f.done() for f in futures)
    late = p.send("closing", b"late")
    p.close(WAIT_S)
    assert late.result(0).offset == 10
    p.close()  # twice is fine
    with pytest.raises(ClientClosedError):
        p.send("closing", b"after")
    with pytest.raises(ClientClosedError):
        p.send_batch("closing", [b"after"])
    with Producer(broker.address, linger_ms=60_000) as q:
        in_context = q.send("closing", b"ctx")
    assert in_context.result(0).offset == 11


def test_bad_arguments_raise() -> None:
    p = Producer("127.0.0.1:1")
    try:
        with pytest.raises(TypeError, match="not str"):
            p.send("t", "text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="key"):
            p.send("t", b"v", key=12)  # type: ignore[arg-type]
    finally:
        p.close(0)
    with pytest.raises(ValueError, match="acks"):
        Producer("127.0.0.1:1", acks=2)
    with pytest.raises(ValueError, match="max_in_flight"):
        Producer("127.0.0.1:1", max_in_flight_requests_per_connection=6)
    with pytest.raises(UnsupportedCompressionError, match=r"'brotli'.*'lz4'"):
        Producer("127.0.0.1:1", compression="brotli")


# --- bootstrap lists -----------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> str:
    """An address on 127.0.0.1 where nothing listens (a port just bound, then freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_bootstrap_list_starting_with_a_dead_broker_still_delivers(
    broker: BrokerProcess, closed_port: str
) -> None:
    _create(broker, "listed", partitions=2)
    with Producer(f"{closed_port},{broker.address}", linger_ms=2) as producer:
        assert producer.partitions_for("listed") == {0, 1}
        futures = [producer.send("listed", b"%d" % i, partition=i % 2) for i in range(100)]
        batch = producer.send_batch("listed", [b"100", b"101"], partition=0)
        offsets = [f.result(WAIT_S).offset for f in futures]
        assert [md.base_offset for md in batch.result(WAIT_S)] == [50]
    assert offsets == [i // 2 for i in range(100)]
    values = [b"%d" % i for i in range(0, 100, 2)] + [b"100", b"101"]
    assert [r.value for r in _records(broker, "listed", 0)] == values
    assert [r.value for r in _records(broker, "listed", 1)] == [b"%d" % i for i in range(1, 100, 2)]


def test_the_bootstrap_list_may_come_from_the_environment(
    broker: BrokerProcess, closed_port: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _create(broker, "from-env")
    monkeypatch.setenv("LOGSTORE_BOOTSTRAP", f" {closed_port} , {broker.address} ")
    with Producer(linger_ms=0) as producer:
        assert producer.send("from-env", b"x").result(WAIT_S).offset == 0


def test_a_bootstrap_list_of_dead_brokers_fails_the_send_after_max_block_ms(
    closed_port: str,
) -> None:
    dead = f"{closed_port},127.0.0.1:1"
    with Producer(dead, max_block_ms=300) as producer:
        failed = producer.send("t", b"x")
        with pytest.raises(BrokerUnavailableError, match=closed_port) as caught:
            failed.result(WAIT_S)
    assert "127.0.0.1:1" in str(caught.value) and "300 ms" in str(caught.value)


def test_a_bad_bootstrap_entry_is_refused_by_name() -> None:
    with pytest.raises(InvalidRequestError, match="'nope' is not HOST:PORT"):
        Producer("127.0.0.1:9092,nope")
    with pytest.raises(InvalidRequestError, match="empty entry"):
        Producer("127.0.0.1:9092,")


def test_a_topic_the_principal_may_not_describe_fails_as_not_authorized(tmp_path: Path) -> None:
    """The cluster metadata leaves such a topic out; the send says why, as the broker does."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[tokens]\n"admin-s3cret" = "User:admin"\n"alice-s3cret" = "User:alice"\n')
    args = ["--auth-tokens", str(tokens), "--acls-enabled", "--super-users", "User:admin"]
    acl_broker = BrokerProcess(tmp_path / "data", args)
    acl_broker.start()
    try:
        with Admin(acl_broker.address, token="admin-s3cret") as admin:
            admin.create_topic("open")
            admin.create_topic("secret")
            admin.create_acls([AclBinding("User:alice", "topic", "open", "produce")])
        with Producer(acl_broker.address, token="alice-s3cret", linger_ms=0) as producer:
            assert producer.send("open", b"x").result(WAIT_S).offset == 0
            with pytest.raises(AuthorizationError, match="secret"):
                producer.send("secret", b"x").result(WAIT_S)
    finally:
        acl_broker.close()


# --- errors --------------------------------------------------------------------------------------


def test_unknown_topic_fails_the_future(broker: BrokerProcess, producer: Producer) -> None:
    with pytest.raises(UnknownTopicOrPartitionError, match="nope"):
        producer.send("nope", b"x").result(WAIT_S)
    with pytest.raises(UnknownTopicOrPartitionError):
        producer.send_batch("nope", [b"x"]).result(WAIT_S)


def test_record_too_large_fails_only_its_batch(broker: BrokerProcess) -> None:
    _create(broker, "limited", **{"max.message.bytes": "1000"})
    _create(broker, "roomy")
    with Producer(broker.address, linger_ms=50) as p:
        before = p.send("limited", b"small-1")
        before.result(WAIT_S)
        # Sent within one linger, so the broker sees both topics in one request.
        other = p.send("roomy", b"fine")
        big = p.send("limited", b"x" * 2_000)
        with pytest.raises(RecordTooLargeError, match=r"max\.message\.bytes"):
            big.result(WAIT_S)
        assert other.result(WAIT_S).offset == 0
        # The partition's sequence numbers recover: later records still go through.
        after = [p.send("limited", b"small-%d" % i) for i in range(2, 5)]
        assert [f.result(WAIT_S).offset for f in after] == [1, 2, 3]
        too_big_for_client = Producer(broker.address, max_request_size=500)
        try:
            with pytest.raises(RecordTooLargeError, match="max_request_size"):
                too_big_for_client.send("roomy", b"y" * 1_000).result(WAIT_S)
        finally:
            too_big_for_client.close(WAIT_S)
    assert [r.value for r in _records(broker, "limited", 0)] == [
        b"small-%d" % i for i in range(1, 5)
    ]


def test_full_buffer_blocks_then_raises(broker: BrokerProcess) -> None:
    _create(broker, "stalled")
    p = Producer(broker.address, buffer_memory=20_000, max_block_ms=300, delivery_timeout_ms=1_500)
    try:
        p.send("stalled", b"warm-up").result(WAIT_S)
        broker.stop()
        futures = []
        started = time.monotonic()
        with pytest.raises(BufferExhaustedError, match="max_block_ms"):
            for _ in range(1_000):
                futures.append(p.send("stalled", b"x" * 1_000))
        assert time.monotonic() - started >= 0.3
        assert len(futures) < 20
        with pytest.raises(RequestTimedOutError, match="delivery_timeout_ms"):
            futures[0].result(WAIT_S)
    finally:
        p.close(WAIT_S)


def test_broker_restart_loses_and_duplicates_nothing(broker: BrokerProcess) -> None:
    _create(broker, "durable", partitions=2)
    count = 20_000
    with Producer(broker.address, acks="all", linger_ms=1, batch_size=16_384) as p:
        futures = []
        for i in range(count):
            futures.append(p.send("durable", b"unique-%06d" % i))
            if i == count // 3:
                broker.kill9()
                broker.start()
        p.flush(60)
        for f in futures:
            f.result(0)
    values = Counter(
        record.value for partition in range(2) for record in _records(broker, "durable", partition)
    )
    assert len(values) == count
    assert max(values.values()) == 1


def test_stalled_broker_times_out_requests_and_retries_exactly_once(
    broker: BrokerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    _create(broker, "stalling")
    caplog.set_level(logging.WARNING, logger="logstore.client.producer")
    assert broker.proc is not None
    with Producer(broker.address, request_timeout_ms=300, linger_ms=1) as p:
        first = [p.send("stalling", b"before-%d" % i) for i in range(100)]
        for f in first:
            f.result(WAIT_S)
        broker.proc.send_signal(signal.SIGSTOP)
        try:
            stalled = [p.send("stalling", b"during-%d" % i) for i in range(300)]
            # request_timeout_ms passes unanswered: the producer gives the stream up
            wait_until(
                lambda: any("reconnecting" in r.getMessage() for r in caplog.records),
                "the producer to give up the stalled stream",
            )
        finally:
            broker.proc.send_signal(signal.SIGCONT)
        p.flush(WAIT_S)
        offsets = [f.result(0).offset for f in stalled]
    assert offsets == list(range(100, 400))
    values = [r.value for r in _records(broker, "stalling", 0)]
    assert values == [b"before-%d" % i for i in range(100)] + [b"during-%d" % i for i in range(300)]


def test_close_with_a_timeout_fails_what_is_left(broker: BrokerProcess) -> None:
    _create(broker, "abandoned")
    p = Producer(broker.address)
    p.send("abandoned", b"warm-up").result(WAIT_S)
    broker.kill9()
    pending = p.send("abandoned", b"never")
    started = time.monotonic()
    p.close(0.5)
    assert time.monotonic() - started < 10
    with pytest.raises(ClientClosedError, match="before delivery"):
        pending.result(0)


class FastClock:
    """A real clock running `speed` times faster: durations measured on it pass sooner."""

    def __init__(self, speed: int) -> None:
        self._speed = speed
        self._start_ns = time.monotonic_ns()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic_ms(self) -> int:
        return (time.monotonic_ns() - self._start_ns) * self._speed // 1_000_000


def test_flush_and_max_block_ms_are_measured_on_the_injected_clock(
    broker: BrokerProcess,
) -> None:
    _create(broker, "clocked")
    clock = FastClock(speed=100)  # 30 s on it are 0.3 s of real time
    p = Producer(
        broker.address,
        clock=clock,
        buffer_memory=1_000,
        max_block_ms=30_000,
        delivery_timeout_ms=10**9,
    )
    try:
        p.send("clocked", b"warm-up").result(WAIT_S)
        broker.kill9()
        pending = p.send("clocked", b"x" * 900)
        started = time.monotonic()
        with pytest.raises(RequestTimedOutError, match="flush timed out after 30"):
            p.flush(30)
        with pytest.raises(BufferExhaustedError, match="30000 ms"):
            p.send("clocked", b"y" * 900)
        assert time.monotonic() - started < 10  # real seconds, far below the 60 s asked
    finally:
        p.close(1)
    with pytest.raises(ClientClosedError, match="before delivery"):
        pending.result(0)


def test_send_batch_larger_than_the_buffer_streams_through(broker: BrokerProcess) -> None:
    _create(broker, "big-batch")
    values = [b"%099d" % i for i in range(10_000)]  # about 1.2 MB against a 100 kB buffer
    with Producer(broker.address, buffer_memory=100_000, batch_size=20_000) as p:
        result = p.send_batch("big-batch", values).result(WAIT_S)
    assert len(result) > 10 and sum(md.record_count for md in result) == 10_000
    assert [r.value for r in _records(broker, "big-batch", 0)] == values


@pytest.mark.parametrize("idempotent", [True, False])
def test_batches_carry_producer_id_and_sequences(broker: BrokerProcess, idempotent: bool) -> None:
    _create(broker, "stamped")
    with Producer(broker.address, enable_idempotence=idempotent, batch_size=1_000) as p:
        for i in range(50):
            p.send("stamped", b"%050d" % i)
        p.send_batch("stamped", [b"x" * 50] * 30).result(WAIT_S)
    headers = _headers(broker, "stamped", 0)
    assert sum(h.record_count for h in headers) == 80
    if not idempotent:
        assert {(h.producer_id, h.producer_epoch, h.base_sequence) for h in headers} == {
            (-1, -1, -1)
        }
        return
    assert len({h.producer_id for h in headers}) == 1 and headers[0].producer_id >= 0
    expected = 0
    for h in headers:
        assert h.base_sequence == expected
        expected += h.record_count


def test_partitions_for_names_the_partitions_and_refuses_unknown_topics(
    broker: BrokerProcess,
) -> None:
    _create(broker, "three", partitions=3)
    producer = Producer(broker.address)
    try:
        assert producer.partitions_for("three") == {0, 1, 2}
        with pytest.raises(UnknownTopicOrPartitionError):
            producer.partitions_for("no-such-topic")
    finally:
        producer.close()
    with pytest.raises(ClientClosedError):
        producer.partitions_for("three")

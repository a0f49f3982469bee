"""kill -9 the broker at random moments under load, restart it, and check that nothing
acknowledged was lost.

Load during each cycle: two idempotent producers (acks=1 and acks=all) writing numbered
records to topics with tiny segments (so rolls happen all the time), one writing to a topic
with tiny size retention (so deletions happen all the time), a thread committing rising
offsets for a group, and a thread creating and deleting topics. acks=1 means "in the OS
page cache", which kill -9 does not lose, so acks=1 records must survive as well.

Checks after every restart: every record whose future resolved before the kill is at its
offset with its value, offsets are dense and every batch passes its CRC; the group's
committed offset is at least the last acknowledged commit; an acknowledged topic creation
or deletion held. At the end: every record ever sent is in the log exactly once, in order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import pytest

from logstore import Producer
from logstore.types import RecordMetadata
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.faults.conftest import BrokerFactory
from tests.faults.support import RPC_TIMEOUT_S, connect, create_topic, offsets, read_log

#: fast retention checks, so segments are deleted while the broker runs
CONFIG = """
[log-manager]
retention_check_interval_ms = 50
flush_check_interval_ms = 50
"""

GROUP = "kill9-group"


@dataclass
class Sent:
    """What one producer sent: futures in send order (record i has value b"<topic>-i")."""

    topic: str
    futures: list[Future[RecordMetadata]] = field(default_factory=list)

    def acknowledged(self) -> list[tuple[int, int]]:
        """(record number, offset) of every record acknowledged so far."""
        done = []
        for i, fut in enumerate(list(self.futures)):
            if fut.done() and fut.exception() is None:
                done.append((i, fut.result().offset))
        return done


@dataclass
class Ledger:
    """Acknowledged commits and topic operations, recorded by the worker threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    last_acked_commit: int = -1
    highest_tried_commit: int = -1
    #: topic name -> True (creation acknowledged) / False (deletion acknowledged)
    topics: dict[str, bool] = field(default_factory=dict)
    #: topics with an operation in flight (either outcome is allowed)
    uncertain: set[str] = field(default_factory=set)
    #: operations started so far, and the number of the latest one on each topic
    seq: int = 0
    started: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _produce_loop(
    producer: Producer, sent: Sent, stop: threading.Event, rate_pause_s: float
) -> None:
    """Send numbered records in bursts until `stop`; the producer retries through kills."""
    n = 0
    while not stop.is_set() and n < 200_000:
        for _ in range(20):
            sent.futures.append(producer.send(sent.topic, b"%s-%d" % (sent.topic.encode(), n)))
            n += 1
        time.sleep(rate_pause_s)


def _commit_loop(address: str, ledger: Ledger, stop: threading.Event) -> None:
    offset = 0
    with connect(address) as stub:
        while not stop.is_set() and offset < 1_000_000:
            offset += 1
            with ledger.lock:
                ledger.highest_tried_commit = offset
            try:
                response = stub.CommitOffsets(
                    pb.CommitOffsetsRequest(
                        group_id=GROUP,
                        topics=[
                            pb.CommitTopic(
                                topic="k-all",
                                partitions=[pb.CommitPartition(partition=0, offset=offset)],
                            )
                        ],
                    ),
                    timeout=2,
                )
            except grpc.RpcError:
                time.sleep(0.02)
                continue
            if response.topics[0].partitions[0].error.code == 0:
                with ledger.lock:
                    ledger.last_acked_commit = offset
            time.sleep(0.005)


def _churn_loop(address: str, ledger: Ledger, stop: threading.Event, rng: random.Random) -> None:
    """Create and delete topics churn-0..churn-3, recording acknowledged outcomes."""
    with connect(address) as stub:
        for _ in range(100_000):
            if stop.is_set():
                return
            name = f"churn-{rng.randrange(4)}"
            with ledger.lock:
                exists = ledger.topics.get(name, False)
                ledger.uncertain.add(name)
                ledger.seq += 1
                ledger.started[name] = ledger.seq
            try:
                if exists:
                    stub.DeleteTopic(pb.DeleteTopicRequest(name=name), timeout=2)
                else:
                    create_topic(stub, name, 2, segment_bytes="1024")
                outcome: bool | None = not exists
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    outcome = True
                elif code == grpc.StatusCode.NOT_FOUND:
                    outcome = False
                else:
                    outcome = None  # the broker died under the call: either way
                    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        ledger.errors.append(f"{name}: {code} {exc.details()}")  # type: ignore[attr-defined]
                    time.sleep(0.05)
            with ledger.lock:
                if outcome is not None:
                    ledger.topics[name] = outcome
                    ledger.uncertain.discard(name)
            time.sleep(rng.uniform(0, 0.03))


def _check_acknowledged(
    stub: pb_grpc.LogStoreStub, sent: Sent, acked: list[tuple[int, int]]
) -> None:
    records = read_log(stub, sent.topic)  # CRC, whole batches, dense offsets
    start = records[0].offset if records else offsets(stub, sent.topic)[0]
    by_offset = {r.offset: r.value for r in records}
    for number, offset in acked:
        assert offset >= start
        assert by_offset.get(offset) == b"%s-%d" % (sent.topic.encode(), number), (
            f"{sent.topic}: acknowledged record {number} at offset {offset} is missing or wrong"
        )


def _check_state(
    stub: pb_grpc.LogStoreStub,
    ledger: Ledger,
    acked_commit: int,
    topics: dict[str, bool],
    uncertain: set[str],
    snapshot_seq: int,
) -> None:
    committed = stub.FetchCommittedOffsets(
        pb.FetchCommittedOffsetsRequest(group_id=GROUP), timeout=RPC_TIMEOUT_S
    )
    found = {(c.topic, c.partition): c.offset for c in committed.offsets}
    if acked_commit > 0:
        assert found.get(("k-all", 0), -1) >= acked_commit, (
            f"acknowledged commit {acked_commit} lost: broker has {found}"
        )
    listed = {t.name for t in stub.ListTopics(pb.ListTopicsRequest(), timeout=RPC_TIMEOUT_S).topics}
    with ledger.lock:
        # an operation begun after the snapshot may have been acknowledged too
        uncertain = uncertain | {n for n, seq in ledger.started.items() if seq > snapshot_seq}
    for name, exists in topics.items():
        if name not in uncertain:
            assert (name in listed) == exists, (
                f"acknowledged {'creation' if exists else 'deletion'} of {name} lost"
            )


def run_cycles(
    make_broker: BrokerFactory, rng: random.Random, cycles: int, segment_bytes: int = 1024
) -> dict[str, float]:
    """`segment_bytes`: the long run uses larger segments: every segment holds three file
    descriptors, and 1 KiB segments over 100+ cycles exceed a 20k descriptor limit."""
    broker = make_broker(CONFIG)
    with connect(broker.address) as stub:
        small = {"segment_bytes": str(segment_bytes), "file_delete_delay_ms": "0"}
        create_topic(stub, "k-one", **small)
        create_topic(stub, "k-all", **small)
        create_topic(stub, "k-ret", retention_bytes=str(3 * segment_bytes), **small)
    stop = threading.Event()
    ledger = Ledger()
    sent = {name: Sent(name) for name in ("k-one", "k-all", "k-ret")}
    producers = {
        "k-one": Producer(
            broker.address, acks=1, linger_ms=2, retry_backoff_ms=20, request_timeout_ms=5000
        ),
        "k-all": Producer(
            broker.address, acks="all", linger_ms=2, retry_backoff_ms=20, request_timeout_ms=5000
        ),
        "k-ret": Producer(
            broker.address, acks=1, linger_ms=2, retry_backoff_ms=20, request_timeout_ms=5000
        ),
    }
    workers: list[tuple[Callable[..., None], tuple[object, ...]]] = [
        (_produce_loop, (producers[name], sent[name], stop, 0.02)) for name in sent
    ]
    workers += [
        (_commit_loop, (broker.address, ledger, stop)),
        (_churn_loop, (broker.address, ledger, stop, random.Random(rng.random()))),
    ]
    threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in workers]
    started = time.monotonic()
    restart_s = 0.0
    for thread in threads:
        thread.start()
    try:
        for cycle in range(cycles):
            time.sleep(rng.uniform(0.05, 0.5))
            acked = {name: s.acknowledged() for name, s in sent.items()}
            with ledger.lock:
                acked_commit = ledger.last_acked_commit
                topics = dict(ledger.topics)
                uncertain = set(ledger.uncertain)
                snapshot_seq = ledger.seq
            broker.kill9()
            t0 = time.monotonic()
            broker.start()
            restart_s += time.monotonic() - t0
            with connect(broker.address) as stub:
                for name in ("k-one", "k-all"):
                    _check_acknowledged(stub, sent[name], acked[name])
                # retention: what is left is whole and dense
                read_log(stub, "k-ret", moving_start=True)
                _check_state(stub, ledger, acked_commit, topics, uncertain, snapshot_seq)
            assert "recovered after unclean shutdown" in broker.start_line, cycle
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for producer in producers.values():
            producer.flush(60)
        with connect(broker.address) as stub:
            for name in ("k-one", "k-all"):
                values = [r.value for r in read_log(stub, name)]
                expected = [b"%s-%d" % (name.encode(), i) for i in range(len(sent[name].futures))]
                assert values == expected, f"{name}: log is not every record exactly once, in order"
            retained = read_log(stub, "k-ret", moving_start=True)
            assert [r.value for r in retained] == [b"k-ret-%d" % (r.offset) for r in retained], (
                "k-ret: a retained record is not the one sent at its offset"
            )
        assert not ledger.errors, ledger.errors
    finally:
        stop.set()
        for producer in producers.values():
            producer.close(10)
    elapsed = time.monotonic() - started
    figures = {
        "cycles": cycles,
        "records": sum(len(s.futures) for s in sent.values()),
        "commits_acked": ledger.last_acked_commit,
        "seconds": round(elapsed, 1),
        "mean_restart_s": round(restart_s / cycles, 2),
    }
    print(f"kill -9 figures: {figures}")
    return figures


def test_kill9_cycles_lose_nothing_acknowledged(
    make_broker: BrokerFactory, rng: random.Random
) -> None:
    figures = run_cycles(make_broker, rng, cycles=5)
    assert figures["records"] > 0


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_kill9_cycles_long(make_broker: BrokerFactory, rng: random.Random) -> None:
    figures = run_cycles(make_broker, rng, cycles=120, segment_bytes=16384)
    assert figures["records"] > 0

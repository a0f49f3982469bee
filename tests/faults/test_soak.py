"""Load soak: 25 idempotent producers and 25 group consumers on one broker at once.

Checks: no client error, every acknowledged record is in the log exactly once and was
delivered to the group (at least once), and the broker's resident memory stays bounded
(overload must push back with RESOURCE_EXHAUSTED and client retries, not queue without
limit). Short run (5 s of load) in CI; LOGSTORE_LONG_TESTS=1 runs the 60 s version.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from logstore import Consumer, Producer
from tests.faults.conftest import BrokerFactory
from tests.faults.support import connect, create_topic, read_log, rss_kib
from tests.helpers import wait_until

TOPIC = "soak"
PARTITIONS = 12
PRODUCERS = 25
CONSUMERS = 25
#: the broker may grow by this much under load (KiB): caches and thread stacks, no queue
RSS_GROWTH_LIMIT_KIB = 200 * 1024


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[bytes] = field(default_factory=set)
    consumed: Counter[bytes] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


def _producer(address: str, index: int, stop: threading.Event, tally: Tally) -> None:
    acks: int | str = "all" if index % 2 else 1
    with Producer(address, acks=acks, linger_ms=5, retry_backoff_ms=20) as producer:
        futures = []
        for n in range(1_000_000):
            if stop.is_set():
                break
            value = b"p%02d-%07d" % (index, n)
            futures.append((value, producer.send(TOPIC, value, key=b"%d" % n)))
            if n % 20 == 19:
                time.sleep(0.03)  # about 600 records/s per producer: load, not a flood
        producer.flush(60)
        for value, fut in futures:
            try:
                fut.result(0)
            except Exception as exc:  # every failure is a finding
                with tally.lock:
                    tally.errors.append(f"producer {index}: {exc!r}")
                continue
            with tally.lock:
                tally.acked.add(value)


def _consumer(address: str, index: int, stop: threading.Event, tally: Tally) -> None:
    try:
        with Consumer(
            address,
            group_id="soak-group",
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            retry_backoff_ms=20,
        ) as consumer:
            consumer.subscribe([TOPIC])
            for _ in range(100_000):
                if stop.is_set():
                    break
                records = consumer.poll(timeout=0.2)
                with tally.lock:
                    tally.consumed.update(r.value for r in records)
    except Exception as exc:
        with tally.lock:
            tally.errors.append(f"consumer {index}: {exc!r}")


def run_soak(make_broker: BrokerFactory, seconds: float) -> dict[str, float]:
    broker = make_broker()
    with connect(broker.address) as stub:
        create_topic(stub, TOPIC, PARTITIONS)
    assert broker.proc is not None
    rss_before = rss_kib(broker.proc.pid)
    tally = Tally()
    stop_producing, stop_consuming = threading.Event(), threading.Event()
    producers = [
        threading.Thread(target=_producer, args=(broker.address, i, stop_producing, tally))
        for i in range(PRODUCERS)
    ]
    consumers = [
        threading.Thread(target=_consumer, args=(broker.address, i, stop_consuming, tally))
        for i in range(CONSUMERS)
    ]
    started = time.monotonic()
    for thread in consumers + producers:
        thread.start()
    rss_peak = rss_before
    try:
        for _ in range(int(seconds * 10)):
            time.sleep(0.1)
            rss_peak = max(rss_peak, rss_kib(broker.proc.pid))
        stop_producing.set()
        for thread in producers:
            thread.join(timeout=90)
        produced_s = time.monotonic() - started

        def all_consumed() -> bool:
            with tally.lock:
                return tally.acked <= set(tally.consumed)

        wait_until(all_consumed, "the group to deliver every acknowledged record", 60, 0.2)
    finally:
        stop_producing.set()
        stop_consuming.set()
        for thread in producers + consumers:
            thread.join(timeout=60)
    rss_after = rss_kib(broker.proc.pid)
    assert not tally.errors, tally.errors[:10]
    with connect(broker.address) as stub:
        logged = Counter(r.value for p in range(PARTITIONS) for r in read_log(stub, TOPIC, p))
    assert set(logged) == tally.acked, "the log differs from what was acknowledged"
    assert max(logged.values()) == 1, "an idempotent producer's record is in the log twice"
    assert rss_peak - rss_before < RSS_GROWTH_LIMIT_KIB, (rss_before, rss_peak)
    figures = {
        "seconds": round(produced_s, 1),
        "records": len(tally.acked),
        "records_per_s": round(len(tally.acked) / produced_s),
        "deliveries": sum(tally.consumed.values()),
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(rss_peak / 1024, 1),
        "rss_after_mib": round(rss_after / 1024, 1),
        "errors": len(tally.errors),
    }
    print(f"soak figures: {figures}")
    return figures


def test_soak_short(make_broker: BrokerFactory) -> None:
    assert run_soak(make_broker, seconds=5)["records"] > 1000


@pytest.mark.long
@pytest.mark.timeout(3600)
def test_soak_long(make_broker: BrokerFactory) -> None:
    assert run_soak(make_broker, seconds=60)["records"] > 10_000

"""ProcessedStore (SQLite, TTL) and IdempotentConsumer: redelivered messages are skipped."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from logstore import Admin, Producer
from logstore.patterns import headers as h
from logstore.patterns.idempotent import IdempotentConsumer, ProcessedStore
from logstore.types import ConsumerRecord


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_ids_expire_after_the_ttl_and_are_purged(tmp_path: Path) -> None:
    clock = ManualClock()
    with ProcessedStore(tmp_path / "ids.sqlite3", ttl_ms=1000, clock=clock) as store:
        store.mark("pay-1")
        clock.now += 500
        store.mark("pay-2")
        assert store.seen("pay-1") and store.seen("pay-2") and not store.seen("pay-3")
        clock.now += 500  # pay-1 is exactly ttl old: expired
        assert not store.seen("pay-1") and store.seen("pay-2")
        assert store.purge_expired() == 1
        assert store.count() == 1
        store.mark("pay-1")  # an expired id may be processed and recorded again
        assert store.seen("pay-1")


def test_ids_survive_a_restart_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "ids.sqlite3"
    with ProcessedStore(path) as store:
        store.mark("pay-1")
    with ProcessedStore(path) as store:
        assert store.seen("pay-1")


def test_handler_writes_and_the_id_commit_together_or_not_at_all(tmp_path: Path) -> None:
    with ProcessedStore(tmp_path / "ids.sqlite3") as store:
        store.connection.execute("CREATE TABLE charges (payment_id TEXT, amount INTEGER)")

        def charge(txn: sqlite3.Connection) -> None:
            txn.execute("INSERT INTO charges VALUES ('pay-1', 100)")
            raise ConnectionError("crash after the write, before the id is recorded")

        with pytest.raises(ConnectionError):
            store.process_once("pay-1", charge)
        rows = store.connection.execute("SELECT COUNT(*) FROM charges").fetchone()[0]
        assert rows == 0 and not store.seen("pay-1")

        def charge_ok(txn: sqlite3.Connection) -> None:
            txn.execute("INSERT INTO charges VALUES ('pay-1', 100)")

        assert store.process_once("pay-1", charge_ok) is True
        assert store.process_once("pay-1", charge_ok) is False
        rows = store.connection.execute("SELECT COUNT(*) FROM charges").fetchone()[0]
        assert rows == 1


def _produce_payments(bootstrap: str, topic: str, ids: list[str]) -> None:
    with Producer(bootstrap, linger_ms=0, enable_idempotence=True) as producer:
        for payment_id in ids:
            producer.send(
                topic,
                value=f'{{"payment_id": "{payment_id}", "amount": 100}}'.encode(),
                key=payment_id.encode(),
                headers={h.MESSAGE_ID: payment_id.encode()},
            ).result()


def _poll_until(consumer: IdempotentConsumer, done: Callable[[], bool], commit: bool) -> None:
    deadline = time.monotonic() + 15
    while not done() and time.monotonic() < deadline:
        consumer.poll_once(0.2, commit=commit)
    assert done()


def test_redelivery_after_a_crash_before_commit_charges_nobody_twice(
    bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topic, group = unique("payments"), unique("charger")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=2)
    # the producer sends pay-3 twice (an application-level duplicate)
    _produce_payments(bootstrap, topic, ["pay-1", "pay-2", "pay-3", "pay-3"])
    path = tmp_path / "processed.sqlite3"

    def open_worker(charged: list[str]) -> IdempotentConsumer:
        def charge(record: ConsumerRecord, txn: sqlite3.Connection) -> None:
            txn.execute("CREATE TABLE IF NOT EXISTS charges (payment_id TEXT PRIMARY KEY)")
            payment_id = (record.key or b"").decode()
            txn.execute("INSERT INTO charges VALUES (?)", (payment_id,))
            charged.append(payment_id)

        return IdempotentConsumer(bootstrap, group, [topic], charge, ProcessedStore(path))

    first: list[str] = []
    worker = open_worker(first)
    _poll_until(worker, lambda: worker.stats.processed + worker.stats.skipped == 4, commit=False)
    worker.consumer.close()  # crash: nothing was committed
    worker.store.close()
    assert sorted(first) == ["pay-1", "pay-2", "pay-3"]

    second: list[str] = []
    worker = open_worker(second)
    try:
        _poll_until(worker, lambda: worker.stats.skipped == 4, commit=True)
        assert second == [] and worker.stats.processed == 0
        rows = worker.store.connection.execute("SELECT COUNT(*) FROM charges").fetchone()[0]
        assert rows == 3
    finally:
        worker.close()
        worker.store.close()
    with Admin(bootstrap) as admin:
        committed = admin.committed_offsets(group)
    assert sum(o.offset for o in committed.values()) == 4


def test_plain_handler_and_the_offset_fallback_id(
    bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topic, group = unique("signups"), unique("welcome")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    with Producer(bootstrap, linger_ms=0) as producer:
        for user in (b"alice", b"bob"):
            producer.send(topic, value=user).result()
    sent: list[bytes] = []
    store = ProcessedStore(tmp_path / "ids.sqlite3")
    try:
        worker = IdempotentConsumer(
            bootstrap, group, [topic], lambda r: sent.append(r.value), store
        )
        _poll_until(worker, lambda: len(sent) == 2, commit=False)
        worker.consumer.close()
        again = IdempotentConsumer(bootstrap, group, [topic], lambda r: sent.append(r.value), store)
        _poll_until(again, lambda: again.stats.skipped == 2, commit=True)
        again.close()
    finally:
        store.close()
    assert sent == [b"alice", b"bob"]


def test_a_failing_handler_is_retried_by_the_same_consumer_without_skipping(
    bootstrap: str, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique("invoices")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send_batch(topic, [b"i1", b"i2", b"i3"], partition=0).result()
    done: list[bytes] = []
    failures = {b"i2": 1}

    def handler(record: ConsumerRecord) -> None:
        assert record.value is not None
        if failures.get(record.value):
            failures[record.value] -= 1
            raise OSError("printer jammed")
        done.append(record.value)

    store = ProcessedStore(tmp_path / "ids.sqlite3")
    worker = IdempotentConsumer(bootstrap, unique("printer"), [topic], handler, store)
    try:
        raised = 0
        for _ in range(50):
            try:
                worker.poll_once(0.2)
            except OSError:
                raised += 1
            if len(done) == 3:
                break
        assert raised == 1 and done == [b"i1", b"i2", b"i3"]
        assert worker.consumer.committed((topic, 0)).offset == 3  # type: ignore[union-attr]
    finally:
        worker.close()
        store.close()

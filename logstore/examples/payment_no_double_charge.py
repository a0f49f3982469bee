"""Effectively once: a payment worker crashes after charging but before committing, the
records are delivered again, and nobody is charged twice.

Payments are produced by an idempotent producer (broker-side dedup of retried batches),
each with a `message-id` header (the payment id). The worker is an `IdempotentConsumer`
whose handler charges inside the same SQLite transaction that records the payment id, so a
charge and its "processed" mark commit together. The first worker charges all payments and
crashes before committing offsets; the restarted worker gets the same records again and
skips every one. The payments table ends with one row per payment.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from pathlib import Path

from logstore import Producer
from logstore.examples._common import Deadline, create_topics, finish, run_id, say
from logstore.patterns import headers as h
from logstore.patterns.idempotent import IdempotentConsumer, ProcessedStore
from logstore.types import ConsumerRecord

PAYMENTS = [("pay_123", "alice", 100), ("pay_124", "bob", 250), ("pay_125", "carol", 75)]


def charge(record: ConsumerRecord, txn: sqlite3.Connection) -> None:
    """Charge the customer and record the payment, in the caller's transaction."""
    payment = json.loads(record.value or b"{}")
    txn.execute(
        "CREATE TABLE IF NOT EXISTS payments (payment_id TEXT PRIMARY KEY, user TEXT, amount INT)"
    )
    txn.execute(
        "INSERT INTO payments VALUES (?, ?, ?)",
        (payment["payment_id"], payment["user"], payment["amount"]),
    )
    say(f"  charged {payment['user']} ${payment['amount']} ({payment['payment_id']})")


def run_worker(
    bootstrap: str, topic: str, store_path: Path, deadline: Deadline, crash: bool
) -> tuple[int, int]:
    """Consume every payment once; with `crash`, stop without committing. Returns
    (charged, skipped)."""
    worker = IdempotentConsumer(
        bootstrap, f"payments-worker.{topic}", [topic], charge, ProcessedStore(store_path)
    )
    try:
        seen = lambda: worker.stats.processed + worker.stats.skipped  # noqa: E731
        while seen() < len(PAYMENTS) and not deadline.passed():
            worker.poll_once(0.2, commit=not crash)
        return worker.stats.processed, worker.stats.skipped
    finally:
        worker.close()
        worker.store.close()


def main(args: argparse.Namespace) -> bool:
    topic = f"payments.{run_id()}"
    create_topics(args.bootstrap_server, {topic: 1})
    with Producer(args.bootstrap_server, acks="all", enable_idempotence=True) as producer:
        for payment_id, user, amount in PAYMENTS:
            body = {"payment_id": payment_id, "user": user, "amount": amount}
            producer.send(
                topic,
                json.dumps(body).encode(),
                key=payment_id.encode(),
                headers={h.MESSAGE_ID: payment_id.encode()},
            )
    say(f"checkout: published {len(PAYMENTS)} payments to {topic}")
    deadline = Deadline(args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "payments.sqlite3"
        say("worker 1: charging...")
        charged, _ = run_worker(args.bootstrap_server, topic, store_path, deadline, crash=True)
        say(f"worker 1: charged {charged}, then crashed before committing its offsets")
        say("worker 2: restarted, the same payments are delivered again")
        again, skipped = run_worker(args.bootstrap_server, topic, store_path, deadline, False)
        say(f"worker 2: charged {again}, skipped {skipped} already-processed payment(s)")
        with sqlite3.connect(store_path) as db:
            rows = db.execute("SELECT payment_id, COUNT(*) FROM payments GROUP BY 1").fetchall()
    for payment_id, count in rows:
        say(f"{payment_id}: charged {count} time(s)")
    return charged == len(PAYMENTS) and again == 0 and all(count == 1 for _, count in rows)


if __name__ == "__main__":
    finish(main, __doc__ or "")

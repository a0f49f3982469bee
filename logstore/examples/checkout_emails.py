"""Checkout queues confirmation emails; a worker sends them, retrying and dead-lettering.

The checkout service answers the user as soon as the payment is done and the email job is
in the `emails` topic (milliseconds, not the seconds SMTP takes). The email worker is a
`RetryingConsumer`: one mailbox is flaky (fails once, retried in process), one SMTP relay
is slow to recover (fails twice, the second retry goes through `emails.retry.1`), and one
address bounces for good (ends in `emails.dlq` with the error in its headers).
"""

from __future__ import annotations

import argparse
import json
import time

from logstore import Producer
from logstore.examples._common import Deadline, create_topics, finish, run_id, say
from logstore.patterns import headers as h
from logstore.patterns.retry import RetryingConsumer, RetryPolicy, attempts_so_far
from logstore.types import ConsumerRecord

ORDERS = [
    (1001, "alice@example.com"),
    (1002, "flaky@example.com"),
    (1003, "bounce@invalid"),
    (1004, "relay-down@example.com"),
]
#: how many times sending to an address fails before it works (None: always fails)
FAILURES = {"flaky@example.com": 1, "relay-down@example.com": 2, "bounce@invalid": None}


class SmtpError(Exception):
    pass


def checkout(producer: Producer, topic: str, order_id: int, email: str) -> float:
    """Charge (synchronously, it is critical), queue the email, answer; returns ms taken."""
    started = time.perf_counter()
    time.sleep(0.005)  # the payment call
    job = {"type": "order_confirmation", "order_id": order_id, "to": email}
    producer.send(topic, value=json.dumps(job).encode(), key=str(order_id).encode()).result()
    return (time.perf_counter() - started) * 1000


def main(args: argparse.Namespace) -> bool:
    topic = f"emails.{run_id()}"
    create_topics(args.bootstrap_server, {topic: 2})
    with Producer(args.bootstrap_server, acks="all", linger_ms=0) as producer:
        for order_id, email in ORDERS:
            ms = checkout(producer, topic, order_id, email)
            say(f"checkout {order_id}: order confirmed to the user in {ms:.1f} ms (email queued)")

    failures_left = dict(FAILURES)
    sent: list[str] = []

    def send_email(record: ConsumerRecord) -> None:
        job = json.loads(record.value or b"{}")
        to = job["to"]
        left = failures_left.get(to, 0)
        if left is None or left > 0:
            if left is not None:
                failures_left[to] = left - 1
            hop = f" (from {record.topic})" if attempts_so_far(record) else ""
            say(f"  worker: sending to {to} failed{hop}")
            raise SmtpError(f"550 mailbox unavailable: {to}" if left is None else "421 try later")
        sent.append(to)
        say(f"  worker: confirmation for order {job['order_id']} sent to {to}")

    # ceilings 50 ms then 400 ms: the first retry sleeps, the second goes via emails.retry.1
    policy = RetryPolicy(
        max_attempts=3, initial_backoff_ms=50, multiplier=8, max_in_process_delay_ms=100
    )
    deadline = Deadline(args.timeout)
    worker = RetryingConsumer(
        args.bootstrap_server, f"email-worker.{topic}", [topic], send_email, policy
    )
    with worker:
        worker.run(
            until=lambda: len(sent) == 3 and worker.stats.dead_lettered == 1,
            duration_s=deadline.left(),
        )
        stats = worker.stats
    say(
        f"worker: {stats.succeeded} sent, {stats.retried_in_process} retried in process, "
        f"{stats.sent_to_retry} via {topic}.retry.1, {stats.dead_lettered} dead-lettered"
    )
    dead = _read_dlq(args.bootstrap_server, f"{topic}.dlq", deadline)
    for record in dead:
        hs = record.headers
        say(
            f"DLQ {topic}.dlq: {json.loads(record.value or b'{}')['to']} after "
            f"{h.header_str(hs, h.DLQ_ATTEMPTS)} attempts: "
            f"{h.header_str(hs, h.DLQ_ERROR_TYPE)}: {h.header_str(hs, h.DLQ_ERROR_MESSAGE)}"
        )
    return (
        sorted(sent) == sorted(e for _, e in ORDERS if e != "bounce@invalid")
        and stats.sent_to_retry == 2
        and len(dead) == 1
    )


def _read_dlq(bootstrap: str, topic: str, deadline: Deadline) -> list[ConsumerRecord]:
    from logstore import Consumer

    with Consumer(bootstrap, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, 0), (topic, 1)])
        found: list[ConsumerRecord] = []
        while not found and not deadline.passed():
            found = consumer.poll(timeout=0.2)
        return found


if __name__ == "__main__":
    finish(main, __doc__ or "")

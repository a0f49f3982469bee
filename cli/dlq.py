"""`logstore dlq ...`: list dead letter queues, show their records, replay them."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import click

from logstore.cli.common import (
    bootstrap_option,
    fail,
    json_option,
    note,
    open_admin,
    print_json,
    print_table,
)
from logstore.cli.consume import as_text, record_as_json
from logstore.client.admin import Admin
from logstore.client.consumer import Consumer
from logstore.client.producer import Producer
from logstore.errors import UnknownTopicOrPartitionError
from logstore.patterns import headers as h
from logstore.types import ConsumerRecord

LIST_COLUMNS = ("TOPIC", "SOURCE-TOPIC", "PARTITIONS", "DEPTH")
SHOW_COLUMNS = (
    "PARTITION",
    "OFFSET",
    "KEY",
    "ORIGINAL",
    "ATTEMPTS",
    "ERROR-TYPE",
    "ERROR-MESSAGE",
    "VALUE",
)
#: how long reading a DLQ up to its end may take before giving up (s)
READ_TIMEOUT_S = 30.0


@click.group()
def dlq() -> None:
    """Inspect and replay dead letter queues (topics ending in .dlq).

    Records land in TOPIC.dlq after exhausting their retries, with headers naming their
    original topic, partition and offset, the attempts made and the last error.

    \b
    Examples:
      logstore dlq list
      logstore dlq show orders.dlq --max-messages 20
      logstore dlq replay orders.dlq --filter-error-type TimeoutError --dry-run
    """


@dlq.command("list")
@json_option
@bootstrap_option
def list_dlqs(as_json: bool, bootstrap: str) -> None:
    """List dead letter queues with their depth (records stored: log end - log start).

    \b
    Examples:
      logstore dlq list
      logstore dlq list --json
    """
    with open_admin(bootstrap) as admin:
        rows = []
        for name in sorted(n for n in admin.list_topics() if h.is_dlq_topic(n)):
            try:
                partitions = admin.describe_topic(name).partitions
            except UnknownTopicOrPartitionError:
                continue
            depth = sum(max(p.log_end_offset - p.log_start_offset, 0) for p in partitions)
            rows.append((name, h.source_of(name), len(partitions), depth))
    if as_json:
        keys = ("topic", "source_topic", "partitions", "depth")
        print_json([dict(zip(keys, row, strict=True)) for row in rows])
        return
    print_table(LIST_COLUMNS, rows)


def _dlq_fields(r: ConsumerRecord) -> dict[str, Any]:
    hs = r.headers
    return {
        "original_topic": h.header_str(hs, h.DLQ_ORIGINAL_TOPIC),
        "original_partition": h.header_int(hs, h.DLQ_ORIGINAL_PARTITION),
        "original_offset": h.header_int(hs, h.DLQ_ORIGINAL_OFFSET),
        "attempts": h.header_int(hs, h.DLQ_ATTEMPTS),
        "error_type": h.header_str(hs, h.DLQ_ERROR_TYPE),
        "error_message": h.header_str(hs, h.DLQ_ERROR_MESSAGE),
        "dead_lettered_at": h.header_int(hs, h.DLQ_TIMESTAMP),
    }


def read_dlq(admin: Admin, topic: str, limit: int | None) -> list[ConsumerRecord]:
    """Every record of `topic` from log start to the log end as of now (up to `limit`),
    in partition then offset order, read without a consumer group."""
    partitions = admin.describe_topic(topic).partitions
    ends = {p.partition: p.log_end_offset for p in partitions}
    pending = {p.partition for p in partitions if p.log_end_offset > p.log_start_offset}
    found: list[ConsumerRecord] = []
    if not pending:
        return found
    deadline = time.monotonic() + READ_TIMEOUT_S
    with Consumer(admin.address, auto_offset_reset="earliest", fetch_max_wait_ms=100) as c:
        c.assign([(topic, p) for p in sorted(pending)])
        while pending and time.monotonic() < deadline:
            for record in c.poll(timeout=0.2):
                if record.offset < ends[record.partition]:
                    found.append(record)
                if record.offset + 1 >= ends[record.partition]:
                    pending.discard(record.partition)
            # a partition whose tail was compacted or removed ends before its last offset
            for p in list(pending):
                if c.position((topic, p)) >= ends[p]:
                    pending.discard(p)
    if pending:
        fail(f"timed out reading {topic}: partitions {sorted(pending)} not read to the end")
    found.sort(key=lambda r: (r.partition, r.offset))
    return found if limit is None else found[:limit]


def _require_dlq(admin: Admin, topic: str) -> None:
    if not h.is_dlq_topic(topic):
        fail(f"{topic!r} is not a dead letter queue (its name must end in {h.DLQ_SUFFIX})")
    if topic not in admin.list_topics():
        fail(f"dead letter queue {topic!r} does not exist")


@dlq.command()
@click.argument("topic")
@click.option(
    "--max-messages", type=click.IntRange(min=1), metavar="N", help="Show at most N records."
)
@json_option
@bootstrap_option
def show(topic: str, max_messages: int | None, as_json: bool, bootstrap: str) -> None:
    """Show TOPIC's records with where they came from and why they failed.

    With --json: each record as `logstore consume --json` prints it (keys, values and
    header values that are not UTF-8 in base64, marked by key_encoding, value_encoding or
    a third header element "base64"), plus original_topic, original_partition,
    original_offset, attempts, error_type, error_message and dead_lettered_at.

    \b
    Examples:
      logstore dlq show orders.dlq
      logstore dlq show orders.dlq --max-messages 5 --json | jq '.[].error_message'
    """
    with open_admin(bootstrap) as admin:
        _require_dlq(admin, topic)
        records = read_dlq(admin, topic, max_messages)
    if as_json:
        print_json([{**record_as_json(r), **_dlq_fields(r)} for r in records])
        return
    rows = []
    for r in records:
        f = _dlq_fields(r)
        origin = f"{f['original_topic']}-{f['original_partition']}@{f['original_offset']}"
        rows.append(
            (
                r.partition,
                r.offset,
                as_text(r.key),
                origin,
                f["attempts"],
                f["error_type"],
                f["error_message"],
                as_text(r.value),
            )
        )
    print_table(SHOW_COLUMNS, rows)


@dlq.command()
@click.argument("topic")
@click.option("--filter-error-type", metavar="X", help="Only records whose error type is X.")
@click.option("--key", metavar="K", help="Only records whose key is K (UTF-8).")
@click.option("--dry-run", is_flag=True, help="Only print what would be replayed.")
@json_option
@bootstrap_option
def replay(
    topic: str,
    filter_error_type: str | None,
    key: str | None,
    dry_run: bool,
    as_json: bool,
    bootstrap: str,
) -> None:
    """Send TOPIC's records back to their original topics (from their headers).

    Key, value and the application's headers are kept; the logstore.dlq.* headers are
    dropped, so a record failing again starts its retries afresh. Records stay in the
    DLQ (it is a log): replay with filters, or after fixing the cause, to avoid sending
    one twice. Every replayed record is acknowledged (acks=all) before this exits 0.

    \b
    Examples:
      logstore dlq replay orders.dlq --dry-run
      logstore dlq replay orders.dlq --filter-error-type TimeoutError
      logstore dlq replay orders.dlq --key user_123
    """
    with open_admin(bootstrap) as admin:
        _require_dlq(admin, topic)
        records = read_dlq(admin, topic, None)
    wanted = key.encode() if key is not None else None
    chosen = [
        r
        for r in records
        if (filter_error_type is None or _dlq_fields(r)["error_type"] == filter_error_type)
        and (wanted is None or r.key == wanted)
    ]
    orphans = [r for r in chosen if not _dlq_fields(r)["original_topic"]]
    if orphans:
        where = ", ".join(f"{r.partition}@{r.offset}" for r in orphans[:5])
        fail(f"{len(orphans)} record(s) lack the {h.DLQ_ORIGINAL_TOPIC} header ({where})")
    targets = Counter(_dlq_fields(r)["original_topic"] for r in chosen)
    if not dry_run and chosen:
        with Producer(bootstrap, acks="all", linger_ms=5) as producer:
            futures = [
                producer.send(
                    _dlq_fields(r)["original_topic"],
                    value=r.value,
                    key=r.key,
                    headers=h.without(r.headers, (h.DLQ_PREFIX, h.RETRY_PREFIX)),
                )
                for r in chosen
            ]
            for future in futures:
                future.result()
    summary = {
        "dlq": topic,
        "matched": len(chosen),
        "of": len(records),
        "replayed": 0 if dry_run else len(chosen),
        "dry_run": dry_run,
        "targets": dict(sorted(targets.items())),
    }
    if as_json:
        print_json(summary)
        return
    print_table(("TARGET-TOPIC", "RECORDS"), sorted(targets.items()))
    verb = "would replay" if dry_run else "replayed"
    note(f"{verb} {len(chosen)} of {len(records)} record(s) from {topic}")

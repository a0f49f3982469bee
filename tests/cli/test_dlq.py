"""`logstore dlq list|show|replay` and the DLQ/retry lines of `groups describe`."""

from __future__ import annotations

import base64
import json

from click.testing import CliRunner

from logstore import Admin, Consumer, Producer
from logstore.cli.main import cli as main_cli
from logstore.patterns import headers as h
from logstore.types import ConsumerRecord
from tests.cli.conftest import Cli, run_cli, table

DEAD = [
    # key, value, error type, original partition, original offset
    (b"k1", b"order-1", "TimeoutError", 0, 10),
    (b"k2", b"order-2", "ValueError", 1, 11),
    (b"k3", b"order-3", "TimeoutError", 0, 12),
]


def dead_letter(address: str) -> None:
    """orders (2 partitions), orders.dlq holding DEAD, as RetryingConsumer writes them."""
    with Admin(address) as admin:
        admin.create_topic("orders", partitions=2)
        admin.create_topic("orders.dlq", partitions=2)
    with Producer(address, linger_ms=0) as producer:
        for key, value, error, partition, offset in DEAD:
            headers = [
                ("trace-id", b"t-" + key),
                *h.encode(
                    {
                        h.DLQ_ORIGINAL_TOPIC: "orders",
                        h.DLQ_ORIGINAL_PARTITION: partition,
                        h.DLQ_ORIGINAL_OFFSET: offset,
                        h.DLQ_ATTEMPTS: 5,
                        h.DLQ_ERROR_TYPE: error,
                        h.DLQ_ERROR_MESSAGE: f"{error} on {value.decode()}",
                        h.DLQ_TIMESTAMP: 1800000000000,
                    }
                ),
            ]
            producer.send(
                "orders.dlq", value=value, key=key, headers=headers, partition=partition
            ).result()


def read(address: str, topic: str, partitions: int, count: int) -> list[ConsumerRecord]:
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(topic, p) for p in range(partitions)])
        found: list[ConsumerRecord] = []
        for _ in range(25):  # up to ~5 s
            found.extend(consumer.poll(timeout=0.2))
            if len(found) >= count:
                break
        return found


def test_list_and_show(cli: Cli) -> None:
    dead_letter(cli.address)
    assert table(cli.ok("dlq", "list").out) == [
        ["TOPIC", "SOURCE-TOPIC", "PARTITIONS", "DEPTH"],
        ["orders.dlq", "orders", "2", "3"],
    ]
    assert json.loads(cli.ok("dlq", "list", "--json").out) == [
        {"topic": "orders.dlq", "source_topic": "orders", "partitions": 2, "depth": 3}
    ]
    rows = table(cli.ok("dlq", "show", "orders.dlq").out)
    assert rows[0][:6] == ["PARTITION", "OFFSET", "KEY", "ORIGINAL", "ATTEMPTS", "ERROR-TYPE"]
    assert [r[:6] for r in rows[1:]] == [
        ["0", "0", "k1", "orders-0@10", "5", "TimeoutError"],
        ["0", "1", "k3", "orders-0@12", "5", "TimeoutError"],
        ["1", "0", "k2", "orders-1@11", "5", "ValueError"],
    ]
    shown = json.loads(cli.ok("dlq", "show", "orders.dlq", "--max-messages", "1", "--json").out)
    assert len(shown) == 1
    assert shown[0]["value"] == "order-1" and shown[0]["error_message"] == "TimeoutError on order-1"
    assert shown[0]["original_offset"] == 10 and shown[0]["dead_lettered_at"] == 1_800_000_000_000


def test_replay_sends_matching_records_back_without_dlq_headers(cli: Cli) -> None:
    dead_letter(cli.address)
    dry = cli.ok("dlq", "replay", "orders.dlq", "--filter-error-type", "TimeoutError", "--dry-run")
    assert table(dry.out) == [["TARGET-TOPIC", "RECORDS"], ["orders", "2"]]
    assert "would replay 2 of 3 record(s) from orders.dlq" in dry.err
    with Admin(cli.address) as admin:
        assert admin.describe_topic("orders").partitions[0].log_end_offset == 0

    replayed = cli.ok("dlq", "replay", "orders.dlq", "--filter-error-type", "TimeoutError")
    assert "replayed 2 of 3 record(s) from orders.dlq" in replayed.err
    by_key = json.loads(cli.ok("dlq", "replay", "orders.dlq", "--key", "k2", "--json").out)
    assert by_key["replayed"] == 1 and by_key["targets"] == {"orders": 1}

    records = read(cli.address, "orders", 2, 3)
    assert sorted((r.key, r.value) for r in records) == [
        (b"k1", b"order-1"),
        (b"k2", b"order-2"),
        (b"k3", b"order-3"),
    ]
    for record in records:
        assert [k for k, _ in record.headers] == ["trace-id"]
    # the DLQ is a log: replay leaves it as it was
    assert json.loads(cli.ok("dlq", "list", "--json").out)[0]["depth"] == 3


def test_refuses_what_is_not_a_dlq(cli: Cli) -> None:
    dead_letter(cli.address)
    result = cli("dlq", "show", "orders")
    assert result.code == 1 and result.err.startswith("error: 'orders' is not a dead letter")
    result = cli("dlq", "replay", "missing.dlq", "--dry-run")
    assert result.code == 1 and "does not exist" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_groups_describe_shows_dlq_depth_and_retry_backlog(cli: Cli) -> None:
    dead_letter(cli.address)
    with Admin(cli.address) as admin:
        admin.create_topic("orders.retry.1", partitions=1)
        with Producer(cli.address, linger_ms=0) as producer:
            for _ in range(4):
                producer.send("orders.retry.1", value=b"again").result()
            producer.send("orders", value=b"fine", partition=0).result()
        admin.commit_offsets("billing", {("orders", 0): 1, ("orders.retry.1", 0): 1})
    out = cli.ok("groups", "describe", "billing").out
    blocks = out.split("\n\n")
    assert len(blocks) == 2
    assert table(blocks[1]) == [
        ["QUEUE", "TOPIC", "SOURCE-TOPIC", "RECORDS", "BACKLOG"],
        ["dlq", "orders.dlq", "orders", "3", "3"],
        ["retry", "orders.retry.1", "orders", "4", "3"],
    ]
    described = json.loads(cli.ok("groups", "describe", "billing", "--json").out)
    retry = [q for q in described["queues"] if q["kind"] == "retry"]
    assert retry == [
        {
            "topic": "orders.retry.1",
            "kind": "retry",
            "source_topic": "orders",
            "partition": 0,
            "records": 4,
            "backlog": 3,
        }
    ]


def test_help_has_examples_and_a_dead_broker_is_one_line(dead_address: str) -> None:
    runner = CliRunner()
    for command in (["dlq", "list"], ["dlq", "show"], ["dlq", "replay"]):
        result = runner.invoke(main_cli, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Examples:" in result.stdout and "--bootstrap-server" in result.stdout
    down = run_cli("dlq", "list", bootstrap=dead_address)
    assert down.code == 1 and down.err == f"error: cannot reach broker at {dead_address}\n"


def test_show_json_writes_binary_values_as_consume_does(cli: Cli) -> None:
    with Admin(cli.address) as admin:
        admin.create_topic("blobs.dlq")
    headers = h.encode({h.DLQ_ORIGINAL_TOPIC: "blobs", h.DLQ_ERROR_TYPE: "ValueError"})
    with Producer(cli.address, linger_ms=0) as producer:
        producer.send("blobs.dlq", value=b"\x89PNG\xff", key=b"img", headers=headers).result()
    (shown,) = json.loads(cli.ok("dlq", "show", "blobs.dlq", "--json").out)
    assert shown["value_encoding"] == "base64"
    assert base64.b64decode(shown["value"]) == b"\x89PNG\xff"
    assert shown["key"] == "img" and "key_encoding" not in shown
    assert shown["original_topic"] == "blobs" and shown["error_type"] == "ValueError"

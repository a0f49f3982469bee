"""/metrics reports dead letter queue depth and retry topic records and backlog."""

from __future__ import annotations

from pathlib import Path

from logstore import Admin, Producer
from tests.server.test_metrics import _start, scrape, value


def test_dlq_depth_and_retry_backlog_are_gauges(tmp_path: Path) -> None:
    broker = _start(tmp_path / "data")
    try:
        with Admin(broker.address) as admin:
            admin.create_topic("orders", partitions=2)
            admin.create_topic("orders.dlq", partitions=2)
            admin.create_topic("orders.retry.1", partitions=1)
            admin.create_topic("orders.retry.x", partitions=1)  # not a retry level
            with Producer(broker.address, linger_ms=0) as producer:
                for n in range(3):
                    producer.send("orders.dlq", value=b"dead", partition=n % 2).result()
                for _ in range(5):
                    producer.send("orders.retry.1", value=b"again", partition=0).result()
                producer.send("orders", value=b"fine", partition=0).result()
            admin.commit_offsets("billing", {("orders.retry.1", 0): 2})
            admin.commit_offsets("audit", {("orders", 0): 1})
        samples = scrape(broker)
    finally:
        broker.stop()

    def dlq(partition: str) -> float | None:
        return value(
            samples,
            "logstore_dlq_depth_records",
            topic="orders.dlq",
            partition=partition,
            source_topic="orders",
        )

    assert (dlq("0"), dlq("1")) == (2, 1)
    retry = {"topic": "orders.retry.1", "partition": "0", "source_topic": "orders", "level": "1"}
    assert value(samples, "logstore_retry_topic_records", **retry) == 5
    assert value(samples, "logstore_retry_backlog_records", group="billing", **retry) == 3
    names = {(name, dict(labels).get("topic")) for name, labels in samples}
    assert ("logstore_retry_topic_records", "orders.retry.x") not in names
    assert ("logstore_dlq_depth_records", "orders") not in names
    assert not [
        labels
        for name, labels in samples
        if name == "logstore_retry_backlog_records" and dict(labels).get("group") == "audit"
    ]

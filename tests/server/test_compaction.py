"""Compacted topics end to end: a real broker compacts in the background, consumers read
the latest value of every key (tombstones included), offsets keep their order, and a
record without a key is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logstore import Admin, Consumer, Producer
from logstore.errors import InvalidRequestError
from logstore.types import ConsumerRecord
from tests.helpers import wait_until
from tests.server.conftest import BrokerProcess

#: compaction passes every 100 ms instead of Kafka's 15 s
CONFIG = """
[log-manager]
cleaner_backoff_ms = 100
"""
TOPIC = "profiles"
KEYS = 10
UPDATES = 400
#: upper bound of any wait here (s); loops also stop after a bounded number of rounds
WAIT_S = 20.0


@pytest.fixture
def compacting_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    config = tmp_path / "broker.toml"
    config.write_text(CONFIG)
    process = BrokerProcess(tmp_path / "data", ["--config", str(config)])
    process.start()
    try:
        yield process
    finally:
        process.close()


def read_everything(address: str, end: int) -> list[ConsumerRecord]:
    """Every record of partition 0 from the start up to offset `end`."""
    records: list[ConsumerRecord] = []
    with Consumer(address, auto_offset_reset="earliest") as consumer:
        consumer.assign([(TOPIC, 0)])
        deadline = time.monotonic() + WAIT_S
        for _ in range(2000):
            if consumer.position((TOPIC, 0)) >= end or time.monotonic() > deadline:
                break
            records += consumer.poll(timeout=0.2)
    return records


def test_a_compacted_topic_keeps_the_latest_value_of_every_key(
    compacting_broker: BrokerProcess,
) -> None:
    address = compacting_broker.address
    with Admin(address) as admin:
        admin.create_topic(TOPIC, config={"cleanup.policy": "compact", "segment.bytes": "1024"})
    latest: dict[bytes, bytes | None] = {}
    with Producer(address, acks=1, linger_ms=0) as producer:
        for i in range(UPDATES):
            key = b"user%d" % (i % KEYS)
            value = None if i == UPDATES - KEYS + 3 else b"v%d" % i  # user3 deleted at last
            producer.send(TOPIC, value=value, key=key)
            latest[key] = value
            producer.flush()  # one small batch per record: many segments to compact
        with pytest.raises(InvalidRequestError, match="without a key"):
            producer.send(TOPIC, value=b"no key").result(timeout=10)
        end = UPDATES

    records: list[ConsumerRecord] = []

    def compacted() -> bool:
        records[:] = read_everything(address, end)
        return len(records) < UPDATES / 2

    wait_until(
        compacted,
        f"the background cleaner to compact {TOPIC} below {UPDATES // 2} of its {UPDATES} records",
        timeout_s=WAIT_S,
        step_s=0.2,
    )
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    assert offsets[-1] == end - 1  # the newest record is never compacted away
    seen: dict[bytes, bytes | None] = {}
    for record in records:
        assert record.key is not None
        seen[record.key] = record.value
        assert record.value is None or record.value == b"v%d" % record.offset
    assert seen == latest
    assert seen[b"user3"] is None  # the tombstone is still there for consumers to see

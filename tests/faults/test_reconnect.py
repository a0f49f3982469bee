"""Clients ride out a broker restart (same port, same data dir) mid-stream.

An idempotent producer and a group consumer run at the same time while the broker is
stopped gracefully (SIGTERM) and started again: the producer retries with backoff and its
records land exactly once, in order; the consumer rejoins and delivers every record
(at least once, no gaps). tests/client covers a kill -9 for each client on its own.
"""

from __future__ import annotations

import threading
import time

from logstore import Consumer, Producer
from logstore.errors import CommitFailedError, FencedMemberEpochError, UnknownMemberIdError
from tests.faults.conftest import BrokerFactory
from tests.faults.support import connect, create_topic, read_log
from tests.helpers import wait_until

COUNT = 3000


def test_producer_and_group_consumer_survive_a_broker_restart(make_broker: BrokerFactory) -> None:
    broker = make_broker()
    with connect(broker.address) as stub:
        create_topic(stub, "rc", 1)
    consumed: list[int] = []
    stop = threading.Event()
    errors: list[str] = []
    commit_failures: list[int] = []

    def consume() -> None:
        try:
            with Consumer(
                broker.address,
                group_id="rc-group",
                auto_offset_reset="earliest",
                retry_backoff_ms=50,
                session_timeout_ms=6000,
            ) as consumer:
                consumer.subscribe(["rc"])
                for _ in range(10_000):
                    if stop.is_set():
                        return
                    consumed.extend(int(r.value) for r in consumer.poll(timeout=0.2))
                    try:
                        consumer.commit()
                    except (CommitFailedError, UnknownMemberIdError, FencedMemberEpochError):
                        # the restarted coordinator forgot the member: as in Kafka, the
                        # application goes on polling, which rejoins
                        commit_failures.append(1)
        except Exception as exc:
            errors.append(repr(exc))

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        with Producer(broker.address, acks="all", linger_ms=2, retry_backoff_ms=50) as producer:
            futures = []
            for i in range(COUNT):
                futures.append(producer.send("rc", b"%d" % i))
                if i % 100 == 99:
                    time.sleep(0.01)
                if i == COUNT // 3:
                    assert broker.stop() == 0
                    broker.start()
            producer.flush(60)
            assert [f.result(0).offset for f in futures] == list(range(COUNT))
        wait_until(lambda: set(range(COUNT)) <= set(consumed), "every record consumed", 60)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors, errors
    print(f"commits refused around the restart: {len(commit_failures)}")
    assert sorted(set(consumed)) == list(range(COUNT))
    # per partition, delivery is in order apart from re-deliveries after the rejoin
    first_seen = list(dict.fromkeys(consumed))
    assert first_seen == list(range(COUNT))
    with connect(broker.address) as stub:
        assert [int(r.value) for r in read_log(stub, "rc")] == list(range(COUNT))

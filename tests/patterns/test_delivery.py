"""At-most-once loses the record being handled when the handler dies; at-least-once
delivers it again."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from logstore import Admin, Consumer, Producer
from logstore.patterns.delivery import run_at_least_once, run_at_most_once
from logstore.types import ConsumerRecord


class Crash(Exception):
    pass


def _crash_on(value: bytes, seen: list[bytes]) -> Callable[[ConsumerRecord], None]:
    def handler(record: ConsumerRecord) -> None:
        assert record.value is not None
        if record.value == value and value not in seen:
            seen.append(value)
            raise Crash(value)
        seen.append(record.value)

    return handler


@pytest.mark.parametrize("commit_first", [True, False], ids=["at-most-once", "at-least-once"])
def test_where_the_commit_sits_decides_what_a_crash_costs(
    bootstrap: str, unique: Callable[[str], str], commit_first: bool
) -> None:
    topic, group = unique("metrics"), unique("dashboard")
    with Admin(bootstrap) as admin:
        admin.create_topic(topic, partitions=1)
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send_batch(topic, [b"m1", b"m2", b"m3"], partition=0).result()
    loop = run_at_most_once if commit_first else run_at_least_once
    seen: list[bytes] = []
    options = {"group_id": group, "enable_auto_commit": False, "auto_offset_reset": "earliest"}
    with Consumer(bootstrap, **options) as consumer:
        consumer.subscribe([topic])
        with pytest.raises(Crash):
            loop(consumer, _crash_on(b"m2", seen), timeout_s=10)
    with Consumer(bootstrap, **options) as consumer:
        consumer.subscribe([topic])
        handled = loop(consumer, lambda r: seen.append(r.value or b""), timeout_s=1.0)
    if commit_first:
        # m1..m3 came in one poll, committed before m2 crashed: m2 and m3 are lost
        assert seen == [b"m1", b"m2"] and handled == 0
    else:
        # nothing was committed: everything comes again, m1 twice
        assert seen == [b"m1", b"m2", b"m1", b"m2", b"m3"] and handled == 3

"""At-most-once vs at-least-once: the same crash, two places for the commit.

A metrics consumer crashes on the second of three records, then restarts. Committing
before processing (at most once) loses the records of that poll it had not finished;
committing after (at least once) delivers them again, the first one twice. For
effectively once, see `payment_no_double_charge`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from logstore import Consumer, Producer
from logstore.examples._common import create_topics, finish, run_id, say
from logstore.patterns.delivery import run_at_least_once, run_at_most_once
from logstore.types import ConsumerRecord

Loop = Callable[..., int]


class Crash(Exception):
    pass


def scenario(bootstrap: str, name: str, loop: Loop, timeout_s: float) -> list[str]:
    topic = f"page-views.{name}.{run_id()}"
    create_topics(bootstrap, {topic: 1})
    with Producer(bootstrap, linger_ms=0) as producer:
        producer.send_batch(topic, [b"view-1", b"view-2", b"view-3"], partition=0).result()
    handled: list[str] = []
    crashed = False

    def handler(record: ConsumerRecord) -> None:
        nonlocal crashed
        value = (record.value or b"").decode()
        if value == "view-2" and not crashed:
            crashed = True
            raise Crash(value)
        handled.append(value)

    options = {"group_id": f"dash.{topic}", "enable_auto_commit": False}
    for _ in range(2):  # the run that crashes, then the restart
        with Consumer(bootstrap, auto_offset_reset="earliest", **options) as consumer:
            consumer.subscribe([topic])
            try:
                loop(consumer, handler, timeout_s=min(timeout_s, 1.5))
            except Crash:
                say(f"  {name}: crashed while handling view-2")
    say(f"{name}: handled {handled}")
    return handled


def main(args: argparse.Namespace) -> bool:
    at_most = scenario(args.bootstrap_server, "at-most-once", run_at_most_once, args.timeout)
    at_least = scenario(args.bootstrap_server, "at-least-once", run_at_least_once, args.timeout)
    say(f"at-most-once lost {sorted({'view-1', 'view-2', 'view-3'} - set(at_most))}")
    say(f"at-least-once duplicated {sorted(v for v in set(at_least) if at_least.count(v) > 1)}")
    return at_most == ["view-1"] and at_least == ["view-1", "view-1", "view-2", "view-3"]


if __name__ == "__main__":
    finish(main, __doc__ or "")

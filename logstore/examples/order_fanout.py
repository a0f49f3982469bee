"""Publish-subscribe: one `orders` topic, three consumer groups, each sees every order.

The order service publishes each order once. Payment, inventory and notification are
separate consumer groups, so each keeps its own offsets and gets all orders; none of
them slows the others or the order service down.
"""

from __future__ import annotations

import argparse
import json
import threading

from logstore import Consumer, Producer
from logstore.examples._common import Deadline, create_topics, finish, run_id, say

SERVICES = {
    "payment": "charged",
    "inventory": "reserved items for",
    "notification": "emailed the customer about",
}
ORDER_COUNT = 6


def consume_all(
    bootstrap: str, topic: str, service: str, deadline: Deadline, seen: dict[str, list[int]]
) -> None:
    group = f"{service}.{topic}"
    with Consumer(
        bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    ) as consumer:
        consumer.subscribe([topic])
        while len(seen[service]) < ORDER_COUNT and not deadline.passed():
            records = consumer.poll(timeout=0.2)
            for record in records:
                order = json.loads(record.value or b"{}")
                seen[service].append(order["order_id"])
                say(f"  {service:>12}: {SERVICES[service]} order {order['order_id']}")
            if records:
                consumer.commit()


def main(args: argparse.Namespace) -> bool:
    topic = f"orders.{run_id()}"
    create_topics(args.bootstrap_server, {topic: 3})
    with Producer(args.bootstrap_server, linger_ms=0) as producer:
        for n in range(ORDER_COUNT):
            order = {"order_id": 5000 + n, "user": f"user_{n % 3}", "total": 20 + n}
            producer.send(topic, json.dumps(order).encode(), key=order["user"].encode()).result()
    say(f"order service: published {ORDER_COUNT} orders to {topic} once each")
    deadline = Deadline(args.timeout)
    seen: dict[str, list[int]] = {service: [] for service in SERVICES}
    threads = [
        threading.Thread(target=consume_all, args=(args.bootstrap_server, topic, s, deadline, seen))
        for s in SERVICES
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(deadline.left() + 5)
    expected = list(range(5000, 5000 + ORDER_COUNT))
    for service, orders in seen.items():
        say(f"{service} group saw {len(orders)} of {ORDER_COUNT} orders")
    return all(sorted(orders) == expected for orders in seen.values())


if __name__ == "__main__":
    finish(main, __doc__ or "")

"""The consumer: `Consumer`, its rebalance listener and the stall it reports.

An I/O-free core (`fetch_positions`, `record_buffer`, `member_state`, `progress`) decides;
thin threads (`fetcher`, `routing`, `group_member`) and the `Consumer` facade (`consumer`)
talk to the broker. The facade's application-thread work is one module per concern:
`assignment` (owned partitions, rebalances), `position_resolver` (seeks, starting
positions), `committer` (offset commits, auto-commit), `missing_partitions` (partitions
the broker does not know) and `broker_calls` (where its own requests go).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from logstore.lazy import lazy_exports

if TYPE_CHECKING:
    from logstore.client.consumer.committer import CommitCallback
    from logstore.client.consumer.consumer import Consumer, Deserializer
    from logstore.client.consumer.group_member import ConsumerRebalanceListener
    from logstore.client.consumer.progress import ConsumerStall

_EXPORTS = {
    "CommitCallback": "logstore.client.consumer.committer",
    "Consumer": "logstore.client.consumer.consumer",
    "ConsumerRebalanceListener": "logstore.client.consumer.group_member",
    "ConsumerStall": "logstore.client.consumer.progress",
    "Deserializer": "logstore.client.consumer.consumer",
}
__all__ = [
    "CommitCallback",
    "Consumer",
    "ConsumerRebalanceListener",
    "ConsumerStall",
    "Deserializer",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)

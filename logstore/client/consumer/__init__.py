"""The consumer: `Consumer`, its rebalance listener and the stall it reports.

An I/O-free core (`fetch_positions`, `record_buffer`, `member_state`, `progress`) decides;
thin threads (`fetcher`, `group_member`) and the `Consumer` facade (`consumer`) talk to
the broker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from logstore.lazy import lazy_exports

if TYPE_CHECKING:
    from logstore.client.consumer.consumer import CommitCallback, Consumer, Deserializer
    from logstore.client.consumer.group_member import ConsumerRebalanceListener
    from logstore.client.consumer.progress import ConsumerStall

_EXPORTS = {
    "CommitCallback": "logstore.client.consumer.consumer",
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

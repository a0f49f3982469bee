"""The consumer: `Consumer`, its rebalance listener and the stall it reports.

An I/O-free core (`fetch_positions`, `record_buffer`, `member_state`, `progress`) decides;
thin threads (`fetcher`, `group_member`) and the `Consumer` facade (`consumer`) talk to
the broker.
"""

from logstore.client.consumer.consumer import CommitCallback, Consumer, Deserializer
from logstore.client.consumer.group_member import ConsumerRebalanceListener
from logstore.client.consumer.progress import ConsumerStall

__all__ = [
    "CommitCallback",
    "Consumer",
    "ConsumerRebalanceListener",
    "ConsumerStall",
    "Deserializer",
]

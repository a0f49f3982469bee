"""LogStore: a Kafka-style partitioned, replayable log store.

`from logstore import Admin, Producer, Consumer` gives the gRPC clients. They are loaded on
first use so that the codec and storage layers (`logstore.codec`, `logstore.storage`) never
import gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Admin",
    "Consumer",
    "ConsumerRecord",
    "ConsumerStall",
    "Producer",
    "RecordMetadata",
    "__version__",
]

_LAZY = {
    "Admin": "logstore.client.admin",
    "Producer": "logstore.client.producer",
    "Consumer": "logstore.client.consumer",
    "ConsumerStall": "logstore.client.consumer",
    "RecordMetadata": "logstore.types",
    "ConsumerRecord": "logstore.types",
}

if TYPE_CHECKING:
    from logstore.client.admin import Admin
    from logstore.client.consumer import Consumer, ConsumerStall
    from logstore.client.producer import Producer
    from logstore.types import ConsumerRecord, RecordMetadata


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'logstore' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

"""The producer: `Producer` and the `BatchMetadata` its `send_batch` futures resolve to.

Inside, an I/O-free core decides everything and is tested without a broker:

- `accumulator`: per-partition batches, linger and batch_size decisions, what is ready to
  send and in which requests, what an answer or a broken stream means;
- `sequences`: idempotent sequence numbers per partition, and their reset;
- `retry`: which errors are retriable, backoff, delivery timeout;
- `futures`: the futures handed out, finished per batch.

Around it, thin I/O: `sender` (the sender thread, the `ProduceStream` and its reader
thread) and `facade` (`Producer`: argument checks, routing, topic metadata).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from logstore.lazy import lazy_exports

if TYPE_CHECKING:
    from logstore.client.producer.accumulator import HEADER_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES
    from logstore.client.producer.facade import PRODUCE_STREAM_METHOD, Producer
    from logstore.client.producer.futures import BatchMetadata

_EXPORTS = {
    "BatchMetadata": "logstore.client.producer.futures",
    "HEADER_OVERHEAD_BYTES": "logstore.client.producer.accumulator",
    "PRODUCE_STREAM_METHOD": "logstore.client.producer.facade",
    "Producer": "logstore.client.producer.facade",
    "RECORD_OVERHEAD_BYTES": "logstore.client.producer.accumulator",
}
__all__ = [
    "HEADER_OVERHEAD_BYTES",
    "PRODUCE_STREAM_METHOD",
    "RECORD_OVERHEAD_BYTES",
    "BatchMetadata",
    "Producer",
]
__getattr__ = lazy_exports(__name__, _EXPORTS)

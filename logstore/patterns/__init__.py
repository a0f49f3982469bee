"""Classic messaging patterns built on the public LogStore client.

- `retry`: retries with exponential backoff and full jitter, retry topics for long delays,
  and a dead letter queue (`<topic>.dlq`) for records that keep failing.
- `request_reply`: `Requester` / `Responder` over a request topic and a reply topic,
  matched by correlation id.
- `idempotent`: `ProcessedStore` (SQLite) and `IdempotentConsumer`, which skip records
  whose message id was already processed.
- `delivery`: at-most-once and at-least-once consume loops.

Everything here is client-side: the broker knows nothing of retries or replies, they are
ordinary topics and headers (names in `logstore.patterns.headers`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use: the broker imports `logstore.patterns.headers` for its metrics and
# must not pull in the clients.
_LAZY = {
    "IdempotentConsumer": "logstore.patterns.idempotent",
    "ProcessedStore": "logstore.patterns.idempotent",
    "RequestFailedError": "logstore.patterns.request_reply",
    "Requester": "logstore.patterns.request_reply",
    "Responder": "logstore.patterns.request_reply",
    "RetryPolicy": "logstore.patterns.retry",
    "RetryingConsumer": "logstore.patterns.retry",
    "run_at_least_once": "logstore.patterns.delivery",
    "run_at_most_once": "logstore.patterns.delivery",
}
__all__ = [
    "IdempotentConsumer",
    "ProcessedStore",
    "RequestFailedError",
    "Requester",
    "Responder",
    "RetryPolicy",
    "RetryingConsumer",
    "run_at_least_once",
    "run_at_most_once",
]

if TYPE_CHECKING:
    from logstore.patterns.delivery import run_at_least_once, run_at_most_once
    from logstore.patterns.idempotent import IdempotentConsumer, ProcessedStore
    from logstore.patterns.request_reply import Requester, RequestFailedError, Responder
    from logstore.patterns.retry import RetryingConsumer, RetryPolicy


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'logstore.patterns' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""Idempotent consumption: remember processed message ids, skip them when redelivered.

At-least-once delivery redelivers records after a crash between processing and commit.
`ProcessedStore` keeps the ids of processed messages in a SQLite file, each for `ttl_ms`;
`IdempotentConsumer` checks it before calling the handler and records the id after. With a
handler of the form `handler(record, txn)`, the handler's own writes (on `txn`, the
store's SQLite connection) and the id insert commit in one transaction: either both
happen or neither, so even a crash in the middle cannot process a message twice. A plain
`handler(record)` has its id inserted right after it returns: a crash in that gap
processes the message again on redelivery.

The message id comes from the `message-id` header by default (set it when producing, e.g.
a payment id); with no such header, `topic-partition-offset` is used, which catches
redelivery but not a producer sending the same message twice.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logstore.client.consumer import Consumer
from logstore.patterns import headers as h
from logstore.patterns.delivery import rewind, run_bounded
from logstore.patterns.retry import now_ms
from logstore.types import ConsumerRecord

log = logging.getLogger(__name__)

#: where `ProcessedStore()` keeps its file unless given a path
STORE_PATH_ENV = "LOGSTORE_PROCESSED_STORE"
DEFAULT_STORE_PATH = "logstore-processed.sqlite3"
DEFAULT_TTL_MS = 7 * 24 * 3600 * 1000
#: how long a writer waits for another process's transaction on the same file (ms)
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS processed_messages (
    message_id    TEXT PRIMARY KEY,
    processed_ms  INTEGER NOT NULL,
    expires_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS processed_messages_expiry ON processed_messages (expires_ms);
"""


class ProcessedStore:
    """Processed message ids in SQLite, each kept `ttl_ms` after it was recorded.

    `path` defaults to $LOGSTORE_PROCESSED_STORE, else ./logstore-processed.sqlite3;
    ":memory:" keeps nothing across restarts. Several processes may share one file (WAL
    mode; `transaction()` takes the write lock at BEGIN, so a check-then-insert is atomic
    across them). `clock` returns wall-clock ms and is injectable for tests.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        ttl_ms: int = DEFAULT_TTL_MS,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be > 0, got {ttl_ms}")
        chosen = path if path is not None else os.environ.get(STORE_PATH_ENV, DEFAULT_STORE_PATH)
        self.path = str(chosen)
        self.ttl_ms = ttl_ms
        self._clock = clock
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: transactions are begun explicitly, so their extent is ours
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection: a handler may keep its own tables here."""
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK when the block raises)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def seen(self, message_id: str, txn: sqlite3.Connection | None = None) -> bool:
        """Whether `message_id` was recorded and has not expired."""
        conn = txn or self._conn
        with self._lock:
            row = conn.execute(
                "SELECT 1 FROM processed_messages WHERE message_id = ? AND expires_ms > ?",
                (message_id, self._clock()),
            ).fetchone()
        return row is not None

    def mark(self, message_id: str, txn: sqlite3.Connection | None = None) -> None:
        """Record `message_id` as processed now (replacing an expired entry)."""
        now = self._clock()
        with self._lock:
            (txn or self._conn).execute(
                "INSERT OR REPLACE INTO processed_messages VALUES (?, ?, ?)",
                (message_id, now, now + self.ttl_ms),
            )

    def process_once(self, message_id: str, work: Callable[[sqlite3.Connection], object]) -> bool:
        """Run `work(txn)` and record `message_id` in one transaction, unless already
        recorded; returns whether `work` ran."""
        with self.transaction() as txn:
            if self.seen(message_id, txn):
                return False
            work(txn)
            self.mark(message_id, txn)
        return True

    def purge_expired(self) -> int:
        """Delete expired ids; returns how many went."""
        with self._lock:
            cursor = self._conn.execute(
                "DELETE FROM processed_messages WHERE expires_ms <= ?", (self._clock(),)
            )
        return cursor.rowcount

    def count(self) -> int:
        """Stored ids, expired or not."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM processed_messages").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ProcessedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def header_message_id(record: ConsumerRecord, header: str = h.MESSAGE_ID) -> str:
    """The `message-id` header, else `topic-partition-offset`."""
    value = h.header_str(record.headers, header)
    return value if value else f"{record.topic}-{record.partition}-{record.offset}"


@dataclass
class IdempotentStats:
    processed: int = 0
    skipped: int = 0
    purged: int = 0


class IdempotentConsumer:
    """A group consumer that runs `handler` at most once per message id.

    `handler(record)` or `handler(record, txn)` (detected from its signature; see the
    module docstring for what each guarantees). A handler that raises stops `poll_once()`
    with its exception: nothing of that record is recorded, its offset is not committed
    and the consumer is rewound to it, so it is delivered again. Offsets are committed
    after each poll's records are processed (at least once); with the id check that makes
    processing effectively once. Use from one thread.
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Iterable[str],
        handler: Callable[..., object],
        store: ProcessedStore | None = None,
        *,
        message_id: Callable[[ConsumerRecord], str] = header_message_id,
        purge_interval_ms: int = 60_000,
        consumer_options: Mapping[str, Any] | None = None,
        security: Mapping[str, str | None] | None = None,
    ) -> None:
        self.handler = handler
        self.store = store if store is not None else ProcessedStore()
        self._owns_store = store is None
        self._message_id = message_id
        self._with_txn = _takes_txn(handler)
        self._purge_interval_s = purge_interval_ms / 1000
        self._next_purge = 0.0
        self.stats = IdempotentStats()
        options: dict[str, Any] = {"auto_offset_reset": "earliest", "fetch_max_wait_ms": 100}
        options.update(consumer_options or {})
        options["enable_auto_commit"] = False
        self.consumer = Consumer(bootstrap, group_id=group_id, **options, **(security or {}))
        self.consumer.subscribe(list(topics))

    def poll_once(self, timeout: float = 0.2, commit: bool = True) -> int:
        """Handle one poll's records and (unless `commit=False`) commit them; returns how
        many were processed (not skipped)."""
        self._maybe_purge()
        records = self.consumer.poll(timeout=timeout)
        processed = 0
        for index, record in enumerate(records):
            try:
                ran = self.handle(record)
            except BaseException:
                rewind(self.consumer, records[index:])
                raise
            processed += ran
        if records and commit:
            self.consumer.commit()
        return processed

    def handle(self, record: ConsumerRecord) -> bool:
        """Process `record` unless its id was seen; returns whether the handler ran."""
        message_id = self._message_id(record)
        if self._with_txn:
            ran = self.store.process_once(message_id, lambda txn: self.handler(record, txn))
        elif self.store.seen(message_id):
            ran = False
        else:
            self.handler(record)
            self.store.mark(message_id)
            ran = True
        if ran:
            self.stats.processed += 1
        else:
            self.stats.skipped += 1
            log.info("skipped %s: message %s was already processed", _where(record), message_id)
        return ran

    def run(
        self,
        *,
        duration_s: float | None = None,
        until: Callable[[], bool] | None = None,
        poll_timeout: float = 0.2,
    ) -> IdempotentStats:
        """Poll until `until()` or `duration_s` (one is required)."""
        run_bounded(self.poll_once, duration_s, until, poll_timeout)
        return self.stats

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if now >= self._next_purge:
            self._next_purge = now + self._purge_interval_s
            self.stats.purged += self.store.purge_expired()

    def close(self) -> None:
        """Leave the group (committing nothing more) and close an owned store."""
        try:
            self.consumer.close()
        finally:
            if self._owns_store:
                self.store.close()

    def __enter__(self) -> IdempotentConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _takes_txn(handler: Callable[..., object]) -> bool:
    """Whether `handler` accepts a second positional argument (the transaction)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def _where(record: ConsumerRecord) -> str:
    return f"{record.topic}-{record.partition}@{record.offset}"

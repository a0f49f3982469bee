"""Allocation of idempotent-producer ids that are never reused, even across crashes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from logstore.errors import StorageError
from logstore.storage.fileutil import write_file_atomically

#: ids handed out per durable write of the block file
DEFAULT_BLOCK_SIZE = 1000


class ProducerIdManager:
    """Hands out increasing producer ids, reserving them in blocks recorded on disk.

    Invariant: every id handed out is below the block end stored in `path`, so after a
    crash the next start begins a fresh block and never repeats an id (the unused rest of
    the old block is skipped, as Kafka does).
    """

    def __init__(self, path: Path, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self._path = path
        self._block_size = block_size
        self._lock = threading.Lock()
        self._next = self._read_block_end()
        self._block_end = self._next

    def _read_block_end(self) -> int:
        try:
            text = self._path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            value = int(text)
        except ValueError as exc:
            raise StorageError(f"producer id file {self._path} is corrupt: {text!r}") from exc
        if value < 0:
            raise StorageError(f"producer id file {self._path} holds a negative id: {value}")
        return value

    def next_id(self) -> int:
        """A producer id never handed out before by this data directory."""
        with self._lock:
            if self._next >= self._block_end:
                self._block_end = self._next + self._block_size
                write_file_atomically(self._path, f"{self._block_end}\n".encode())
            producer_id = self._next
            self._next += 1
            return producer_id


class BlockProducerIds:
    """Hands out producer ids from blocks reserved elsewhere (cluster mode: a counter in
    etcd that every broker advances with compare-and-swap), so no two brokers ever hand
    out the same id. The unused rest of a block is skipped after a restart."""

    def __init__(self, reserve_block: Callable[[], int], block_size: int) -> None:
        self._reserve_block = reserve_block
        self._block_size = block_size
        self._lock = threading.Lock()
        self._next = 0
        self._block_end = 0

    def next_id(self) -> int:
        with self._lock:
            if self._next >= self._block_end:
                self._next = self._reserve_block()
                self._block_end = self._next + self._block_size
            producer_id = self._next
            self._next += 1
            return producer_id

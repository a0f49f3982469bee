"""The sparse time index of a log segment (`.timeindex`).

A `.timeindex` file is a packed array of 12-byte big-endian entries (see `codec/format.py`)::

    timestamp int64 (ms since the epoch) | relative_offset uint32

Each entry records the largest timestamp seen so far in the segment and the offset of the
record holding it. Invariants of the valid entries: timestamps strictly increase, offsets
never decrease. File sizing, preallocation and trimming work as for the offset index.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from logstore.codec.format import NO_TIMESTAMP, TIME_INDEX_ENTRY_SIZE, TIME_INDEX_FIELDS
from logstore.storage.index import (
    CorruptIndexError,
    MmapIndexFile,
    _locked,
)

__all__ = ["CorruptIndexError", "TimeIndex"]

TIME_INDEX_DTYPE: Final = np.dtype(list(TIME_INDEX_FIELDS))
assert TIME_INDEX_DTYPE.itemsize == TIME_INDEX_ENTRY_SIZE

_INT64 = np.iinfo(np.int64)
#: the largest timestamp an entry can hold (ms)
MAX_TIMESTAMP_MS: Final = int(_INT64.max)


class TimeIndex(MmapIndexFile):
    """The `.timeindex` of a segment: largest timestamp so far (ms) -> offset holding it.

    An empty index behaves as if its last entry were `(-1, base_offset)` (Kafka's
    `NO_TIMESTAMP`), so only timestamps >= 0 are ever stored.
    """

    _DTYPE = TIME_INDEX_DTYPE
    _KEY = "timestamp"
    _KIND = "time index"

    @_locked
    def maybe_append(self, timestamp_ms: int, offset: int) -> None:
        """Add `(timestamp_ms, offset)` if `timestamp_ms` (ms) is larger than the last
        entry's timestamp; otherwise do nothing, since the index only records new maxima.

        Raises ValueError when `offset` (absolute) is below the last entry's offset or does
        not fit uint32 relative to the base offset, when the timestamp does not fit int64,
        or when the entry would be added to a full index.
        """
        self._check_writable()
        rel = self._relative(offset)
        last_timestamp, last_offset = self.last_entry()
        if offset < last_offset:
            raise ValueError(
                f"offset {offset} must not be below the last time-indexed offset "
                f"{last_offset} in {self._path}"
            )
        if timestamp_ms <= last_timestamp:
            return
        if timestamp_ms > MAX_TIMESTAMP_MS:
            raise ValueError(f"timestamp {timestamp_ms} ms does not fit int64")
        self._check_not_full()
        self._write_entry((timestamp_ms, rel), np.int64(timestamp_ms))

    @_locked
    def lookup(self, target_timestamp_ms: int) -> tuple[int, int]:
        """(timestamp in ms, absolute offset) of the entry with the largest timestamp
        <= `target_timestamp_ms`, or `(-1, base_offset)` when there is none.
        """
        self._check_open()
        if target_timestamp_ms < _INT64.min:
            return NO_TIMESTAMP, self._base_offset
        slot = self._floor_slot(np.int64(min(target_timestamp_ms, MAX_TIMESTAMP_MS)))
        return self._entry(slot)

    @_locked
    def last_entry(self) -> tuple[int, int]:
        """(timestamp in ms, absolute offset) of the last entry, or `(-1, base_offset)`."""
        self._check_open()
        return self._entry(self._entries - 1)

    def _entry(self, slot: int) -> tuple[int, int]:
        if slot < 0:
            return NO_TIMESTAMP, self._base_offset
        timestamp, rel = self._arr[slot].item()
        return timestamp, self._base_offset + rel

    def _check_entries(self) -> None:
        self._check_order("timestamp", strict=True, what="timestamp")
        self._check_order("relative_offset", strict=False, what="offset")

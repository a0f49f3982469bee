"""The sparse offset index of a log segment (`.index`).

An `.index` file is a packed array of 8-byte big-endian entries (see `codec/format.py`)::

    relative_offset uint32 | position uint32

Following Kafka, an entry maps the LAST offset of a batch (minus the segment's base offset)
to the byte position in the `.log` file where that batch STARTS. Invariants of the valid
entries: relative offsets strictly increase, positions never decrease. File sizing,
preallocation and trimming are `MmapIndexFile`'s (`index.py`).
"""

from __future__ import annotations

import bisect
from typing import Final

import numpy as np

from logstore.codec.format import OFFSET_INDEX_ENTRY_SIZE, OFFSET_INDEX_FIELDS
from logstore.storage.index import UINT32_MAX, CorruptIndexError, MmapIndexFile, _locked

__all__ = ["OFFSET_INDEX_DTYPE", "CorruptIndexError", "OffsetIndex"]

OFFSET_INDEX_DTYPE: Final = np.dtype(list(OFFSET_INDEX_FIELDS))
assert OFFSET_INDEX_DTYPE.itemsize == OFFSET_INDEX_ENTRY_SIZE


class OffsetIndex(MmapIndexFile):
    """The `.index` of a segment: batch last offset -> byte position of the batch (bytes).

    Entries: relative offsets strictly increase, positions never decrease. The first
    entry's offset is at least `base_offset` by construction: relative offsets are
    unsigned on disk, so a smaller one cannot be written.
    """

    _DTYPE = OFFSET_INDEX_DTYPE
    _KEY = "relative_offset"
    _KIND = "offset index"

    @_locked
    def append(self, offset: int, position: int) -> None:
        """Add an entry for the batch whose LAST offset is `offset` (absolute) and which
        starts at byte `position` of the `.log` file.

        Raises ValueError when `offset` is not larger than the last entry's, `position` is
        smaller than the last entry's, either does not fit uint32 (relative to the base
        offset), or the index is full.
        """
        self._check_writable()
        rel = self._relative(offset)
        if not 0 <= position <= UINT32_MAX:
            raise ValueError(f"position {position} bytes does not fit uint32")
        if self._entries:
            last_offset, last_position = self.last_entry()
            if offset <= last_offset:
                raise ValueError(
                    f"offset {offset} must be larger than the last indexed offset "
                    f"{last_offset} in {self._path}"
                )
            if position < last_position:
                raise ValueError(
                    f"position {position} must not be below the last indexed position "
                    f"{last_position} in {self._path}"
                )
        self._check_not_full()
        self._write_entry((rel, position), np.uint32(rel))

    @_locked
    def lookup(self, target_offset: int) -> tuple[int, int]:
        """(absolute offset, position in bytes) of the entry with the largest offset
        <= `target_offset`, or `(base_offset, 0)` when there is none.
        """
        self._check_open()
        rel = target_offset - self._base_offset
        if rel < 0:
            return self._base_offset, 0
        slot = self._floor_slot(np.uint32(min(rel, UINT32_MAX)))
        return self._entry(slot)

    @_locked
    def batch_start_at_most(self, position: int) -> int | None:
        """The largest indexed position <= `position` (bytes), or None. Every indexed
        position is where a batch starts, so it is a safe place to cut a read."""
        self._check_open()
        column = self._arr[: self._entries]["position"]
        slot = bisect.bisect_right(column, position) - 1
        return None if slot < 0 else int(column[slot])

    @_locked
    def last_entry(self) -> tuple[int, int]:
        """(absolute offset, position in bytes) of the last entry, or `(base_offset, 0)`."""
        self._check_open()
        return self._entry(self._entries - 1)

    def _count_offsets_below(self, rel: int) -> int:
        # the offset is this index's key: search the native copy
        return self._ceil_slot(np.uint32(rel))

    def _entry(self, slot: int) -> tuple[int, int]:
        if slot < 0:
            return self._base_offset, 0
        rel, position = self._arr[slot].item()
        return self._base_offset + rel, position

    def _check_entries(self) -> None:
        self._check_order("relative_offset", strict=True, what="offset")
        self._check_order("position", strict=False, what="position")

"""The mmap machinery the offset index and the time index share: `MmapIndexFile`.

An index file is a packed array of fixed-size big-endian entries (see `codec/format.py`),
each holding a relative offset (uint32, offset minus the segment's base offset). The
file is preallocated (sparse, via truncate) to hold `max_entries` entries while the
segment is active, and trimmed to exactly `entries * entry size` bytes on roll or close, so
a closed file's size tells how many entries it holds. Entries past `entries` inside the
preallocated region are garbage and are never read.

Mutating methods take the index's lock (`_locked`); readers serialise with the segment.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import io
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Final, Self, TypeVar

import numpy as np

from logstore.errors import LogStoreError

#: Kafka's default `segment.index.bytes` (bytes)
DEFAULT_MAX_INDEX_BYTES: Final = 10 * 1024 * 1024
#: the largest relative offset (and byte position) an entry can hold
UINT32_MAX: Final = 2**32 - 1
#: disk blocks are reserved for entries this many bytes at a time (see `reserve`)
_RESERVE_CHUNK_BYTES: Final = 64 * 1024


_F = TypeVar("_F", bound=Callable[..., Any])


def _locked(method: _F) -> _F:
    """Run `method` under the index's lock."""

    def wrapper(self: MmapIndexFile, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper  # type: ignore[return-value]


class CorruptIndexError(LogStoreError):
    """An index file's bytes break the format or its invariants; the index must be rebuilt."""


class MmapIndexFile:
    """A fixed-size-entry index file mapped into memory as a numpy array of `_DTYPE`.

    Subclasses name the on-disk dtype and the key column that lookups search (`_KEY`,
    strictly increasing in every valid index).

    Invariants: `0 <= entries <= max_entries`; while open and mapped, the mapping covers
    exactly `max_entries * entry_size` bytes of the file. A read-only index
    (`writable=False`) maps the file as it is and refuses every change.

    Why a native key column: numpy's `searchsorted` on a big-endian (non-native) array
    byte-swaps and copies the whole array on every call (about 190 us per lookup on 1M
    entries against 1 us on a native array), and a Python int searched against a uint32
    array is upcast the same way. So the key column is copied once, lazily, into a
    native-order array that appends extend and truncations cut, and each lookup searches
    that copy with a scalar of its exact dtype: O(log n) with no copy.
    """

    _DTYPE: ClassVar[np.dtype]
    _KEY: ClassVar[str]
    _KIND: ClassVar[str]

    def __init__(
        self,
        path: Path,
        base_offset: int,
        max_index_bytes: int = DEFAULT_MAX_INDEX_BYTES,
        *,
        writable: bool = True,
    ) -> None:
        """Open the index at `path`, creating it when `writable` and missing.

        `max_index_bytes` (bytes) is rounded down to whole entries. A writable index is
        preallocated to it, unless the existing file's size is not a whole number of
        entries: that file is left as found so `sanity_check` can report it. A read-only
        index (a sealed segment) is never grown, and the file must exist.
        """
        if base_offset < 0:
            raise ValueError(f"base offset must be >= 0, got {base_offset}")
        if max_index_bytes < 0:
            raise ValueError(f"max index bytes must be >= 0, got {max_index_bytes}")
        self._path = Path(path)
        self._base_offset = base_offset
        self._writable = writable
        self._entry_size: int = self._DTYPE.itemsize
        self._key_dtype: np.dtype = self._DTYPE[self._KEY].newbyteorder("=")
        self._mm: mmap.mmap | None = None
        self._arr: np.ndarray = np.empty(0, dtype=self._DTYPE)
        self._max_entries = 0
        self._keys: np.ndarray | None = None
        #: bytes from the file start known to have disk blocks behind them (see `reserve`)
        self._reserved = 0
        self._closed = False
        # Segment readers look entries up without the partition lock while a roll may
        # trim (remap) this file; the lock makes each lookup see a whole mapping.
        self._lock = threading.RLock()
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        self._fd = os.open(self._path, flags, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            # a closed index is trimmed, so its size counts its entries (0 for a new file)
            self._entries = size // self._entry_size
            # written entries have blocks; the preallocated rest of the file is sparse
            self._reserved = self._entries * self._entry_size
            self._map(size - size % self._entry_size)
            # growing a torn file would hide the evidence sanity_check reports
            if writable and size % self._entry_size == 0:
                self.resize(max_index_bytes)
        except BaseException:
            self._unmap()
            self._close_fd()
            raise
        #: the file's size when opened (bytes); a read-only index never changes it
        self._opened_size = size
        if not writable:
            # The mapping keeps its own descriptor (CPython's mmap dups it), so a sealed
            # segment's index needs ours no longer: a broker with thousands of sealed
            # segments would otherwise hold two descriptors per index file.
            self._close_fd()

    # --- properties ---------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The index file."""
        return self._path

    @property
    def base_offset(self) -> int:
        """The segment's base offset: relative offsets on disk are added to it."""
        return self._base_offset

    @property
    def entries(self) -> int:
        """How many valid entries the index holds."""
        return self._entries

    @property
    def max_entries(self) -> int:
        """How many entries fit in the current file size (mapped bytes // entry size)."""
        return self._max_entries

    @property
    def entry_size(self) -> int:
        """Bytes per entry on disk."""
        return self._entry_size

    @property
    def writable(self) -> bool:
        """Whether the index accepts changes (False for a sealed segment opened read-only)."""
        return self._writable

    def is_full(self) -> bool:
        """True when no further entry fits without `resize`."""
        return self._entries >= self._max_entries

    @_locked
    def entries_view(self) -> np.ndarray:
        """A read-only view of the valid entries, in the on-disk (big-endian) dtype.

        The view aliases the mapping: it is valid until the next change to the index
        (append, truncate, reset, resize, close). Drop it before then.
        """
        self._check_open()
        view = self._arr[: self._entries]
        view.flags.writeable = False
        return view

    # --- changing the entries -----------------------------------------------------------

    @_locked
    def reset(self) -> None:
        """Drop every entry (before a rebuild); the file keeps its size."""
        self._check_writable()
        self._entries = 0
        self._keys = None

    @_locked
    def resize(self, new_max_bytes: int) -> None:
        """Grow or shrink the file to `new_max_bytes` (bytes, rounded down to whole entries)
        and remap it. Never drops a valid entry: the size is at least `entries` entries.
        """
        self._check_writable()
        if new_max_bytes < 0:
            raise ValueError(f"max index bytes must be >= 0, got {new_max_bytes}")
        length = max(new_max_bytes // self._entry_size, self._entries) * self._entry_size
        if length == os.fstat(self._fd).st_size == self._max_entries * self._entry_size:
            return
        self._unmap()
        os.ftruncate(self._fd, length)
        self._reserved = min(self._reserved, length)
        self._map(length)

    @_locked
    def trim_to_valid_size(self) -> None:
        """Shrink the file to exactly `entries * entry_size` bytes (on segment roll or close),
        so that reopening derives `entries` from the file size.
        """
        self.resize(self._entries * self._entry_size)

    # --- lifecycle ----------------------------------------------------------------------

    @_locked
    def flush(self) -> None:
        """Write the mapped pages and the file size to disk (msync, which syncs like
        fdatasync); an empty file has no mapping, so it is fsynced for its size."""
        self._check_open()
        if not self._writable:
            return
        if self._mm is not None:
            self._mm.flush()
        else:
            os.fsync(self._fd)

    @_locked
    def close(self) -> None:
        """Trim to the valid size, flush, unmap and close the file. Safe to call twice."""
        if self._closed:
            return
        try:
            if self._writable:
                # Trimmed first, so the size a clean shutdown trusts is the synced one.
                self.trim_to_valid_size()
                self.flush()
        finally:
            self._closed = True
            self._keys = None
            self._unmap()
            self._close_fd()

    @_locked
    def release(self) -> None:
        """Unmap and close without flushing or trimming: for a file that is deleted, or that
        another open index may own by now. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._keys = None
        self._unmap()
        self._close_fd()

    @_locked
    def delete(self) -> None:
        """Close the index and remove its file; a file already gone is fine."""
        self.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self._path)!r}, base_offset={self._base_offset}, "
            f"entries={self._entries}, max_entries={self._max_entries})"
        )

    # --- checks -------------------------------------------------------------------------

    @_locked
    def sanity_check(self) -> None:
        """Raise `CorruptIndexError`, naming the file and the problem, when the file size
        (bytes) is not a whole number of entries or the valid entries break the ordering
        invariants of the index.
        """
        self._check_open()
        size = os.fstat(self._fd).st_size if self._fd >= 0 else self._opened_size
        if size % self._entry_size != 0:
            raise self._corrupt(
                f"its size {size} bytes is not a multiple of the {self._entry_size}-byte entry"
            )
        self._check_entries()

    def _check_entries(self) -> None:
        """Subclasses raise `CorruptIndexError` when the valid entries are out of order."""
        raise NotImplementedError

    def _corrupt(self, problem: str) -> CorruptIndexError:
        return CorruptIndexError(f"{self._KIND} file {self._path} is corrupt: {problem}")

    def _check_order(self, column: str, *, strict: bool, what: str) -> None:
        """Raise when `column` of the valid entries is not increasing (strictly if `strict`)."""
        values = self._arr[: self._entries][column].astype(self._DTYPE[column].newbyteorder("="))
        steps = values[1:] <= values[:-1] if strict else values[1:] < values[:-1]
        bad = np.flatnonzero(steps)
        if bad.size:
            i = int(bad[0]) + 1
            order = "increasing" if strict else "non-decreasing"
            raise self._corrupt(
                f"entry {i} has {what} {int(values[i])} after {int(values[i - 1])} "
                f"(must be {order})"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self._KIND} {self._path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if not self._writable:
            raise io.UnsupportedOperation(f"{self._KIND} {self._path} is open read-only")

    def _check_not_full(self) -> None:
        if self.is_full():
            raise ValueError(
                f"{self._KIND} {self._path} is full ({self._max_entries} entries); "
                "roll the segment or resize the index"
            )

    def _relative(self, offset: int) -> int:
        """`offset - base_offset`, checked to fit the uint32 relative offset on disk."""
        rel = offset - self._base_offset
        if not 0 <= rel <= UINT32_MAX:
            raise ValueError(
                f"offset {offset} does not fit {self._KIND} {self._path}: "
                f"allowed {self._base_offset}..{self._base_offset + UINT32_MAX}"
            )
        return rel

    # --- search -------------------------------------------------------------------------

    def _native_keys(self) -> np.ndarray:
        """The key column of the valid entries in native byte order (see the class doc)."""
        if self._keys is None:
            # one O(n) pass per open; appends keep it current afterwards
            self._keys = self._arr[: self._entries][self._KEY].astype(self._key_dtype)
        return self._keys[: self._entries]

    def _floor_slot(self, key: np.generic) -> int:
        """The slot of the largest key <= `key`, or -1. `key` must have the key's dtype."""
        return int(self._native_keys().searchsorted(key, side="right")) - 1

    def _ceil_slot(self, key: np.generic) -> int:
        """How many keys are < `key`. `key` must have the key's dtype."""
        return int(self._native_keys().searchsorted(key, side="left"))

    def _count_offsets_below(self, rel: int) -> int:
        """How many valid entries have a relative offset < `rel` (offsets never decrease).

        bisect reads O(log n) single elements from the mapping, so a rare truncation on an
        index whose key is not the offset needs no native copy of the offset column.
        """
        column = self._arr[: self._entries]["relative_offset"]
        return bisect.bisect_left(column, rel)

    @_locked
    def reserve(self, count: int) -> None:
        """Make sure disk blocks back the next `count` entry slots (capped at the mapped
        size), so writing them through the mapping cannot fault.

        The file is preallocated sparse: on a full disk the first store into a page with
        no block behind it kills the process with SIGBUS instead of raising. Reserving
        with posix_fallocate first turns that into an OSError (ENOSPC) the caller can
        report, before anything is written. Blocks are reserved `_RESERVE_CHUNK_BYTES` at
        a time, so this is one system call per few thousand entries.
        """
        self._check_writable()
        mapped = self._max_entries * self._entry_size
        needed = min((self._entries + count) * self._entry_size, mapped)
        if needed <= self._reserved:
            return
        chunk_end = -(-needed // _RESERVE_CHUNK_BYTES) * _RESERVE_CHUNK_BYTES
        for end in dict.fromkeys((min(chunk_end, mapped), needed)):
            try:
                os.posix_fallocate(self._fd, self._reserved, end - self._reserved)
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    end = mapped  # the file system cannot reserve: nothing better to do
                elif end != needed:
                    continue  # no room for a whole chunk: try just what is needed
                else:
                    raise OSError(
                        exc.errno, f"cannot grow {self._KIND} {self._path}: {exc.strerror}"
                    ) from exc
            self._reserved = end
            return

    def _write_entry(self, entry: tuple[int, int], key: np.generic) -> None:
        """Store `entry` in the next slot and keep the native key column in step."""
        n = self._entries
        if (n + 1) * self._entry_size > self._reserved:
            self.reserve(1)
        self._arr[n] = entry
        if self._keys is not None:
            if n == len(self._keys):
                # doubling keeps appends amortised O(1)
                grown = np.empty(max(64, 2 * n), dtype=self._key_dtype)
                grown[:n] = self._keys[:n]
                self._keys = grown
            self._keys[n] = key
        self._entries = n + 1

    # --- mapping ------------------------------------------------------------------------

    def _map(self, length: int) -> None:
        """Map the first `length` bytes (a whole number of entries) of the file."""
        self._max_entries = length // self._entry_size
        if length == 0:
            # mmap cannot map zero bytes; an empty array stands in for the mapping
            return
        access = mmap.ACCESS_WRITE if self._writable else mmap.ACCESS_READ
        self._mm = mmap.mmap(self._fd, length, access=access)
        self._arr = np.frombuffer(self._mm, dtype=self._DTYPE)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _unmap(self) -> None:
        """Release the mapping; our array goes first, since an exported buffer blocks close."""
        self._arr = np.empty(0, dtype=self._DTYPE)
        self._max_entries = 0
        mm, self._mm = self._mm, None
        if mm is None:
            return
        # BufferError: a caller still holds an entries_view(). The pages then stay mapped
        # until the last view is released, and nothing here touches them again.
        with contextlib.suppress(BufferError):
            mm.close()

    @_locked
    def truncate_to(self, offset: int) -> None:
        """Drop every entry whose offset is >= `offset` (absolute), as the log is cut there."""
        self._check_writable()
        rel = offset - self._base_offset
        if rel <= 0:
            keep = 0
        elif rel > UINT32_MAX:
            keep = self._entries
        else:
            keep = self._count_offsets_below(rel)
        self._entries = keep

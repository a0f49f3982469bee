"""MmapIndexFile, the machinery both segment indexes share, tested once for each of them.

Sizing, the zero-byte case, lifecycle, read-only files, torn files, views, reset and the
native key copy behave the same for the offset index and the time index; what differs
(what an entry holds, how a lookup answers) is described by an `IndexKind`. What only one
index does is tested in test_offset_index.py and test_time_index.py.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from logstore.storage.index import CorruptIndexError, MmapIndexFile
from logstore.storage.offset_index import OFFSET_INDEX_DTYPE, OffsetIndex
from logstore.storage.time_index import TIME_INDEX_DTYPE, TimeIndex

BASE = 1_000
T0 = 1_700_000_000_000
N_BIG = 1_000_000


@dataclass(frozen=True)
class IndexKind:
    """One index type, with a way to make its i-th valid entry (i = 0, 1, ...)."""

    cls: type[MmapIndexFile]
    suffix: str
    entry: struct.Struct
    dtype: np.dtype
    #: what a lookup answers on an empty index
    empty_answer: tuple[int, int]
    #: append the i-th entry
    add: Callable[[MmapIndexFile, int], None]
    #: the lookup key that finds the i-th entry exactly, and what the lookup answers
    key: Callable[[int], int]
    answer: Callable[[int], tuple[int, int]]
    #: the i-th entry as stored (big-endian fields, relative offset)
    raw: Callable[[int], tuple[int, int]]
    #: the key column of the first n entries, for a large file built with numpy
    columns: Callable[[int], dict[str, np.ndarray]]
    key_dtype: type

    def make(self, folder: Path, max_bytes: int = 1024, **kw: bool) -> MmapIndexFile:
        return self.cls(folder / f"00000000000000001000{self.suffix}", BASE, max_bytes, **kw)

    def write_raw(self, path: Path, count: int, extra: bytes = b"") -> None:
        """Write the first `count` entries straight to disk, bypassing the class."""
        body = b"".join(self.entry.pack(*self.raw(i)) for i in range(count))
        path.write_bytes(body + extra)


OFFSET = IndexKind(
    cls=OffsetIndex,
    suffix=".index",
    entry=struct.Struct(">II"),
    dtype=OFFSET_INDEX_DTYPE,
    empty_answer=(BASE, 0),
    add=lambda idx, i: idx.append(BASE + 3 * i, 100 * i),  # type: ignore[attr-defined]
    key=lambda i: BASE + 3 * i,
    answer=lambda i: (BASE + 3 * i, 100 * i),
    raw=lambda i: (3 * i, 100 * i),
    columns=lambda n: {
        "relative_offset": np.arange(n, dtype=np.uint32) * 3,
        "position": np.arange(n, dtype=np.uint32) * 100,
    },
    key_dtype=np.uint32,
)
TIME = IndexKind(
    cls=TimeIndex,
    suffix=".timeindex",
    entry=struct.Struct(">qI"),
    dtype=TIME_INDEX_DTYPE,
    empty_answer=(-1, BASE),
    add=lambda idx, i: idx.maybe_append(T0 + 10 * i, BASE + 2 * i),  # type: ignore[attr-defined]
    key=lambda i: T0 + 10 * i,
    answer=lambda i: (T0 + 10 * i, BASE + 2 * i),
    raw=lambda i: (T0 + 10 * i, 2 * i),
    columns=lambda n: {
        "timestamp": T0 + np.arange(n, dtype=np.int64) * 10,
        "relative_offset": np.arange(n, dtype=np.uint32) * 2,
    },
    key_dtype=np.int64,
)


@pytest.fixture(params=[OFFSET, TIME], ids=["offset_index", "time_index"])
def kind(request: pytest.FixtureRequest) -> IndexKind:
    return request.param


def _lookup(idx: MmapIndexFile, key: int) -> tuple[int, int]:
    return idx.lookup(key)  # type: ignore[attr-defined, no-any-return]


# --- sizing --------------------------------------------------------------------------------


def test_new_file_is_preallocated_to_whole_entries_and_empty(
    kind: IndexKind, tmp_path: Path
) -> None:
    size = kind.entry.size
    idx = kind.make(tmp_path, max_bytes=10 * size + size - 1)
    assert os.path.getsize(idx.path) == 10 * size
    assert (idx.entries, idx.max_entries, idx.base_offset) == (0, 10, BASE)
    assert not idx.is_full()
    assert _lookup(idx, kind.key(5)) == kind.empty_answer
    assert idx.last_entry() == kind.empty_answer  # type: ignore[attr-defined]
    assert len(idx.entries_view()) == 0
    idx.close()
    assert os.path.getsize(idx.path) == 0


def test_zero_byte_index_needs_no_mapping(kind: IndexKind, tmp_path: Path) -> None:
    idx = kind.make(tmp_path, max_bytes=kind.entry.size - 1)
    assert (idx.entries, idx.max_entries, idx.is_full()) == (0, 0, True)
    assert _lookup(idx, kind.key(0)) == kind.empty_answer
    with pytest.raises(ValueError, match="full"):
        kind.add(idx, 0)
    idx.sanity_check()
    idx.flush()
    idx.resize(kind.entry.size)
    kind.add(idx, 0)
    assert idx.is_full()
    assert _lookup(idx, kind.key(1)) == kind.answer(0)
    idx.close()
    assert os.path.getsize(idx.path) == kind.entry.size


def test_resize_never_drops_a_valid_entry(kind: IndexKind, tmp_path: Path) -> None:
    idx = kind.make(tmp_path, max_bytes=2 * kind.entry.size)
    kind.add(idx, 0)
    kind.add(idx, 1)
    with pytest.raises(ValueError, match="full"):
        kind.add(idx, 2)
    idx.resize(5 * kind.entry.size + 1)
    assert (idx.max_entries, os.path.getsize(idx.path)) == (5, 5 * kind.entry.size)
    kind.add(idx, 2)
    idx.resize(0)
    assert (idx.entries, idx.max_entries) == (3, 3)
    assert [_lookup(idx, kind.key(i)) for i in range(3)] == [kind.answer(i) for i in range(3)]
    idx.trim_to_valid_size()
    idx.close()
    assert os.path.getsize(idx.path) == 3 * kind.entry.size


# --- lifecycle -----------------------------------------------------------------------------


def test_close_twice_delete_and_use_after_close(kind: IndexKind, tmp_path: Path) -> None:
    idx = kind.make(tmp_path)
    kind.add(idx, 0)
    idx.flush()
    idx.close()
    idx.close()
    with pytest.raises(ValueError, match="closed"):
        _lookup(idx, kind.key(0))
    with pytest.raises(ValueError, match="closed"):
        kind.add(idx, 1)
    idx.delete()
    assert not idx.path.exists()
    idx.delete()  # already gone: fine


def test_context_manager_closes_and_trims(kind: IndexKind, tmp_path: Path) -> None:
    with kind.make(tmp_path) as idx:
        kind.add(idx, 0)
    assert os.path.getsize(idx.path) == kind.entry.size
    with pytest.raises(ValueError, match="closed"):
        _lookup(idx, kind.key(0))


def test_read_only_index_is_not_grown_and_refuses_changes(kind: IndexKind, tmp_path: Path) -> None:
    path = tmp_path / f"ro{kind.suffix}"
    kind.write_raw(path, 2)
    idx = kind.cls(path, BASE, 4096, writable=False)
    assert (idx.entries, idx.max_entries, idx.writable) == (2, 2, False)
    assert _lookup(idx, kind.key(1) + 1) == kind.answer(1)
    for change in (
        lambda: kind.add(idx, 2),
        lambda: idx.truncate_to(BASE),
        idx.reset,
        lambda: idx.resize(4096),
    ):
        with pytest.raises(io.UnsupportedOperation):
            change()
    idx.close()
    assert os.path.getsize(path) == 2 * kind.entry.size
    with pytest.raises(FileNotFoundError):
        kind.cls(tmp_path / f"missing{kind.suffix}", BASE, writable=False)


def test_bad_arguments(kind: IndexKind, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        kind.cls(tmp_path / f"a{kind.suffix}", -1)
    with pytest.raises(ValueError):
        kind.cls(tmp_path / f"b{kind.suffix}", 0, -8)


@pytest.mark.parametrize("writable", [True, False])
def test_sanity_check_rejects_partial_entry(
    kind: IndexKind, tmp_path: Path, writable: bool
) -> None:
    path = tmp_path / f"torn{kind.suffix}"
    kind.write_raw(path, 3, extra=b"\x00" * 5)
    idx = kind.cls(path, BASE, writable=writable)
    assert idx.entries == 3
    size = 3 * kind.entry.size + 5
    with pytest.raises(CorruptIndexError, match=f"{size} bytes is not a multiple") as err:
        idx.sanity_check()
    assert str(path) in str(err.value)
    idx.close()


# --- views, reset, truncation ----------------------------------------------------------------


def test_entries_view_is_read_only_and_survives_close(kind: IndexKind, tmp_path: Path) -> None:
    idx = kind.make(tmp_path)
    kind.add(idx, 1)
    view = idx.entries_view()
    assert view.dtype == kind.dtype
    with pytest.raises(ValueError):
        view[0] = kind.raw(2)
    idx.close()  # a live view must not make close fail
    assert view[0].item() == kind.raw(1)


def test_reset_drops_all_entries_and_the_key_copy(kind: IndexKind, tmp_path: Path) -> None:
    idx = kind.make(tmp_path)
    kind.add(idx, 3)
    assert _lookup(idx, kind.key(3)) == kind.answer(3)  # builds the native key column
    idx.reset()
    assert (idx.entries, _lookup(idx, kind.key(3))) == (0, kind.empty_answer)
    kind.add(idx, 1)  # smaller than before the reset: accepted
    assert _lookup(idx, kind.key(3)) == kind.answer(1)
    idx.close()


def test_truncate_to_keeps_entries_below_the_offset(kind: IndexKind, tmp_path: Path) -> None:
    """The shared truncation, checked against each index's own offsets (entry i holds
    absolute offset `BASE + step * i`), before and after the native key copy exists."""
    for build_key_copy in (False, True):
        folder = tmp_path / str(build_key_copy)
        folder.mkdir()
        idx = kind.make(folder)
        for i in range(6):
            kind.add(idx, i)
        if build_key_copy:
            _lookup(idx, kind.key(5))
        step = kind.raw(1)[0 if kind is OFFSET else 1]
        idx.truncate_to(BASE + 3 * step + 1)  # keeps entries 0..3
        assert idx.entries == 4
        idx.truncate_to(BASE + 3 * step)  # entry 3's offset itself goes
        assert idx.entries == 3
        assert _lookup(idx, kind.key(5)) == kind.answer(2)
        kind.add(idx, 3)  # appending after a truncation extends the key copy again
        assert _lookup(idx, kind.key(5)) == kind.answer(3)
        idx.truncate_to(BASE)
        assert (idx.entries, _lookup(idx, kind.key(5))) == (0, kind.empty_answer)
        idx.close()


# --- the native key copy ---------------------------------------------------------------------


@pytest.fixture
def big_index(kind: IndexKind, tmp_path: Path) -> Iterator[MmapIndexFile]:
    path = tmp_path / f"big{kind.suffix}"
    entries = np.empty(N_BIG, dtype=kind.dtype)
    for name, column in kind.columns(N_BIG).items():
        entries[name] = column
    entries.tofile(path)
    idx = kind.cls(path, BASE, writable=False)
    yield idx
    idx.close()


def test_lookup_searches_a_native_copy_built_once(
    kind: IndexKind, big_index: MmapIndexFile
) -> None:
    idx = big_index
    assert idx._keys is None  # nothing is copied until the first lookup
    assert _lookup(idx, kind.key(400_000) + 1) == kind.answer(400_000)
    keys = idx._keys
    assert keys is not None
    assert keys.dtype.isnative and keys.dtype == kind.key_dtype and keys.flags.c_contiguous
    _lookup(idx, kind.key(7))
    assert idx._keys is keys  # later lookups reuse it


def test_lookup_on_a_million_entries_does_not_copy(
    kind: IndexKind, big_index: MmapIndexFile
) -> None:
    idx = big_index
    _lookup(idx, kind.key(0))  # the one O(n) pass
    rng = np.random.default_rng(7)
    picks = [int(i) for i in rng.integers(0, N_BIG, 1000)]
    start = time.perf_counter()
    answers = [_lookup(idx, kind.key(i)) for i in picks]
    mean_us = (time.perf_counter() - start) / len(picks) * 1e6
    assert answers == [kind.answer(i) for i in picks]
    # a byte-swapping copy per call costs ~100-200 us here; a real binary search ~1-5 us
    assert mean_us < 50, f"mean lookup {mean_us:.1f} us"

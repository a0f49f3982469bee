"""OffsetIndex: the `.index` file of a segment (batch last offset -> batch start position).

What it shares with the time index is tested once for both in test_index.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.codec.format import OFFSET_INDEX_ENTRY_SIZE
from logstore.storage.offset_index import (
    UINT32_MAX,
    CorruptIndexError,
    OffsetIndex,
)

ENTRY = struct.Struct(">II")
BASE = 1_000


def make(tmp_path: Path, base: int = BASE, max_bytes: int = 1024, **kw: bool) -> OffsetIndex:
    return OffsetIndex(tmp_path / "00000000000000001000.index", base, max_bytes, **kw)


def write_raw(path: Path, entries: list[tuple[int, int]], extra: bytes = b"") -> None:
    """Write (relative offset, position) entries straight to disk, bypassing the class."""
    path.write_bytes(b"".join(ENTRY.pack(rel, pos) for rel, pos in entries) + extra)


def scan(entries: list[tuple[int, int]], base: int, target: int) -> tuple[int, int]:
    """The reference lookup: a linear scan over absolute (offset, position) pairs."""
    best = (base, 0)
    for offset, position in entries:
        if offset <= target:
            best = (offset, position)
    return best


# --- creation and sizing -------------------------------------------------------------------


def test_empty_existing_file_opens_read_only(tmp_path: Path) -> None:
    path = tmp_path / "empty.index"
    path.write_bytes(b"")
    idx = OffsetIndex(path, BASE, writable=False)
    assert (idx.entries, idx.max_entries) == (0, 0)
    assert idx.lookup(BASE + 9) == (BASE, 0)
    idx.sanity_check()
    idx.close()


def test_trim_to_valid_size(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.append(BASE + 1, 10)
    idx.append(BASE + 2, 20)
    idx.trim_to_valid_size()
    assert os.path.getsize(idx.path) == 16
    assert idx.is_full()
    idx.close()


# --- append, lookup, persistence -----------------------------------------------------------


def test_append_reopen_round_trip(tmp_path: Path) -> None:
    idx = make(tmp_path)
    pairs = [(BASE + 3 * i + 2, 1000 * i) for i in range(20)]
    for offset, position in pairs:
        idx.append(offset, position)
    idx.close()
    assert os.path.getsize(idx.path) == 20 * OFFSET_INDEX_ENTRY_SIZE

    again = make(tmp_path, max_bytes=1024)
    assert again.entries == 20
    assert os.path.getsize(again.path) == 1024  # preallocated again for appends
    view = again.entries_view()
    assert [(BASE + int(r), int(p)) for r, p in view] == pairs
    del view
    assert again.last_entry() == pairs[-1]
    for target in range(BASE - 2, BASE + 70):
        assert again.lookup(target) == scan(pairs, BASE, target)
    again.append(BASE + 100, 50_000)
    again.close()
    assert os.path.getsize(again.path) == 21 * OFFSET_INDEX_ENTRY_SIZE


def test_bytes_on_disk_are_big_endian(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.append(BASE + 1, 0x01020304)
    idx.append(BASE + 0x0A0B0C, 0x7FFFFFFF)
    idx.close()
    raw = idx.path.read_bytes()
    assert raw[:8] == bytes.fromhex("0000000101020304")
    assert list(ENTRY.iter_unpack(raw)) == [(1, 0x01020304), (0x0A0B0C, 0x7FFFFFFF)]


def test_rejects_non_monotonic_and_out_of_range_entries(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.append(BASE + 10, 500)
    bad = [
        (BASE + 10, 600),  # same offset
        (BASE + 9, 600),  # smaller offset
        (BASE + 11, 499),  # smaller position
        (BASE - 1, 600),  # below the base offset
        (BASE + UINT32_MAX + 1, 600),  # relative offset beyond uint32
        (BASE + 11, -1),
        (BASE + 11, UINT32_MAX + 1),
    ]
    for offset, position in bad:
        with pytest.raises(ValueError):
            idx.append(offset, position)
    assert idx.entries == 1
    idx.append(BASE + UINT32_MAX, UINT32_MAX)
    assert idx.lookup(BASE + UINT32_MAX + 5) == (BASE + UINT32_MAX, UINT32_MAX)
    idx.close()


def test_same_position_is_allowed(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.append(BASE, 0)
    idx.append(BASE + 1, 0)
    assert idx.lookup(BASE + 1) == (BASE + 1, 0)
    idx.close()


# --- truncate and reset ----------------------------------------------------------------


def test_truncate_to_drops_entries_at_and_after_offset(tmp_path: Path) -> None:
    idx = make(tmp_path)
    for rel in (10, 20, 30):
        idx.append(BASE + rel, rel * 10)
    assert idx.lookup(BASE + 25) == (BASE + 20, 200)  # builds the native key column
    idx.truncate_to(BASE + 25)
    assert idx.last_entry() == (BASE + 20, 200)
    idx.truncate_to(BASE + 20)
    assert (idx.entries, idx.last_entry()) == (1, (BASE + 10, 100))
    idx.truncate_to(BASE + UINT32_MAX + 10)  # beyond every entry: nothing to drop
    assert idx.entries == 1
    idx.append(BASE + 15, 150)
    assert idx.lookup(BASE + 29) == (BASE + 15, 150)
    idx.truncate_to(BASE)
    assert idx.entries == 0
    idx.truncate_to(BASE - 5)
    assert idx.lookup(BASE + 29) == (BASE, 0)
    idx.close()
    assert os.path.getsize(idx.path) == 0


# --- lifecycle -----------------------------------------------------------------------------


def _descriptors_on(path: Path) -> int:
    """How many of this process's descriptors refer to `path` (mappings' dups included)."""
    fd_dir = Path("/proc/self/fd")
    count = 0
    for entry in fd_dir.iterdir():
        try:
            count += os.readlink(entry) == str(path)
        except OSError:
            continue  # the directory's own descriptor, gone once listed
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_read_only_index_keeps_only_its_mapping_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "ro.index"
    write_raw(path, [(1, 0), (5, 100)])
    idx = OffsetIndex(path, BASE, writable=False)
    assert _descriptors_on(path.resolve()) == 1  # the mapping's own (CPython dups it)
    assert idx.lookup(BASE + 6) == (BASE + 5, 100)
    idx.sanity_check()
    idx.close()
    idx.close()
    assert _descriptors_on(path.resolve()) == 0
    writable = OffsetIndex(path, BASE)
    assert _descriptors_on(path.resolve()) == 2
    writable.close()


# --- sanity_check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([(1, 0), (7, 10), (3, 20)], "offset 3 after 7"),
        ([(1, 0), (1, 10)], "offset 1 after 1"),
        ([(1, 0), (2, 30), (3, 20)], "position 20 after 30"),
    ],
)
def test_sanity_check_rejects_out_of_order_entries(
    tmp_path: Path, entries: list[tuple[int, int]], problem: str
) -> None:
    path = tmp_path / "bad.index"
    write_raw(path, entries)
    idx = OffsetIndex(path, BASE, writable=False)
    with pytest.raises(CorruptIndexError, match=problem) as err:
        idx.sanity_check()
    assert str(path) in str(err.value)
    idx.close()


def test_sanity_check_catches_untrimmed_file_after_crash(tmp_path: Path) -> None:
    idx = make(tmp_path, max_bytes=80)
    idx.append(BASE + 1, 10)
    idx.append(BASE + 2, 20)
    idx.flush()
    # the process dies here: no trim, so the zeroed preallocated tail reads as entries
    reopened = OffsetIndex(idx.path, BASE, writable=False)
    assert reopened.entries == 10
    with pytest.raises(CorruptIndexError, match="offset 0 after 2"):
        reopened.sanity_check()
    reopened.close()
    idx.close()


def test_sanity_check_accepts_valid_index(tmp_path: Path) -> None:
    idx = make(tmp_path)
    for i in range(5):
        idx.append(BASE + i, i)
    idx.sanity_check()
    idx.close()
    reopened = OffsetIndex(idx.path, BASE, writable=False)
    reopened.sanity_check()
    reopened.close()


# --- properties ----------------------------------------------------------------------------

HYPOTHESIS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@HYPOTHESIS
@given(
    base=st.integers(0, 2**40),
    steps=st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 5000)), max_size=60),
    targets=st.lists(st.integers(-10, 70_000), max_size=40),
)
def test_lookup_agrees_with_linear_scan(
    tmp_path: Path, base: int, steps: list[tuple[int, int]], targets: list[int]
) -> None:
    pairs: list[tuple[int, int]] = []
    offset, position = base - 1, 0
    for offset_step, position_step in steps:
        offset, position = offset + offset_step, position + position_step
        pairs.append((offset, position))
    idx = OffsetIndex(tmp_path / "prop.index", base, 60 * OFFSET_INDEX_ENTRY_SIZE)
    try:
        for pair in pairs:
            idx.append(*pair)
        extremes = [-(2**70), -1, 0, UINT32_MAX, UINT32_MAX + 1, 2**70]
        for target in [base + t for t in targets + extremes]:
            assert idx.lookup(target) == scan(pairs, base, target)
        assert idx.last_entry() == (pairs[-1] if pairs else (base, 0))
        for limit in [*targets, -1, 0, position, position + 1]:
            at_most = [p for _, p in pairs if p <= limit]
            assert idx.batch_start_at_most(limit) == (max(at_most) if at_most else None)
    finally:
        idx.delete()


@HYPOTHESIS
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 50)),
            st.tuples(st.just("truncate"), st.integers(-5, 600)),
            st.tuples(st.just("lookup"), st.integers(-5, 600)),
            st.tuples(st.just("reopen"), st.just(0)),
        ),
        max_size=40,
    )
)
def test_mixed_operations_match_a_list_model(tmp_path: Path, ops: list[tuple[str, int]]) -> None:
    path = tmp_path / "model.index"
    idx = OffsetIndex(path, BASE, 64 * OFFSET_INDEX_ENTRY_SIZE)
    model: list[tuple[int, int]] = []
    try:
        for op, arg in ops:
            if op == "append":
                last = model[-1] if model else (BASE - 1, 0)
                pair = (last[0] + arg, last[1] + arg * 10)
                idx.append(*pair)
                model.append(pair)
            elif op == "truncate":
                idx.truncate_to(BASE + arg)
                model = [p for p in model if p[0] < BASE + arg]
            elif op == "lookup":
                assert idx.lookup(BASE + arg) == scan(model, BASE, BASE + arg)
            else:
                idx.close()
                idx = OffsetIndex(path, BASE, 64 * OFFSET_INDEX_ENTRY_SIZE)
            assert idx.entries == len(model)
        idx.sanity_check()
    finally:
        idx.delete()

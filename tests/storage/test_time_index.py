"""TimeIndex: the `.timeindex` file of a segment (largest timestamp so far -> its offset).

What it shares with the offset index is tested once for both in test_index.py."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.codec.format import TIME_INDEX_ENTRY_SIZE
from logstore.storage.offset_index import UINT32_MAX
from logstore.storage.time_index import (
    MAX_TIMESTAMP_MS,
    CorruptIndexError,
    TimeIndex,
)

ENTRY = struct.Struct(">qI")
BASE = 5_000
T0 = 1_700_000_000_000


def make(tmp_path: Path, base: int = BASE, max_bytes: int = 1200, **kw: bool) -> TimeIndex:
    return TimeIndex(tmp_path / "00000000000000005000.timeindex", base, max_bytes, **kw)


def write_raw(path: Path, entries: list[tuple[int, int]], extra: bytes = b"") -> None:
    """Write (timestamp, relative offset) entries straight to disk, bypassing the class."""
    path.write_bytes(b"".join(ENTRY.pack(ts, rel) for ts, rel in entries) + extra)


def scan(entries: list[tuple[int, int]], base: int, target: int) -> tuple[int, int]:
    """The reference lookup: a linear scan over (timestamp, absolute offset) pairs."""
    best = (-1, base)
    for timestamp, offset in entries:
        if timestamp <= target:
            best = (timestamp, offset)
    return best


# --- creation and sizing -------------------------------------------------------------------


def test_is_full_and_resize(tmp_path: Path) -> None:
    idx = make(tmp_path, max_bytes=2 * TIME_INDEX_ENTRY_SIZE)
    idx.maybe_append(T0, BASE)
    idx.maybe_append(T0 + 1, BASE + 1)
    assert idx.is_full()
    idx.maybe_append(T0 + 1, BASE + 2)  # not larger: skipped even when full
    with pytest.raises(ValueError, match="full"):
        idx.maybe_append(T0 + 2, BASE + 2)
    idx.resize(5 * TIME_INDEX_ENTRY_SIZE)
    assert (idx.max_entries, os.path.getsize(idx.path)) == (5, 60)
    idx.maybe_append(T0 + 2, BASE + 2)
    idx.resize(1)  # never drops a valid entry
    assert (idx.entries, idx.max_entries, os.path.getsize(idx.path)) == (3, 3, 36)
    assert idx.lookup(T0 + 99) == (T0 + 2, BASE + 2)
    idx.close()


# --- maybe_append, lookup, persistence -----------------------------------------------------


def test_maybe_append_keeps_only_new_maxima(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.maybe_append(-1, BASE)  # NO_TIMESTAMP on an empty index: ignored
    idx.maybe_append(T0, BASE + 1)
    idx.maybe_append(T0, BASE + 2)  # equal: ignored
    idx.maybe_append(T0 - 5, BASE + 3)  # smaller: ignored
    idx.maybe_append(T0 + 10, BASE + 3)
    idx.maybe_append(T0 + 20, BASE + 3)  # same offset, larger timestamp: kept
    view = idx.entries_view()
    assert [tuple(int(x) for x in e) for e in view] == [(T0, 1), (T0 + 10, 3), (T0 + 20, 3)]
    del view
    assert idx.last_entry() == (T0 + 20, BASE + 3)
    idx.close()


def test_maybe_append_rejects_bad_offsets_and_timestamps(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.maybe_append(T0, BASE + 10)
    with pytest.raises(ValueError, match="below the last"):
        idx.maybe_append(T0 + 1, BASE + 9)
    with pytest.raises(ValueError, match="below the last"):
        idx.maybe_append(T0 - 1, BASE + 9)  # offsets going back is a bug even when skipped
    with pytest.raises(ValueError):
        idx.maybe_append(T0 + 1, BASE - 1)
    with pytest.raises(ValueError):
        idx.maybe_append(T0 + 1, BASE + UINT32_MAX + 1)
    with pytest.raises(ValueError, match="int64"):
        idx.maybe_append(MAX_TIMESTAMP_MS + 1, BASE + 11)
    assert idx.entries == 1
    idx.maybe_append(MAX_TIMESTAMP_MS, BASE + UINT32_MAX)
    assert idx.lookup(2**80) == (MAX_TIMESTAMP_MS, BASE + UINT32_MAX)
    assert idx.lookup(-(2**80)) == (-1, BASE)
    idx.close()


def test_append_reopen_round_trip(tmp_path: Path) -> None:
    idx = make(tmp_path)
    pairs = [(T0 + 7 * i, BASE + 2 * i) for i in range(30)]
    for pair in pairs:
        idx.maybe_append(*pair)
    idx.close()
    assert os.path.getsize(idx.path) == 30 * TIME_INDEX_ENTRY_SIZE

    again = make(tmp_path)
    assert again.entries == 30
    assert os.path.getsize(again.path) == 1200
    assert again.last_entry() == pairs[-1]
    for target in range(T0 - 3, T0 + 220):
        assert again.lookup(target) == scan(pairs, BASE, target)
    again.maybe_append(T0 + 1000, BASE + 100)
    again.close()
    assert os.path.getsize(again.path) == 31 * TIME_INDEX_ENTRY_SIZE


def test_bytes_on_disk_are_big_endian(tmp_path: Path) -> None:
    idx = make(tmp_path)
    idx.maybe_append(0x0102030405060708, BASE + 0x0A0B0C0D)
    idx.close()
    raw = idx.path.read_bytes()
    assert raw == bytes.fromhex("01020304050607080a0b0c0d")
    assert ENTRY.unpack(raw) == (0x0102030405060708, 0x0A0B0C0D)


# --- truncate and reset ----------------------------------------------------------------


def test_truncate_to_drops_entries_at_and_after_offset(tmp_path: Path) -> None:
    idx = make(tmp_path)
    for ts, rel in ((T0, 5), (T0 + 10, 5), (T0 + 20, 7), (T0 + 30, 9)):
        idx.maybe_append(ts, BASE + rel)
    assert idx.lookup(T0 + 25) == (T0 + 20, BASE + 7)  # builds the native key column
    idx.truncate_to(BASE + 8)
    assert idx.last_entry() == (T0 + 20, BASE + 7)
    idx.truncate_to(BASE + 7)
    assert (idx.entries, idx.last_entry()) == (2, (T0 + 10, BASE + 5))
    idx.truncate_to(BASE + UINT32_MAX + 1)
    assert idx.entries == 2
    idx.maybe_append(T0 + 15, BASE + 6)
    assert idx.lookup(T0 + 99) == (T0 + 15, BASE + 6)
    idx.truncate_to(BASE + 5)
    assert (idx.entries, idx.lookup(T0 + 99)) == (0, (-1, BASE))
    idx.truncate_to(BASE - 1)
    idx.close()
    assert os.path.getsize(idx.path) == 0


# --- sanity_check ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ([(T0, 0), (T0 + 9, 1), (T0 + 3, 2)], f"timestamp {T0 + 3} after {T0 + 9}"),
        ([(T0, 0), (T0, 1)], f"timestamp {T0} after {T0}"),
        ([(T0, 4), (T0 + 1, 2)], "offset 2 after 4"),
    ],
)
def test_sanity_check_rejects_out_of_order_entries(
    tmp_path: Path, entries: list[tuple[int, int]], problem: str
) -> None:
    path = tmp_path / "bad.timeindex"
    write_raw(path, entries)
    idx = TimeIndex(path, BASE, writable=False)
    with pytest.raises(CorruptIndexError, match=problem) as err:
        idx.sanity_check()
    assert str(path) in str(err.value)
    idx.close()


def test_sanity_check_accepts_valid_index(tmp_path: Path) -> None:
    idx = make(tmp_path)
    for i in range(5):
        idx.maybe_append(T0 + i, BASE + i // 2)
    idx.sanity_check()
    idx.close()


# --- properties ----------------------------------------------------------------------------

HYPOTHESIS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@HYPOTHESIS
@given(
    base=st.integers(0, 2**40),
    start=st.integers(0, 2**50),
    steps=st.lists(st.tuples(st.integers(1, 1000), st.integers(0, 3)), max_size=60),
    targets=st.lists(st.integers(-10, 70_000), max_size=40),
)
def test_lookup_agrees_with_linear_scan(
    tmp_path: Path,
    base: int,
    start: int,
    steps: list[tuple[int, int]],
    targets: list[int],
) -> None:
    pairs: list[tuple[int, int]] = []
    timestamp, offset = start - 1, base
    for ts_step, offset_step in steps:
        timestamp, offset = timestamp + ts_step, offset + offset_step
        pairs.append((timestamp, offset))
    idx = TimeIndex(tmp_path / "prop.timeindex", base, 60 * TIME_INDEX_ENTRY_SIZE)
    try:
        for pair in pairs:
            idx.maybe_append(*pair)
        extremes = [-(2**70), -start - 1, -1, 0, 2**63, 2**70]
        for target in [start + t for t in targets + extremes]:
            assert idx.lookup(target) == scan(pairs, base, target)
        assert idx.last_entry() == (pairs[-1] if pairs else (-1, base))
    finally:
        idx.delete()


@HYPOTHESIS
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(-5, 20), st.integers(0, 3)),
            st.tuples(st.just("truncate"), st.integers(-3, 120), st.just(0)),
            st.tuples(st.just("lookup"), st.integers(-5, 1000), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        ),
        max_size=40,
    )
)
def test_mixed_operations_match_a_list_model(
    tmp_path: Path, ops: list[tuple[str, int, int]]
) -> None:
    path = tmp_path / "model.timeindex"
    idx = TimeIndex(path, BASE, 64 * TIME_INDEX_ENTRY_SIZE)
    model: list[tuple[int, int]] = []
    next_offset = BASE
    try:
        for op, a, b in ops:
            if op == "append":
                last_ts = model[-1][0] if model else -1
                next_offset += b
                idx.maybe_append(last_ts + a, next_offset)
                if a > 0:
                    model.append((last_ts + a, next_offset))
            elif op == "truncate":
                idx.truncate_to(BASE + a)
                model = [p for p in model if p[1] < BASE + a]
                next_offset = max(model[-1][1] if model else BASE, min(next_offset, BASE + a))
            elif op == "lookup":
                assert idx.lookup(a) == scan(model, BASE, a)
            else:
                idx.close()
                idx = TimeIndex(path, BASE, 64 * TIME_INDEX_ENTRY_SIZE)
            assert idx.entries == len(model)
        idx.sanity_check()
    finally:
        idx.delete()

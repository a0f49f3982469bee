"""LogSegment: one `.log` with its sparse `.index` and `.timeindex`, used directly."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.codec import format as fmt
from logstore.codec.record_batch import (
    BatchHeader,
    RecordInput,
    decode_all,
    encode_batch,
    read_header,
)
from logstore.storage.segment import LogSegment
from tests.helpers import (
    expected_offset_index,
    make_records,
    rows_from,
    rows_of,
    scan_bytes,
    scan_file,
)

MAX_INDEX_BYTES = 4096
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def open_segment(directory: Path, base: int = 0, interval: int = 128) -> LogSegment:
    return LogSegment(
        directory,
        base,
        index_interval_bytes=interval,
        max_index_bytes=MAX_INDEX_BYTES,
        created_ms=0,
    )


def append_batches(
    segment: LogSegment, batches: Sequence[Sequence[RecordInput]]
) -> list[tuple[int, BatchHeader]]:
    """Append `batches` in one call, offsets continuing the segment; return their headers."""
    buffers: list[bytes | memoryview] = []
    headers: list[BatchHeader] = []
    next_offset = segment.next_offset
    for records in batches:
        data = encode_batch(records, base_offset=next_offset)
        buffers.append(data)
        headers.append(read_header(data))
        next_offset += len(records)
    position = segment.append(buffers, headers)
    out = []
    for header in headers:
        out.append((position, header))
        position += header.size
    return out


def offset_entries(segment: LogSegment) -> list[tuple[int, int]]:
    view = segment.offset_index.entries_view()
    return [(segment.base_offset + int(rel), int(pos)) for rel, pos in view.tolist()]


def time_entries(segment: LogSegment) -> list[tuple[int, int]]:
    view = segment.time_index.entries_view()
    return [(int(ts), segment.base_offset + int(rel)) for ts, rel in view.tolist()]


#: one batch: (record count, value size, timestamps of its records)
batch_shapes = st.integers(1, 5).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.integers(0, 300),
        st.lists(st.integers(0, 50_000), min_size=n, max_size=n),
    )
)


def build(
    directory: Path, base: int, interval: int, shapes: Sequence[tuple[int, int, list[int]]]
) -> tuple[LogSegment, list[tuple[int, BatchHeader]], list[list[RecordInput]]]:
    segment = open_segment(directory, base, interval)
    layout: list[tuple[int, BatchHeader]] = []
    inputs: list[list[RecordInput]] = []
    for i, (count, value_size, timestamps) in enumerate(shapes):
        records = make_records(f"b{i}", count, value_size=value_size, timestamps=timestamps)
        inputs.append(records)
        layout.extend(append_batches(segment, [records]))
    return segment, layout, inputs


# --- appending and walking -----------------------------------------------------------------


def test_append_places_batches_back_to_back_and_iter_headers_walks_them(tmp_path: Path) -> None:
    segment = open_segment(tmp_path, base=1_000, interval=64)
    assert (segment.size, segment.next_offset, segment.max_timestamp) == (0, 1_000, -1)
    assert list(segment.iter_headers()) == []
    assert segment.find_batch(1_000) is None
    assert segment.read_batches(0, 1_000) == b""

    first = append_batches(segment, [make_records("a", 3, timestamps=[5, 9, 7])])
    more = append_batches(
        segment,
        [make_records("b", 1, timestamps=20), make_records("c", 4, timestamps=[3, 3, 3, 3])],
    )
    layout = first + more
    assert [pos for pos, _ in layout] == [0, layout[1][0], layout[1][0] + layout[1][1].size]
    assert [h.base_offset for _, h in layout] == [1_000, 1_003, 1_004]
    assert segment.size == sum(h.size for _, h in layout) == os.path.getsize(segment.log_path)
    assert segment.next_offset == 1_008
    assert segment.max_timestamp == 20
    assert list(segment.iter_headers()) == layout
    assert list(segment.iter_headers(layout[1][0])) == layout[1:]
    assert list(segment.iter_headers(0, layout[2][0])) == layout[:2]
    for offset in range(1_000, 1_008):
        found = segment.find_batch(offset)
        assert found is not None
        assert found[1].base_offset <= offset <= found[1].last_offset
    assert segment.find_batch(1_008) is None
    assert scan_file(segment.log_path) == layout
    segment.close()
    segment.close()  # closing twice is harmless


def test_batches_larger_than_a_header_read_are_walked_found_and_read(tmp_path: Path) -> None:
    segment = open_segment(tmp_path, base=0, interval=100)
    layout = append_batches(segment, [make_records("s", 2)])
    layout += append_batches(segment, [make_records("big", 3, value_size=9_000)])
    layout += append_batches(segment, [make_records("t", 1)])
    assert layout[1][1].size > 3 * 9_000
    assert list(segment.iter_headers()) == layout
    found = segment.find_batch(3)
    assert found == layout[1]
    data = segment.read_batches(layout[1][0], 10)
    assert len(data) == layout[1][1].size
    assert [r.offset for r in decode_all(data)] == [2, 3, 4]
    assert segment.find_batch(5) == layout[2]
    segment.close()


def test_read_bytes_never_reads_past_the_segment_size(tmp_path: Path) -> None:
    segment = open_segment(tmp_path)
    layout = append_batches(segment, [make_records("a", 2)])
    size = layout[0][1].size
    assert segment.read_bytes(0, 10 * size) == segment.log_path.read_bytes()
    assert segment.read_bytes(size, 100) == b""
    assert segment.read_bytes(size - 5, 100) == segment.log_path.read_bytes()[-5:]
    segment.close()


def test_an_offset_is_published_only_after_the_bytes_that_hold_it(tmp_path: Path) -> None:
    """A reader running between any two steps of an append finds every offset below
    `next_offset` (it once saw the new end offset before the new size, and found nothing)."""
    segment = open_segment(tmp_path, interval=0)
    append_batches(segment, [make_records("a", 2)])
    seen: list[int] = []
    index_batch = segment._index_batch

    def index_then_read(header: BatchHeader, position: int) -> None:
        index_batch(header, position)
        latest = segment.next_offset - 1
        seen.append(latest)
        assert segment.find_batch(latest) is not None

    segment._index_batch = index_then_read  # type: ignore[method-assign]
    append_batches(segment, [make_records("b", 3), make_records("c", 1)])
    assert seen == [1, 1]
    assert segment.next_offset == 6
    assert segment.find_batch(5) is not None
    segment.close()


def _check_the_end_is_whole(segment: LogSegment) -> None:
    """`segment.end` names exactly the batches a reader bounded by it gets: `size` bytes of
    whole batches holding the offsets from the base offset up to `next_offset`."""
    seen = segment.end
    size, next_offset = seen
    data = segment.read_batches(0, 1 << 30, seen)
    assert len(data) == size, seen
    expected = segment.base_offset
    for _, header in scan_bytes(data):
        assert header.base_offset == expected  # dense, from the base offset
        expected = header.next_offset
    assert expected == next_offset, seen
    if next_offset > segment.base_offset:
        found = segment.find_batch(next_offset - 1, seen)
        assert found is not None and found[0] + found[1].size == size
    assert segment.find_batch(next_offset, seen) is None


@PROPERTY
@given(
    interval=st.integers(0, 512),
    appends=st.lists(st.lists(batch_shapes, min_size=1, max_size=4), min_size=1, max_size=8),
)
def test_the_end_is_whole_at_every_store_of_an_append_and_of_recovery(
    interval: int, appends: list[list[tuple[int, int, list[int]]]]
) -> None:
    """A lock-free reader may run between any two stores of an append: the end it takes
    always pairs a size with exactly the offsets those bytes hold. (Separate size and
    offset stores once let a reader see a new size with the old next offset and read
    batches past the log end offset it reported.) Recovery, which publishes the end batch
    by batch, keeps the same pairing at each of its stores."""
    stores = 0

    class ProbedSegment(LogSegment):
        def __setattr__(self, name: str, value: object) -> None:
            nonlocal stores
            super().__setattr__(name, value)
            if "_closed" in self.__dict__:  # set last when the segment is opened
                stores += 1
                _check_the_end_is_whole(self)

    with tempfile.TemporaryDirectory() as tmp:
        segment = ProbedSegment(
            Path(tmp),
            0,
            index_interval_bytes=interval,
            max_index_bytes=MAX_INDEX_BYTES,
            created_ms=0,
        )
        for i, shapes in enumerate(appends):
            append_batches(
                segment,
                [
                    make_records(f"a{i}.{j}", n, value_size=v, timestamps=t)
                    for j, (n, v, t) in enumerate(shapes)
                ],
            )
        assert stores > 0
        end = segment.end
        assert end == (segment.size, sum(n for shapes in appends for n, _, _ in shapes))
        stores = 0
        assert segment.recover() == 0
        assert stores > 0 and segment.end == end
        segment.close()


@PROPERTY
@given(
    interval=st.integers(0, 512),
    shapes=st.lists(batch_shapes, min_size=1, max_size=20),
    later=st.lists(batch_shapes, min_size=1, max_size=10),
    limits=st.lists(st.integers(0, 3_000), min_size=1, max_size=5),
)
def test_reads_bounded_by_an_earlier_end_ignore_everything_appended_after_it(
    interval: int,
    shapes: list[tuple[int, int, list[int]]],
    later: list[tuple[int, int, list[int]]],
    limits: list[int],
) -> None:
    """What a reader reads with the end it took is what it would have read then, however
    much the segment has grown since: no offset, header walk or byte past that end."""
    with tempfile.TemporaryDirectory() as tmp:
        segment, layout, _ = build(Path(tmp), 0, interval, shapes)
        seen = segment.end
        size, next_offset = seen
        offsets = range(next_offset + 3)
        found = [segment.find_batch(offset) for offset in offsets]
        reads = {
            (position, limit): (
                segment.end_of_read(position, limit),
                segment.read_batches(position, limit),
            )
            for position, _ in layout
            for limit in limits
        }
        content = segment.read_bytes(0, 1 << 30)
        for i, (count, value_size, timestamps) in enumerate(later):
            append_batches(
                segment,
                [make_records(f"later{i}", count, value_size=value_size, timestamps=timestamps)],
            )
        assert segment.next_offset > next_offset and segment.size > size
        assert [segment.find_batch(offset, seen) for offset in offsets] == found
        for (position, limit), (end, data) in reads.items():
            assert segment.end_of_read(position, limit, seen) == end
            assert segment.read_batches(position, limit, seen) == data
        assert segment.read_bytes(0, 1 << 30, seen) == content
        assert segment.read_batches(size, 1 << 30, seen) == b""
        assert segment.end_of_read(size, 1 << 30, seen) == size
        segment.close()


# --- indexes -------------------------------------------------------------------------------


@PROPERTY
@given(
    base=st.integers(0, 2**40),
    interval=st.integers(0, 512),
    shapes=st.lists(batch_shapes, min_size=1, max_size=40),
)
def test_index_entries_map_a_batch_last_offset_to_its_start(
    base: int, interval: int, shapes: list[tuple[int, int, list[int]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        segment, layout, _ = build(Path(tmp), base, interval, shapes)
        entries = offset_entries(segment)
        assert entries == expected_offset_index(layout, interval)
        starts = {pos: header for pos, header in layout}
        for last_offset, position in entries:
            assert starts[position].last_offset == last_offset
        # the time index: new maxima only, each the first batch reaching that maximum
        times = time_entries(segment)
        assert [ts for ts, _ in times] == sorted({ts for ts, _ in times})
        for ts, offset in times:
            holder = next(h for _, h in layout if h.base_offset <= offset <= h.last_offset)
            assert holder.last_offset == offset
            assert holder.max_timestamp == ts
            earlier = [h.max_timestamp for _, h in layout if h.base_offset < holder.base_offset]
            assert all(t < ts for t in earlier)
        assert segment.max_timestamp == max(h.max_timestamp for _, h in layout)
        segment.close()


@PROPERTY
@given(
    base=st.integers(0, 2**40),
    interval=st.integers(0, 512),
    shapes=st.lists(batch_shapes, min_size=1, max_size=40),
)
def test_find_batch_agrees_with_a_linear_scan_for_every_offset(
    base: int, interval: int, shapes: list[tuple[int, int, list[int]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        segment, layout, _ = build(Path(tmp), base, interval, shapes)
        for offset in range(base, segment.next_offset + 3):
            expected = next(
                ((p, h) for p, h in layout if h.base_offset <= offset <= h.last_offset), None
            )
            assert segment.find_batch(offset) == expected, offset
        segment.close()


@PROPERTY
@given(
    interval=st.integers(0, 512),
    shapes=st.lists(batch_shapes, min_size=1, max_size=25),
    limits=st.lists(st.integers(0, 4_000), min_size=1, max_size=8),
)
def test_read_batches_returns_whole_batches_within_max_bytes(
    interval: int, shapes: list[tuple[int, int, list[int]]], limits: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        segment, layout, _ = build(Path(tmp), 0, interval, shapes)
        content = segment.log_path.read_bytes()
        for i, (position, header) in enumerate(layout):
            for max_bytes in limits:
                end = position + header.size  # the first batch, whole, whatever max_bytes is
                for next_position, next_header in layout[i + 1 :]:
                    if next_position + next_header.size - position > max_bytes:
                        break
                    end = next_position + next_header.size
                assert segment.read_batches(position, max_bytes) == content[position:end]
        assert segment.read_batches(segment.size, 1_000) == b""
        segment.close()


def test_read_batches_returns_a_first_batch_larger_than_max_bytes_whole(tmp_path: Path) -> None:
    segment = open_segment(tmp_path)
    layout = append_batches(segment, [make_records("big", 4, value_size=500)])
    layout += append_batches(segment, [make_records("small", 1)])
    content = segment.log_path.read_bytes()
    for max_bytes in (0, 1, 60, 61, layout[0][1].size - 1):
        assert segment.read_batches(0, max_bytes) == content[: layout[1][0]]
    assert segment.read_batches(0, len(content)) == content
    segment.close()


@PROPERTY
@given(
    base=st.integers(0, 2**33),
    interval=st.integers(0, 512),
    shapes=st.lists(batch_shapes, min_size=1, max_size=30),
    extra_targets=st.lists(st.integers(-5, 50_005), max_size=20),
)
def test_find_offset_by_timestamp_agrees_with_a_scan_of_decoded_records(
    base: int,
    interval: int,
    shapes: list[tuple[int, int, list[int]]],
    extra_targets: list[int],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        segment, _, inputs = build(Path(tmp), base, interval, shapes)
        records = rows_from(decode_all(segment.log_path.read_bytes()))
        timestamps = {r[4] for r in records}
        targets = {-1, 0, *timestamps, *(t + 1 for t in timestamps), *extra_targets}
        for target in sorted(targets):
            expected = next(((r[0], r[4]) for r in records if r[4] >= target), None)
            assert segment.find_offset_by_timestamp(target) == expected, target
        expected_rows = []
        for records_in in inputs:
            expected_rows.extend(rows_of(records_in, base + len(expected_rows)))
        assert records == expected_rows
        segment.close()


# --- recovery ------------------------------------------------------------------------------


@PROPERTY
@given(
    base=st.integers(0, 2**40),
    interval=st.integers(0, 512),
    shapes=st.lists(batch_shapes, min_size=1, max_size=30),
)
def test_recover_on_a_clean_file_cuts_nothing_and_rebuilds_the_same_indexes(
    base: int, interval: int, shapes: list[tuple[int, int, list[int]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        segment, layout, _ = build(directory, base, interval, shapes)
        state = (segment.size, segment.next_offset, segment.max_timestamp)
        offsets, times = offset_entries(segment), time_entries(segment)

        assert segment.recover() == 0  # in place, on the live segment
        assert (segment.size, segment.next_offset, segment.max_timestamp) == state
        assert (offset_entries(segment), time_entries(segment)) == (offsets, times)
        segment.close()

        reopened = open_segment(directory, base, interval)
        assert reopened.recover() == 0  # from the files alone
        assert (reopened.size, reopened.next_offset, reopened.max_timestamp) == state
        assert (offset_entries(reopened), time_entries(reopened)) == (offsets, times)
        assert list(reopened.iter_headers()) == layout
        reopened.close()

        trusted = open_segment(directory, base, interval)
        trusted.load_state_from_indexes()  # after a clean shutdown
        assert (trusted.size, trusted.next_offset, trusted.max_timestamp) == state
        assert offset_entries(trusted) == offsets
        trusted.close()


def _build_for_cuts(directory: Path, base: int) -> tuple[bytes, list[tuple[int, BatchHeader]]]:
    directory.mkdir()
    segment = open_segment(directory, base, interval=64)
    layout: list[tuple[int, BatchHeader]] = []
    for i in range(6):
        records = make_records(f"r{i}", 1 + i % 3, value_size=20 + 7 * i, with_headers=True)
        layout += append_batches(segment, [records])
    segment.close()
    return segment.log_path.read_bytes(), layout


def _recover_copy(
    directory: Path, base: int, content: bytes
) -> tuple[LogSegment, int, list[tuple[int, BatchHeader]]]:
    directory.mkdir()
    (directory / fmt.offset_file_name(base, fmt.LOG_SUFFIX)).write_bytes(content)
    segment = open_segment(directory, base, interval=64)
    cut = segment.recover()
    return segment, cut, list(segment.iter_headers())


def test_recover_after_a_cut_at_every_byte_of_the_last_batch_keeps_the_earlier_ones(
    tmp_path: Path,
) -> None:
    base = 500
    content, layout = _build_for_cuts(tmp_path / "original", base)
    last_pos, last = layout[-1]
    earlier = layout[:-1]
    earlier_index = expected_offset_index(earlier, 64)
    for cut_at in range(last_pos, last_pos + last.size):
        segment, cut, headers = _recover_copy(tmp_path / f"cut{cut_at}", base, content[:cut_at])
        assert cut == cut_at - last_pos, cut_at
        assert headers == earlier, cut_at
        assert (segment.size, segment.next_offset) == (last_pos, last.base_offset), cut_at
        assert os.path.getsize(segment.log_path) == last_pos
        assert offset_entries(segment) == earlier_index
        assert segment.find_batch(last.base_offset) is None
        segment.close()
    whole, cut, headers = _recover_copy(tmp_path / "whole", base, content)
    assert (cut, headers, whole.next_offset) == (0, layout, last.next_offset)
    whole.close()


#: bytes 12..15 hold partitionLeaderEpoch, which no check covers (as in Kafka)
UNCHECKED = range(fmt.PARTITION_LEADER_EPOCH_OFFSET, fmt.MAGIC_OFFSET)


def test_recover_after_a_flipped_byte_anywhere_in_the_last_batch_drops_that_batch(
    tmp_path: Path,
) -> None:
    base = 77
    content, layout = _build_for_cuts(tmp_path / "original", base)
    last_pos, last = layout[-1]
    for rel in range(last.size):
        damaged = bytearray(content)
        damaged[last_pos + rel] ^= 0xFF
        segment, cut, headers = _recover_copy(tmp_path / f"flip{rel}", base, bytes(damaged))
        if rel in UNCHECKED:
            assert (cut, len(headers)) == (0, len(layout)), rel
        else:
            assert cut == last.size, rel
            assert headers == layout[:-1], rel
            assert segment.next_offset == last.base_offset
        segment.close()


def test_recover_stops_at_a_batch_whose_base_offset_breaks_the_sequence(tmp_path: Path) -> None:
    segment = open_segment(tmp_path, base=10)
    layout = append_batches(segment, [make_records("a", 2), make_records("b", 2)])
    stray = encode_batch(make_records("gap", 1), base_offset=segment.next_offset + 5)
    with open(segment.log_path, "r+b") as file:
        file.seek(segment.size)
        file.write(stray)
    good_size = segment.size
    segment.close()
    reopened = open_segment(tmp_path, base=10)
    assert reopened.recover() == len(stray)
    assert list(reopened.iter_headers()) == layout
    assert (reopened.size, reopened.next_offset) == (good_size, 14)
    reopened.close()


def test_recover_drops_a_batch_larger_than_the_limit(tmp_path: Path) -> None:
    segment = open_segment(tmp_path)
    layout = append_batches(segment, [make_records("a", 1)])
    big = append_batches(segment, [make_records("big", 2, value_size=400)])
    segment.close()
    reopened = open_segment(tmp_path)
    assert reopened.recover(max_batch_bytes=big[0][1].size - 1) == big[0][1].size
    assert list(reopened.iter_headers()) == layout
    reopened.close()


@pytest.mark.parametrize("max_bytes", [1, 100, 10_000])
def test_read_batches_from_a_middle_batch_start(tmp_path: Path, max_bytes: int) -> None:
    segment = open_segment(tmp_path, interval=0)
    layout = append_batches(segment, [make_records(f"m{i}", 2) for i in range(5)])
    data = segment.read_batches(layout[2][0], max_bytes)
    headers = [h for _, h in scan_bytes(data)]
    assert headers[0] == layout[2][1]
    assert sum(h.size for h in headers) == len(data)
    segment.close()

"""PartitionLog: dense offsets across segments, recovery, retention, rolls, flushes,
LogAppendTime, idempotent producers, input validation and concurrent use."""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.codec import format as fmt
from logstore.codec.record_batch import (
    BatchHeader,
    decode_all,
    decode_batch,
    encode_batch,
    read_header,
)
from logstore.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRequestError,
    LogClosedError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    RecordTooLargeError,
    UnsupportedCompressionError,
)
from logstore.storage import partition_log
from logstore.storage.log_config import LogConfig
from logstore.storage.partition_log import PartitionLog
from logstore.storage.producer_state import list_snapshot_offsets
from logstore.storage.segment import LogSegment
from tests.helpers import (
    LogModel,
    Row,
    expected_offset_index,
    log_files,
    make_config,
    make_records,
    read_rows,
    rows_from,
    scan_bytes,
    scan_file,
)

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SMALL = {"segment.bytes": 2048, "index.interval.bytes": 128}


def open_log(
    directory: Path,
    props: Mapping[str, int | str] | None = None,
    *,
    clock: ManualClock | None = None,
    clean: bool = False,
    recovery_point: int = 0,
) -> PartitionLog:
    return PartitionLog(
        directory,
        make_config(props),
        clock=clock or ManualClock(),
        clean_shutdown=clean,
        recovery_point=recovery_point,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def fill(
    log: PartitionLog,
    model: LogModel,
    count: int,
    *,
    clock: ManualClock | None = None,
    tag: str = "f",
    value_size: int = 40,
    step_ms: int = 0,
) -> None:
    """Append `count` single-append batches of 1-3 records stamped with the clock's time."""
    for i in range(count):
        now = clock.now_ms() if clock is not None else 1_000 + i
        records = make_records(f"{tag}{i}", 1 + i % 3, value_size=value_size, timestamps=now)
        model.append(log, [records])
        if clock is not None and step_ms:
            clock.advance(step_ms)


def segment_layout(log: PartitionLog) -> list[tuple[int, int, int]]:
    """(base offset, next offset, size in bytes) of each segment, oldest first."""
    return [(s.base_offset, s.next_offset, s.size) for s in log.segments()]


def check_segment_chain(directory: Path, log: PartitionLog) -> None:
    """Files are named by their 20-digit base offset; each starts where the previous ends."""
    names = [p.name for p in log_files(directory)]
    bases = [s.base_offset for s in log.segments()]
    assert names == [fmt.offset_file_name(b, fmt.LOG_SUFFIX) for b in bases]
    assert all(len(n) == fmt.OFFSET_NAME_DIGITS + len(fmt.LOG_SUFFIX) for n in names)
    expected_base = log.log_start_offset
    for path in log_files(directory):
        batches = scan_file(path)
        assert int(path.stem) == expected_base
        if batches:
            assert batches[0][1].base_offset == expected_base
            offsets = [h.base_offset for _, h in batches]
            nexts = [h.next_offset for _, h in batches]
            assert offsets[1:] == nexts[:-1], f"offsets not dense in {path.name}"
            expected_base = nexts[-1]
        assert sum(h.size for _, h in batches) == path.stat().st_size
    assert expected_base == log.log_end_offset


# --- 1. dense offsets across rolls, read back exactly ----------------------------------------

append_plans = st.lists(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(0, 150), st.booleans()),
        min_size=1,
        max_size=3,
    ),
    min_size=1,
    max_size=25,
)
#: a log of small segments and index intervals, appended to by a plan, and more draws
LOG_SHAPES = given(
    segment_bytes=st.integers(1024, 4096),
    interval=st.integers(64, 512),
    plan=append_plans,
    data=st.data(),
)


@PROPERTY
@LOG_SHAPES
def test_offsets_are_dense_across_rolls_and_everything_reads_back(
    segment_bytes: int,
    interval: int,
    plan: list[list[tuple[int, int, bool]]],
    data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        props = {"segment.bytes": segment_bytes, "index.interval.bytes": interval}
        clock = ManualClock()
        log = open_log(directory, props, clock=clock)
        model = LogModel()
        for i, shapes in enumerate(plan):
            now = clock.now_ms()
            batches = [
                make_records(f"a{i}.{j}", n, value_size=size, timestamps=now, with_headers=h)
                for j, (n, size, h) in enumerate(shapes)
            ]
            model.append(log, batches)  # checks base offset == records appended so far
            clock.advance(1)
        assert log.log_end_offset == model.end
        check_segment_chain(directory, log)
        check_rolls_happen_exactly_when_needed(log, model, segment_bytes)

        def max_bytes() -> int:
            return data.draw(st.integers(1, 3_000), label="max_bytes")

        assert read_rows(log, 0, max_bytes) == model.rows
        middle = data.draw(st.integers(0, model.end - 1), label="middle offset")
        first = scan_bytes_first(log.read(middle, 1).data)
        assert first.base_offset <= middle <= first.last_offset
        layout = segment_layout(log)
        log.close()

        for clean in (True, False):
            log = open_log(directory, props, clock=clock, clean=clean)
            report = log.recovery_report
            assert (report.truncated_bytes, report.deleted_segments) == (0, 0)
            assert report.recovered is not clean
            if clean:
                assert report.rebuilt_indexes == 0
            assert segment_layout(log) == layout
            assert read_rows(log, 0, max_bytes) == model.rows
            log.close()


@PROPERTY
@LOG_SHAPES
def test_offset_after_read_is_where_that_read_ends(
    segment_bytes: int,
    interval: int,
    plan: list[list[tuple[int, int, bool]]],
    data: st.DataObject,
) -> None:
    """The consumer's fetch ahead relies on it: asked for the fetch after a read from
    `offset` of `max_bytes`, the broker starts exactly where that read ended."""
    with tempfile.TemporaryDirectory() as tmp:
        log = open_log(
            Path(tmp), {"segment.bytes": segment_bytes, "index.interval.bytes": interval}
        )
        model = LogModel()
        for i, shapes in enumerate(plan):
            batches = [
                make_records(f"r{i}.{j}", n, value_size=size, with_headers=h)
                for j, (n, size, h) in enumerate(shapes)
            ]
            model.append(log, batches)
        for _ in range(20):
            offset = data.draw(st.integers(0, model.end), label="offset")
            max_bytes = data.draw(st.integers(0, 5_000), label="max_bytes")
            read = scan_bytes(log.read(offset, max_bytes).data)
            expected = read[-1][1].next_offset if read else offset
            assert log.offset_after_read(offset, max_bytes) == expected
        with pytest.raises(OffsetOutOfRangeError):
            log.offset_after_read(model.end + 1, 100)
        log.close()


def scan_bytes_first(data: bytes) -> BatchHeader:
    assert len(data) >= fmt.BATCH_HEADER_SIZE
    return read_header(data)


def check_rolls_happen_exactly_when_needed(
    log: PartitionLog, model: LogModel, segment_bytes: int
) -> None:
    """An append never straddles segments; a segment rolls only when the next append would
    push it past segment.bytes, and exceeds segment.bytes only when it holds one append."""
    previous_size: int | None = None
    for segment in log.segments():
        inside = [a for a in model.appends if segment.base_offset <= a[0] < segment.next_offset]
        assert inside, f"{segment} holds no append"
        assert inside[0][0] == segment.base_offset
        assert inside[-1][1] == segment.next_offset - 1
        assert sum(a[2] for a in inside) == segment.size
        assert segment.size <= segment_bytes or len(inside) == 1
        if previous_size is not None:
            assert previous_size + inside[0][2] > segment_bytes, "rolled without need"
        previous_size = segment.size


def test_reads_outside_the_log_name_the_valid_range(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 5)
    end = log.log_end_offset
    for offset in (-1, end + 1, end + 1_000):
        with pytest.raises(OffsetOutOfRangeError, match=rf"valid 0\.\.{end}\b") as info:
            log.read(offset, 1_000)
        assert (info.value.offset, info.value.log_start_offset) == (offset, 0)
        assert info.value.log_end_offset == end
    at_end = log.read(end, 1_000)
    assert (at_end.data, at_end.high_watermark, at_end.log_start_offset) == (b"", end, 0)
    log.close()


def test_an_empty_log_reads_nothing_and_starts_at_zero(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    assert (log.log_start_offset, log.log_end_offset, log.size_bytes) == (0, 0, 0)
    assert log.read(0, 100).data == b""
    assert log.find_offset_by_timestamp(0) is None
    assert [p.name for p in log_files(tmp_path)] == [fmt.offset_file_name(0, fmt.LOG_SUFFIX)]
    log.close()
    reopened = open_log(tmp_path, SMALL, clean=True)
    assert reopened.log_end_offset == 0
    reopened.close()


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    log.close()
    with pytest.raises(LogClosedError):
        log.append(encode_batch(make_records("late", 1)))


def test_find_offset_by_timestamp_across_segments_matches_a_scan(tmp_path: Path) -> None:
    log = open_log(tmp_path, {"segment.bytes": 1024, "index.interval.bytes": 64})
    model = LogModel()
    stamps = [5_000, 1_000, 9_000, 3_000, 9_000, 12_000, 2_000, 15_000, 7_000, 20_000] * 4
    for i, ts in enumerate(stamps):
        model.append(log, [make_records(f"t{i}", 2, value_size=30, timestamps=[ts, ts - i])])
    assert log.segment_count > 2
    targets = sorted({0, *(r[4] for r in model.rows), *(r[4] + 1 for r in model.rows)})
    for reopen in (False, True):
        for target in targets:
            expected = next(((r[0], r[4]) for r in model.rows if r[4] >= target), None)
            assert log.find_offset_by_timestamp(target) == expected, target
        if reopen:
            break
        log.close()
        log = open_log(tmp_path, {"segment.bytes": 1024, "index.interval.bytes": 64}, clean=True)
    log.close()


# --- 2. recovery after a torn write ------------------------------------------------------------


@dataclass
class Template:
    """A closed log on disk to copy: its contents and the layout of its active segment."""

    directory: Path
    model: LogModel
    active_base: int
    active_batches: list[tuple[int, BatchHeader]]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    directory = tmp_path_factory.mktemp("template")
    log = open_log(directory, SMALL)
    model = LogModel()
    for i in range(34):
        records = make_records(f"t{i}", 1 + i % 4, value_size=10 + 9 * (i % 5), with_headers=True)
        model.append(log, [records])
    active = log.segments()[-1]
    log.close()
    batches = scan_file(active.log_path)
    assert log.segment_count >= 3 and len(batches) >= 3
    return Template(directory, model, active.base_offset, batches)


def copy_of(template: Template, tmp: str) -> Path:
    target = Path(tmp) / "log"
    shutil.copytree(template.directory, target)
    return target


@settings(PROPERTY, max_examples=80)
@given(data=st.data())
def test_recovery_after_a_torn_or_damaged_tail_keeps_exactly_the_intact_batches(
    template: Template, data: st.DataObject
) -> None:
    active_path = template.directory / fmt.offset_file_name(template.active_base, fmt.LOG_SUFFIX)
    content = active_path.read_bytes()
    last_pos, last = template.active_batches[-1]
    kind = data.draw(st.sampled_from(["cut", "flip"]), label="damage")
    if kind == "cut":
        cut_at = data.draw(st.integers(0, len(content)), label="cut at")
        damaged = content[:cut_at]
        intact = [(p, h) for p, h in template.active_batches if p + h.size <= cut_at]
    else:
        at = data.draw(st.integers(0, last.size - 1), label="flip at")
        mask = data.draw(st.integers(1, 255), label="mask")
        damaged = bytearray(content)
        damaged[last_pos + at] ^= mask
        damaged = bytes(damaged)
        # partitionLeaderEpoch is covered by no check (as in Kafka): the batch stays valid
        unchecked = fmt.PARTITION_LEADER_EPOCH_OFFSET <= at < fmt.MAGIC_OFFSET
        intact = template.active_batches if unchecked else template.active_batches[:-1]
    intact_end = intact[-1][0] + intact[-1][1].size if intact else 0
    end = intact[-1][1].next_offset if intact else template.active_base
    recovery_point = data.draw(st.sampled_from([0, template.active_base]), label="recovery point")
    expected_rows = template.model.rows[:end]

    with tempfile.TemporaryDirectory() as tmp:
        directory = copy_of(template, tmp)
        (directory / active_path.name).write_bytes(damaged)
        log = open_log(directory, SMALL, recovery_point=recovery_point)
        report = log.recovery_report
        assert report.recovered
        assert report.truncated_bytes == len(damaged) - intact_end
        assert report.deleted_segments == 0
        assert log.log_end_offset == end
        assert (directory / active_path.name).stat().st_size == intact_end
        assert read_rows(log, 0) == expected_rows
        layout = segment_layout(log)
        log.close()

        again = open_log(directory, SMALL, recovery_point=0)  # recovering twice changes nothing
        assert (again.recovery_report.truncated_bytes, again.recovery_report.deleted_segments) == (
            0,
            0,
        )
        assert segment_layout(again) == layout
        assert read_rows(again, 0) == expected_rows
        model = LogModel(rows=list(expected_rows))
        model.append(again, [make_records("after", 3)])  # dense: continues at `end`
        again.close()

        for clean in (False, True):
            final = open_log(directory, SMALL, clean=clean)
            assert final.recovery_report.truncated_bytes == 0
            assert read_rows(final, 0) == model.rows
            final.close()


def test_a_torn_sealed_segment_drops_every_later_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 60)
    segments = log.segments()
    assert len(segments) >= 4
    log.close()
    victim = segments[1]
    batches = scan_file(victim.log_path)
    cut_at = batches[2][0] + 10  # inside the third batch of the second segment
    victim.log_path.write_bytes(victim.log_path.read_bytes()[:cut_at])

    reopened = open_log(tmp_path, SMALL, recovery_point=0)
    report = reopened.recovery_report
    assert report.truncated_bytes == 10
    assert report.deleted_segments == len(segments) - 2
    assert reopened.log_end_offset == batches[1][1].next_offset
    assert [s.base_offset for s in reopened.segments()] == [s.base_offset for s in segments[:2]]
    assert [p.name for p in log_files(tmp_path)] == [s.log_path.name for s in segments[:2]]
    assert sorted(tmp_path.glob("*.index")) == [s.offset_index.path for s in segments[:2]]
    assert read_rows(reopened, 0, 700) == model.rows[: reopened.log_end_offset]
    model.truncate_to(reopened.log_end_offset)
    model.append(reopened, [make_records("next", 2)])
    assert read_rows(reopened, 0) == model.rows
    reopened.close()


def test_a_segment_that_does_not_continue_the_previous_one_is_dropped(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 60)
    segments = log.segments()
    log.close()
    # a leftover segment file that starts beyond the end of the log
    stray_base = log.log_end_offset + 10
    stray = tmp_path / fmt.offset_file_name(stray_base, fmt.LOG_SUFFIX)
    stray.write_bytes(encode_batch(make_records("stray", 1), base_offset=stray_base))
    reopened = open_log(tmp_path, SMALL, clean=True)
    assert reopened.recovery_report.deleted_segments == 1
    assert reopened.log_end_offset == model.end
    assert not stray.exists()
    assert segment_layout(reopened) == [(s.base_offset, s.next_offset, s.size) for s in segments]
    reopened.close()


# --- 3. corrupt or missing index files ---------------------------------------------------------

INDEX_DAMAGE = ["delete", "cut_mid_entry", "junk_tail", "reversed", "zeroed", "all_ones"]


def damage_index(path: Path, how: str, entry_size: int) -> None:
    content = path.read_bytes()
    entries = [content[i : i + entry_size] for i in range(0, len(content), entry_size)]
    if how == "delete":
        path.unlink()
    elif how == "cut_mid_entry":
        path.write_bytes(content[:-3])
    elif how == "junk_tail":
        path.write_bytes(content + b"junk!")
    elif how == "reversed":
        path.write_bytes(b"".join(reversed(entries)))
    elif how == "zeroed":
        path.write_bytes(bytes(len(content)))
    elif how == "all_ones":
        path.write_bytes(b"\xff" * len(content))
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", INDEX_DAMAGE)
@pytest.mark.parametrize("suffix", [fmt.INDEX_SUFFIX, fmt.TIME_INDEX_SUFFIX])
@pytest.mark.parametrize("which", ["sealed", "active"])
def test_damaged_index_files_are_rebuilt_on_a_clean_open(
    tmp_path: Path, clock: ManualClock, which: str, suffix: str, how: str
) -> None:
    props = {"segment.bytes": 2048, "index.interval.bytes": 64}
    log = open_log(tmp_path, props, clock=clock)
    model = LogModel()
    fill(log, model, 60, clock=clock, step_ms=10)
    segments = log.segments()
    assert len(segments) >= 3
    log.close()
    target = segments[0] if which == "sealed" else segments[-1]
    path = tmp_path / fmt.offset_file_name(target.base_offset, suffix)
    entry_size = (
        fmt.OFFSET_INDEX_ENTRY_SIZE if suffix == fmt.INDEX_SUFFIX else fmt.TIME_INDEX_ENTRY_SIZE
    )
    assert path.stat().st_size >= 2 * entry_size  # at least two entries to damage
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*index")}
    damage_index(path, how, entry_size)

    reopened = open_log(tmp_path, props, clock=clock, clean=True)
    report = reopened.recovery_report
    assert report.rebuilt_indexes >= 1
    assert (report.truncated_bytes, report.deleted_segments) == (0, 0)
    assert segment_layout(reopened) == [(s.base_offset, s.next_offset, s.size) for s in segments]
    assert read_rows(reopened, 0, 300) == model.rows
    for row in model.rows[::7]:
        assert reopened.find_offset_by_timestamp(row[4]) == (
            next(r[0] for r in model.rows if r[4] >= row[4]),
            row[4],
        )
    rebuilt = next(s for s in reopened.segments() if s.base_offset == target.base_offset)
    view = rebuilt.offset_index.entries_view()
    entries = [(rebuilt.base_offset + int(r), int(p)) for r, p in view.tolist()]
    assert entries == expected_offset_index(scan_file(rebuilt.log_path), 64)
    del view
    model.append(reopened, [make_records("more", 2, timestamps=clock.now_ms())])
    reopened.close()

    final = open_log(tmp_path, props, clock=clock, clean=True)
    assert final.recovery_report.rebuilt_indexes == 0
    assert read_rows(final, 0) == model.rows
    final.close()
    # indexes are rebuilt exactly as appends wrote them (the old active one took more data)
    after = {p.name: p.read_bytes() for p in tmp_path.glob("*index")}
    for name, content in before.items():
        if not name.startswith(fmt.offset_file_name(segments[-1].base_offset, "")):
            assert after[name] == content, f"{name} rebuilt differently"


def test_an_emptied_index_still_gives_correct_reads(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 50)
    segments = log.segments()
    log.close()
    for segment in segments:
        segment.offset_index.path.write_bytes(b"")
        segment.time_index.path.write_bytes(b"")
    reopened = open_log(tmp_path, SMALL, clean=True)
    assert reopened.log_end_offset == model.end
    assert read_rows(reopened, 0, 200) == model.rows
    for row in model.rows[::5]:
        found = reopened.find_offset_by_timestamp(row[4])
        assert found == next((r[0], r[4]) for r in model.rows if r[4] >= row[4])
    reopened.close()


def test_every_index_missing_is_rebuilt(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 50)
    log.close()
    names = sorted(p.name for p in tmp_path.glob("*index"))
    before = {name: (tmp_path / name).read_bytes() for name in names}
    for name in names:
        (tmp_path / name).unlink()
    reopened = open_log(tmp_path, SMALL, clean=True)
    assert reopened.recovery_report.rebuilt_indexes == reopened.segment_count
    assert read_rows(reopened, 0, 150) == model.rows
    reopened.close()
    assert {name: (tmp_path / name).read_bytes() for name in names} == before


def test_stray_files_are_removed_at_open(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 30)
    log.close()
    kept = sorted(p.name for p in tmp_path.iterdir())
    strays = [
        fmt.offset_file_name(0, fmt.LOG_SUFFIX + fmt.DELETED_SUFFIX),
        fmt.offset_file_name(0, fmt.INDEX_SUFFIX + fmt.DELETED_SUFFIX),
        fmt.offset_file_name(7, fmt.LOG_SUFFIX + fmt.SWAP_SUFFIX),
        fmt.offset_file_name(7, fmt.LOG_SUFFIX + fmt.CLEANED_SUFFIX),
        fmt.offset_file_name(9, fmt.SNAPSHOT_SUFFIX + fmt.TEMP_SUFFIX),
        "leftover" + fmt.TEMP_SUFFIX,
        fmt.offset_file_name(99_999, fmt.INDEX_SUFFIX),  # an orphan: no .log of that base
        fmt.offset_file_name(99_999, fmt.TIME_INDEX_SUFFIX),
    ]
    for name in strays:
        (tmp_path / name).write_bytes(b"stale")
    reopened = open_log(tmp_path, SMALL, clean=True)
    assert reopened.recovery_report.stray_files == len(strays)
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert read_rows(reopened, 0) == model.rows
    reopened.close()


# --- 4. retention ------------------------------------------------------------------------------


def files_of(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.endswith(fmt.SNAPSHOT_SUFFIX)}


def segment_file_names(base: int) -> set[str]:
    return {
        fmt.offset_file_name(base, suffix)
        for suffix in (fmt.LOG_SUFFIX, fmt.INDEX_SUFFIX, fmt.TIME_INDEX_SUFFIX)
    }


def check_log_starts_at(log: PartitionLog, model: LogModel, start: int) -> None:
    assert log.log_start_offset == start
    if start > 0:
        with pytest.raises(OffsetOutOfRangeError, match=rf"valid {start}\.\.{log.log_end_offset}"):
            log.read(start - 1, 1_000)
        with pytest.raises(OffsetOutOfRangeError):
            log.read(0, 1_000)
    fetch = log.read(start, 1_000)
    assert fetch.log_start_offset == start
    assert read_rows(log, start, 500) == model.rows[start:]


def test_retention_ms_deletes_only_whole_expired_segments_never_the_active_one(
    tmp_path: Path, clock: ManualClock
) -> None:
    retention = 100_000
    props = {"segment.bytes": 1024, "index.interval.bytes": 128, "retention.ms": retention}
    log = open_log(tmp_path, props, clock=clock)
    model = LogModel()
    fill(log, model, 40, clock=clock, step_ms=1_000)
    before = log.segments()
    assert len(before) >= 4
    maxima = [s.max_timestamp for s in before]
    assert maxima == sorted(set(maxima))

    # the first segment's newest record is exactly retention.ms old: nothing goes yet
    clock.advance(maxima[0] + retention - clock.now_ms())
    assert log.delete_old_segments() == 0
    assert log.log_start_offset == 0

    clock.advance(1)  # now the first segment is older than retention.ms by 1 ms
    doomed = before[:1]
    assert log.delete_old_segments() == len(doomed)
    kept = before[len(doomed) :]
    assert [s.base_offset for s in log.segments()] == [s.base_offset for s in kept]
    check_log_starts_at(log, model, kept[0].base_offset)
    for segment in doomed:
        assert not segment_file_names(segment.base_offset) & files_of(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(fmt.DELETED_SUFFIX)]

    clock.advance(10_000_000)  # everything has expired: all but the active segment goes
    assert log.delete_old_segments() == len(kept) - 1
    assert log.segments() == [before[-1]]
    check_log_starts_at(log, model, before[-1].base_offset)
    assert log.delete_old_segments() == 0
    model.append(log, [make_records("new", 2, timestamps=clock.now_ms())])
    check_log_starts_at(log, model, before[-1].base_offset)
    log.close()

    reopened = open_log(tmp_path, props, clock=clock, clean=True)
    check_log_starts_at(reopened, model, before[-1].base_offset)
    reopened.close()


def test_retention_ms_uses_the_largest_timestamp_and_stops_at_the_first_kept_segment(
    tmp_path: Path, clock: ManualClock
) -> None:
    props = {"segment.bytes": 1024, "retention.ms": 1_000}
    log = open_log(tmp_path, props, clock=clock)
    model = LogModel()
    old = clock.now_ms() - 1_000_000
    # segment 0: old records and one recent one; segments after: old records only
    now = clock.now_ms()
    model.append(log, [make_records("mixed", 3, value_size=200, timestamps=[old, now, old])])
    for i in range(12):
        model.append(log, [make_records(f"old{i}", 2, value_size=150, timestamps=old)])
    assert log.segment_count >= 3
    assert log.segments()[0].max_timestamp == now
    assert log.delete_old_segments() == 0  # the first segment is recent, so nothing goes
    count = log.segment_count
    clock.advance(1_001)
    assert log.delete_old_segments() == count - 1
    assert log.segment_count == 1
    log.close()


@pytest.mark.parametrize("retention_bytes", [0, 1, 1_500, 3_000, 5_000, 1_000_000])
def test_retention_bytes_deletes_oldest_first_and_keeps_at_least_retention_bytes(
    tmp_path: Path, retention_bytes: int
) -> None:
    props = {"segment.bytes": 1024, "retention.bytes": retention_bytes, "retention.ms": -1}
    log = open_log(tmp_path, props)
    model = LogModel()
    fill(log, model, 60)
    before = log.segments()
    total = log.size_bytes
    deleted = log.delete_old_segments()
    kept = log.segments()
    assert kept == before[deleted:]
    assert kept[-1] is before[-1]
    if deleted:
        assert log.size_bytes >= retention_bytes
    if len(kept) > 1:
        assert log.size_bytes - kept[0].size < retention_bytes, "kept more than needed"
    assert log.size_bytes == total - sum(s.size for s in before[:deleted])
    check_log_starts_at(log, model, kept[0].base_offset)
    log.close()


def test_file_delete_delay_keeps_renamed_files_until_it_passes(
    tmp_path: Path, clock: ManualClock
) -> None:
    props = {"segment.bytes": 1024, "retention.bytes": 0, "file.delete.delay.ms": 5_000}
    log = open_log(tmp_path, props, clock=clock)
    model = LogModel()
    fill(log, model, 30, clock=clock)
    before = log.segments()
    deleted = log.delete_old_segments()
    assert deleted == len(before) - 1
    pending = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(fmt.DELETED_SUFFIX))
    expected = sorted(
        name + fmt.DELETED_SUFFIX for s in before[:-1] for name in segment_file_names(s.base_offset)
    )
    assert pending == expected
    check_log_starts_at(log, model, before[-1].base_offset)
    clock.advance(4_999)
    assert log.close_deleted_segments() == 0
    clock.advance(1)
    assert log.close_deleted_segments() == deleted
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(fmt.DELETED_SUFFIX)]
    log.close()


retention_plans = st.lists(
    st.tuples(st.integers(1, 4), st.integers(0, 200), st.integers(-50_000, 50_000)),
    min_size=1,
    max_size=30,
)


@PROPERTY
@given(
    plan=retention_plans,
    retention_ms=st.one_of(st.just(-1), st.integers(0, 60_000)),
    retention_bytes=st.one_of(st.just(-1), st.integers(0, 8_000)),
    advance=st.integers(0, 100_000),
)
def test_retention_removes_a_prefix_and_always_keeps_the_active_segment(
    plan: list[tuple[int, int, int]], retention_ms: int, retention_bytes: int, advance: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        clock = ManualClock()
        props = {
            "segment.bytes": 1024,
            "index.interval.bytes": 128,
            "retention.ms": retention_ms,
            "retention.bytes": retention_bytes,
        }
        log = open_log(directory, props, clock=clock)
        model = LogModel()
        for i, (count, size, skew) in enumerate(plan):
            ts = [clock.now_ms() + skew + j for j in range(count)]
            model.append(log, [make_records(f"r{i}", count, value_size=size, timestamps=ts)])
        clock.advance(advance)
        before = log.segments()
        now = clock.now_ms()
        expected = 0
        remaining = log.size_bytes
        for segment in before[:-1]:
            expired = retention_ms >= 0 and now - segment.max_timestamp > retention_ms
            oversize = retention_bytes >= 0 and remaining - segment.size >= retention_bytes
            if not (expired or oversize):
                break
            expected += 1
            remaining -= segment.size

        assert log.delete_old_segments() == expected
        after = log.segments()
        assert after == before[expected:]
        assert after[-1] is before[-1]
        assert log.size_bytes == remaining
        start = after[0].base_offset
        assert log.log_start_offset == start
        assert read_rows(log, start) == model.rows[start:]
        assert log.delete_old_segments() == 0  # nothing changed: nothing more to delete
        log.close()
        names = {p.name for p in log_files(directory)}
        assert names == {fmt.offset_file_name(s.base_offset, fmt.LOG_SUFFIX) for s in after}


# --- 5. rolling ---------------------------------------------------------------------------------


def batch_of_size(size: int, tag: str, timestamp: int) -> bytes:
    """One single-record batch of exactly `size` bytes (value padded to fit)."""
    empty = len(encode_batch(make_records(tag, 1, value_size=0, timestamps=timestamp)))
    for value_size in range(size - empty, max(size - empty - 4, -1), -1):
        data = encode_batch(make_records(tag, 1, value_size=value_size, timestamps=timestamp))
        if len(data) == size:
            return data
    raise AssertionError(f"no batch of exactly {size} bytes")


def test_roll_by_segment_bytes_happens_exactly_at_the_limit(tmp_path: Path) -> None:
    log = open_log(tmp_path, {"segment.bytes": 1024, "index.interval.bytes": 100})
    for i in range(4):  # 4 x 256 bytes fill the segment exactly
        log.append(batch_of_size(256, f"q{i}", 1_000))
    assert segment_layout(log) == [(0, 4, 1024)]
    log.append(batch_of_size(256, "q4", 1_000))
    assert segment_layout(log) == [(0, 4, 1024), (4, 5, 256)]
    big = encode_batch(make_records("big", 2, value_size=1_500))
    assert len(big) > 1024
    log.append(big)  # too big for the active segment: a new one takes it alone
    assert segment_layout(log)[-1] == (5, 7, len(big))
    log.append(batch_of_size(256, "q5", 1_000))
    assert segment_layout(log)[-1] == (7, 8, 256)
    log.close()


def test_roll_by_segment_ms(tmp_path: Path, clock: ManualClock) -> None:
    props = {"segment.bytes": 1_000_000, "segment.ms": 1_000}
    log = open_log(tmp_path, props, clock=clock)
    log.append(encode_batch(make_records("a", 1, timestamps=clock.now_ms())))
    clock.advance(1_000)  # exactly segment.ms old: not yet
    log.append(encode_batch(make_records("b", 1, timestamps=clock.now_ms())))
    assert log.segment_count == 1
    clock.advance(1)
    log.append(encode_batch(make_records("c", 1, timestamps=clock.now_ms())))
    assert [s.base_offset for s in log.segments()] == [0, 2]
    clock.advance(500)
    log.append(encode_batch(make_records("d", 1, timestamps=clock.now_ms())))
    assert log.segment_count == 2
    log.close()

    # after a restart the age counts from the first batch of the active segment
    reopened = open_log(tmp_path, props, clock=clock, clean=True)
    clock.advance(400)  # 900 ms after the active segment's first batch
    reopened.append(encode_batch(make_records("e", 1, timestamps=clock.now_ms())))
    assert reopened.segment_count == 2
    clock.advance(101)
    reopened.append(encode_batch(make_records("f", 1, timestamps=clock.now_ms())))
    assert [s.base_offset for s in reopened.segments()] == [0, 2, 5]
    reopened.close()


def test_roll_by_time_does_not_happen_on_an_empty_segment(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = open_log(tmp_path, {"segment.ms": 10}, clock=clock)
    clock.advance(1_000)
    log.append(encode_batch(make_records("a", 1, timestamps=clock.now_ms())))
    assert segment_layout(log)[0][:2] == (0, 1)
    assert log.segment_count == 1
    log.roll()
    log.roll()  # the new segment is empty: no second roll
    assert [s.base_offset for s in log.segments()] == [0, 1]
    log.close()


def test_a_full_index_rolls_the_segment(tmp_path: Path) -> None:
    props = {"segment.bytes": 10_000_000, "index.interval.bytes": 0, "segment.index.bytes": 4096}
    log = open_log(tmp_path, props)
    model = LogModel()
    for i in range(400):  # the time index holds 341 entries of 12 bytes
        model.append(log, [make_records(f"x{i}", 1, value_size=1, timestamps=1_000 + i)])
    assert log.segment_count == 2
    assert read_rows(log, 0) == model.rows
    log.close()


def test_a_multi_batch_append_near_a_full_index_keeps_the_log_consistent(tmp_path: Path) -> None:
    props = {"segment.bytes": 10_000_000, "index.interval.bytes": 0, "segment.index.bytes": 4096}
    log = open_log(tmp_path, props)
    model = LogModel()
    for i in range(341):  # 340 time index entries: one slot left
        model.append(log, [make_records(f"x{i}", 1, value_size=1, timestamps=1_000 + i)])
    assert log.segment_count == 1
    batches = [make_records(f"y{j}", 1, value_size=1, timestamps=5_000 + j) for j in range(3)]
    model.append(log, batches)  # needs three index entries
    model.append(log, [make_records("z", 1, value_size=1, timestamps=9_000)])
    assert log.log_end_offset == model.end
    assert read_rows(log, 0) == model.rows
    log.close()


# --- 6. flushing --------------------------------------------------------------------------------


def test_flush_messages_one_flushes_every_append(tmp_path: Path) -> None:
    log = open_log(tmp_path, {**SMALL, "flush.messages": 1})
    model = LogModel()
    for i in range(20):
        model.append(log, [make_records(f"m{i}", 1 + i % 3)])
        assert log.recovery_point == log.log_end_offset == model.end
    log.close()


def test_flush_messages_counts_messages(tmp_path: Path) -> None:
    log = open_log(tmp_path, {"flush.messages": 5})
    model = LogModel()
    model.append(log, [make_records("a", 3)])
    assert log.recovery_point == 0
    model.append(log, [make_records("b", 1)])
    assert log.recovery_point == 0
    model.append(log, [make_records("c", 2)])  # 6 messages >= 5
    assert log.recovery_point == 6
    model.append(log, [make_records("d", 1)])
    assert log.recovery_point == 6
    log.close()


def test_default_config_flushes_only_when_asked(tmp_path: Path) -> None:
    log = open_log(tmp_path, {"segment.bytes": 1_000_000})
    model = LogModel()
    fill(log, model, 10)
    assert log.recovery_point == 0 < log.log_end_offset
    log.flush()
    assert log.recovery_point == log.log_end_offset
    fill(log, model, 3, tag="g")
    assert log.recovery_point < log.log_end_offset
    log.flush_up_to(log.recovery_point)  # already durable: nothing to do
    log.flush()
    assert log.recovery_point == log.log_end_offset
    log.close()


def test_a_roll_makes_the_sealed_segment_durable(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    model = LogModel()
    fill(log, model, 40)
    assert log.segment_count >= 2
    assert log.recovery_point == log.segments()[-1].base_offset
    log.close()


def test_maybe_flush_by_time(tmp_path: Path, clock: ManualClock) -> None:
    log = open_log(tmp_path, {"flush.ms": 1_000}, clock=clock)
    model = LogModel()
    fill(log, model, 3)
    clock.advance(999)
    assert not log.maybe_flush_by_time()
    assert log.recovery_point == 0
    clock.advance(1)
    assert log.maybe_flush_by_time()
    assert log.recovery_point == log.log_end_offset
    clock.advance(5_000)
    assert not log.maybe_flush_by_time()  # nothing new to flush
    fill(log, model, 1, tag="late")
    assert log.recovery_point < log.log_end_offset
    assert log.maybe_flush_by_time()  # 5 s since the last flush
    assert log.recovery_point == log.log_end_offset
    log.close()


# --- 7. LogAppendTime ---------------------------------------------------------------------------


def check_stamped(log: PartitionLog, stamps: list[int]) -> None:
    """Every batch is a LogAppendTime batch with a valid CRC, stamped as `stamps` says."""
    data = b"".join(log.read(s.base_offset, 1 << 20).data for s in log.segments())
    position = 0
    for _ in range(len(stamps)):
        if position >= len(data):
            break
        batch = decode_batch(data, position)  # validates the recomputed CRC
        header = batch.header
        assert header.timestamp_type == fmt.TIMESTAMP_TYPE_LOG_APPEND_TIME
        assert header.max_timestamp == stamps[header.base_offset]
        assert all(r.timestamp == header.max_timestamp for r in batch.records)
        position += header.size
    assert position == len(data)
    assert [r.timestamp for r in decode_all(data)] == stamps


def test_log_append_time_stamps_batches_with_the_clock(tmp_path: Path, clock: ManualClock) -> None:
    props = {**SMALL, "message.timestamp.type": "LogAppendTime"}
    log = open_log(tmp_path, props, clock=clock)
    stamps: list[int] = []
    for i in range(30):
        records = make_records(f"l{i}", 1 + i % 3, timestamps=[5 + j for j in range(1 + i % 3)])
        batches = [records, make_records(f"l{i}b", 2, timestamps=7)] if i % 4 == 0 else [records]
        result = log.append(b"".join(encode_batch(b) for b in batches))
        assert result.log_append_time == clock.now_ms()
        stamps.extend([clock.now_ms()] * sum(len(b) for b in batches))
        clock.advance(3)
    assert log.segment_count > 1
    check_stamped(log, stamps)
    log.close()

    reopened = open_log(tmp_path, props, clock=clock, recovery_point=0)
    assert reopened.recovery_report.truncated_bytes == 0  # every CRC still checks out
    check_stamped(reopened, stamps)
    target = stamps[10]
    assert reopened.find_offset_by_timestamp(target) == (stamps.index(target), target)
    assert reopened.find_offset_by_timestamp(stamps[-1] + 1) is None
    reopened.close()


def test_create_time_keeps_producer_timestamps(tmp_path: Path, clock: ManualClock) -> None:
    log = open_log(tmp_path, SMALL, clock=clock)
    result = log.append(encode_batch(make_records("c", 3, timestamps=[30, 10, 20])))
    assert result.log_append_time == -1
    batch = decode_batch(log.read(0, 1_000).data)
    assert batch.header.timestamp_type == fmt.TIMESTAMP_TYPE_CREATE_TIME
    assert [r.timestamp for r in batch.records] == [30, 10, 20]
    assert batch.header.max_timestamp == 30
    log.close()


# --- 8. idempotent producers --------------------------------------------------------------------

PID = 4_242


def producer_batch(seq: int, count: int, *, epoch: int = 0, pid: int = PID, ts: int = 1) -> bytes:
    records = make_records(f"p{pid}e{epoch}s{seq}", count, timestamps=ts)
    return encode_batch(records, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def produce(
    log: PartitionLog, count: int, sizes: Sequence[int] = (2, 1, 3)
) -> list[tuple[int, bytes, int, int]]:
    """Append `count` idempotent batches; return (sequence, bytes, base, last) of each."""
    sent = []
    seq = 0
    for i in range(count):
        n = sizes[i % len(sizes)]
        data = producer_batch(seq, n)
        result = log.append(data)
        assert not result.duplicate
        sent.append((seq, data, result.base_offset, result.last_offset))
        seq += n
        log.append(encode_batch(make_records(f"plain{i}", 1)))  # interleaved, not idempotent
    return sent


def test_a_retried_batch_returns_the_original_offsets(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    sent = produce(log, 8)
    end, size = log.log_end_offset, log.size_bytes
    for _, data, base, last in sent[-5:]:
        result = log.append(data)
        assert (result.base_offset, result.last_offset, result.duplicate) == (base, last, True)
    assert (log.log_end_offset, log.size_bytes) == (end, size)
    with pytest.raises(OutOfOrderSequenceError):
        log.append(sent[-6][1])  # older than the last five: no longer recognised
    assert (log.log_end_offset, log.size_bytes) == (end, size)
    log.close()


@pytest.mark.parametrize("clean", [True, False])
def test_retries_are_recognised_after_a_restart(tmp_path: Path, clean: bool) -> None:
    log = open_log(tmp_path, {"segment.bytes": 1024, "index.interval.bytes": 64})
    sent = produce(log, 20)
    assert log.segment_count > 2
    log.close()
    reopened = open_log(tmp_path, {"segment.bytes": 1024, "index.interval.bytes": 64}, clean=clean)
    end = reopened.log_end_offset
    for _, data, base, last in sent[-5:]:
        result = reopened.append(data)
        assert (result.base_offset, result.last_offset, result.duplicate) == (base, last, True)
    assert reopened.log_end_offset == end
    next_seq = next_sequence_after(sent)
    with pytest.raises(OutOfOrderSequenceError):
        reopened.append(producer_batch(next_seq + 1, 1))
    result = reopened.append(producer_batch(next_seq, 2))
    assert (result.base_offset, result.duplicate) == (end, False)
    reopened.close()


def test_retries_are_recognised_after_a_crash_without_the_final_snapshot(tmp_path: Path) -> None:
    props = {"segment.bytes": 1024, "index.interval.bytes": 64}
    log = open_log(tmp_path, props)
    sent = produce(log, 20)
    active = log.segments()[-1]
    log.close()
    # a crash image: no snapshot at the log end, the active index preallocated with zeros
    newest = max(list_snapshot_offsets(tmp_path))
    (tmp_path / fmt.offset_file_name(newest, fmt.SNAPSHOT_SUFFIX)).unlink()
    for path, full in ((active.offset_index.path, 4096), (active.time_index.path, 4092)):
        with open(path, "ab") as file:
            file.write(bytes(full - path.stat().st_size))
    reopened = open_log(tmp_path, props, recovery_point=active.base_offset)
    assert reopened.recovery_report.truncated_bytes == 0
    assert reopened.log_end_offset == log.log_end_offset
    for _, data, base, last in sent[-5:]:
        result = reopened.append(data)
        assert (result.base_offset, result.last_offset, result.duplicate) == (base, last, True)
    reopened.close()


def next_sequence_after(sent: list[tuple[int, bytes, int, int]]) -> int:
    seq, _, base, last = sent[-1]
    return seq + last - base + 1


def test_a_torn_idempotent_batch_can_be_sent_again(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    sent = produce(log, 5)
    seq = next_sequence_after(sent)
    last = log.append(producer_batch(seq, 2))
    active = log.segments()[-1]
    log.close()
    content = active.log_path.read_bytes()
    active.log_path.write_bytes(content[:-7])  # tear the final batch
    reopened = open_log(tmp_path, SMALL, recovery_point=0)
    assert reopened.recovery_report.truncated_bytes == len(producer_batch(seq, 2)) - 7
    assert reopened.log_end_offset == last.base_offset
    with pytest.raises(OutOfOrderSequenceError):
        reopened.append(producer_batch(seq + 2, 1))  # the torn batch's sequences are free
    again = reopened.append(producer_batch(seq, 2))
    assert (again.base_offset, again.duplicate) == (last.base_offset, False)
    assert reopened.append(producer_batch(seq, 2)).duplicate
    reopened.close()


def test_out_of_order_sequences_and_fenced_epochs_are_rejected(tmp_path: Path) -> None:
    log = open_log(tmp_path, SMALL)
    log.append(producer_batch(0, 2, epoch=3))
    end, size = log.log_end_offset, log.size_bytes
    with pytest.raises(OutOfOrderSequenceError):
        log.append(producer_batch(3, 1, epoch=3))  # skips sequence 2
    with pytest.raises(OutOfOrderSequenceError):
        log.append(producer_batch(1, 1, epoch=3))  # repeats sequence 1 in a different batch
    with pytest.raises(InvalidProducerEpochError):
        log.append(producer_batch(2, 1, epoch=2))  # an older epoch is fenced
    with pytest.raises(OutOfOrderSequenceError):
        log.append(producer_batch(2, 1, epoch=4))  # a new epoch starts at 0
    assert (log.log_end_offset, log.size_bytes) == (end, size)
    assert log.append(producer_batch(2, 1, epoch=3)).base_offset == end
    assert log.append(producer_batch(0, 1, epoch=4)).base_offset == end + 1
    log.close()


def test_several_batches_from_an_idempotent_producer_in_one_append_are_refused(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path, SMALL)
    log.append(encode_batch(make_records("plain", 1)))
    for data in (
        producer_batch(0, 1) + producer_batch(1, 1),
        encode_batch(make_records("plain", 1)) + producer_batch(0, 1),
    ):
        with pytest.raises(InvalidRequestError):
            log.append(data)
    assert (log.log_end_offset, len(scan_bytes(log.read(0, 1_000).data))) == (1, 1)
    assert not log.append(producer_batch(0, 1)).duplicate
    log.close()


def test_a_retry_on_a_log_append_time_topic_reports_the_original_append_time(
    tmp_path: Path, clock: ManualClock
) -> None:
    log = open_log(tmp_path, {**SMALL, "message.timestamp.type": "LogAppendTime"}, clock=clock)
    first = log.append(producer_batch(0, 2))
    clock.advance(50)
    retry = log.append(producer_batch(0, 2))
    assert retry.duplicate
    assert (retry.base_offset, retry.last_offset) == (first.base_offset, first.last_offset)
    assert retry.log_append_time == first.log_append_time
    log.close()


# --- 9. bad input never reaches the log ---------------------------------------------------------


def with_crc(data: bytearray) -> bytes:
    struct.pack_into(">I", data, fmt.CRC_OFFSET, crc32c.crc32c(bytes(data[fmt.CRC_COVERED_FROM :])))
    return bytes(data)


def bad_inputs() -> Iterator[tuple[str, bytes, type[Exception]]]:
    """(name, bytes, the error `append` must raise) for each kind of malformed input."""
    good = encode_batch(make_records("ok", 3, value_size=50))
    flipped = bytearray(good)
    flipped[-5] ^= 0x01
    yield "bad crc", bytes(flipped), CorruptRecordError
    magic = bytearray(good)
    magic[fmt.MAGIC_OFFSET] = 1
    yield "wrong magic", bytes(magic), CorruptRecordError
    yield "truncated", good[:-4], CorruptRecordError
    yield "header only", good[: fmt.BATCH_HEADER_SIZE - 1], CorruptRecordError
    yield "empty", b"", CorruptRecordError
    yield "good then junk", good + b"\x00" * 70, CorruptRecordError
    yield "good then torn", good + good[:-1], CorruptRecordError
    count = bytearray(good)
    struct.pack_into(">i", count, fmt.RECORD_COUNT_OFFSET, 4)
    yield "record count", with_crc(count), CorruptRecordError
    length = bytearray(good)
    struct.pack_into(">i", length, fmt.BATCH_LENGTH_OFFSET, 10)
    yield "short length", bytes(length), CorruptRecordError
    for undefined in (5, 7):  # Kafka defines codecs 0-4 only
        codec = bytearray(good)
        struct.pack_into(">h", codec, fmt.ATTRIBUTES_OFFSET, undefined)
        yield f"codec {undefined}", with_crc(codec), UnsupportedCompressionError
    big = encode_batch(make_records("big", 2, value_size=600))
    yield "too large", big, RecordTooLargeError
    yield "good then too large", good + big, RecordTooLargeError


@pytest.mark.parametrize(
    ("data", "error"), [pytest.param(data, error, id=name) for name, data, error in bad_inputs()]
)
def test_bad_input_is_rejected_and_leaves_the_log_untouched(
    tmp_path: Path, data: bytes, error: type[Exception]
) -> None:
    props = {"segment.bytes": 1024, "max.message.bytes": 1_000}
    log = open_log(tmp_path, props)
    model = LogModel()
    fill(log, model, 12)
    state = (log.log_end_offset, log.size_bytes, segment_layout(log))
    files = {p.name: p.read_bytes() for p in log_files(tmp_path)}
    with pytest.raises(error):
        log.append(data)
    assert (log.log_end_offset, log.size_bytes, segment_layout(log)) == state
    assert {p.name: p.read_bytes() for p in log_files(tmp_path)} == files
    model.append(log, [make_records("after", 2)])
    assert read_rows(log, 0) == model.rows
    log.close()


def with_records_section(batch: bytes, section: bytes) -> bytes:
    """`batch` with its records section replaced by `section`; length and CRC fixed."""
    out = bytearray(batch[: fmt.RECORDS_OFFSET] + section)
    struct.pack_into(">i", out, fmt.BATCH_LENGTH_OFFSET, len(out) - fmt.LOG_OVERHEAD)
    return with_crc(out)


@pytest.mark.parametrize(
    "codec",
    [fmt.CODEC_GZIP, fmt.CODEC_SNAPPY, fmt.CODEC_LZ4, fmt.CODEC_ZSTD],
    ids=["gzip", "snappy", "lz4", "zstd"],
)
def test_batches_of_every_kafka_codec_are_stored_as_they_came(tmp_path: Path, codec: int) -> None:
    """The log checks a compressed batch's header and CRC and copies its bytes; it never
    inflates it. So records compressed wrongly under a valid CRC are stored as well (and
    the reader refuses them, naming the codec)."""
    log = open_log(tmp_path)
    records = make_records("c", 5, value_size=300)
    good = encode_batch(records, codec=codec)
    damaged = with_records_section(good, b"never compressed")
    log.append(good)
    log.append(damaged)
    data = log.read(0, 1 << 20).data
    first, second = read_header(data), read_header(data, len(good))
    assert [first.base_offset, second.base_offset] == [0, 5]
    assert first.codec == second.codec == codec
    # byte for byte from the magic on: only the base offset and leader epoch are stamped
    assert data[fmt.MAGIC_OFFSET : len(good)] == good[fmt.MAGIC_OFFSET :]
    assert data[len(good) + fmt.MAGIC_OFFSET :] == damaged[fmt.MAGIC_OFFSET :]
    assert [r.value for r in decode_batch(data).records] == [r[1] for r in records]
    with pytest.raises(CorruptRecordError, match=f"{fmt.CODEC_NAMES[codec]}-compressed"):
        decode_batch(data, len(good))
    log.close()


# --- 10. concurrent appends and reads -----------------------------------------------------------

WRITERS = 4
BATCHES_PER_WRITER = 50
READERS = 2
JOIN_TIMEOUT_S = 60
#: reads per reader; an empty read sleeps 1 ms, so this also bounds a reader's time
MAX_READS = 20_000
#: rolls while a reader fetches the newest record
ROLLS_UNDER_READS = 150


def test_concurrent_appends_and_reads(tmp_path: Path) -> None:
    log = open_log(tmp_path, {"segment.bytes": 1024, "index.interval.bytes": 64})
    errors: list[str] = []
    done = threading.Event()
    seen: list[list[Row]] = [[] for _ in range(READERS)]

    def writer(w: int) -> None:
        try:
            for i in range(BATCHES_PER_WRITER):
                log.append(encode_batch(make_records(f"w{w}.{i}", 1 + (w + i) % 3)))
        except BaseException as exc:  # reported below
            errors.append("".join(traceback.format_exception(exc)))

    def reader(r: int) -> None:
        next_offset = 0
        try:
            for _ in range(MAX_READS):
                finished = done.is_set()
                fetch = log.read(next_offset, 300 + 100 * r)
                rows = rows_from(decode_all(fetch.data))
                fresh = [row for row in rows if row[0] >= next_offset]
                assert [row[0] for row in fresh] == list(
                    range(next_offset, next_offset + len(fresh))
                )
                seen[r].extend(fresh)
                next_offset += len(fresh)
                # also fetch the newest record, as a consumer starting at the end would
                latest = log.log_end_offset - 1
                if latest >= 0:
                    newest = rows_from(decode_all(log.read(latest, 1).data))
                    assert newest and newest[0][0] <= latest <= newest[-1][0]
                if finished and next_offset == log.log_end_offset:
                    return
                if not fresh:
                    time.sleep(0.001)
            raise AssertionError("reader did not catch up")
        except BaseException as exc:  # reported below
            errors.append("".join(traceback.format_exception(exc)))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    readers = [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so appends and reads interleave
    try:
        for thread in threads + readers:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
        done.set()
        for thread in readers:
            thread.join(JOIN_TIMEOUT_S)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not any(t.is_alive() for t in threads + readers), "a thread did not finish"
    assert not errors, "\n".join(errors[:2])

    total = sum(1 + (w + i) % 3 for w in range(WRITERS) for i in range(BATCHES_PER_WRITER))
    assert log.log_end_offset == total
    assert log.segment_count > 3
    rows = read_rows(log, 0)
    assert [row[0] for row in rows] == list(range(total))
    keys = [row[1] for row in rows]
    assert len(set(keys)) == total
    for w in range(WRITERS):
        mine = [k for k in keys if k is not None and k.startswith(f"w{w}.".encode())]
        order = [int(k.split(b".")[1].split(b"/")[0]) for k in mine]
        assert order == sorted(order), f"writer {w}'s batches are out of order"
    for r in range(READERS):
        assert seen[r] == rows, f"reader {r} saw something other than the final log"
    log.close()


def test_reads_of_the_newest_record_while_segments_roll(tmp_path: Path) -> None:
    """A consumer fetching the newest record while the log rolls (sealing the segment it
    reads) gets that record every time."""
    log = open_log(tmp_path, {"segment.bytes": 1_000_000, "index.interval.bytes": 0})
    errors: list[str] = []
    done = threading.Event()

    def reader() -> None:
        try:
            for _ in range(MAX_READS * 10):
                if done.is_set():
                    return
                latest = log.log_end_offset - 1
                if latest >= 0:
                    rows = rows_from(decode_all(log.read(latest, 1).data))
                    assert rows and rows[0][0] <= latest <= rows[-1][0]
        except BaseException as exc:  # reported below
            errors.append("".join(traceback.format_exception(exc)))

    thread = threading.Thread(target=reader)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        thread.start()
        for i in range(ROLLS_UNDER_READS):
            if errors:
                break
            for j in range(4):
                log.append(encode_batch(make_records(f"r{i}.{j}", 1)))
            log.roll()
        done.set()
        thread.join(JOIN_TIMEOUT_S)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not thread.is_alive()
    assert not errors, errors[0]
    log.close()


class _PausedAppend(Exception):
    """What a probe read found wrong, raised in the appending thread at the store it ran after."""


def _probed_segment_class(probe: Callable[[], None]) -> type[LogSegment]:
    """A real LogSegment that calls `probe` after each store to one of its attributes: a
    reader that runs at every point between the steps of an append, roll or open."""

    class ProbedSegment(LogSegment):
        def __setattr__(self, name: str, value: object) -> None:
            super().__setattr__(name, value)
            probe()

    return ProbedSegment


def _check_reads_stay_below_the_log_end(log: PartitionLog, offset: int, max_bytes: int) -> None:
    """What a consumer at `offset` does, with the log frozen mid-append: every read returns
    only batches below the log end offset it reports, and reading on from them never finds
    an offset out of range."""
    fetch = log.read(offset, max_bytes)
    batches = scan_bytes(fetch.data)
    after = batches[-1][1].next_offset if batches else offset
    if after > fetch.high_watermark:
        raise _PausedAppend(
            f"read({offset}, {max_bytes}) returned offsets up to {after - 1} but reported "
            f"the log end {fetch.high_watermark}"
        )
    assert log.offset_after_read(offset, max_bytes) == after
    log.read(after, max_bytes)  # OffsetOutOfRangeError if `after` is past the log end
    consumer = log.read(offset, max_bytes, max_offset=fetch.high_watermark)
    assert consumer.data == fetch.data


@PROPERTY
@given(
    appends=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3), min_size=1, max_size=12),
    max_bytes=st.integers(0, 1_500),
    roll_every=st.integers(1, 6),
)
def test_a_read_during_any_step_of_an_append_stays_below_the_log_end_it_reports(
    appends: list[list[int]], max_bytes: int, roll_every: int
) -> None:
    """A lock-free read that runs between any two stores of an append (or a roll) gets
    whole batches below the log end offset it reports, so the consumer's next read is in
    range. The segment's size and next offset were once stored one after the other, and a
    read between the two returned batches past the log end it reported; the next read then
    failed with OffsetOutOfRangeError (a consumer resets its position on that)."""
    log: PartitionLog | None = None
    armed = False  # from the first append until close (a closed log is not read)
    cursor = 0

    def probe() -> None:
        nonlocal armed
        if log is None or not armed:
            return
        armed = False  # the probe's own reads are not probed
        try:
            newest = max(log.log_start_offset, log.log_end_offset - 1)
            for offset in sorted({log.log_start_offset, cursor, newest}):
                for limit in (max_bytes, 1 << 20):
                    _check_reads_stay_below_the_log_end(log, offset, limit)
        finally:
            armed = True

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(partition_log, "LogSegment", _probed_segment_class(probe))
        log = open_log(Path(tmp), {"segment.bytes": 1024, "index.interval.bytes": 64})
        assert type(log.segments()[0]).__name__ == "ProbedSegment"
        armed = True
        for i, counts in enumerate(appends):
            data = b"".join(
                encode_batch(make_records(f"a{i}.{j}", n)) for j, n in enumerate(counts)
            )
            log.append(data)
            if i % roll_every == roll_every - 1:
                log.roll()
            cursor = log.offset_after_read(cursor, max_bytes)
        armed = False
        assert log.log_end_offset == sum(map(sum, appends))
        log.close()


def test_reads_between_the_stores_of_an_append_were_caught(tmp_path: Path) -> None:
    """The probe above can fail: a segment that publishes its size before its next offset
    (as LogSegment once did) lets a read return batches past the log end it reports."""

    class SizeFirstSegment(LogSegment):
        def append(
            self, buffers: Sequence[bytes | memoryview], headers: Sequence[BatchHeader]
        ) -> int:
            _, old_next_offset = self.end
            position = super().append(buffers, headers)
            new = self.end
            self._end = (new[0], old_next_offset)  # the size first ...
            probe()
            self._end = new  # ... then the offsets
            return position

    log: PartitionLog | None = None
    found: list[str] = []

    def probe() -> None:
        assert log is not None
        try:
            _check_reads_stay_below_the_log_end(log, 0, 1 << 20)
        except _PausedAppend as exc:
            found.append(str(exc))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(partition_log, "LogSegment", SizeFirstSegment)
        log = open_log(tmp_path)
        log.append(encode_batch(make_records("a", 2)))
        log.append(encode_batch(make_records("b", 3)))
    # the first append: nothing below the old log end 0 to read, so nothing past it either
    assert found == ["read(0, 1048576) returned offsets up to 4 but reported the log end 2"]
    log.close()


# --- regressions from review ----------------------------------------------------------------


def test_lowering_max_message_bytes_never_cuts_stored_batches_on_recovery(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    log.append(encode_batch(make_records("small", 1)))
    log.append(encode_batch(make_records("big", 1, value_size=50_000)))
    log.append(encode_batch(make_records("after", 3)))
    log.flush()
    end = log.log_end_offset
    log.config = LogConfig.from_properties({"max.message.bytes": 1_000})
    # no close(): as after kill -9, the next open validates the tail
    reopened = open_log(tmp_path, {"max.message.bytes": 1_000}, clean=False)
    assert reopened.log_end_offset == end
    assert reopened.recovery_report.truncated_bytes == 0
    reopened.close()


def test_an_epoch_that_went_back_after_expiry_does_not_stop_recovery(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(producer_batch(0, 1, epoch=1, ts=0))
    assert log.expire_producers(now_ms=10**12, expiration_ms=1) == 1
    log.append(producer_batch(0, 1, epoch=0, ts=10**12))  # accepted: the state expired
    log.flush()
    reopened = open_log(tmp_path, clean=False)
    assert reopened.log_end_offset == 2
    retry = reopened.append(producer_batch(0, 1, epoch=0, ts=10**12))
    assert retry.duplicate and retry.base_offset == 1
    reopened.close()


def test_a_read_holding_a_deleted_segment_still_reads_its_own_bytes(tmp_path: Path) -> None:
    clock = ManualClock()
    log = open_log(
        tmp_path,
        {"segment.bytes": 1024, "retention.ms": 1, "file.delete.delay.ms": 0},
        clock=clock,
    )
    for i in range(20):
        log.append(encode_batch(make_records(f"r{i}", 4, timestamps=clock.now_ms())))
    held = log.segments()[0]  # as a lock-free read would hold it
    expected = held.read_bytes(0, held.size)
    clock.advance(1_000)
    assert log.delete_old_segments() > 0
    opened = [open(tmp_path / f"other-{i}", "wb+") for i in range(8)]  # noqa: SIM115
    try:
        for f in opened:
            f.write(b"\xff" * 4096)
            f.flush()
        assert held.read_bytes(0, held.size) == expected  # not another file's bytes
    finally:
        for f in opened:
            f.close()
    log.close()

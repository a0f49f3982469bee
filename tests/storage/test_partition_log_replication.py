"""PartitionLog in a cluster: leader epochs stamped into batches and kept in the epoch cache,
follower appends byte for byte, truncation, the stored high watermark and bounded reads."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import (
    CorruptRecordError,
    InvalidRequestError,
    LogClosedError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
)
from logstore.storage.leader_epoch_checkpoint import LEADER_EPOCH_CHECKPOINT_FILE, EpochEntry
from logstore.storage.partition_log import PartitionLog
from logstore.storage.producer_state import list_snapshot_offsets
from tests.helpers import (
    expected_offset_index,
    log_files,
    make_config,
    make_records,
    scan_bytes,
    scan_file,
)

PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INTERVAL = 128
SMALL: Mapping[str, int | str] = {"segment.bytes": 1024, "index.interval.bytes": INTERVAL}
PID = 7_001
#: upper bound on fetch rounds when a follower copies a leader (each round gains a batch)
MAX_FETCH_ROUNDS = 10_000


def open_log(
    directory: Path,
    props: Mapping[str, int | str] | None = None,
    *,
    replicated: bool = True,
    clean: bool = True,
    high_watermark: int | None = None,
    clock: ManualClock | None = None,
) -> PartitionLog:
    return PartitionLog(
        directory,
        make_config({**SMALL, **(props or {})}),
        clock=clock or ManualClock(),
        clean_shutdown=clean,
        replicated=replicated,
        high_watermark=high_watermark,
    )


def batch(tag: str, count: int, ts: int = 1_000, value_size: int = 30) -> bytes:
    return rb.encode_batch(make_records(tag, count, value_size=value_size, timestamps=ts))


def producer_batch(seq: int, count: int, *, pid: int = PID, epoch: int = 0) -> bytes:
    records = make_records(f"p{pid}s{seq}", count, timestamps=2_000)
    return rb.encode_batch(records, producer_id=pid, producer_epoch=epoch, base_sequence=seq)


def log_bytes(log: PartitionLog) -> bytes:
    """The whole log as stored: every segment's .log, in order."""
    return b"".join(path.read_bytes() for path in log_files(log.directory))


def layout(log: PartitionLog) -> list[tuple[int, int, int]]:
    return [(s.base_offset, s.next_offset, s.size) for s in log.segments()]


def epochs(log: PartitionLog) -> list[tuple[int, int]]:
    return [(e.epoch, e.start_offset) for e in log.leader_epoch_cache.entries()]


def all_rows(log: PartitionLog) -> list[tuple[int, bytes | None]]:
    return [(r.offset, r.key) for r in rb.decode_all(log_bytes(log))]


def check_indexes_agree_with_a_scan(log: PartitionLog) -> None:
    """Offset index entries follow the documented rule over the batches in each .log, and
    every timestamp lookup finds what a linear scan of the records finds."""
    records = rb.decode_all(log_bytes(log))
    for segment in log.segments():
        view = segment.offset_index.entries_view()
        entries = [(segment.base_offset + int(r), int(p)) for r, p in view.tolist()]
        del view
        assert entries == expected_offset_index(scan_file(segment.log_path), INTERVAL)
    for target in sorted({r.timestamp for r in records} | {0, 10**15}):
        expected = next(((r.offset, r.timestamp) for r in records if r.timestamp >= target), None)
        assert log.find_offset_by_timestamp(target) == expected, target


def check_every_batch_is_valid(log: PartitionLog) -> list[rb.BatchHeader]:
    """split_batches (CRC and framing) passes over every segment; return all headers."""
    headers: list[rb.BatchHeader] = []
    for path in log_files(log.directory):
        data = path.read_bytes()
        if data:
            headers.extend(rb.split_batches(data))
    return headers


def copy_to_follower(
    leader: PartitionLog, follower: PartitionLog, fetch_sizes: st.DataObject | int
) -> None:
    """Fetch from the leader (no bound: a follower's read) and append as a follower, until
    the follower's log end offset reaches the leader's."""
    for _ in range(MAX_FETCH_ROUNDS):
        offset = follower.log_end_offset
        if offset >= leader.log_end_offset:
            return
        size = (
            fetch_sizes
            if isinstance(fetch_sizes, int)
            else fetch_sizes.draw(st.integers(1, 3_000), label="fetch bytes")
        )
        data = leader.read(offset, size).data
        result = follower.append_as_follower(data)
        assert result.base_offset == offset
        assert result.last_offset == follower.log_end_offset - 1
    raise AssertionError("the follower did not catch up")


# --- 1. the leader stamps its epoch ---------------------------------------------------------

appends = st.lists(
    st.tuples(st.integers(0, 3), st.lists(st.integers(1, 4), min_size=1, max_size=3)),
    min_size=1,
    max_size=25,
)


@PROPERTY
@given(plan=appends, append_time=st.booleans())
def test_append_with_a_leader_epoch_stamps_every_batch_and_keeps_crcs_valid(
    plan: list[tuple[int, list[int]]], append_time: bool
) -> None:
    props = {"message.timestamp.type": "LogAppendTime"} if append_time else {}
    with tempfile.TemporaryDirectory() as tmp:
        log = open_log(Path(tmp), props)
        epoch = 0
        expected_epochs: list[tuple[int, int]] = []
        stamped: list[tuple[int, int]] = []  # (base offset, epoch) per batch
        for i, (bump, counts) in enumerate(plan):
            epoch += bump
            data = b"".join(batch(f"a{i}.{j}", n) for j, n in enumerate(counts))
            result = log.append(data, leader_epoch=epoch)
            if not expected_epochs or expected_epochs[-1][0] != epoch:
                expected_epochs.append((epoch, result.base_offset))
            offset = result.base_offset
            for n in counts:
                stamped.append((offset, epoch))
                offset += n
        headers = check_every_batch_is_valid(log)
        assert [(h.base_offset, h.partition_leader_epoch) for h in headers] == stamped
        assert epochs(log) == expected_epochs
        assert (Path(tmp) / LEADER_EPOCH_CHECKPOINT_FILE).read_text().splitlines()[2:] == [
            f"{e} {o}" for e, o in expected_epochs
        ]
        log.close()
        reopened = open_log(Path(tmp), props, clean=False)
        assert epochs(reopened) == expected_epochs
        reopened.close()


def test_a_standalone_append_leaves_the_epoch_as_sent_and_writes_no_checkpoint(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path, replicated=False)
    sent = rb.encode_batch(make_records("s", 2), partition_leader_epoch=-1)
    log.append(sent)
    log.append(batch("t", 1))
    assert [h.partition_leader_epoch for h in check_every_batch_is_valid(log)] == [-1, -1]
    log.roll()
    log.delete_segments_before(log.log_end_offset)  # retention's path touches the cache too
    log.close()
    reopened = open_log(tmp_path, replicated=False, clean=False)
    assert epochs(reopened) == []
    assert not (tmp_path / LEADER_EPOCH_CHECKPOINT_FILE).exists()
    reopened.close()


def test_a_negative_leader_epoch_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    with pytest.raises(ValueError, match="leader epoch"):
        log.append(batch("x", 1), leader_epoch=-1)
    assert log.log_end_offset == 0
    log.close()


# --- 2. a follower copies the leader byte for byte ------------------------------------------


def fill_leader(leader: PartitionLog, plan: list[tuple[int, list[int]]]) -> None:
    """Appends of one or more plain batches, with an idempotent producer's batch among
    them, at rising leader epochs."""
    epoch = 0
    seq = 0
    for i, (bump, counts) in enumerate(plan):
        epoch += bump
        leader.append(
            b"".join(batch(f"l{i}.{j}", n) for j, n in enumerate(counts)), leader_epoch=epoch
        )
        if i % 3 == 0:
            leader.append(producer_batch(seq, 2), leader_epoch=epoch)
            seq += 2


@PROPERTY
@given(plan=appends, data=st.data())
def test_a_follower_fed_by_fetches_holds_exactly_the_leaders_bytes(
    plan: list[tuple[int, list[int]]], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        leader = open_log(Path(tmp) / "leader")
        follower = open_log(Path(tmp) / "follower")
        fill_leader(leader, plan)
        copy_to_follower(leader, follower, data)
        assert log_bytes(follower) == log_bytes(leader)
        assert epochs(follower) == epochs(leader)
        assert follower.producer_state.entry(PID) == leader.producer_state.entry(PID)
        for segment in follower.segments():  # split where segment.bytes demands
            assert segment.size <= 1024 or len(scan_file(segment.log_path)) == 1
        check_indexes_agree_with_a_scan(follower)
        follower.close()
        reopened = open_log(Path(tmp) / "follower", clean=False)
        assert log_bytes(reopened) == log_bytes(leader)
        assert epochs(reopened) == epochs(leader)
        reopened.close()
        leader.close()


def test_a_producer_retrying_at_the_new_leader_is_recognised(tmp_path: Path) -> None:
    leader = open_log(tmp_path / "leader")
    follower = open_log(tmp_path / "follower")
    first = leader.append(producer_batch(0, 2), leader_epoch=0)
    leader.append(batch("plain", 1), leader_epoch=0)
    last = leader.append(producer_batch(2, 3), leader_epoch=0)
    copy_to_follower(leader, follower, 10_000)
    leader.close()
    # the follower is elected; the producer never heard back about its last batch
    retry = follower.append(producer_batch(2, 3), leader_epoch=1)
    assert retry.duplicate and (retry.base_offset, retry.last_offset) == (
        last.base_offset,
        last.last_offset,
    )
    older = follower.append(producer_batch(0, 2), leader_epoch=1)
    assert older.duplicate and older.base_offset == first.base_offset
    with pytest.raises(OutOfOrderSequenceError):
        follower.append(producer_batch(9, 1), leader_epoch=1)
    nxt = follower.append(producer_batch(5, 1), leader_epoch=1)
    assert not nxt.duplicate and nxt.base_offset == last.last_offset + 1
    assert epochs(follower) == [(0, 0), (1, nxt.base_offset)]
    follower.close()


def test_a_follower_refuses_batches_that_do_not_continue_its_log(tmp_path: Path) -> None:
    leader = open_log(tmp_path / "leader")
    for i in range(4):
        leader.append(batch(f"b{i}", 2), leader_epoch=3)
    follower = open_log(tmp_path / "follower")
    whole = leader.read(0, 1 << 20).data
    headers = scan_bytes(whole)
    second = whole[headers[1][0] :]
    with pytest.raises(
        InvalidRequestError, match=r"starts at offset 2, but the log end offset is 0"
    ):
        follower.append_as_follower(second)
    gap = whole[: headers[1][0]] + whole[headers[2][0] :]
    with pytest.raises(
        InvalidRequestError, match=r"starts at offset 4, but the previous batch's end is 2"
    ):
        follower.append_as_follower(gap)
    damaged = bytearray(whole)
    damaged[-1] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="CRC"):
        follower.append_as_follower(bytes(damaged))
    with pytest.raises(CorruptRecordError):
        follower.append_as_follower(b"")
    assert follower.log_end_offset == 0 and log_bytes(follower) == b""
    assert epochs(follower) == []
    follower.append_as_follower(memoryview(whole))
    assert log_bytes(follower) == log_bytes(leader)
    follower.close()
    with pytest.raises(LogClosedError):
        follower.append_as_follower(whole)
    leader.close()


def test_a_follower_takes_batches_compaction_thinned(tmp_path: Path) -> None:
    """A stored batch may hold fewer records than offsets; a follower copies it as is."""
    records = rb.decode_batch(batch("c", 3)).records
    header = rb.read_header(batch("c", 3))
    thinned = rb.rewrite_batch(header._replace(partition_leader_epoch=2), [records[2]])
    empty = rb.rewrite_batch(header._replace(base_offset=3, partition_leader_epoch=4), [])
    follower = open_log(tmp_path)
    follower.append_as_follower(thinned + empty)
    assert follower.log_end_offset == 6
    assert epochs(follower) == [(2, 0), (4, 3)]
    follower.close()


# --- 3. truncation ---------------------------------------------------------------------------


@PROPERTY
@given(
    counts=st.lists(st.integers(1, 4), min_size=1, max_size=30),
    extra=st.lists(st.integers(1, 4), max_size=12),
    data=st.data(),
)
def test_truncate_then_append_equals_a_log_that_only_ever_had_those_batches(
    counts: list[int], extra: list[int], data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = ManualClock()
        truncated = open_log(Path(tmp) / "t", clock=clock)
        batches = [batch(f"b{i}", n, ts=1_000 + 7 * i) for i, n in enumerate(counts)]
        for i, data_bytes in enumerate(batches):
            truncated.append(data_bytes, leader_epoch=i // 4)
        truncated.update_high_watermark(data.draw(st.integers(0, truncated.log_end_offset)))
        high_watermark = truncated.high_watermark
        keep = data.draw(st.integers(0, len(counts)), label="batches kept")
        cut = sum(counts[:keep])
        inside = keep < len(counts) and counts[keep] > 1 and data.draw(st.booleans())
        truncated.truncate_to(cut + 1 if inside else cut)
        assert truncated.log_end_offset == cut
        assert truncated.high_watermark == min(high_watermark, cut)
        assert all(o < cut for _, o in epochs(truncated))
        assert all(o <= cut for o in list_snapshot_offsets(Path(tmp) / "t"))
        new_epoch = (len(counts) - 1) // 4 + 1
        more = [batch(f"x{i}", n, ts=5_000 + i) for i, n in enumerate(extra)]
        for data_bytes in more:
            truncated.append(data_bytes, leader_epoch=new_epoch)

        fresh = open_log(Path(tmp) / "f", clock=clock)
        for i, data_bytes in enumerate(batches[:keep]):
            fresh.append(data_bytes, leader_epoch=i // 4)
        for data_bytes in more:
            fresh.append(data_bytes, leader_epoch=new_epoch)

        assert log_bytes(truncated) == log_bytes(fresh)
        assert layout(truncated) == layout(fresh)
        assert epochs(truncated) == epochs(fresh)
        check_indexes_agree_with_a_scan(truncated)
        state = layout(truncated), log_bytes(truncated), epochs(truncated)
        truncated.close()
        fresh.close()
        for clean in (True, False):
            reopened = open_log(Path(tmp) / "t", clean=clean, clock=clock)
            assert (layout(reopened), log_bytes(reopened), epochs(reopened)) == state
            assert reopened.recovery_report.truncated_bytes == 0
            check_indexes_agree_with_a_scan(reopened)
            reopened.close()


def test_truncating_inside_a_batch_drops_the_whole_batch(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 3), leader_epoch=0)
    log.append(batch("b", 3), leader_epoch=1)
    log.truncate_to(4)
    assert log.log_end_offset == 3
    assert epochs(log) == [(0, 0)]
    assert [k for _, k in all_rows(log)] == [b"a/0", b"a/1", b"a/2"]
    log.truncate_to(3)  # at the end: nothing to do
    log.truncate_to(99)
    assert log.log_end_offset == 3
    log.truncate_to(0)
    assert (log.log_start_offset, log.log_end_offset) == (0, 0)
    assert epochs(log) == [] and log.high_watermark == 0
    log.append(batch("c", 1), leader_epoch=2)
    assert all_rows(log) == [(0, b"c/0")]
    log.close()


def test_truncation_rebuilds_producer_state_from_what_is_left(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(producer_batch(0, 2), leader_epoch=0)
    for i in range(6):  # several segments, so producer snapshots exist
        log.append(batch(f"pad{i}", 3, value_size=200), leader_epoch=0)
    dropped = log.append(producer_batch(2, 2), leader_epoch=0)
    assert len(list_snapshot_offsets(tmp_path)) > 1
    log.truncate_to(dropped.base_offset)
    # the truncated batch is no longer known: sending it again appends it
    again = log.append(producer_batch(2, 2), leader_epoch=1)
    assert not again.duplicate and again.base_offset == dropped.base_offset
    assert log.append(producer_batch(0, 2), leader_epoch=1).duplicate
    log.close()


def test_a_crash_right_after_the_cut_opens_to_the_truncated_log(tmp_path: Path) -> None:
    """The files as a crash after cutting the .log could leave them: a later segment still
    there (its rename lost), the epoch checkpoint and producer snapshots not yet updated."""
    log = open_log(tmp_path / "live")
    for i in range(12):
        log.append(batch(f"b{i}", 2, value_size=150), leader_epoch=i // 3)
    log.flush()
    before = tmp_path / "before"
    shutil.copytree(tmp_path / "live", before)
    bases = [s.base_offset for s in log.segments()]
    assert len(bases) >= 3
    cut = bases[1] + 2
    log.truncate_to(cut)
    log.append(batch("new", 1), leader_epoch=9)
    expected = all_rows(log)
    log.flush()
    image = tmp_path / "image"
    shutil.copytree(tmp_path / "live", image)
    for name in (LEADER_EPOCH_CHECKPOINT_FILE, *(p.name for p in before.glob("*.snapshot"))):
        shutil.copy(before / name, image / name)
    last = fmt.offset_file_name(bases[-1], fmt.LOG_SUFFIX)
    shutil.copy(before / last, image / last)
    log.close()

    recovered = open_log(image, clean=False)
    assert all_rows(recovered) == expected
    assert recovered.log_end_offset == cut + 1
    assert all(o < recovered.log_end_offset for _, o in epochs(recovered))
    assert recovered.recovery_report.deleted_segments == 1
    recovered.append(batch("after", 1), leader_epoch=9)
    recovered.close()


def test_truncate_fully_starts_an_empty_log_at_the_leaders_start(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(8):
        log.append(batch(f"b{i}", 2, value_size=150), leader_epoch=1)
    log.update_high_watermark(10)
    log.truncate_fully_and_start_at(500)
    assert (log.log_start_offset, log.log_end_offset, log.high_watermark) == (500, 500, 500)
    assert epochs(log) == [] and log.recovery_point == 500
    assert [p.name for p in log_files(tmp_path)] == [fmt.offset_file_name(500, fmt.LOG_SUFFIX)]
    assert list_snapshot_offsets(tmp_path) == []
    assert log.read(500, 100).data == b""
    with pytest.raises(OffsetOutOfRangeError):
        log.read(0, 100)
    leader = open_log(tmp_path / "leader")
    leader.truncate_fully_and_start_at(500)
    leader.append(batch("l", 3), leader_epoch=4)
    log.append_as_follower(leader.read(500, 1 << 20).data)
    assert epochs(log) == [(4, 500)]
    log.close()
    reopened = open_log(tmp_path, clean=False)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (500, 503)
    assert epochs(reopened) == [(4, 500)]
    # a segment of the old log starting exactly there is replaced, not kept
    reopened.truncate_fully_and_start_at(500)
    assert (reopened.log_start_offset, reopened.log_end_offset) == (500, 500)
    reopened.truncate_to(500)  # at the end: a no-op
    reopened.close()
    leader.close()


def test_truncating_below_the_log_start_empties_the_log(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.truncate_fully_and_start_at(100)
    log.append(batch("a", 4), leader_epoch=1)
    log.truncate_to(50)
    assert (log.log_start_offset, log.log_end_offset) == (50, 50)
    with pytest.raises(ValueError):
        log.truncate_fully_and_start_at(-1)
    log.close()
    with pytest.raises(LogClosedError):
        log.truncate_to(0)


# --- 4. the leader epoch cache across opens -------------------------------------------------


def test_a_missing_or_corrupt_checkpoint_is_rebuilt_from_the_batches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log(tmp_path)
    for i in range(10):
        log.append(batch(f"b{i}", 2, value_size=100), leader_epoch=i // 3 * 2)
    expected = epochs(log)
    assert expected == [(0, 0), (2, 6), (4, 12), (6, 18)]
    log.close()
    checkpoint = tmp_path / LEADER_EPOCH_CHECKPOINT_FILE
    checkpoint.unlink()
    reopened = open_log(tmp_path)
    assert epochs(reopened) == expected and checkpoint.exists()
    reopened.close()
    checkpoint.write_text("0\n7\n1 1\n")
    with caplog.at_level(logging.WARNING):
        reopened = open_log(tmp_path)
    assert epochs(reopened) == expected
    assert any(LEADER_EPOCH_CHECKPOINT_FILE in r.getMessage() for r in caplog.records)
    reopened.close()


def test_recovery_of_a_torn_tail_drops_the_epochs_it_cut(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 2), leader_epoch=0)
    log.append(batch("b", 2), leader_epoch=3)
    log.close()
    path = log_files(tmp_path)[-1]
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 5)
    recovered = open_log(tmp_path, clean=False)
    assert recovered.log_end_offset == 2
    assert recovered.leader_epoch_cache.entries() == [EpochEntry(0, 0)]
    assert recovered.end_offset_for_leader_epoch(3) == (0, 2)
    recovered.close()


def test_end_offset_for_leader_epoch_answers_like_kafka(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    assert log.end_offset_for_leader_epoch(0) == (-1, -1)
    log.append(batch("a", 3), leader_epoch=1)
    log.append(batch("b", 2), leader_epoch=4)
    assert log.end_offset_for_leader_epoch(0) == (-1, -1)
    assert log.end_offset_for_leader_epoch(1) == (1, 3)
    assert log.end_offset_for_leader_epoch(3) == (1, 3)
    assert log.end_offset_for_leader_epoch(4) == (4, 5)
    log.append(batch("c", 1), leader_epoch=4)
    assert log.end_offset_for_leader_epoch(7) == (4, 6)
    log.close()


def test_retention_moves_the_first_epoch_to_the_new_log_start(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for i in range(10):
        log.append(batch(f"b{i}", 2, value_size=150), leader_epoch=i // 4)
    log.update_high_watermark(log.log_end_offset)
    bases = [s.base_offset for s in log.segments()]
    log.delete_segments_before(bases[2])
    start = log.log_start_offset
    assert start == bases[2]
    first = max(e for e, o in [(0, 0), (1, 8), (2, 16)] if o <= start)
    assert epochs(log)[0] == (first, start)
    log.close()
    assert epochs(open_log(tmp_path, clean=False))[0] == (first, start)


# --- 5. the high watermark ------------------------------------------------------------------


def test_update_high_watermark_clamps_rises_only_and_wakes_consumers(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    woken: list[int] = []
    log.on_append = lambda: woken.append(log.high_watermark)
    assert log.high_watermark == 0
    assert not log.update_high_watermark(5)  # nothing to cover yet
    log.append(batch("a", 10), leader_epoch=0)
    assert log.high_watermark == 0 and log.log_end_offset == 10
    assert log.update_high_watermark(5) and log.high_watermark == 5
    assert not log.update_high_watermark(3) and log.high_watermark == 5
    assert not log.update_high_watermark(5)
    assert log.update_high_watermark(1_000) and log.high_watermark == 10
    assert woken == [0, 5, 10]
    log.close()


def test_a_standalone_log_keeps_the_high_watermark_at_its_end(tmp_path: Path) -> None:
    log = open_log(tmp_path, replicated=False, high_watermark=1)
    log.append(batch("a", 4))
    assert log.high_watermark == log.log_end_offset == 4
    assert not log.update_high_watermark(2)
    assert log.read(0, 1 << 20).high_watermark == 4
    log.close()


@pytest.mark.parametrize(("given_hw", "expected"), [(None, 3), (1, 3), (5, 5), (99, 8)])
def test_the_initial_high_watermark_is_clamped_into_the_log(
    tmp_path: Path, given_hw: int | None, expected: int
) -> None:
    log = open_log(tmp_path)
    log.truncate_fully_and_start_at(3)
    log.append(batch("a", 5), leader_epoch=0)
    log.close()
    reopened = open_log(tmp_path, high_watermark=given_hw)
    assert reopened.high_watermark == expected
    reopened.close()


def test_retention_never_deletes_past_the_high_watermark(tmp_path: Path) -> None:
    clock = ManualClock()
    log = open_log(tmp_path, {"retention.ms": 1}, clock=clock)
    for i in range(10):
        log.append(batch(f"b{i}", 2, value_size=150, ts=clock.now_ms()), leader_epoch=0)
    clock.advance(1_000)
    segments = log.segments()
    assert len(segments) >= 4
    log.update_high_watermark(segments[2].next_offset - 1)
    assert log.delete_old_segments() == 2
    assert log.log_start_offset == segments[2].base_offset
    log.update_high_watermark(log.log_end_offset)
    assert log.delete_old_segments() == len(segments) - 3  # all but the active one
    log.close()


def test_prefix_deletion_past_the_high_watermark_raises_it_to_the_log_start(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    for i in range(6):
        log.append(batch(f"b{i}", 2, value_size=150), leader_epoch=0)
    second = log.segments()[1].base_offset
    log.delete_segments_before(second)
    assert log.high_watermark == log.log_start_offset == second
    log.close()


@PROPERTY
@given(counts=st.lists(st.integers(1, 4), min_size=1, max_size=25), data=st.data())
def test_a_read_bounded_by_max_offset_never_returns_a_batch_reaching_it(
    counts: list[int], data: st.DataObject
) -> None:
    """Any offset, budget and bound, on batch boundaries or not: the bounded read is the
    unbounded read cut before the first batch reaching the bound."""
    with tempfile.TemporaryDirectory() as tmp:
        log = open_log(Path(tmp))
        for i, n in enumerate(counts):
            log.append(batch(f"b{i}", n), leader_epoch=0)
        end = log.log_end_offset
        log.update_high_watermark(end // 2)
        for _ in range(20):
            offset = data.draw(st.integers(0, end + 1), label="offset")
            max_bytes = data.draw(st.integers(0, 2_000), label="max_bytes")
            max_offset = data.draw(st.integers(0, end + 2), label="max_offset")
            if offset > end:
                with pytest.raises(OffsetOutOfRangeError):
                    log.read(offset, max_bytes, max_offset=max_offset)
                continue
            fetched = log.read(offset, max_bytes, max_offset=max_offset)
            assert fetched.high_watermark == log.high_watermark == end // 2
            got = scan_bytes(fetched.data)
            assert sum(h.size for _, h in got) == len(fetched.data)
            assert all(h.last_offset < max_offset for _, h in got)
            unbounded = scan_bytes(log.read(offset, max_bytes).data)
            expected = []
            for position, header in unbounded:
                if header.last_offset >= max_offset:
                    break
                expected.append((position, header))
            assert got == expected
            after = log.offset_after_read(offset, max_bytes, max_offset=max_offset)
            assert after == (got[-1][1].next_offset if got else offset)
        log.close()


def test_a_bound_inside_a_batch_holds_that_whole_batch_back(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 1), leader_epoch=0)
    log.append(batch("b", 3), leader_epoch=0)
    assert [r.offset for r in rb.decode_all(log.read(0, 1 << 20, max_offset=3).data)] == [0]
    assert log.read(2, 1 << 20, max_offset=3).data == b""
    assert log.offset_after_read(2, 1, max_offset=3) == 2
    assert log.offset_after_read(0, 1 << 20, max_offset=3) == 1
    log.close()


def test_reads_between_the_high_watermark_and_the_log_end_return_nothing(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(batch("a", 3), leader_epoch=0)
    log.append(batch("b", 3), leader_epoch=0)
    log.update_high_watermark(3)
    hw = log.high_watermark
    assert [r.offset for r in rb.decode_all(log.read(0, 1 << 20, max_offset=hw).data)] == [0, 1, 2]
    for offset in (3, 4, 6):
        fetched = log.read(offset, 1 << 20, max_offset=hw)
        assert (fetched.data, fetched.high_watermark, fetched.log_start_offset) == (b"", 3, 0)
    assert len(rb.decode_all(log.read(3, 1 << 20).data)) == 3  # a follower reads on
    with pytest.raises(OffsetOutOfRangeError, match=r"valid 0\.\.6"):
        log.read(7, 1 << 20, max_offset=hw)
    log.close()

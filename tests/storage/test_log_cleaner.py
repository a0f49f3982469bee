"""Log compaction: the latest record of every key survives, offsets and order do not move.

Logs are built with tiny segments so that a few hundred records span many of them; each
test compares what is readable after a pass with what was appended before it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import InvalidRequestError
from logstore.storage import log_cleaner
from logstore.storage.log_config import LogConfig
from logstore.storage.partition_log import PartitionLog
from tests.codec import kafka_peers as peers

T0 = 1_700_000_000_000
DAY_MS = 86_400_000
#: a key (or None, allowed only before the topic became compacted), value (None =
#: tombstone), records in the batch
Op = tuple[bytes, bytes | None]


def compact_config(**overrides: object) -> LogConfig:
    settings_: dict[str, object] = {
        "cleanup_policy": "compact",
        "segment_bytes": 1024,
        "index_interval_bytes": 128,
        "delete_retention_ms": DAY_MS,
    }
    settings_.update(overrides)
    return LogConfig(**settings_)  # type: ignore[arg-type]


@pytest.fixture
def directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "t-0"


def fill(log: PartitionLog, batches: Sequence[Sequence[Op]], ts0: int = T0) -> None:
    for i, batch in enumerate(batches):
        log.append(rb.encode_batch([(k, v, (), ts0 + i) for k, v in batch]))


def all_records(log: PartitionLog) -> list[rb.Record]:
    records: list[rb.Record] = []
    for segment in log.segments():
        records += rb.decode_all(segment.read_batches(0, segment.size + 1))
    return records


def latest_by_key(records: Sequence[rb.Record]) -> dict[bytes | None, rb.Record]:
    latest: dict[bytes | None, rb.Record] = {}
    for record in records:
        latest[record.key] = record
    return latest


keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e", b"f"])
values = st.one_of(st.none(), st.binary(min_size=1, max_size=40))
batches = st.lists(st.lists(st.tuples(keys, values), min_size=1, max_size=5), max_size=120)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=batches, codec=st.sampled_from(sorted(fmt.CODEC_NAMES)))
def test_a_pass_keeps_the_latest_record_of_every_key_and_moves_nothing(
    batches: list[list[Op]], codec: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLog(Path(tmp) / "t-0", compact_config())
        for i, batch in enumerate(batches):
            records = [(k, v, (), T0 + i) for k, v in batch]
            log.append(rb.encode_batch(records, codec=codec))
        before = all_records(log)
        bases = [s.base_offset for s in log.segments()]
        start, end = log.log_start_offset, log.log_end_offset
        active = log.segments()[-1]
        active_bytes = active.read_bytes(0, active.size)
        sealed_end = active.base_offset

        log_cleaner.clean(log, T0, force=True)  # tombstones are fresh: all kept
        after = all_records(log)

        assert (log.log_start_offset, log.log_end_offset) == (start, end)
        assert [s.base_offset for s in log.segments()] == bases
        assert log.segments()[-1].read_bytes(0, active.size) == active_bytes
        by_offset = {r.offset: r for r in before}
        assert all(by_offset[r.offset] == r for r in after)  # nothing altered, only removed
        assert [r.offset for r in after] == sorted(r.offset for r in after)
        # the latest record of every key is still there; in the cleaned segments nothing else
        assert set(latest_by_key(before).values()) <= set(after)
        cleaned = [r for r in after if r.offset < sealed_end]
        assert len({r.key for r in cleaned}) == len(cleaned)
        assert [r for r in after if r.offset >= sealed_end] == [
            r for r in before if r.offset >= sealed_end
        ]
        check_reads(log, after)
        log.close()

        reopened = PartitionLog(Path(tmp) / "t-0", compact_config(), clean_shutdown=False)
        assert reopened.recovery_report.truncated_bytes == 0
        assert all_records(reopened) == after
        check_reads(reopened, after)
        reopened.close()


def check_reads(log: PartitionLog, records: Sequence[rb.Record]) -> None:
    """A fetch from any offset starts at the batch holding it and misses no record."""
    for offset in range(log.log_start_offset, log.log_end_offset):
        data = log.read(offset, 1).data
        got = [r for r in rb.decode_all(data) if r.offset >= offset]
        want = [r for r in records if r.offset >= offset]
        assert got == want[: len(got)]
        first = rb.read_header(data)
        assert first.base_offset <= offset <= first.last_offset


KAFKA_CODECS = [fmt.CODEC_GZIP, fmt.CODEC_SNAPPY, fmt.CODEC_LZ4, fmt.CODEC_ZSTD]


@pytest.mark.parametrize("codec", KAFKA_CODECS, ids=[fmt.CODEC_NAMES[c] for c in KAFKA_CODECS])
def test_compaction_rewrites_librdkafka_batches_in_their_codec(directory: Path, codec: int) -> None:
    """Batches as a Kafka client sent them (librdkafka's own compressors; a raw snappy
    block for snappy) are read, thinned and written back compressed with the same codec,
    in a form another Kafka client (aiokafka) reads."""
    records: list[rb.RecordInput] = [
        (b"k%d" % (i % 10), b"value %d " % i * 30, [("n", b"%d" % i)], T0 + i) for i in range(200)
    ]
    sent = peers.librdkafka_produce(fmt.CODEC_NAMES[codec], records)
    assert {header.codec for _, header in rb.iter_batches(sent)} == {codec}
    log = PartitionLog(directory, compact_config(segment_bytes=1 << 20))
    log.append(sent)
    log.roll()
    result = log_cleaner.clean(log, T0 + 1_000, force=True)
    assert result is not None and result.records_removed == 190

    stored = log.segments()[0].read_bytes(0, log.segments()[0].size)
    kept = rb.decode_all(stored)
    assert [(r.offset, r.key, r.value) for r in kept] == [
        (190 + i, b"k%d" % i, b"value %d " % (190 + i) * 30) for i in range(10)
    ]
    written = [header for _, header in rb.iter_batches(stored) if header.record_count]
    assert written and {header.codec for header in written} == {codec}
    assert peers.aiokafka_read(stored) == [
        peers.PeerRecord(r.key, r.value, r.headers, r.timestamp) for r in kept
    ]
    log.close()


def test_expired_tombstones_go_and_fresh_ones_stay(directory: Path) -> None:
    log = PartitionLog(directory, compact_config(), clock=ManualClock(T0))
    fill(log, [[(b"a", b"1")], [(b"a", None)], [(b"b", b"2")], [(b"b", None)]] * 10)
    fill(log, [[(b"c", b"3")], [(b"c", None)], [(b"z", b"active")]] * 20, ts0=T0 + DAY_MS)
    log.roll()
    log_cleaner.clean(log, T0 + DAY_MS, force=True)
    kept = {(r.key, r.value) for r in all_records(log)}
    assert (b"a", None) in kept and (b"c", None) in kept
    # a day after the first tombstones: they go, the keys with them; the newer ones stay
    log_cleaner.clean(log, T0 + DAY_MS + 100, force=True)
    remaining = all_records(log)
    assert {(r.key, r.value) for r in remaining} == {(b"c", None), (b"z", b"active")}
    log.close()


def test_batches_keep_their_offsets_and_producer_fields(directory: Path) -> None:
    log = PartitionLog(directory, compact_config())
    for seq in range(0, 200, 4):
        records = [(b"k%d" % (i % 3), b"v%d" % i, (), T0) for i in range(seq, seq + 4)]
        log.append(rb.encode_batch(records, producer_id=7, producer_epoch=2, base_sequence=seq))
    log.roll()
    before = {h.base_offset: h for s in log.segments() for _, h in s.iter_headers(0)}
    log_cleaner.clean(log, T0, force=True)
    after = [h for s in log.segments() for _, h in s.iter_headers(0)]
    # offsets still tile the log batch after batch
    assert [h.base_offset for h in after[1:]] == [h.next_offset for h in after[:-1]]
    assert after[0].base_offset == 0 and after[-1].next_offset == 200
    same = ("base_offset", "producer_id", "producer_epoch", "base_sequence", "max_timestamp")
    for header in after:
        original = before[header.base_offset]
        assert [getattr(header, f) for f in same] == [getattr(original, f) for f in same]
        assert header.last_sequence == before[header.last_offset - 3].last_sequence
        if header.record_count:
            assert header.last_offset_delta == original.last_offset_delta
    assert sum(h.record_count for h in after) == 3  # one per key
    # the emptied batches of the one producer, adjacent per segment, were joined
    empty = [h for h in after if h.record_count == 0]
    assert len(empty) <= 2 * log.segment_count
    log.close()
    reopened = PartitionLog(directory, compact_config(), clean_shutdown=False)
    entry = reopened.producer_state.entry(7)
    assert entry is not None and entry.last_seq == 199  # the sequences replay the same
    reopened.close()


def test_emptied_batches_join_only_when_producer_state_allows(directory: Path) -> None:
    """Adjacent emptied batches join per producer and epoch; a batch of another producer
    or a new epoch starts a new run; batches without a producer always join."""
    log = PartitionLog(directory, compact_config(segment_bytes=64 * 1024))
    plan = [(1, 0)] * 3 + [(2, 0)] + [(1, 0)] * 2 + [(1, 1)] * 3 + [(-1, -1)] * 4
    sequences: dict[tuple[int, int], int] = {}
    for i, (pid, epoch) in enumerate(plan):
        seq = sequences.get((pid, epoch), 0) if pid >= 0 else -1
        sequences[(pid, epoch)] = seq + 1
        log.append(
            rb.encode_batch(
                [(b"k", b"%d" % i, (), T0)], producer_id=pid, producer_epoch=epoch,
                base_sequence=seq,
            )
        )  # fmt: skip
    log.append(rb.encode_batch([(b"k", b"last", (), T0)]))
    log.roll()
    log_cleaner.clean(log, T0, force=True)
    after = [h for s in log.segments() for _, h in s.iter_headers(0)]
    ranges = [(h.base_offset, h.last_offset, h.producer_id, h.record_count) for h in after]
    assert ranges == [
        (0, 2, 1, 0),
        (3, 3, 2, 0),
        (4, 5, 1, 0),  # producer 1 again, its sequences carry on from offset 2
        (6, 8, 1, 0),  # epoch 1: a run of its own
        (9, 12, -1, 0),
        (13, 13, -1, 1),
    ]
    assert [h.last_sequence for h in after[:4]] == [2, 0, 4, 2]
    log.close()


def test_a_second_pass_waits_for_enough_new_data(directory: Path) -> None:
    log = PartitionLog(directory, compact_config())
    fill(log, [[(b"k%d" % (i % 5), b"x" * 50)] for i in range(100)])
    assert log_cleaner.clean(log, T0) is not None
    assert log_cleaner.clean(log, T0) is None  # nothing dirty since
    fill(log, [[(b"k%d" % (i % 5), b"y" * 50)] for i in range(100)])
    result = log_cleaner.clean(log, T0)
    assert result is not None and result.records_removed > 0
    log.close()


def test_young_segments_wait_for_min_compaction_lag(directory: Path) -> None:
    log = PartitionLog(directory, compact_config(min_compaction_lag_ms=60_000))
    fill(log, [[(b"k", b"%d" % i)] for i in range(100)])
    before = all_records(log)
    assert log_cleaner.clean(log, T0 + 100, force=True) is None
    assert all_records(log) == before
    assert log_cleaner.clean(log, T0 + 100 + 60_000, force=True) is not None
    assert len(all_records(log)) < len(before)
    log.close()


def test_a_compacted_topic_refuses_records_without_a_key(directory: Path) -> None:
    log = PartitionLog(directory, compact_config())
    with pytest.raises(InvalidRequestError, match="without a key"):
        log.append(rb.encode_batch([(b"k", b"1", (), T0), (None, b"2", (), T0)]))
    assert log.log_end_offset == 0
    log.append(rb.encode_batch([(b"k", b"1", (), T0)]))
    assert log.log_end_offset == 1
    log.close()


def test_retention_deletes_only_when_the_policy_says_delete(directory: Path) -> None:
    clock = ManualClock(T0)
    for policy, survives in (("compact", True), ("compact,delete", False)):
        path = directory.with_name(policy.replace(",", "_"))
        config = compact_config(cleanup_policy=policy, retention_ms=1000)
        log = PartitionLog(path, config, clock=clock)
        fill(log, [[(b"k%d" % i, b"x" * 100)] for i in range(50)])
        clock.advance(10_000)
        assert (log.delete_old_segments() == 0) is survives
        log.close()


def test_a_crash_mid_swap_leaves_a_log_that_opens(directory: Path) -> None:
    """The states a crash can leave: the work directory, or a new .log without indexes."""
    log = PartitionLog(directory, compact_config())
    fill(log, [[(b"k%d" % (i % 4), b"v%d" % i)] for i in range(120)])
    log_cleaner.clean(log, T0, force=True)
    expected = all_records(log)
    cleaned = log.segments()[0]
    log.close()
    (directory / log_cleaner.WORK_DIR_NAME).mkdir()
    (directory / log_cleaner.WORK_DIR_NAME / cleaned.log_path.name).write_bytes(b"partial")
    cleaned.offset_index.path.unlink()
    cleaned.time_index.path.unlink()
    reopened = PartitionLog(directory, compact_config(), clean_shutdown=True)
    assert not (directory / log_cleaner.WORK_DIR_NAME).exists()
    assert reopened.recovery_report.rebuilt_indexes == 1
    assert all_records(reopened) == expected
    check_reads(reopened, expected)
    reopened.close()


def test_a_segment_deleted_during_the_pass_is_not_swapped_back(directory: Path) -> None:
    log = PartitionLog(directory, compact_config())
    fill(log, [[(b"k", b"v%d" % i)] for i in range(60)])
    first = log.segments()[0]
    work = directory / log_cleaner.WORK_DIR_NAME
    work.mkdir()
    copy = log.new_work_segment(work, first.base_offset)
    for position, header in first.iter_headers(0):
        copy.append([first.read_bytes(position, header.size)], [header])
    copy.seal()
    log.delete_segments_before(first.next_offset)
    assert not log.replace_segment(first, copy)
    assert log.log_start_offset == first.next_offset
    copy.close_quietly()
    log.close()


def test_the_dirty_ratio_decides_when_a_pass_runs(directory: Path) -> None:
    """min.cleanable.dirty.ratio: at 0 every new sealed segment is enough for a pass; at 1
    only a log with nothing cleaned yet is."""
    log = PartitionLog(directory, compact_config(min_cleanable_dirty_ratio=1.0))
    fill(log, [[(b"k%d" % (i % 5), b"x" * 50)] for i in range(100)])
    assert log_cleaner.clean(log, T0) is not None  # all dirty: ratio 1 is met
    fill(log, [[(b"k%d" % (i % 5), b"y" * 50)] for i in range(30)])
    assert log_cleaner.clean(log, T0) is None  # some clean bytes now: 1 is out of reach
    log.config = compact_config(min_cleanable_dirty_ratio=0.0)
    result = log_cleaner.clean(log, T0)
    assert result is not None and result.records_removed > 0
    log.close()

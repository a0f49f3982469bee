"""Idempotent producer state: duplicates, sequence and epoch checks, expiry, snapshots."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstore.clock import ManualClock
from logstore.codec.format import TEMP_SUFFIX
from logstore.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    OutOfOrderSequenceError,
    StorageError,
)
from logstore.storage.producer_state import (
    DEFAULT_PRODUCER_ID_EXPIRATION_MS,
    MAX_SEQUENCE,
    NUM_BATCHES_TO_RETAIN,
    BatchMetadata,
    CorruptSnapshotError,
    ProducerStateManager,
    delete_snapshots_after,
    delete_snapshots_before,
    list_snapshot_offsets,
    next_sequence,
    snapshot_path,
)

PID = 1000
TS = 1_700_000_000_000


class Producer:
    """Drives a manager the way a partition log does: check, then append and record."""

    def __init__(self, manager: ProducerStateManager, pid: int = PID, epoch: int = 0) -> None:
        self.manager = manager
        self.pid = pid
        self.epoch = epoch
        self.next_offset = 0

    def append(self, base_seq: int, count: int, timestamp_ms: int = TS) -> int:
        """Append a batch of `count` records; return its base offset (original if a retry)."""
        last_seq = (base_seq + count - 1) % (MAX_SEQUENCE + 1)
        dup = self.manager.check_and_find_duplicate(self.pid, self.epoch, base_seq, last_seq)
        if dup is not None:
            return dup.base_offset
        base_offset = self.next_offset
        self.manager.update(
            self.pid, self.epoch, base_seq, last_seq, base_offset, count - 1, timestamp_ms
        )
        self.next_offset += count
        self.manager.map_end_offset = self.next_offset
        return base_offset


def fill(count: int, batch_size: int = 2) -> tuple[Producer, list[tuple[int, int, int]]]:
    """A producer that appended `count` batches; (base_seq, last_seq, base_offset) each."""
    producer = Producer(ProducerStateManager())
    batches = []
    for i in range(count):
        base_seq = i * batch_size
        batches.append((base_seq, base_seq + batch_size - 1, producer.append(base_seq, batch_size)))
    return producer, batches


# --- non-idempotent batches ---------------------------------------------------------------


def test_non_idempotent_batches_are_not_checked_or_recorded() -> None:
    manager = ProducerStateManager()
    assert manager.check_and_find_duplicate(-1, -1, -1, -1) is None
    manager.update(-1, -1, -1, -1, 0, 0, TS)
    assert len(manager) == 0


# --- duplicates ---------------------------------------------------------------------------


@pytest.mark.parametrize("age", range(NUM_BATCHES_TO_RETAIN))
def test_duplicate_of_each_of_the_last_five_batches_is_detected(age: int) -> None:
    producer, batches = fill(8)
    base_seq, last_seq, base_offset = batches[-1 - age]
    dup = producer.manager.check_and_find_duplicate(PID, 0, base_seq, last_seq)
    assert dup == BatchMetadata(base_seq, last_seq, base_offset, 1, TS)
    assert dup is not None and dup.last_offset == base_offset + 1


def test_sixth_oldest_batch_is_out_of_order_not_a_duplicate() -> None:
    producer, batches = fill(8)
    base_seq, last_seq, _ = batches[-1 - NUM_BATCHES_TO_RETAIN]
    with pytest.raises(OutOfOrderSequenceError, match="expected 16, got 4"):
        producer.manager.check_and_find_duplicate(PID, 0, base_seq, last_seq)


def test_retry_returns_original_offset_without_appending() -> None:
    producer, batches = fill(3)
    end = producer.next_offset
    assert producer.append(2, 2) == batches[1][2]
    assert producer.next_offset == end


def test_same_base_different_last_sequence_is_not_a_duplicate() -> None:
    producer, _ = fill(3)
    with pytest.raises(OutOfOrderSequenceError):
        producer.manager.check_and_find_duplicate(PID, 0, 2, 4)


def test_only_five_batches_are_kept() -> None:
    producer, _ = fill(12)
    entry = producer.manager.entry(PID)
    assert entry is not None
    assert [b.first_seq for b in entry.batches] == [14, 16, 18, 20, 22]


# --- sequence checks ----------------------------------------------------------------------


def test_next_batch_must_follow_the_last_sequence() -> None:
    producer, _ = fill(2)
    assert producer.manager.check_and_find_duplicate(PID, 0, 4, 9) is None


@pytest.mark.parametrize("base_seq", [5, 100, 3, 1])
def test_sequence_gap_or_overlap_is_rejected(base_seq: int) -> None:
    producer, _ = fill(2)
    with pytest.raises(OutOfOrderSequenceError) as err:
        producer.manager.check_and_find_duplicate(PID, 0, base_seq, base_seq)
    message = str(err.value)
    assert f"producer {PID} epoch 0" in message
    assert f"expected 4, got {base_seq}" in message


def test_an_unknown_producer_may_continue_at_any_sequence() -> None:
    """Kafka's rule since 2.5: a producer whose state the partition lost (expired, or it
    never wrote here) continues where it is; from then on its sequence is checked."""
    manager = ProducerStateManager()
    assert manager.check_and_find_duplicate(PID, 0, 7, 7) is None
    manager.update(PID, 0, 7, 7, 100, 0, 1)
    with pytest.raises(OutOfOrderSequenceError, match="expected 8, got 10"):
        manager.check_and_find_duplicate(PID, 0, 10, 10)
    assert manager.check_and_find_duplicate(PID, 0, 8, 9) is None


def test_sequence_wraps_from_max_to_zero() -> None:
    manager = ProducerStateManager()
    manager.update(PID, 0, MAX_SEQUENCE - 1, MAX_SEQUENCE, 0, 1, TS)
    assert next_sequence(MAX_SEQUENCE) == 0
    with pytest.raises(OutOfOrderSequenceError, match="expected 0, got 2147483647"):
        manager.check_and_find_duplicate(PID, 0, MAX_SEQUENCE, MAX_SEQUENCE)
    assert manager.check_and_find_duplicate(PID, 0, 0, 4) is None


def test_batch_spanning_the_wrap_is_followed_and_deduplicated() -> None:
    producer = Producer(ProducerStateManager())
    producer.manager.update(PID, 0, MAX_SEQUENCE - 10, MAX_SEQUENCE - 2, 0, 8, TS)
    producer.next_offset = 9
    spanning = producer.append(MAX_SEQUENCE - 1, 4)  # sequences MAX-1, MAX, 0, 1
    assert producer.append(2, 3) == spanning + 4
    assert producer.append(MAX_SEQUENCE - 1, 4) == spanning


@pytest.mark.parametrize(
    ("epoch", "base_seq", "last_seq", "what"),
    [
        (-1, 0, 0, "producer epoch -1"),
        (2**15, 0, 0, "producer epoch 32768"),
        (0, -1, 0, "base sequence -1"),
        (0, 0, 2**31, "last sequence 2147483648"),
    ],
)
def test_idempotent_batch_with_invalid_fields_is_corrupt(
    epoch: int, base_seq: int, last_seq: int, what: str
) -> None:
    manager = ProducerStateManager()
    with pytest.raises(CorruptRecordError, match=f"invalid {what}"):
        manager.check_and_find_duplicate(PID, epoch, base_seq, last_seq)
    with pytest.raises(CorruptRecordError, match=f"invalid {what}"):
        manager.update(PID, epoch, base_seq, last_seq, 0, 0, TS)


def test_update_rejects_negative_offsets() -> None:
    with pytest.raises(CorruptRecordError, match="must be >= 0"):
        ProducerStateManager().update(PID, 0, 0, 0, -1, 0, TS)


# --- epochs -------------------------------------------------------------------------------


def test_older_epoch_is_fenced() -> None:
    producer = Producer(ProducerStateManager(), epoch=3)
    producer.append(0, 1)
    with pytest.raises(InvalidProducerEpochError) as err:
        producer.manager.check_and_find_duplicate(PID, 2, 1, 1)
    assert "fenced" in str(err.value)
    assert "epoch 2" in str(err.value) and "epoch 3" in str(err.value)
    with pytest.raises(InvalidProducerEpochError):
        producer.manager.update(PID, 2, 1, 1, 5, 0, TS)


def test_new_epoch_must_start_at_zero() -> None:
    producer, _ = fill(3)
    with pytest.raises(OutOfOrderSequenceError, match=r"starts epoch 1 \(was 0\).*expected 0"):
        producer.manager.check_and_find_duplicate(PID, 1, 6, 6)


def test_new_epoch_resets_the_batches() -> None:
    producer, _ = fill(3)
    producer.epoch = 1
    first = producer.append(0, 2)
    entry = producer.manager.entry(PID)
    assert entry is not None and entry.producer_epoch == 1
    assert [b.base_offset for b in entry.batches] == [first]
    # a retry from the old epoch is fenced, not deduplicated
    with pytest.raises(InvalidProducerEpochError):
        producer.manager.check_and_find_duplicate(PID, 0, 4, 5)


def test_producers_are_independent() -> None:
    manager = ProducerStateManager()
    manager.update(1, 0, 0, 0, 0, 0, TS)
    manager.update(1, 0, 1, 1, 1, 0, TS)
    assert manager.check_and_find_duplicate(2, 0, 0, 0) is None
    manager.update(2, 0, 0, 0, 2, 0, TS)
    assert manager.check_and_find_duplicate(1, 0, 2, 2) is None
    assert manager.check_and_find_duplicate(2, 0, 1, 1) is None
    assert len(manager) == 2


# --- expiry -------------------------------------------------------------------------------


def test_idle_producers_expire() -> None:
    clock = ManualClock()
    manager = ProducerStateManager()
    Producer(manager, pid=1).append(0, 1, timestamp_ms=clock.now_ms())
    clock.advance(1000)
    Producer(manager, pid=2).append(0, 1, timestamp_ms=clock.now_ms())
    clock.advance(DEFAULT_PRODUCER_ID_EXPIRATION_MS - 1000 - 1)
    assert manager.remove_expired(clock.now_ms()) == 0
    clock.advance(1)  # producer 1 now idle for exactly the expiration: Kafka expires it
    assert manager.remove_expired(clock.now_ms(), DEFAULT_PRODUCER_ID_EXPIRATION_MS) == 1
    assert manager.entry(1) is None and manager.entry(2) is not None
    clock.advance(1000)
    assert manager.remove_expired(clock.now_ms()) == 1
    assert len(manager) == 0
    # forgotten: as in Kafka, the producer goes on at its next sequence, unchecked once
    assert manager.check_and_find_duplicate(1, 0, 1, 1) is None


def test_new_batch_refreshes_the_idle_timer() -> None:
    clock = ManualClock()
    producer = Producer(ProducerStateManager())
    producer.append(0, 1, timestamp_ms=clock.now_ms())
    clock.advance(60_000)
    producer.append(1, 1, timestamp_ms=clock.now_ms())
    assert producer.manager.remove_expired(clock.now_ms() + 59_999, 60_000) == 0
    assert producer.manager.remove_expired(clock.now_ms() + 60_000, 60_000) == 1


def test_negative_expiration_is_rejected() -> None:
    with pytest.raises(ValueError, match="expiration"):
        ProducerStateManager().remove_expired(TS, -1)


# --- truncation ---------------------------------------------------------------------------


def test_truncate_from_forgets_batches_at_or_beyond_the_offset() -> None:
    producer, _ = fill(5)  # offsets 0-1, 2-3, 4-5, 6-7, 8-9
    producer.manager.truncate_from(6)
    entry = producer.manager.entry(PID)
    assert entry is not None
    assert [b.base_offset for b in entry.batches] == [0, 2, 4]
    assert producer.manager.map_end_offset == 6
    # the truncated batches are no longer duplicates: the producer resends them in order
    assert producer.manager.check_and_find_duplicate(PID, 0, 6, 7) is None
    assert producer.manager.check_and_find_duplicate(PID, 0, 4, 5) is not None


def test_truncate_inside_a_batch_drops_the_whole_batch() -> None:
    producer, _ = fill(3)  # offsets 0-1, 2-3, 4-5
    producer.manager.truncate_from(3)
    entry = producer.manager.entry(PID)
    assert entry is not None and [b.base_offset for b in entry.batches] == [0]


def test_truncate_drops_producers_left_empty_and_restores_their_timestamp() -> None:
    manager = ProducerStateManager()
    Producer(manager, pid=1).append(0, 1, timestamp_ms=TS)
    late = Producer(manager, pid=2)
    late.next_offset = 10
    late.append(0, 1, timestamp_ms=TS + 5)
    early = Producer(manager, pid=3)
    early.next_offset = 1
    early.append(0, 1, timestamp_ms=TS + 1)
    early.next_offset = 20
    early.append(1, 1, timestamp_ms=TS + 9)
    manager.truncate_from(10)
    assert manager.entry(2) is None
    entry = manager.entry(3)
    assert entry is not None and entry.last_timestamp_ms == TS + 1
    assert manager.map_end_offset == 10


def test_truncate_beyond_the_end_changes_nothing() -> None:
    producer, _ = fill(3)
    producer.manager.truncate_from(100)
    entry = producer.manager.entry(PID)
    assert entry is not None and len(entry.batches) == 3
    assert producer.manager.map_end_offset == 6


# --- snapshots ----------------------------------------------------------------------------


def populated_manager() -> ProducerStateManager:
    manager = ProducerStateManager()
    for pid, batches in ((7, 3), (3, 9), (2**62, 1)):
        producer = Producer(manager, pid=pid, epoch=pid % 5)
        producer.next_offset = pid % 1000
        for i in range(batches):
            producer.append(i * 3, 3, timestamp_ms=TS + i)
    manager.map_end_offset = 5000
    return manager


def assert_same_state(a: ProducerStateManager, b: ProducerStateManager) -> None:
    assert a.map_end_offset == b.map_end_offset
    assert list(a) == list(b)


def test_snapshot_round_trip(tmp_path: Path) -> None:
    manager = populated_manager()
    path = manager.write_snapshot(tmp_path)
    assert path == tmp_path / "00000000000000005000.snapshot"
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))
    loaded = ProducerStateManager.read_snapshot(path)
    assert_same_state(manager, loaded)
    # every cached batch survives, so retries are still detected after a restart
    assert loaded.check_and_find_duplicate(3, 3, 12, 14) is not None
    assert loaded.check_and_find_duplicate(3, 3, 27, 29) is None


def test_empty_snapshot_round_trip(tmp_path: Path) -> None:
    path = ProducerStateManager(map_end_offset=0).write_snapshot(tmp_path)
    assert path.name == "00000000000000000000.snapshot"
    loaded = ProducerStateManager.read_snapshot(path)
    assert len(loaded) == 0 and loaded.map_end_offset == 0


def test_load_latest_picks_the_newest_at_or_below_max_offset(tmp_path: Path) -> None:
    for offset in (10, 20, 30):
        manager = ProducerStateManager(offset)
        manager.update(PID, 0, 0, offset, 0, offset, TS)
        manager.write_snapshot(tmp_path)
    result = ProducerStateManager.load_latest_snapshot(tmp_path, max_offset=25)
    assert result.manager is not None and result.manager.map_end_offset == 20
    assert result.corrupt == ()
    result = ProducerStateManager.load_latest_snapshot(tmp_path, max_offset=30)
    assert result.manager is not None and result.manager.map_end_offset == 30
    assert ProducerStateManager.load_latest_snapshot(tmp_path, max_offset=9).manager is None


def test_load_from_empty_or_missing_directory(tmp_path: Path) -> None:
    assert ProducerStateManager.load_latest_snapshot(tmp_path, 100).manager is None
    assert ProducerStateManager.load_latest_snapshot(tmp_path / "nope", 100).manager is None


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupt_snapshot_is_skipped_for_an_older_valid_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = populated_manager()
    old.map_end_offset = 4000
    old.write_snapshot(tmp_path)
    newest = populated_manager().write_snapshot(tmp_path)
    flip_byte(newest, newest.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="logstore.storage.producer_state"):
        result = ProducerStateManager.load_latest_snapshot(tmp_path, max_offset=10_000)
    assert result.manager is not None and result.manager.map_end_offset == 4000
    assert result.corrupt == (newest,)
    assert "CRC mismatch" in caplog.text and newest.name in caplog.text


def test_every_single_byte_flip_is_detected(tmp_path: Path) -> None:
    data = populated_manager().to_snapshot_bytes()
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x80
        with pytest.raises(CorruptSnapshotError):
            ProducerStateManager.from_snapshot_bytes(bytes(damaged), expected_offset=5000)


@pytest.mark.parametrize("cut", [0, 5, 21, 30, -1])
def test_truncated_or_extended_snapshot_is_corrupt(cut: int) -> None:
    data = populated_manager().to_snapshot_bytes()
    with pytest.raises(CorruptSnapshotError):
        ProducerStateManager.from_snapshot_bytes(data[:cut])
    with pytest.raises(CorruptSnapshotError):
        ProducerStateManager.from_snapshot_bytes(data + b"\x00")


def test_snapshot_under_the_wrong_name_is_corrupt(tmp_path: Path) -> None:
    path = populated_manager().write_snapshot(tmp_path)
    moved = snapshot_path(tmp_path, 6000)
    os.replace(path, moved)
    with pytest.raises(CorruptSnapshotError, match="does not match file offset 6000"):
        ProducerStateManager.read_snapshot(moved)
    result = ProducerStateManager.load_latest_snapshot(tmp_path, 10_000)
    assert result.manager is None and result.corrupt == (moved,)


def test_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot write producer state snapshot"):
        ProducerStateManager().write_snapshot(tmp_path / "missing")


def test_snapshot_housekeeping(tmp_path: Path) -> None:
    for offset in (0, 10, 20, 30, 40):
        ProducerStateManager(offset).write_snapshot(tmp_path)
    (tmp_path / "00000000000000000010.log").write_bytes(b"")
    assert list_snapshot_offsets(tmp_path) == [0, 10, 20, 30, 40]
    assert delete_snapshots_after(tmp_path, 30) == [snapshot_path(tmp_path, 40)]
    assert delete_snapshots_before(tmp_path, 10) == [snapshot_path(tmp_path, 0)]
    assert list_snapshot_offsets(tmp_path) == [10, 20, 30]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000000000000000010.log",
        "00000000000000000010.snapshot",
        "00000000000000000020.snapshot",
        "00000000000000000030.snapshot",
    ]
    assert list_snapshot_offsets(tmp_path / "missing") == []


def test_map_end_offset_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="map end offset"):
        ProducerStateManager(-1)


# --- properties ---------------------------------------------------------------------------

batch_sizes = st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=30)
# None: a fresh producer starting at 0; otherwise the last sequence of a batch already in
# the log, close enough to the maximum that the generated batches wrap around.
seed_last_seq = st.one_of(st.none(), st.integers(MAX_SEQUENCE - 40, MAX_SEQUENCE))


@settings(max_examples=150, deadline=None)
@given(sizes=batch_sizes, seed=seed_last_seq, data=st.data())
def test_replays_of_recent_batches_return_the_original_offsets(
    sizes: list[int], seed: int | None, data: st.DataObject
) -> None:
    producer = Producer(ProducerStateManager(), epoch=4)
    if seed is not None:
        producer.manager.update(PID, 4, seed, seed, 0, 0, TS)
        producer.next_offset = 1
    seq = 0 if seed is None else next_sequence(seed)
    appended = []
    for size in sizes:
        appended.append((seq, size, producer.append(seq, size)))
        seq = (seq + size) % (MAX_SEQUENCE + 1)
    end = producer.next_offset
    recent = appended[-NUM_BATCHES_TO_RETAIN:]
    replays = data.draw(st.lists(st.sampled_from(recent), min_size=1, max_size=10))
    for base_seq, size, offset in replays:
        assert producer.append(base_seq, size) == offset
    assert producer.next_offset == end  # nothing was appended twice
    for base_seq, size, _ in appended[:-NUM_BATCHES_TO_RETAIN]:
        with pytest.raises(OutOfOrderSequenceError):
            producer.append(base_seq, size)


@settings(max_examples=50, deadline=None)
@given(
    producers=st.dictionaries(
        st.integers(0, 2**63 - 1),
        st.tuples(st.integers(0, 2**15 - 1), st.integers(1, 8)),
        max_size=8,
    ),
    end=st.integers(0, 2**40),
)
def test_snapshot_bytes_round_trip(producers: dict[int, tuple[int, int]], end: int) -> None:
    manager = ProducerStateManager()
    for pid, (epoch, count) in producers.items():
        producer = Producer(manager, pid=pid, epoch=epoch)
        for i in range(count):
            producer.append(i, 1, timestamp_ms=TS + i)
    manager.map_end_offset = end
    loaded = ProducerStateManager.from_snapshot_bytes(manager.to_snapshot_bytes(), end)
    assert_same_state(manager, loaded)

"""Idempotent producer state for one partition, with Kafka's semantics.

An idempotent producer stamps each batch with its producer id, an epoch and the sequence
numbers of its first and last record. Per producer id the partition remembers the current
epoch and the metadata of the last `NUM_BATCHES_TO_RETAIN` (5) batches it appended, which
lets it:

* drop a retried batch it already has (same epoch, same first and last sequence) and
  answer with the offset the original got;
* reject a batch that skips or repeats sequences (`OutOfOrderSequenceError`);
* fence a zombie producer whose epoch is older than one already seen
  (`InvalidProducerEpochError`).

Sequences are int32 and wrap from 2**31-1 to 0; epochs are int16. Offsets are log
offsets; timestamps are ms since the Unix epoch.

The state is rebuilt on startup from the newest snapshot at or below the recovery point
plus a replay of the log after it. Snapshots are named after `map_end_offset`, the log
offset up to which the state is complete, and have this layout (big-endian)::

    offset | size | field
    -------+------+----------------------------------------------------------------
         0 |    4 | magic            b"LSPS"
         4 |    2 | version          int16  = 1
         6 |    4 | crc              uint32 CRC-32C of bytes [10, end)
        10 |    8 | mapEndOffset     int64  equals the offset in the file name
        18 |    4 | producerCount    int32
        22 |    … | producers        producerCount entries, ascending producerId

    producer entry (19 bytes, then its batches):
         0 |    8 | producerId       int64  >= 0
         8 |    2 | producerEpoch    int16  >= 0
        10 |    8 | lastTimestamp    int64  ms, max timestamp of the newest batch
        18 |    1 | batchCount       int8   1..5
        19 |    … | batches          batchCount entries, oldest first

    batch entry (28 bytes):
         0 |    4 | firstSeq         int32  0..2**31-1
         4 |    4 | lastSeq          int32  0..2**31-1
         8 |    8 | baseOffset       int64  >= 0
        16 |    4 | lastOffsetDelta  int32  >= 0
        20 |    8 | maxTimestamp     int64  ms

Unlike Kafka's snapshot, which keeps only each producer's newest batch, this one keeps all
five, so retries of any of the last five batches are still detected after a restart.

Thread-safety is the caller's job: a `ProducerStateManager` belongs to one partition log,
which calls it only while holding its own lock.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import crc32c

from logstore.codec.format import OFFSET_NAME_DIGITS, SNAPSHOT_SUFFIX, offset_file_name
from logstore.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    LogStoreError,
    OutOfOrderSequenceError,
    StorageError,
)
from logstore.storage.fileutil import fsync_directory, write_file_atomically

log = logging.getLogger(__name__)

#: batches remembered per producer; Kafka's producer keeps at most 5 requests in flight
NUM_BATCHES_TO_RETAIN: Final = 5
MAX_SEQUENCE: Final = 2**31 - 1
MAX_PRODUCER_EPOCH: Final = 2**15 - 1
#: Kafka's `producer.id.expiration.ms` default (ms): one day
DEFAULT_PRODUCER_ID_EXPIRATION_MS: Final = 86_400_000

SNAPSHOT_MAGIC: Final = b"LSPS"
SNAPSHOT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">4shI")  # magic, version, crc
_BODY_HEADER: Final = struct.Struct(">qi")  # mapEndOffset, producerCount
_PRODUCER: Final = struct.Struct(">qhqb")  # producerId, epoch, lastTimestamp, batchCount
_BATCH: Final = struct.Struct(">iiqiq")  # firstSeq, lastSeq, baseOffset, delta, maxTimestamp
_CRC_COVERED_FROM: Final = _HEADER.size
_SNAPSHOT_NAME_RE: Final = re.compile(
    rf"([0-9]{{{OFFSET_NAME_DIGITS}}}){re.escape(SNAPSHOT_SUFFIX)}"
)


class CorruptSnapshotError(LogStoreError):
    """A producer state snapshot file fails validation: magic, version, CRC or contents."""


@dataclass(frozen=True, slots=True)
class BatchMetadata:
    """What the partition remembers of one appended idempotent batch.

    Invariant: sequences are in 0..2**31-1, `base_offset >= 0`, `last_offset_delta >= 0`.
    """

    first_seq: int
    last_seq: int
    base_offset: int
    last_offset_delta: int
    #: ms since the Unix epoch
    max_timestamp_ms: int

    @property
    def last_offset(self) -> int:
        """Offset of the batch's last record."""
        return self.base_offset + self.last_offset_delta


@dataclass(slots=True)
class ProducerStateEntry:
    """One producer id's state in this partition.

    Invariant: `batches` holds 1..5 batches of `producer_epoch`, oldest first, in
    sequence order; `last_timestamp_ms` is the newest batch's max timestamp (ms).
    """

    producer_id: int
    producer_epoch: int
    last_timestamp_ms: int
    batches: deque[BatchMetadata] = field(
        default_factory=lambda: deque(maxlen=NUM_BATCHES_TO_RETAIN)
    )

    @property
    def last_seq(self) -> int | None:
        """Last sequence of the newest batch, or None when no batch is remembered."""
        return self.batches[-1].last_seq if self.batches else None

    @property
    def next_seq(self) -> int:
        """The base sequence the producer's next batch must carry."""
        last = self.last_seq
        return 0 if last is None else next_sequence(last)

    def find_batch(self, first_seq: int, last_seq: int) -> BatchMetadata | None:
        """The remembered batch with exactly these sequences, if any."""
        for batch in self.batches:
            if batch.first_seq == first_seq and batch.last_seq == last_seq:
                return batch
        return None


@dataclass(frozen=True, slots=True)
class SnapshotLoadResult:
    """What `ProducerStateManager.load_latest_snapshot` found.

    `manager` is None when no usable snapshot exists (the caller rebuilds from the start
    of the log); `corrupt` lists the snapshot files skipped as corrupt, newest first, so
    the caller can delete them.
    """

    manager: ProducerStateManager | None
    corrupt: tuple[Path, ...] = ()


def next_sequence(seq: int) -> int:
    """The sequence after `seq`, wrapping from 2**31-1 to 0 as Kafka does."""
    return 0 if seq == MAX_SEQUENCE else seq + 1


class ProducerStateManager:
    """Idempotent producer state of one partition (see the module docstring).

    Not thread-safe: the owning partition log serialises every call under its lock.
    """

    def __init__(self, map_end_offset: int = 0) -> None:
        self._producers: dict[int, ProducerStateEntry] = {}
        self._map_end_offset = 0
        self.map_end_offset = map_end_offset

    @property
    def map_end_offset(self) -> int:
        """The log offset up to which this state is complete (exclusive, >= 0).

        The caller advances it after applying appended or replayed batches; a snapshot
        records it and is named after it.
        """
        return self._map_end_offset

    @map_end_offset.setter
    def map_end_offset(self, offset: int) -> None:
        if offset < 0:
            raise ValueError(f"map end offset must be >= 0, got {offset}")
        self._map_end_offset = offset

    def __len__(self) -> int:
        return len(self._producers)

    def __iter__(self) -> Iterator[ProducerStateEntry]:
        """Entries in ascending producer id order."""
        return iter(sorted(self._producers.values(), key=lambda e: e.producer_id))

    def entry(self, producer_id: int) -> ProducerStateEntry | None:
        """The state of `producer_id`, or None when it is unknown here."""
        return self._producers.get(producer_id)

    # --- append path ------------------------------------------------------------------

    def check_and_find_duplicate(
        self, producer_id: int, producer_epoch: int, base_sequence: int, last_sequence: int
    ) -> BatchMetadata | None:
        """Check a batch before it is appended; return the original if it is a retry.

        Returns None when the batch may be appended (or is not idempotent:
        `producer_id < 0`), the remembered `BatchMetadata` when it exactly repeats one of
        the producer's last five batches (the caller answers with its offsets and does not
        append). Raises `InvalidProducerEpochError` for an epoch older than the known one,
        `OutOfOrderSequenceError` for a sequence gap or overlap (including a new epoch not
        starting at 0; an unknown producer may start anywhere), `CorruptRecordError` for
        values out of range.
        """
        if producer_id < 0:
            return None
        _check_batch_identity(producer_id, producer_epoch, base_sequence, last_sequence)
        entry = self._producers.get(producer_id)
        if entry is None:
            # As Kafka since 2.5 for producers outside transactions: a producer the
            # partition does not know (new, or its state expired: records older than
            # producer_id_expiration_ms, a producer idle that long) may continue at any
            # sequence. Demanding 0 would fail a live producer fatally in librdkafka.
            return None
        _check_not_fenced(entry, producer_epoch)
        if producer_epoch > entry.producer_epoch:
            reason = f"starts epoch {producer_epoch} (was {entry.producer_epoch})"
            _require_first_sequence(producer_id, base_sequence, reason)
            return None
        duplicate = entry.find_batch(base_sequence, last_sequence)
        if duplicate is None and base_sequence != entry.next_seq:
            raise OutOfOrderSequenceError(
                f"out of order sequence for producer {producer_id} epoch {producer_epoch}: "
                f"expected {entry.next_seq}, got {base_sequence}"
            )
        return duplicate

    def update(
        self,
        producer_id: int,
        producer_epoch: int,
        base_sequence: int,
        last_sequence: int,
        base_offset: int,
        last_offset_delta: int,
        max_timestamp_ms: int,
    ) -> None:
        """Record a batch that was appended (or replayed from the log) at `base_offset`.

        Does no sequence check, so log replay can use it; the append path calls
        `check_and_find_duplicate` first. A newer epoch replaces the producer's batches;
        only the last five batches are kept. `producer_id < 0` is ignored.
        """
        if producer_id < 0:
            return
        _check_batch_identity(producer_id, producer_epoch, base_sequence, last_sequence)
        if base_offset < 0 or last_offset_delta < 0:
            raise CorruptRecordError(
                f"producer {producer_id}: invalid base offset {base_offset} or "
                f"last offset delta {last_offset_delta} (both must be >= 0)"
            )
        entry = self._producers.get(producer_id)
        if entry is None or producer_epoch > entry.producer_epoch:
            entry = ProducerStateEntry(producer_id, producer_epoch, max_timestamp_ms)
            self._producers[producer_id] = entry
        _check_not_fenced(entry, producer_epoch)
        entry.batches.append(
            BatchMetadata(
                base_sequence, last_sequence, base_offset, last_offset_delta, max_timestamp_ms
            )
        )
        entry.last_timestamp_ms = max_timestamp_ms

    # --- housekeeping -----------------------------------------------------------------

    def forget(self, producer_id: int) -> None:
        """Drop everything known about one producer (no-op if unknown)."""
        self._producers.pop(producer_id, None)

    def remove_expired(
        self, now_ms: int, expiration_ms: int = DEFAULT_PRODUCER_ID_EXPIRATION_MS
    ) -> int:
        """Forget producers idle for `expiration_ms` or more; return how many.

        A producer is idle since its newest batch's max timestamp, and expires when
        `now_ms - last_timestamp_ms >= expiration_ms` (Kafka's `producer.id.expiration.ms`
        rule; all values in ms). A forgotten producer must start again at sequence 0.
        """
        if expiration_ms < 0:
            raise ValueError(f"expiration must be >= 0 ms, got {expiration_ms}")
        expired = [
            pid
            for pid, entry in self._producers.items()
            if now_ms - entry.last_timestamp_ms >= expiration_ms
        ]
        for pid in expired:
            del self._producers[pid]
        return len(expired)

    def truncate_from(self, offset: int) -> None:
        """Forget every batch with a record at or beyond `offset` (the log was truncated).

        Producers left with no batch are dropped, and `map_end_offset` is lowered to
        `offset` if above it. A producer whose remembered batches were all truncated is
        then unknown and must restart at sequence 0; a caller that must keep such a
        producer rebuilds the state from an older snapshot plus a log replay instead.
        """
        for pid in list(self._producers):
            entry = self._producers[pid]
            while entry.batches and entry.batches[-1].last_offset >= offset:
                entry.batches.pop()
            if entry.batches:
                entry.last_timestamp_ms = entry.batches[-1].max_timestamp_ms
            else:
                del self._producers[pid]
        self.map_end_offset = min(self.map_end_offset, max(offset, 0))

    # --- snapshots --------------------------------------------------------------------

    def to_snapshot_bytes(self) -> bytes:
        """The snapshot encoding of this state (layout in the module docstring)."""
        parts = [_BODY_HEADER.pack(self.map_end_offset, len(self._producers))]
        for entry in self:
            parts.append(_encode_entry(entry))
        body = b"".join(parts)
        header = _HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, crc32c.crc32c(body))
        return header + body

    @classmethod
    def from_snapshot_bytes(
        cls, data: bytes, expected_offset: int | None = None
    ) -> ProducerStateManager:
        """Decode a snapshot; raise `CorruptSnapshotError` on any inconsistency.

        `expected_offset`, when given, must equal the stored map end offset (the offset in
        the file name), which catches a snapshot copied or renamed to the wrong place.
        """
        try:
            return _decode_snapshot(cls, data, expected_offset)
        except struct.error as exc:
            raise CorruptSnapshotError(f"truncated producer state snapshot: {exc}") from exc

    def write_snapshot(self, directory: Path) -> Path:
        """Write the snapshot `<20-digit map_end_offset>.snapshot` in `directory` durably.

        Atomic: the bytes go to a temporary file that is fsynced, renamed over the final
        name, and the directory is fsynced, so after a crash either the old or the new
        file is there, whole. Raises `StorageError` when the disk fails.
        """
        path = snapshot_path(directory, self.map_end_offset)
        try:
            write_file_atomically(path, self.to_snapshot_bytes())
        except OSError as exc:
            raise StorageError(f"cannot write producer state snapshot {path}: {exc}") from exc
        return path

    @classmethod
    def read_snapshot(cls, path: Path) -> ProducerStateManager:
        """Read one snapshot file; raise `CorruptSnapshotError` if it fails validation."""
        match = _SNAPSHOT_NAME_RE.fullmatch(path.name)
        if match is None:
            raise CorruptSnapshotError(f"{path} is not named <20-digit offset>{SNAPSHOT_SUFFIX}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read producer state snapshot {path}: {exc}") from exc
        try:
            return cls.from_snapshot_bytes(data, expected_offset=int(match.group(1)))
        except CorruptSnapshotError as exc:
            raise CorruptSnapshotError(f"{path}: {exc}") from exc

    @classmethod
    def load_latest_snapshot(cls, directory: Path, max_offset: int) -> SnapshotLoadResult:
        """Load the newest valid snapshot in `directory` whose offset is <= `max_offset`.

        Corrupt snapshots are skipped in favour of older ones, logged as warnings and
        listed in the result. The loaded manager's `map_end_offset` is the snapshot's
        offset; the caller replays the log from there.
        """
        corrupt: list[Path] = []
        for offset in reversed(list_snapshot_offsets(directory)):
            if offset > max_offset:
                continue
            path = snapshot_path(directory, offset)
            try:
                manager = cls.read_snapshot(path)
            except CorruptSnapshotError as exc:
                log.warning("skipping corrupt producer state snapshot: %s", exc)
                corrupt.append(path)
                continue
            return SnapshotLoadResult(manager, tuple(corrupt))
        return SnapshotLoadResult(None, tuple(corrupt))


# --- checks -------------------------------------------------------------------------------


def _check_batch_identity(
    producer_id: int, producer_epoch: int, base_sequence: int, last_sequence: int
) -> None:
    # An idempotent batch (producer id >= 0) must carry a real epoch and sequences; -1 here
    # means a broken client, which Kafka rejects as an invalid record too.
    if not 0 <= producer_epoch <= MAX_PRODUCER_EPOCH:
        raise CorruptRecordError(
            f"producer {producer_id}: invalid producer epoch {producer_epoch} "
            f"(expected 0..{MAX_PRODUCER_EPOCH})"
        )
    for name, seq in (("base", base_sequence), ("last", last_sequence)):
        if not 0 <= seq <= MAX_SEQUENCE:
            raise CorruptRecordError(
                f"producer {producer_id}: invalid {name} sequence {seq} "
                f"(expected 0..{MAX_SEQUENCE})"
            )


def _check_not_fenced(entry: ProducerStateEntry, producer_epoch: int) -> None:
    if producer_epoch < entry.producer_epoch:
        raise InvalidProducerEpochError(
            f"producer {entry.producer_id} is fenced: batch epoch {producer_epoch} is older "
            f"than current epoch {entry.producer_epoch}"
        )


def _require_first_sequence(producer_id: int, base_sequence: int, reason: str) -> None:
    if base_sequence != 0:
        raise OutOfOrderSequenceError(
            f"out of order sequence for producer {producer_id}, which {reason}: "
            f"expected 0, got {base_sequence}"
        )


# --- snapshot encoding --------------------------------------------------------------------


def _encode_entry(entry: ProducerStateEntry) -> bytes:
    head = _PRODUCER.pack(
        entry.producer_id, entry.producer_epoch, entry.last_timestamp_ms, len(entry.batches)
    )
    return head + b"".join(
        _BATCH.pack(b.first_seq, b.last_seq, b.base_offset, b.last_offset_delta, b.max_timestamp_ms)
        for b in entry.batches
    )


def _decode_snapshot(
    cls: type[ProducerStateManager], data: bytes, expected_offset: int | None
) -> ProducerStateManager:
    magic, version, crc = _HEADER.unpack_from(data, 0)
    if magic != SNAPSHOT_MAGIC:
        raise CorruptSnapshotError(f"bad magic {magic!r}, expected {SNAPSHOT_MAGIC!r}")
    if version != SNAPSHOT_VERSION:
        raise CorruptSnapshotError(f"unsupported snapshot version {version}")
    actual_crc = crc32c.crc32c(memoryview(data)[_CRC_COVERED_FROM:])
    if actual_crc != crc:
        raise CorruptSnapshotError(f"CRC mismatch: stored {crc:#010x}, computed {actual_crc:#010x}")
    map_end_offset, count = _BODY_HEADER.unpack_from(data, _HEADER.size)
    if map_end_offset < 0:
        raise CorruptSnapshotError(f"negative map end offset {map_end_offset}")
    if expected_offset is not None and map_end_offset != expected_offset:
        raise CorruptSnapshotError(
            f"map end offset {map_end_offset} does not match file offset {expected_offset}"
        )
    manager = cls(map_end_offset)
    position = _HEADER.size + _BODY_HEADER.size
    # Each producer takes at least one entry and one batch, which bounds `count` by the
    # bytes present before anything is allocated for it.
    if not 0 <= count <= (len(data) - position) // (_PRODUCER.size + _BATCH.size):
        raise CorruptSnapshotError(f"producer count {count} does not fit in {len(data)} bytes")
    for _ in range(count):
        entry, position = _decode_entry(data, position)
        if entry.producer_id in manager._producers:
            raise CorruptSnapshotError(f"producer {entry.producer_id} appears twice")
        manager._producers[entry.producer_id] = entry
    if position != len(data):
        raise CorruptSnapshotError(f"{len(data) - position} trailing bytes")
    return manager


def _decode_entry(data: bytes, position: int) -> tuple[ProducerStateEntry, int]:
    producer_id, epoch, last_timestamp_ms, batch_count = _PRODUCER.unpack_from(data, position)
    position += _PRODUCER.size
    if producer_id < 0 or epoch < 0 or not 1 <= batch_count <= NUM_BATCHES_TO_RETAIN:
        raise CorruptSnapshotError(
            f"invalid producer entry: id {producer_id}, epoch {epoch}, batches {batch_count}"
        )
    entry = ProducerStateEntry(producer_id, epoch, last_timestamp_ms)
    for _ in range(batch_count):
        entry.batches.append(_decode_batch(data, position))
        position += _BATCH.size
    return entry, position


def _decode_batch(data: bytes, position: int) -> BatchMetadata:
    batch = BatchMetadata(*_BATCH.unpack_from(data, position))
    fields = (batch.first_seq, batch.last_seq, batch.base_offset, batch.last_offset_delta)
    if min(fields) < 0:
        raise CorruptSnapshotError(f"invalid batch entry {batch}")
    return batch


# --- snapshot files -----------------------------------------------------------------------


def snapshot_path(directory: Path, offset: int) -> Path:
    """Path of the snapshot for map end offset `offset` in `directory`."""
    return directory / offset_file_name(offset, SNAPSHOT_SUFFIX)


def list_snapshot_offsets(directory: Path) -> list[int]:
    """Offsets of the snapshot files in `directory`, ascending; [] if it does not exist.

    Only names of exactly 20 digits + ".snapshot" count; temporary files do not.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    matches = (_SNAPSHOT_NAME_RE.fullmatch(name) for name in names)
    return sorted(int(m.group(1)) for m in matches if m is not None)


def delete_snapshots_after(directory: Path, offset: int) -> list[Path]:
    """Delete snapshots with an offset > `offset` (after a truncation to `offset`).

    A snapshot at exactly `offset` describes only records below it and stays.
    """
    return _delete_snapshots(directory, (o for o in list_snapshot_offsets(directory) if o > offset))


def delete_snapshots_before(directory: Path, offset: int) -> list[Path]:
    """Delete snapshots with an offset < `offset` (older than the one retention keeps)."""
    return _delete_snapshots(directory, (o for o in list_snapshot_offsets(directory) if o < offset))


def _delete_snapshots(directory: Path, offsets: Iterable[int]) -> list[Path]:
    deleted = []
    try:
        for offset in offsets:
            path = snapshot_path(directory, offset)
            path.unlink(missing_ok=True)
            deleted.append(path)
        # A deletion a crash undoes would bring back a snapshot of truncated records, which
        # a later load could pick once the log grows past its offset again.
        if deleted:
            fsync_directory(directory)
    except OSError as exc:
        raise StorageError(f"cannot delete producer state snapshots in {directory}: {exc}") from exc
    return deleted

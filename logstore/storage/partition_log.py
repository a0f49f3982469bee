"""A partition log: an ordered list of segments with dense offsets.

Invariants:
- Offsets are dense: every offset in `[log_start_offset, log_end_offset)` is in exactly one
  batch, and batches follow each other without gaps in offset or byte position.
- `append` assigns offsets by patching each incoming batch's base offset (bytes 0..8, not
  covered by the CRC); it never decodes or re-encodes records.
- `read` returns whole batches as bytes, starting at the batch that holds the offset.
- Everything below `recovery_point` has been fsynced; after an unclean shutdown, segments
  from the one holding the recovery point onwards are validated batch by batch.
- Retention deletes whole, non-active segments only and then advances `log_start_offset`
  (topics whose cleanup.policy includes delete).
- Compaction (`logstore.storage.log_cleaner`) may replace a sealed segment by a copy holding fewer
  records: same offsets, batches keep their offset ranges (some become sparse or empty),
  so offsets stay dense at batch level.

Replication (`replicated=True`; Kafka's design, KIP-101/279):
- A leader appends with `append(..., leader_epoch=e)`, which stamps `e` into each batch's
  partitionLeaderEpoch (outside the CRC, patched with the base offset); a follower appends
  the leader's batches byte for byte with `append_as_follower`.
- `leader_epoch_cache` (the partition's `leader-epoch-checkpoint`) says where each leader
  epoch starts; it never names an offset at or past the log end or before the log start.
- `high_watermark` is stored: log_start_offset <= high_watermark <= log_end_offset, it only
  rises (`update_high_watermark`) except when `truncate_to` cuts the log below it, and
  retention never deletes a segment above it. Consumers read below it
  (`read(..., max_offset=high_watermark)`). A log that is not replicated keeps
  high_watermark == log_end_offset, as a single broker always did.
- `truncate_to` and `truncate_fully_and_start_at` discard a follower's divergent tail or
  its whole log; a crash in the middle of either leaves a log that opens as a valid log.

Its parts are modules of functions over segments that hold no state: `log_loader`
(opening and recovery), `log_validator` (checks and offset assignment), `segment_policy`
(rolling and retention), `read_range` (where a lock-free read starts and ends),
`segment_files` (crash-safe cuts, swaps and unlinks) and `producer_state_replay`
(idempotent producers' state from batch headers). This class owns the state and the
locks, and calls them.

Thread safety: appends, rolls, flushes and deletions take `_lock`; reads take no lock and
work on a snapshot of the segment list and of the active segment's `end` (its size in
bytes and next offset, published as one value), so a read never waits for an fsync and
never returns a batch at or past the log end offset it reports. Only the active segment
grows: a segment in the list behind it is sealed, and truncation replaces rather than
shrinks one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import record_batch as rb
from logstore.codec.record_batch import BatchHeader
from logstore.errors import LogClosedError
from logstore.storage import producer_state
from logstore.storage.fileutil import fsync_directory
from logstore.storage.leader_epoch_checkpoint import LEADER_EPOCH_CHECKPOINT_FILE, LeaderEpochCache
from logstore.storage.log_config import LogConfig
from logstore.storage.log_loader import RecoveryReport, load_leader_epoch_cache, load_segments
from logstore.storage.log_validator import (
    assign_offsets,
    check_offsets_follow,
    check_producer_batches,
    split_stored_batches,
)
from logstore.storage.producer_state import ProducerStateManager
from logstore.storage.producer_state_replay import (
    load_producer_state,
    replay_producer_state,
    replay_segments,
    update_producer_state,
)
from logstore.storage.read_range import SegmentsView, end_below, locate, offset_at
from logstore.storage.segment import LogSegment
from logstore.storage.segment_files import cut_point, cut_segment, swap_in_copy, unlink_deleted
from logstore.storage.segment_policy import (
    batches_fitting,
    deletable_segments,
    segments_ending_by,
    should_roll,
)

__all__ = ["AppendResult", "FetchResult", "PartitionLog", "RecoveryReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppendResult:
    """What an append did. `log_append_time` is -1 unless the topic stamps LogAppendTime."""

    base_offset: int
    last_offset: int
    log_append_time: int
    duplicate: bool = False


@dataclass(frozen=True)
class FetchResult:
    """Whole batches read from a partition, with the offsets a consumer needs."""

    data: bytes
    high_watermark: int
    log_start_offset: int


class PartitionLog:
    """One partition of a topic, stored in `directory` (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        config: LogConfig,
        *,
        name: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        recovery_point: int = 0,
        clean_shutdown: bool = False,
        replicated: bool = False,
        high_watermark: int | None = None,
    ) -> None:
        """Open (recovering when not `clean_shutdown`) or create the log in `directory`.

        `replicated` makes the high watermark a stored value (see the module docstring),
        starting at `high_watermark` (the last checkpointed one) clamped into the log, or
        at the log start offset when None; a log that is not replicated ignores it.
        """
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name or self.directory.name
        self.config = config
        self._clock = clock
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._closed = False
        #: (segments oldest first, their base offsets): one attribute, replaced whole, so a
        #: lock-free reader always sees a list and offsets that belong together
        self._view: SegmentsView = ((), ())
        #: segments renamed to .deleted, with the time (monotonic ms) they may be closed
        self._pending_deletes: list[tuple[int, LogSegment]] = []
        self.recovery_point = recovery_point
        self._unflushed_messages = 0
        self._last_flush_ms = clock.monotonic_ms()
        self.producer_state = ProducerStateManager()
        #: called (outside the lock) after every append that added records, and when the
        #: high watermark of a replicated log rose: what long-polling consumers wait for
        self.on_append: Callable[[], None] | None = None
        #: segments removed by retention.ms / retention.bytes since the log was opened
        self.retention_deleted_segments = 0
        #: compaction has cleaned the log below this offset (the log manager keeps it in
        #: cleaner-offset-checkpoint across restarts)
        self.cleaner_checkpoint = 0
        #: records compaction removed since the log was opened
        self.compacted_records = 0
        #: whether a cluster replicates this partition (stored high watermark, epochs)
        self.replicated = replicated
        #: where each leader epoch starts (the partition's leader-epoch-checkpoint)
        self.leader_epoch_cache = LeaderEpochCache(self.directory / LEADER_EPOCH_CHECKPOINT_FILE)
        self.recovery_report = self._load(clean_shutdown)
        load_leader_epoch_cache(self.leader_epoch_cache, self._segments, self.name)
        #: a replicated log's high watermark (unused otherwise: it is the log end offset)
        self._high_watermark = self._clamp_high_watermark(
            self.log_start_offset if high_watermark is None else high_watermark
        )

    # --- opening -----------------------------------------------------------------------------

    def _new_segment(self, base_offset: int, *, existing: bool = False) -> LogSegment:
        """Open (existing: read-only indexes, as sealed) or create a segment."""
        return self._segment_in(self.directory, base_offset, writable=not existing)

    def _segment_in(self, directory: Path, base_offset: int, *, writable: bool) -> LogSegment:
        """A segment in `directory` with this log's index settings."""
        return LogSegment(
            directory,
            base_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            max_index_bytes=self.config.segment_index_bytes,
            created_ms=self._clock.now_ms(),
            writable=writable,
        )

    def _load(self, clean_shutdown: bool) -> RecoveryReport:
        """Open the segments on disk, repairing what a crash or damage left behind (see
        `log_loader`), and the producer state they hold; everything is then fsynced."""
        segments, report = load_segments(
            self.directory,
            self.name,
            self._new_segment,
            clean_shutdown=clean_shutdown,
            recovery_point=self.recovery_point,
            clock=self._clock,
        )
        self._set_segments(segments)
        self.recovery_point = self.log_end_offset
        self._rebuild_producer_state()
        return report

    def _rebuild_producer_state(self) -> None:
        """Load the newest usable snapshot, then replay batch headers after it (no records)."""
        state, start = load_producer_state(
            self.directory, self.log_start_offset, self.log_end_offset
        )
        self.producer_state = state
        replay_segments(state, self._segments, start, self.name)
        producer_state.delete_snapshots_after(self.directory, self.log_end_offset)

    def _set_segments(self, segments: Sequence[LogSegment]) -> None:
        # Readers take the view without a lock: always replace it whole, never mutate it.
        self._view = (tuple(segments), tuple(s.base_offset for s in segments))

    @property
    def _segments(self) -> tuple[LogSegment, ...]:
        return self._view[0]

    # --- offsets -----------------------------------------------------------------------------

    @property
    def log_start_offset(self) -> int:
        """The first offset still stored."""
        return self._segments[0].base_offset

    @property
    def log_end_offset(self) -> int:
        """The offset the next appended record will get."""
        return self._segments[-1].next_offset

    @property
    def high_watermark(self) -> int:
        """Last offset a consumer may read + 1: for a replicated log the stored value (every
        in-sync replica has the records below it), otherwise the log end offset."""
        if self.replicated:
            return self._high_watermark
        return self.log_end_offset

    def update_high_watermark(self, offset: int) -> bool:
        """Raise a replicated log's high watermark to `offset`, clamped to
        [log_start_offset, log_end_offset]; return whether it changed.

        It never goes down here (only `truncate_to` lowers it, with the log), so a lower
        `offset` changes nothing. A log that is not replicated has nothing to update.
        """
        if not self.replicated:
            return False
        with self._lock:
            target = self._clamp_high_watermark(offset)
            if target <= self._high_watermark:
                return False
            self._high_watermark = target
        if self.on_append is not None:
            self.on_append()
        return True

    def _clamp_high_watermark(self, offset: int) -> int:
        return max(min(offset, self.log_end_offset), self.log_start_offset)

    def end_offset_for_leader_epoch(self, epoch: int) -> tuple[int, int]:
        """Kafka's OffsetsForLeaderEpoch answer: (largest known epoch <= `epoch`, the offset
        where it ends; the log end offset for the latest), (-1, -1) below the first."""
        return self.leader_epoch_cache.end_offset_for(epoch, self.log_end_offset)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def segments(self) -> list[LogSegment]:
        """A snapshot of the segment list, oldest first."""
        return list(self._segments)

    # --- appending ---------------------------------------------------------------------------

    def append(
        self,
        batches: bytes | bytearray | memoryview,
        *,
        validated_headers: list[BatchHeader] | None = None,
        leader_epoch: int | None = None,
    ) -> AppendResult:
        """Append one or more whole batches; assign offsets; return where they landed.

        The batches are validated first (length, magic, CRC, count, max.message.bytes) and a
        bad one is rejected before any byte reaches the log. An idempotent producer's exact
        duplicate (same producer, epoch and sequences as one of its last five batches)
        returns the original offsets without appending. A caller that has already run
        `split_batches` on exactly these bytes passes its headers to skip a second CRC pass.

        A partition leader passes its `leader_epoch` (>= 0): every batch is stored with it in
        partitionLeaderEpoch and the epoch cache learns that the epoch has started (at the
        latest at this append's base offset). None (a single broker) leaves the field as
        the producer sent it.
        """
        if leader_epoch is not None and leader_epoch < 0:
            raise ValueError(f"a leader epoch is >= 0, got {leader_epoch}")
        view = memoryview(batches).cast("B") if not isinstance(batches, bytes) else batches
        headers = validated_headers or rb.split_batches(view, self.config.max_message_bytes)
        idempotent = check_producer_batches(view, headers, compact=self.config.compact)
        with self._lock:
            if self._closed:
                raise LogClosedError(f"partition {self.name} is closed")
            if idempotent:
                duplicate = self._find_duplicate(headers[0])
                if duplicate is not None:
                    return duplicate
            result = self._append_locked(view, headers, leader_epoch)
        if self._unflushed_messages >= self.config.flush_messages:
            self.flush_up_to(result.last_offset + 1)
        if self.on_append is not None:
            self.on_append()
        return result

    def _find_duplicate(self, header: BatchHeader) -> AppendResult | None:
        seen = self.producer_state.check_and_find_duplicate(
            header.producer_id, header.producer_epoch, header.base_sequence, header.last_sequence
        )
        if seen is None:
            return None
        # On a LogAppendTime topic the stored max timestamp is the original append time.
        append_time = seen.max_timestamp_ms if self._log_append_time_topic() else -1
        return AppendResult(
            seen.base_offset, seen.base_offset + seen.last_offset_delta, append_time, duplicate=True
        )

    def _log_append_time_topic(self) -> bool:
        return self.config.message_timestamp_type == "LogAppendTime"

    def _append_locked(
        self, view: bytes | memoryview, headers: list[BatchHeader], leader_epoch: int | None
    ) -> AppendResult:
        total = len(view)
        next_offset = self.log_end_offset
        last_offset = next_offset + sum(h.record_count for h in headers) - 1
        segment = self._maybe_roll(total, last_offset, len(headers))
        log_append_time = -1
        if self._log_append_time_topic():
            log_append_time = self._clock.now_ms()
        if leader_epoch is not None:
            # Before the batches: a crash between the two leaves an entry past the log end,
            # which opening the log drops, never batches of an epoch the cache lacks.
            self.leader_epoch_cache.assign(leader_epoch, next_offset)
        buffers, final_headers = assign_offsets(
            view, headers, next_offset, log_append_time, leader_epoch
        )
        segment.append(buffers, final_headers)
        state = self.producer_state
        for header in final_headers:
            update_producer_state(state, header)
        state.map_end_offset = segment.next_offset
        self._unflushed_messages += last_offset - next_offset + 1
        return AppendResult(next_offset, last_offset, log_append_time)

    def append_as_follower(self, batches: bytes | bytearray | memoryview) -> AppendResult:
        """Append a leader's batches exactly as it stored them: offsets, leader epochs and
        timestamps stay, nothing is assigned or stamped, and duplicates are not looked for.

        Each batch is validated (framing and CRC; not max.message.bytes, which the leader
        applied), the first must start at the log end offset and each must follow the
        previous one, else InvalidRequestError naming both offsets and nothing is written.
        Idempotent producers' state follows the batches, so a producer retrying at this
        replica once it leads is recognised; the epoch cache learns each batch's epoch.
        The batches may be split over several segments where segment.bytes demands.
        """
        view = memoryview(batches).cast("B") if not isinstance(batches, bytes) else batches
        headers = split_stored_batches(view)
        with self._lock:
            if self._closed:
                raise LogClosedError(f"partition {self.name} is closed")
            expected = check_offsets_follow(headers, self.log_end_offset, self.name)
            mv = memoryview(view)
            position = 0
            start = 0
            while start < len(headers):
                first = headers[start]
                # Roll as `append` would for the first batch, then fill that segment.
                segment = self._maybe_roll(first.size, first.last_offset, 1)
                end, size = batches_fitting(headers, start, segment, self.config.segment_bytes)
                self._append_stored(mv[position : position + size], headers[start:end])
                position += size
                start = end
        if self._unflushed_messages >= self.config.flush_messages:
            self.flush_up_to(expected)
        if self.on_append is not None:
            self.on_append()
        return AppendResult(headers[0].base_offset, headers[-1].last_offset, -1)

    def _append_stored(self, view: memoryview, headers: Sequence[BatchHeader]) -> None:
        """Write batches that already carry their final offsets to the active segment."""
        for header in headers:
            self.leader_epoch_cache.assign(header.partition_leader_epoch, header.base_offset)
        segment = self._segments[-1]
        segment.append([view], headers)
        state = self.producer_state
        for header in headers:
            replay_producer_state(state, header, self.name)
        state.map_end_offset = segment.next_offset
        self._unflushed_messages += headers[-1].next_offset - headers[0].base_offset

    def _maybe_roll(self, incoming_bytes: int, last_offset: int, batches: int) -> LogSegment:
        """The segment to append to, rolling first when size, time, index or offsets demand."""
        active = self._segments[-1]
        if active.size == 0:
            return active
        now_ms = self._clock.now_ms()
        if should_roll(active, incoming_bytes, last_offset, batches, now_ms, self.config):
            return self._roll()
        return active

    def _roll(self) -> LogSegment:
        """Seal the active segment and start a new one at the log end offset."""
        old = self._segments[-1]
        old.seal()
        new = self._new_segment(old.next_offset)
        self._set_segments([*self._segments, new])
        self.recovery_point = max(self.recovery_point, old.next_offset)
        self.producer_state.map_end_offset = new.base_offset
        self.producer_state.write_snapshot(self.directory)
        log.info("%s: rolled to new segment at offset %d", self.name, new.base_offset)
        return new

    def roll(self) -> None:
        """Start a new segment now (if the active one holds anything)."""
        with self._lock:
            if self._segments[-1].size > 0:
                self._roll()

    # --- flushing ----------------------------------------------------------------------------

    def flush_up_to(self, offset: int) -> None:
        """Make every record below `offset` durable (fsync); a no-op if it already is.

        Concurrent callers coalesce: one fsync covers every append written before it
        started, so producers waiting on the same flush share it (group commit).
        """
        if self.recovery_point >= offset:
            return
        with self._flush_lock:
            if self.recovery_point >= offset:
                return
            with self._lock:
                target = self.log_end_offset
                unflushed = [s for s in self._segments if s.next_offset > self.recovery_point]
                self._unflushed_messages = 0
            for segment in unflushed:
                segment.flush()
            self.recovery_point = max(self.recovery_point, target)
            self._last_flush_ms = self._clock.monotonic_ms()

    def flush(self) -> None:
        """fsync everything appended so far."""
        self.flush_up_to(self.log_end_offset)

    def maybe_flush_by_time(self) -> bool:
        """Flush when `flush.ms` has passed since the last flush; return whether it did."""
        elapsed = self._clock.monotonic_ms() - self._last_flush_ms
        if elapsed >= self.config.flush_ms and self.recovery_point < self.log_end_offset:
            self.flush()
            return True
        return False

    # --- reading -----------------------------------------------------------------------------

    def read(self, offset: int, max_bytes: int, *, max_offset: int | None = None) -> FetchResult:
        """Whole batches from the one holding `offset`, up to `max_bytes` (the first batch is
        returned whole even if larger; `max_bytes` <= 0 returns no data, only the offsets).
        Raises OffsetOutOfRangeError outside [log_start_offset, log_end_offset].

        With `max_offset` (a consumer's read: the high watermark) only batches whose last
        offset is below it are returned, so an offset from `max_offset` up to the log end
        offset reads nothing; None (a follower's read) reads up to the log end.
        """
        found, log_end, log_start = locate(self._view, self.name, offset, max_bytes > 0, max_offset)
        data = b""
        if found is not None:
            segment, position, seen = found
            if max_offset is None:
                data = segment.read_batches(position, max_bytes, seen)
            else:
                end = end_below(segment, position, max_bytes, max_offset, seen)
                data = segment.read_bytes(position, end - position, seen)
        high_watermark = self._high_watermark if self.replicated else log_end
        return FetchResult(data, high_watermark, log_start)

    def offset_after_read(
        self, offset: int, max_bytes: int, *, max_offset: int | None = None
    ) -> int:
        """The offset right after the batches `read(offset, max_bytes, max_offset=...)`
        returns now (`offset` itself when it returns none).

        Lets a consumer ask for the fetch after the one it has in flight: batches are
        immutable and only appended, so while the log holds more than that read returns,
        this is exactly where the read ends. Raises OffsetOutOfRangeError outside the log.
        """
        found, _, _ = locate(self._view, self.name, offset, max_bytes > 0, max_offset)
        if found is None:
            return offset
        segment, position, seen = found
        if max_offset is None:
            end = segment.end_of_read(position, max_bytes, seen)
        else:
            end = end_below(segment, position, max_bytes, max_offset, seen)
            if end == position:  # the batch holding `offset` reaches max_offset
                return offset
        return offset_at(segment, end, seen)

    def find_offset_by_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or after `timestamp_ms`, or None."""
        for segment in self._segments:
            found = segment.find_offset_by_timestamp(timestamp_ms)
            if found is not None:
                return found
        return None

    # --- retention ---------------------------------------------------------------------------

    def delete_old_segments(self) -> int:
        """Apply retention.ms and retention.bytes to whole non-active segments.

        A segment expires when its largest record timestamp is older than retention.ms
        (file times are not trusted: they change on copy and restore). Size retention drops
        the oldest segments while the log stays at or above retention.bytes without them.
        A replicated log keeps every segment that reaches the high watermark, as Kafka
        does: records not yet on every in-sync replica are never retention's to drop.
        Returns the number of segments deleted.
        """
        if not self.config.delete:
            return 0  # cleanup.policy=compact alone: old segments are compacted, not deleted
        with self._lock:
            high_watermark = self._high_watermark if self.replicated else None
            doomed = deletable_segments(
                self._segments,
                self.config,
                now_ms=self._clock.now_ms(),
                high_watermark=high_watermark,
            )
            deleted = self._delete_segments(doomed, "retention")
            self.retention_deleted_segments += deleted
            return deleted

    def delete_segments_before(self, offset: int) -> int:
        """Delete whole non-active segments that end at or before `offset`; return count.

        Used to drop a prefix of the log that has been superseded (e.g. an internal topic
        that rewrote its live state after `offset`). A replicated log's high watermark is
        raised to the new log start if it was below it.
        """
        with self._lock:
            doomed = segments_ending_by(self._segments, offset)
            return self._delete_segments(doomed, "prefix deletion")

    def _delete_segments(self, doomed: list[LogSegment], reason: str) -> int:
        """Drop the oldest `len(doomed)` segments (caller holds the lock)."""
        if self._closed or not doomed:
            return 0
        self._set_segments(self._segments[len(doomed) :])
        self._schedule_deletion(doomed, reason)
        producer_state.delete_snapshots_before(self.directory, self.log_start_offset)
        self.leader_epoch_cache.truncate_from_start(self.log_start_offset)
        if self.replicated:
            self._high_watermark = max(self._high_watermark, self.log_start_offset)
        if self.config.file_delete_delay_ms == 0:
            self.close_deleted_segments()
        return len(doomed)

    def _schedule_deletion(self, doomed: Sequence[LogSegment], reason: str) -> None:
        """Rename segments already out of the list to .deleted; they are unlinked after
        file.delete.delay.ms, so reads that hold them finish (caller holds the lock)."""
        due = self._clock.monotonic_ms() + self.config.file_delete_delay_ms
        for segment in doomed:
            segment.rename_to_deleted()
            self._pending_deletes.append((due, segment))
            log.info("%s: %s deleted %s", self.name, reason, segment)

    def close_deleted_segments(self, force: bool = False) -> int:
        """Close and unlink segments whose delete delay has passed (all if `force`)."""
        now = self._clock.monotonic_ms()
        with self._lock:
            ready = [s for due, s in self._pending_deletes if force or due <= now]
            self._pending_deletes = [(d, s) for d, s in self._pending_deletes if s not in ready]
        for segment in ready:
            unlink_deleted(segment)  # not closed: a read may still hold it
        return len(ready)

    # --- compaction --------------------------------------------------------------------------

    def new_work_segment(self, directory: Path, base_offset: int) -> LogSegment:
        """An empty writable segment in `directory` with this log's index settings, for
        building a replacement of the segment at `base_offset`."""
        return self._segment_in(directory, base_offset, writable=True)

    def replace_segment(self, old: LogSegment, copy: LogSegment) -> bool:
        """Put `copy` (sealed, in another directory, same base and next offset) in place of
        the sealed segment `old`; False, changing nothing, if `old` is gone meanwhile
        (retention) or is the active segment.

        Crash safety: `old`'s index files go first, then the copy's .log replaces `old`'s
        in one atomic rename, then the copy's indexes move in; the directory is synced
        after each step. Wherever a crash interrupts this, the directory holds one whole
        .log for the segment (old or new), and an index that is missing is rebuilt from
        it when the log is opened. Readers that took `old` go on reading it through its
        open descriptors.
        """
        if (copy.base_offset, copy.next_offset) != (old.base_offset, old.next_offset):
            raise ValueError(f"{copy} does not cover the offsets of {old}")
        with self._lock:
            segments = list(self._segments)
            if self._closed or old not in segments[:-1]:
                return False
            swap_in_copy(old, copy, self.directory)
            new = self._new_segment(old.base_offset, existing=True)
            new.load_state_from_indexes()
            new.created_ms = old.created_ms
            segments[segments.index(old)] = new
            self._set_segments(segments)
        return True

    # --- truncation (a follower's log) ------------------------------------------------------

    def truncate_to(self, offset: int) -> None:
        """Remove every batch at or after `offset`, so the log can take the leader's batches
        from there (a follower's divergent tail, KIP-101/279).

        When `offset` falls inside a batch, that whole batch goes: the log then ends at the
        batch's base offset, below `offset`. A cut at a segment's first batch removes that
        segment and makes the previous one active again, so the log is laid out as if it
        had never held what was cut. A no-op at or past the log end offset; below
        the log start offset the log is emptied to start at `offset`
        (`truncate_fully_and_start_at`). The epoch cache, producer state, recovery point,
        cleaner checkpoint and high watermark follow the new end.

        Crash safety: later segments are renamed away (and the directory synced) before the
        one holding `offset` is cut and synced, so a crash leaves either the old log, or a
        prefix of it ending at the cut (a segment after a gap is dropped when the log
        opens); the active segment is always re-validated after a crash, and the epoch
        cache and producer snapshots past the log end are dropped when it opens.
        """
        with self._flush_lock, self._lock:
            if self._closed:
                raise LogClosedError(f"partition {self.name} is closed")
            if offset >= self.log_end_offset:
                return
            if offset < self.log_start_offset:
                self._truncate_fully_locked(offset)
                return
            segments = self._segments
            index, position, cut = cut_point(self._view, offset, self.name)
            holder = segments[index]
            later = segments[index + 1 :]
            self._set_segments(segments[: index + 1])
            self._schedule_deletion(list(reversed(later)), "truncation")
            if later:
                fsync_directory(self.directory)
            producer_state.delete_snapshots_after(self.directory, cut)
            self.recovery_point = min(self.recovery_point, cut)
            cut_holder = cut_segment(holder, position, cut, self._new_segment, self.name)
            self._set_segments([*segments[:index], cut_holder])
            self._after_truncation(cut)
            self.leader_epoch_cache.truncate_from_end(cut)
        if self.config.file_delete_delay_ms == 0:
            self.close_deleted_segments()
        log.info("%s: truncated to offset %d (asked for %d)", self.name, cut, offset)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete every segment and start an empty log at `offset` (>= 0): a follower so far
        behind that its leader's log starts past its end. The epoch cache is cleared and
        producer state forgotten; the high watermark and recovery point become `offset`.

        Crash safety: the new segment is created before the old ones are renamed away when
        their names differ, so a crash leaves the old log (the new empty segment after a
        gap is dropped when the log opens) or the new one; when a segment of the old log
        starts exactly at `offset` it must go first, and a crash right then may leave an
        empty log, which is valid too.
        """
        if offset < 0:
            raise ValueError(f"a log starts at an offset >= 0, got {offset}")
        with self._flush_lock, self._lock:
            if self._closed:
                raise LogClosedError(f"partition {self.name} is closed")
            self._truncate_fully_locked(offset)
        if self.config.file_delete_delay_ms == 0:
            self.close_deleted_segments()

    def _truncate_fully_locked(self, offset: int) -> None:
        old = self._segments
        if any(s.base_offset == offset for s in old):
            self._schedule_deletion(old, "truncation")
            fresh = self._new_segment(offset)
        else:
            fresh = self._new_segment(offset)
            fsync_directory(self.directory)
            self._schedule_deletion(old, "truncation")
        fsync_directory(self.directory)
        self._set_segments([fresh])
        producer_state.delete_snapshots_after(self.directory, -1)
        self.recovery_point = offset
        self._after_truncation(offset)
        self.leader_epoch_cache.clear()
        log.info("%s: emptied and restarted at offset %d", self.name, offset)

    def _after_truncation(self, end: int) -> None:
        """Make what describes the log agree with its new end `end` (caller holds locks)."""
        self._unflushed_messages = 0
        self._rebuild_producer_state()
        self.cleaner_checkpoint = min(self.cleaner_checkpoint, end)
        if self.replicated:
            self._high_watermark = self._clamp_high_watermark(min(self._high_watermark, end))

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Flush, seal the active segment's indexes, snapshot producer state, close files.

        Locks are taken in flush_up_to's order (flush lock, then log lock), never the other
        way round, so a close racing a producer's acks=all flush cannot deadlock.
        """
        with self._flush_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            for segment in self._segments:
                if segment.next_offset > self.recovery_point:
                    segment.flush()
            self.recovery_point = self.log_end_offset
            self.producer_state.map_end_offset = self.log_end_offset
            self.producer_state.write_snapshot(self.directory)
            for segment in self._segments:
                segment.close()
        self.close_deleted_segments(force=True)

    def close_for_delete(self) -> None:
        """Stop taking appends: the partition is about to be removed. Files close when the
        last reader lets go of them (see `close_deleted_segments`)."""
        with self._lock:
            self._closed = True
        self.close_deleted_segments(force=True)

    def release_files(self) -> None:
        """Close every descriptor at once, without syncing: only for a log that no reader
        can have seen (e.g. a partition whose creation failed)."""
        with self._lock:
            self._closed = True
            for segment in self._segments:
                segment.release()

    def expire_producers(self, now_ms: int, expiration_ms: int) -> int:
        """Forget idempotent producers idle for longer than `expiration_ms`."""
        with self._lock:
            return self.producer_state.remove_expired(now_ms, expiration_ms)

    def __repr__(self) -> str:
        return (
            f"PartitionLog({self.name}, start={self.log_start_offset}, "
            f"end={self.log_end_offset}, segments={len(self._segments)})"
        )

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

Thread safety: appends, rolls, flushes and deletions take `_lock`; reads take no lock and
work on a snapshot of the segment list and of each segment's size, so a read never waits
for an fsync.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from logstore.clock import SYSTEM_CLOCK, Clock
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec.record_batch import BatchHeader
from logstore.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRequestError,
    LogClosedError,
    OffsetOutOfRangeError,
)
from logstore.storage import producer_state
from logstore.storage.fileutil import fsync_directory
from logstore.storage.log_config import LogConfig
from logstore.storage.offset_index import CorruptIndexError
from logstore.storage.producer_state import ProducerStateManager
from logstore.storage.segment import LogSegment

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


@dataclass(frozen=True)
class RecoveryReport:
    """What opening the log did: bytes cut from torn tails, segments dropped, etc.

    `rebuilt_indexes` counts every segment re-scanned to rebuild its indexes, including
    the routine re-scan of what was written since the last flush after an unclean
    shutdown; `damaged_indexes` counts only those whose index files were missing or
    corrupt, so a repair can be told from routine recovery.
    """

    recovered: bool
    truncated_bytes: int
    deleted_segments: int
    rebuilt_indexes: int
    stray_files: int
    damaged_indexes: int = 0

    @property
    def repaired_anything(self) -> bool:
        """Whether recovery found damage; re-scanning an intact unflushed tail is not."""
        return bool(self.repairs())

    def repairs(self) -> list[str]:
        """What was found damaged and put right, in words (bytes); empty when the log was
        intact, even if its unflushed tail was re-scanned."""
        found = []
        if self.truncated_bytes:
            found.append(f"dropped {self.truncated_bytes} bytes of torn tail")
        if self.deleted_segments:
            found.append(f"deleted {_count(self.deleted_segments, 'segment')} past the damage")
        if self.damaged_indexes:
            found.append(f"rebuilt {_count(self.damaged_indexes, 'missing or corrupt index')}")
        if self.stray_files:
            found.append(f"removed {_count(self.stray_files, 'stray file')}")
        return found


def _count(n: int, noun: str) -> str:
    """'1 segment', '2 segments': plurals for log lines."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith("x") else f"{n} {noun}s"


def _require_keys(view: bytes | memoryview, headers: Sequence[BatchHeader]) -> None:
    """A compacted topic keeps the latest record per key: a record without one is refused,
    as Kafka does (the only place the broker decodes records, and only for such topics)."""
    position = 0
    for header in headers:
        for record in rb.decode_batch(view, position, verify_crc=False).records:
            if record.key is None:
                raise InvalidRequestError(
                    "a compacted topic (cleanup.policy=compact) cannot accept a record "
                    "without a key"
                )
        position += header.size


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
    ) -> None:
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
        self._view: tuple[tuple[LogSegment, ...], tuple[int, ...]] = ((), ())
        #: segments renamed to .deleted, with the time (monotonic ms) they may be closed
        self._pending_deletes: list[tuple[int, LogSegment]] = []
        self.recovery_point = recovery_point
        self._unflushed_messages = 0
        self._last_flush_ms = clock.monotonic_ms()
        self.producer_state = ProducerStateManager()
        #: called (outside the lock) after every append that added records
        self.on_append: Callable[[], None] | None = None
        #: segments removed by retention.ms / retention.bytes since the log was opened
        self.retention_deleted_segments = 0
        #: compaction has cleaned the log below this offset (the log manager keeps it in
        #: cleaner-offset-checkpoint across restarts)
        self.cleaner_checkpoint = 0
        #: records compaction removed since the log was opened
        self.compacted_records = 0
        self.recovery_report = self._load(clean_shutdown)

    # --- opening -----------------------------------------------------------------------------

    def _new_segment(self, base_offset: int, *, existing: bool = False) -> LogSegment:
        """Open (existing: read-only indexes, as sealed) or create a segment."""
        return LogSegment(
            self.directory,
            base_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            max_index_bytes=self.config.segment_index_bytes,
            created_ms=self._clock.now_ms(),
            writable=not existing,
        )

    def _remove_stray_files(self) -> int:
        """Delete leftovers of interrupted operations and index files without a .log."""
        removed = 0
        stray_suffixes = (fmt.DELETED_SUFFIX, fmt.CLEANED_SUFFIX, fmt.SWAP_SUFFIX, fmt.TEMP_SUFFIX)
        log_bases = {p.stem for p in self.directory.glob("*" + fmt.LOG_SUFFIX)}
        for path in sorted(self.directory.iterdir()):
            orphan_index = (
                path.suffix in (fmt.INDEX_SUFFIX, fmt.TIME_INDEX_SUFFIX)
                and path.stem not in log_bases
            )
            if path.name.endswith(stray_suffixes) or orphan_index:
                log.debug("%s: removing stray file %s", self.name, path.name)
                if path.is_dir():  # the log cleaner's work directory
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _segment_bases_on_disk(self) -> list[int]:
        bases = []
        for path in self.directory.glob("*" + fmt.LOG_SUFFIX):
            stem = path.stem
            if len(stem) == fmt.OFFSET_NAME_DIGITS and stem.isdigit():
                bases.append(int(stem))
            else:
                log.warning("%s: ignoring unexpected file %s", self.name, path.name)
        return sorted(bases)

    def _load(self, clean_shutdown: bool) -> RecoveryReport:
        """Open the segments on disk, repairing what a crash or damage left behind.

        Each repair is logged at DEBUG with the file it touched; the returned report is what
        the log manager tells operators, as one WARNING line per repaired partition, so a
        repair is never warned about twice.
        """
        stray = self._remove_stray_files()
        bases = self._segment_bases_on_disk()
        index_missing = {
            base
            for base in bases
            if not (self.directory / fmt.offset_file_name(base, fmt.INDEX_SUFFIX)).exists()
            or not (self.directory / fmt.offset_file_name(base, fmt.TIME_INDEX_SUFFIX)).exists()
        }
        segments = [self._new_segment(base, existing=True) for base in bases]
        if not segments:
            segments = [self._new_segment(0)]
        self._set_segments(segments)
        rebuilt = 0
        damaged = 0
        truncated = 0
        deleted = 0
        recovered = not clean_shutdown
        for i, segment in enumerate(segments):
            needs_recovery = not clean_shutdown and (
                i == len(segments) - 1 or segments[i + 1].base_offset > self.recovery_point
            )
            if not needs_recovery and segment.base_offset not in index_missing:
                try:
                    segment.load_state_from_indexes()
                    continue
                except (CorruptIndexError, CorruptRecordError) as exc:
                    log.debug("%s: rebuilding index of %s: %s", self.name, segment, exc)
                    damaged += 1
            elif segment.base_offset in index_missing:
                log.debug("%s: rebuilding missing index of %s", self.name, segment.log_path.name)
                damaged += 1
            rebuilt += 1
            # Structure and CRC only: the topic's max.message.bytes may have been lowered
            # since these batches were accepted, and they must not be cut for it.
            cut = segment.recover()
            if i < len(segments) - 1 and not cut:
                segment.seal()
            if cut:
                log.debug(
                    "%s: truncated %d invalid bytes from the end of %s",
                    self.name,
                    cut,
                    segment.log_path.name,
                )
                truncated += cut
                deleted += self._drop_segments_after(i)
                break
        deleted += self._check_continuity()
        self._finish_load()
        return RecoveryReport(recovered, truncated, deleted, rebuilt, stray, damaged)

    def _drop_segments_after(self, index: int) -> int:
        """Delete every segment after `index` (they follow a torn write, so are not valid)."""
        doomed = self._segments[index + 1 :]
        for segment in doomed:
            log.debug("%s: deleting %s, which follows a torn write", self.name, segment)
            segment.close_quietly()
            for path in segment.paths():
                path.unlink(missing_ok=True)
        self._set_segments(self._segments[: index + 1])
        return len(doomed)

    def _check_continuity(self) -> int:
        """Segments must chain: each starts where the previous ends. Cut at the first gap."""
        for i in range(len(self._segments) - 1):
            if self._segments[i].next_offset != self._segments[i + 1].base_offset:
                log.debug(
                    "%s: %s ends at offset %d but the next segment starts at %d",
                    self.name,
                    self._segments[i],
                    self._segments[i].next_offset,
                    self._segments[i + 1].base_offset,
                )
                return self._drop_segments_after(i)
        return 0

    def _finish_load(self) -> None:
        active = self._segments[-1]
        first_ts = active.first_batch_timestamp()
        active.created_ms = self._clock.now_ms() if first_ts is None else first_ts
        active.make_writable()
        self.recovery_point = min(max(self.recovery_point, 0), self.log_end_offset)
        if self.recovery_point < self.log_end_offset:
            # Everything that survived validation is on disk now; make that durable.
            active.flush()
        self.recovery_point = self.log_end_offset
        self._rebuild_producer_state()

    def _rebuild_producer_state(self) -> None:
        """Load the newest usable snapshot, then replay batch headers after it (no records)."""
        loaded = ProducerStateManager.load_latest_snapshot(self.directory, self.log_end_offset)
        for path in loaded.corrupt:
            path.unlink(missing_ok=True)
        state = loaded.manager
        start = self.log_start_offset
        if state is not None and state.map_end_offset >= start:
            self.producer_state = state
            start = state.map_end_offset
        else:
            self.producer_state = ProducerStateManager()
        for segment in self._segments:
            if segment.next_offset <= start:
                continue
            for _, header in segment.iter_headers(0):
                if header.base_offset >= start:
                    self._replay_producer_state(header)
        self.producer_state.map_end_offset = self.log_end_offset
        producer_state.delete_snapshots_after(self.directory, self.log_end_offset)

    def _replay_producer_state(self, header: BatchHeader) -> None:
        """Like `_update_producer_state`, but the log is the truth: an epoch that went back
        (possible once a producer's state expired) replaces the entry instead of failing."""
        try:
            self._update_producer_state(header)
        except InvalidProducerEpochError:
            log.warning(
                "%s: producer %d goes back to epoch %d at offset %d; taking the log's order",
                self.name,
                header.producer_id,
                header.producer_epoch,
                header.base_offset,
            )
            self.producer_state.forget(header.producer_id)
            self._update_producer_state(header)

    def _update_producer_state(self, header: BatchHeader) -> None:
        if header.producer_id < 0:
            return
        self.producer_state.update(
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            header.last_sequence,
            header.base_offset,
            header.last_offset_delta,
            header.max_timestamp,
        )

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
        """Last offset a consumer may read + 1 (a single broker: the log end offset)."""
        return self.log_end_offset

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
    ) -> AppendResult:
        """Append one or more whole batches; assign offsets; return where they landed.

        The batches are validated first (length, magic, CRC, count, max.message.bytes) and a
        bad one is rejected before any byte reaches the log. An idempotent producer's exact
        duplicate (same producer, epoch and sequences as one of its last five batches)
        returns the original offsets without appending. A caller that has already run
        `split_batches` on exactly these bytes passes its headers to skip a second CRC pass.
        """
        view = memoryview(batches).cast("B") if not isinstance(batches, bytes) else batches
        headers = validated_headers or rb.split_batches(view, self.config.max_message_bytes)
        if self.config.compact:
            _require_keys(view, headers)
        idempotent = any(h.producer_id >= 0 for h in headers)
        if idempotent and len(headers) > 1:
            raise InvalidRequestError(
                "an idempotent producer must send one batch per partition per request"
            )
        with self._lock:
            if self._closed:
                raise LogClosedError(f"partition {self.name} is closed")
            if idempotent:
                duplicate = self._find_duplicate(headers[0])
                if duplicate is not None:
                    return duplicate
            result = self._append_locked(view, headers)
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

    def _append_locked(self, view: bytes | memoryview, headers: list[BatchHeader]) -> AppendResult:
        total = len(view)
        next_offset = self.log_end_offset
        last_offset = next_offset + sum(h.record_count for h in headers) - 1
        segment = self._maybe_roll(total, last_offset, len(headers))
        log_append_time = -1
        if self._log_append_time_topic():
            log_append_time = self._clock.now_ms()
        buffers, final_headers = self._assign_offsets(view, headers, next_offset, log_append_time)
        segment.append(buffers, final_headers)
        for header in final_headers:
            self._update_producer_state(header)
        self.producer_state.map_end_offset = segment.next_offset
        self._unflushed_messages += last_offset - next_offset + 1
        return AppendResult(next_offset, last_offset, log_append_time)

    @staticmethod
    def _assign_offsets(
        view: bytes | memoryview,
        headers: Sequence[BatchHeader],
        next_offset: int,
        log_append_time: int,
    ) -> tuple[list[bytes | memoryview], list[BatchHeader]]:
        """Buffers to write (new 8-byte base offsets + untouched rest) and final headers.

        Only the 8 offset bytes are new; the rest of each batch is passed through as a
        memoryview, so a 1 MiB batch is not copied before it reaches the file. LogAppendTime
        topics rewrite the timestamp fields and CRC, which needs one copy per batch.
        """
        buffers: list[bytes | memoryview] = []
        final_headers: list[BatchHeader] = []
        mv = memoryview(view)
        pos = 0
        for header in headers:
            size = header.size
            if log_append_time >= 0:
                copy = bytearray(mv[pos : pos + size])
                rb.set_base_offset(copy, 0, next_offset)
                rb.set_log_append_time(copy, 0, size, log_append_time)
                buffers.append(copy)
                header = rb.read_header(copy)
            else:
                buffers.append(fmt.INT64.pack(next_offset))
                buffers.append(mv[pos + 8 : pos + size])
                header = header._replace(base_offset=next_offset)
            final_headers.append(header)
            next_offset += header.record_count
            pos += size
        return buffers, final_headers

    def _maybe_roll(self, incoming_bytes: int, last_offset: int, batches: int) -> LogSegment:
        """The segment to append to, rolling first when size, time, index or offsets demand."""
        active = self._segments[-1]
        if active.size == 0:
            return active
        too_big = active.size + incoming_bytes > self.config.segment_bytes
        too_old = self._clock.now_ms() - active.created_ms > self.config.segment_ms
        index_full = not active.has_index_room(batches)
        if too_big or too_old or index_full or not active.can_hold(last_offset):
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

    def read(self, offset: int, max_bytes: int) -> FetchResult:
        """Whole batches from the one holding `offset`, up to `max_bytes` (the first batch is
        returned whole even if larger; `max_bytes` <= 0 returns no data, only the offsets).
        Raises OffsetOutOfRangeError outside the log."""
        found, high_watermark, log_start = self._locate(offset, find=max_bytes > 0)
        data = b""
        if found is not None:
            segment, position = found
            data = segment.read_batches(position, max_bytes)
        return FetchResult(data, high_watermark, log_start)

    def offset_after_read(self, offset: int, max_bytes: int) -> int:
        """The offset right after the batches `read(offset, max_bytes)` returns now.

        Lets a consumer ask for the fetch after the one it has in flight: batches are
        immutable and only appended, so while the log holds more than that read returns,
        this is exactly where the read ends. Raises OffsetOutOfRangeError outside the log.
        """
        found, high_watermark, _ = self._locate(offset, find=max_bytes > 0)
        if max_bytes <= 0:
            return offset
        if found is None:
            return high_watermark
        segment, position = found
        return self._offset_at(segment, segment.end_of_read(position, max_bytes))

    def _locate(
        self, offset: int, find: bool = True
    ) -> tuple[tuple[LogSegment, int] | None, int, int]:
        """((segment, position) of the batch holding `offset`, or None at the end of the log
        or when not `find`; high watermark; log start offset). Raises OffsetOutOfRangeError
        outside the log."""
        segments, base_offsets = self._view
        log_start = segments[0].base_offset
        high_watermark = segments[-1].next_offset
        if offset < log_start or offset > high_watermark:
            raise OffsetOutOfRangeError(self.name, offset, log_start, high_watermark)
        if find and offset < high_watermark:
            index = max(bisect.bisect_right(base_offsets, offset) - 1, 0)
            for segment in segments[index:]:
                found = segment.find_batch(offset)
                if found is not None:
                    return (segment, found[0]), high_watermark, log_start
        return None, high_watermark, log_start

    @staticmethod
    def _offset_at(segment: LogSegment, position: int) -> int:
        """The base offset of the batch at `position` of `segment` (a batch boundary), or the
        segment's end offset when `position` is its end."""
        head = segment.read_bytes(position, fmt.BATCH_HEADER_SIZE)
        if len(head) < fmt.BATCH_HEADER_SIZE:
            return segment.next_offset
        return rb.read_header(head, 0).base_offset

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
        Returns the number of segments deleted.
        """
        if not self.config.delete:
            return 0  # cleanup.policy=compact alone: old segments are compacted, not deleted
        with self._lock:
            deleted = self._delete_segments(self._segments_to_delete(), "retention")
            self.retention_deleted_segments += deleted
            return deleted

    def delete_segments_before(self, offset: int) -> int:
        """Delete whole non-active segments that end at or before `offset`; return count.

        Used to drop a prefix of the log that has been superseded (e.g. an internal topic
        that rewrote its live state after `offset`).
        """
        with self._lock:
            doomed = []
            for segment in self._segments[:-1]:
                if segment.next_offset > offset:
                    break
                doomed.append(segment)
            return self._delete_segments(doomed, "prefix deletion")

    def _delete_segments(self, doomed: list[LogSegment], reason: str) -> int:
        """Drop the oldest `len(doomed)` segments (caller holds the lock)."""
        if self._closed or not doomed:
            return 0
        self._set_segments(self._segments[len(doomed) :])
        due = self._clock.monotonic_ms() + self.config.file_delete_delay_ms
        for segment in doomed:
            segment.rename_to_deleted()
            self._pending_deletes.append((due, segment))
            log.info("%s: %s deleted %s", self.name, reason, segment)
        producer_state.delete_snapshots_before(self.directory, self.log_start_offset)
        if self.config.file_delete_delay_ms == 0:
            self.close_deleted_segments()
        return len(doomed)

    def _segments_to_delete(self) -> list[LogSegment]:
        now = self._clock.now_ms()
        retention_ms = self.config.retention_ms
        retention_bytes = self.config.retention_bytes
        excess = self.size_bytes - retention_bytes if retention_bytes >= 0 else 0
        doomed: list[LogSegment] = []
        for segment in self._segments[:-1]:  # never the active segment
            expired = retention_ms >= 0 and now - segment.max_timestamp > retention_ms
            oversize = retention_bytes >= 0 and excess - segment.size >= 0
            if not (expired or oversize):
                break
            excess -= segment.size
            doomed.append(segment)
        return doomed

    def close_deleted_segments(self, force: bool = False) -> int:
        """Close and unlink segments whose delete delay has passed (all if `force`)."""
        now = self._clock.monotonic_ms()
        with self._lock:
            ready = [s for due, s in self._pending_deletes if force or due <= now]
            self._pending_deletes = [(d, s) for d, s in self._pending_deletes if s not in ready]
        for segment in ready:
            # Unlink only: a read that took the segment before it was deleted may still be
            # using its descriptors. They close when the last reference goes (LogSegment.
            # __del__), so a descriptor number is never reused under a reader's feet.
            for path in segment.paths():
                Path(str(path) + fmt.DELETED_SUFFIX).unlink(missing_ok=True)
        return len(ready)

    # --- compaction --------------------------------------------------------------------------

    def new_work_segment(self, directory: Path, base_offset: int) -> LogSegment:
        """An empty writable segment in `directory` with this log's index settings, for
        building a replacement of the segment at `base_offset`."""
        return LogSegment(
            directory,
            base_offset,
            index_interval_bytes=self.config.index_interval_bytes,
            max_index_bytes=self.config.segment_index_bytes,
            created_ms=self._clock.now_ms(),
        )

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
            copy.close()
            for path in (old.offset_index.path, old.time_index.path):
                path.unlink(missing_ok=True)
            fsync_directory(self.directory)
            os.replace(copy.log_path, old.log_path)
            fsync_directory(self.directory)
            os.replace(copy.offset_index.path, old.offset_index.path)
            os.replace(copy.time_index.path, old.time_index.path)
            fsync_directory(self.directory)
            new = self._new_segment(old.base_offset, existing=True)
            new.load_state_from_indexes()
            new.created_ms = old.created_ms
            segments[segments.index(old)] = new
            self._set_segments(segments)
        return True

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

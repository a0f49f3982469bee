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

Thread safety: appends, rolls, flushes and deletions take `_lock`; reads take no lock and
work on a snapshot of the segment list and of the active segment's `end` (its size in
bytes and next offset, published as one value), so a read never waits for an fsync and
never returns a batch at or past the log end offset it reports. Only the active segment
grows: a segment in the list behind it is sealed, and truncation replaces rather than
shrinks one.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
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
from logstore.storage.leader_epoch_checkpoint import LEADER_EPOCH_CHECKPOINT_FILE, LeaderEpochCache
from logstore.storage.log_config import LogConfig
from logstore.storage.offset_index import CorruptIndexError
from logstore.storage.producer_state import ProducerStateManager
from logstore.storage.segment import LogSegment, SegmentEnd

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


def _split_stored_batches(view: bytes | memoryview) -> list[BatchHeader]:
    """Validate that `view` is whole, valid batches as a log stores them (compaction may
    have thinned them: fewer records than offsets); return their headers."""
    headers: list[BatchHeader] = []
    position = 0
    while position < len(view):
        header = rb.validate_batch(view, position, dense=False)
        headers.append(header)
        position += header.size
    if not headers:
        raise CorruptRecordError("no record batch in an empty buffer")
    return headers


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
        self._view: tuple[tuple[LogSegment, ...], tuple[int, ...]] = ((), ())
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
        self._load_leader_epochs()
        #: a replicated log's high watermark (unused otherwise: it is the log end offset)
        self._high_watermark = self._clamp_high_watermark(
            self.log_start_offset if high_watermark is None else high_watermark
        )

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

    def _load_leader_epochs(self) -> None:
        """Make the leader epoch cache agree with the log as opened.

        A missing or corrupt checkpoint is rebuilt from the batch headers when the log
        holds stamped batches (a log that never had a leader epoch is not scanned: only
        its last batch is looked at). Otherwise entries past the log end (a crash after a
        truncation, before the cache followed) or before the log start are dropped.
        """
        cache = self.leader_epoch_cache
        if cache.needs_rebuild:
            if cache.path.exists() or self._last_batch_leader_epoch() >= 0:
                log.info("%s: rebuilding %s from the log", self.name, cache.path.name)
                cache.rebuild(self._scan_leader_epochs())
            return
        cache.truncate_from_end(self.log_end_offset)
        cache.truncate_from_start(self.log_start_offset)

    def _last_batch_leader_epoch(self) -> int:
        """partitionLeaderEpoch of the log's last batch; -1 for an empty log."""
        for segment in reversed(self._segments):
            if segment.next_offset > segment.base_offset:
                found = segment.find_batch(segment.next_offset - 1)
                if found is not None:
                    return found[1].partition_leader_epoch
        return fmt.NO_PARTITION_LEADER_EPOCH

    def _scan_leader_epochs(self) -> Iterator[tuple[int, int]]:
        """(partitionLeaderEpoch, base offset) of every batch, in log order (headers only)."""
        for segment in self._segments:
            for _, header in segment.iter_headers(0):
                yield header.partition_leader_epoch, header.base_offset

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
        buffers, final_headers = self._assign_offsets(
            view, headers, next_offset, log_append_time, leader_epoch
        )
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
        leader_epoch: int | None = None,
    ) -> tuple[list[bytes | memoryview], list[BatchHeader]]:
        """Buffers to write (new 8-byte base offsets + untouched rest) and final headers.

        Only the 8 offset bytes are new (17 with a `leader_epoch`: offset, length, epoch and
        magic, none covered by the CRC); the rest of each batch is passed through as a
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
                if leader_epoch is not None:
                    rb.set_partition_leader_epoch(copy, 0, leader_epoch)
                rb.set_log_append_time(copy, 0, size, log_append_time)
                buffers.append(copy)
                header = rb.read_header(copy)
            elif leader_epoch is None:
                buffers.append(fmt.INT64.pack(next_offset))
                buffers.append(mv[pos + 8 : pos + size])
                header = header._replace(base_offset=next_offset)
            else:
                prefix = fmt.BATCH_PREFIX.pack(
                    next_offset, header.batch_length, leader_epoch, header.magic
                )
                buffers.append(prefix)
                buffers.append(mv[pos + fmt.BATCH_PREFIX.size : pos + size])
                header = header._replace(
                    base_offset=next_offset, partition_leader_epoch=leader_epoch
                )
            final_headers.append(header)
            next_offset += header.record_count
            pos += size
        return buffers, final_headers

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
        headers = _split_stored_batches(view)
        with self._lock:
            if self._closed:
                raise LogClosedError(f"partition {self.name} is closed")
            expected = self.log_end_offset
            for i, header in enumerate(headers):
                if header.base_offset != expected:
                    where = "the log end offset" if i == 0 else "the previous batch's end"
                    raise InvalidRequestError(
                        f"{self.name}: a replicated batch starts at offset "
                        f"{header.base_offset}, but {where} is {expected}"
                    )
                expected = header.next_offset
            mv = memoryview(view)
            position = 0
            start = 0
            while start < len(headers):
                end = self._batches_fitting(headers, start)
                size = sum(h.size for h in headers[start:end])
                self._append_stored(mv[position : position + size], headers[start:end])
                position += size
                start = end
        if self._unflushed_messages >= self.config.flush_messages:
            self.flush_up_to(expected)
        if self.on_append is not None:
            self.on_append()
        return AppendResult(headers[0].base_offset, headers[-1].last_offset, -1)

    def _batches_fitting(self, headers: Sequence[BatchHeader], start: int) -> int:
        """The end (exclusive) of the run of batches from `start` that one segment takes
        after rolling as `append` would for the first of them: at least one batch."""
        first = headers[start]
        segment = self._maybe_roll(first.size, first.last_offset, 1)
        room = self.config.segment_bytes - segment.size
        end = start
        total = 0
        while end < len(headers):
            header = headers[end]
            fits = total + header.size <= room and segment.can_hold(header.last_offset)
            if end > start and not (fits and segment.has_index_room(end - start + 1)):
                break
            total += header.size
            end += 1
        return end

    def _append_stored(self, view: memoryview, headers: Sequence[BatchHeader]) -> None:
        """Write batches that already carry their final offsets to the active segment."""
        for header in headers:
            self.leader_epoch_cache.assign(header.partition_leader_epoch, header.base_offset)
        segment = self._segments[-1]
        segment.append([view], headers)
        for header in headers:
            self._replay_producer_state(header)
        self.producer_state.map_end_offset = segment.next_offset
        self._unflushed_messages += headers[-1].next_offset - headers[0].base_offset

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

    def read(self, offset: int, max_bytes: int, *, max_offset: int | None = None) -> FetchResult:
        """Whole batches from the one holding `offset`, up to `max_bytes` (the first batch is
        returned whole even if larger; `max_bytes` <= 0 returns no data, only the offsets).
        Raises OffsetOutOfRangeError outside [log_start_offset, log_end_offset].

        With `max_offset` (a consumer's read: the high watermark) only batches whose last
        offset is below it are returned, so an offset from `max_offset` up to the log end
        offset reads nothing; None (a follower's read) reads up to the log end.
        """
        found, log_end, log_start = self._locate(offset, max_bytes > 0, max_offset)
        data = b""
        if found is not None:
            segment, position, seen = found
            if max_offset is None:
                data = segment.read_batches(position, max_bytes, seen)
            else:
                end = self._end_below(segment, position, max_bytes, max_offset, seen)
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
        found, _, _ = self._locate(offset, max_bytes > 0, max_offset)
        if found is None:
            return offset
        segment, position, seen = found
        if max_offset is None:
            end = segment.end_of_read(position, max_bytes, seen)
        else:
            end = self._end_below(segment, position, max_bytes, max_offset, seen)
            if end == position:  # the batch holding `offset` reaches max_offset
                return offset
        return self._offset_at(segment, end, seen)

    @staticmethod
    def _end_below(
        segment: LogSegment, position: int, max_bytes: int, max_offset: int, seen: SegmentEnd
    ) -> int:
        """Where (bytes) a read from the batch at `position` of `segment` ends when it may
        return only batches whose last offset is below `max_offset`: as `end_of_read`,
        but never past the start of the batch holding `max_offset`.

        Lock-free: the bound is a batch boundary within `seen`, the segment's end taken with
        the log end offset. When `max_offset` is at or past that end, the bound is the end
        itself (no header walk), so a batch appended meanwhile is left for the next read.
        """
        size, next_offset = seen
        if max_offset < next_offset:
            holder = segment.find_batch(max_offset, seen)
            bound = position if holder is None else holder[0]
        else:
            bound = size
        if bound <= position:
            return position
        return segment.end_of_read(position, min(max_bytes, bound - position), seen)

    def _locate(
        self, offset: int, find: bool = True, max_offset: int | None = None
    ) -> tuple[tuple[LogSegment, int, SegmentEnd] | None, int, int]:
        """((segment, position of the batch holding `offset`, the segment's end to read up
        to), or None at the end of the log, at or past `max_offset`, or when not `find`;
        log end offset; log start offset). Raises OffsetOutOfRangeError outside the log.

        The log end offset and the active segment's readable bytes come from one `end`
        value, so whatever the caller reads within that end holds only offsets below the
        log end offset returned.
        """
        segments, base_offsets = self._view
        active = segments[-1]
        active_end = active.end
        log_start = segments[0].base_offset
        log_end = active_end[1]
        if offset < log_start or offset > log_end:
            raise OffsetOutOfRangeError(self.name, offset, log_start, log_end)
        limit = log_end if max_offset is None else min(max_offset, log_end)
        if find and offset < limit:
            index = max(bisect.bisect_right(base_offsets, offset) - 1, 0)
            for segment in segments[index:]:
                seen = active_end if segment is active else segment.end
                found = segment.find_batch(offset, seen)
                if found is not None:
                    return (segment, found[0], seen), log_end, log_start
        return None, log_end, log_start

    @staticmethod
    def _offset_at(segment: LogSegment, position: int, seen: SegmentEnd) -> int:
        """The base offset of the batch at `position` of `segment` (a batch boundary), or
        the next offset in `seen` when `position` is the size in `seen`."""
        size, next_offset = seen
        if position >= size:
            return next_offset
        head = segment.read_bytes(position, fmt.BATCH_HEADER_SIZE, seen)
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
        A replicated log keeps every segment that reaches the high watermark, as Kafka
        does: records not yet on every in-sync replica are never retention's to drop.
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
        that rewrote its live state after `offset`). A replicated log's high watermark is
        raised to the new log start if it was below it.
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
            if self.replicated and segment.next_offset > self._high_watermark:
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
            segments, base_offsets = self._view
            index = bisect.bisect_right(base_offsets, offset) - 1
            holder = segments[index]
            found = holder.find_batch(offset)
            if found is None:  # unreachable while offsets are dense: keep the log as it is
                raise CorruptRecordError(f"{self.name}: no batch holds offset {offset}")
            position, header = found
            cut = header.base_offset
            if position == 0 and index > 0:
                # Cut at a segment's start: the previous segment becomes the active one
                # again, as if the log had never rolled there.
                index -= 1
                holder = segments[index]
                position = holder.size
            later = segments[index + 1 :]
            self._set_segments(segments[: index + 1])
            self._schedule_deletion(list(reversed(later)), "truncation")
            if later:
                fsync_directory(self.directory)
            producer_state.delete_snapshots_after(self.directory, cut)
            self.recovery_point = min(self.recovery_point, cut)
            self._set_segments([*segments[:index], self._cut_segment(holder, position, cut)])
            self._after_truncation(cut)
            self.leader_epoch_cache.truncate_from_end(cut)
        if self.config.file_delete_delay_ms == 0:
            self.close_deleted_segments()
        log.info("%s: truncated to offset %d (asked for %d)", self.name, cut, offset)

    def _cut_segment(self, segment: LogSegment, position: int, cut: int) -> LogSegment:
        """Cut `segment`'s .log at `position` (the start of the batch at offset `cut`) and
        return it reopened, with indexes truncated to match and the shorter file synced.

        The old object stays valid for reads in flight; it is closed when the last one
        lets go (LogSegment.__del__ releases without touching the files).
        """
        for index in (segment.offset_index, segment.time_index):
            if index.writable:
                # A reopen derives an index's entries from its size: make the size true.
                index.trim_to_valid_size()
        os.truncate(segment.log_path, position)
        cut_segment = self._new_segment(segment.base_offset)
        try:
            cut_segment.offset_index.truncate_to(cut)
            cut_segment.time_index.truncate_to(cut)
            cut_segment.load_state_from_indexes()
        except (CorruptIndexError, CorruptRecordError) as exc:
            log.warning("%s: rebuilding the index of %s: %s", self.name, cut_segment, exc)
            cut_segment.recover()
        cut_segment.created_ms = segment.created_ms
        cut_segment.flush()
        return cut_segment

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

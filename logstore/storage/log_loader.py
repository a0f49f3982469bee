"""Opening a partition log's directory: the segments on disk, repaired into a valid log
(Kafka's LogLoader).

Invariants of what `load_segments` returns:
- At least one segment; each starts where the previous ends (the first gap ends the
  log: what follows it is deleted), and only the last, the active one, is writable.
- Leftovers of interrupted operations (.deleted, .cleaned, .swap, .tmp, the cleaner's
  work directory) and index files without their .log are gone.
- After an unclean shutdown, the segments from the one holding the recovery point
  onwards are validated batch by batch, structure and CRC only: a torn or damaged tail
  is cut at the last whole batch and every later segment deleted. Other segments (all
  of them after a clean shutdown) load their state from their indexes; one whose index
  is missing or corrupt is validated the same way and its indexes rebuilt from the .log.
- Everything the returned segments hold is fsynced: the recovery point becomes the log
  end offset.

Each repair is logged at DEBUG with the file it touched; the returned `RecoveryReport`
is what the log manager tells operators, as one WARNING line per repaired partition, so
a repair is never warned about twice.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from logstore.clock import Clock
from logstore.codec import format as fmt
from logstore.errors import CorruptRecordError
from logstore.storage.leader_epoch_checkpoint import LeaderEpochCache
from logstore.storage.offset_index import CorruptIndexError
from logstore.storage.segment import LogSegment
from logstore.storage.segment_files import SegmentOpener

log = logging.getLogger(__name__)


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


@dataclass
class _Tally:
    """What the load did so far (bytes, counts), for the report."""

    rebuilt: int = 0
    damaged: int = 0
    truncated: int = 0
    deleted: int = 0


def load_segments(
    directory: Path,
    name: str,
    open_segment: SegmentOpener,
    *,
    clean_shutdown: bool,
    recovery_point: int,
    clock: Clock,
) -> tuple[list[LogSegment], RecoveryReport]:
    """Open the segments in `directory` (`name`: the partition, for log lines), repairing
    what a crash or damage left behind; below `recovery_point` the log was fsynced.
    Returns the segments, oldest first, the last one writable, and what was repaired."""
    stray = remove_stray_files(directory, name)
    bases = segment_bases_on_disk(directory, name)
    index_missing = {base for base in bases if not _indexes_exist(directory, base)}
    segments = [open_segment(base, existing=True) for base in bases]
    if not segments:
        segments = [open_segment(0)]
    tally = _Tally()
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        needs_recovery = not clean_shutdown and (
            last or segments[i + 1].base_offset > recovery_point
        )
        if _open_segment_state(
            segment, name, needs_recovery, segment.base_offset in index_missing, last, tally
        ):
            tally.deleted += _drop_segments_after(segments, i, name)
            break
    tally.deleted += _check_continuity(segments, name)
    _ready_active_segment(segments[-1], recovery_point, clock)
    report = RecoveryReport(
        not clean_shutdown,
        tally.truncated,
        tally.deleted,
        tally.rebuilt,
        stray,
        tally.damaged,
    )
    return segments, report


def _indexes_exist(directory: Path, base: int) -> bool:
    return (directory / fmt.offset_file_name(base, fmt.INDEX_SUFFIX)).exists() and (
        directory / fmt.offset_file_name(base, fmt.TIME_INDEX_SUFFIX)
    ).exists()


def _open_segment_state(
    segment: LogSegment,
    name: str,
    needs_recovery: bool,
    index_missing: bool,
    last: bool,
    tally: _Tally,
) -> bool:
    """Load `segment`'s state from its indexes, or validate it and rebuild them; return
    whether its tail was cut (so the segments after it are not valid)."""
    if not needs_recovery and not index_missing:
        try:
            segment.load_state_from_indexes()
            return False
        except (CorruptIndexError, CorruptRecordError) as exc:
            log.debug("%s: rebuilding index of %s: %s", name, segment, exc)
            tally.damaged += 1
    elif index_missing:
        log.debug("%s: rebuilding missing index of %s", name, segment.log_path.name)
        tally.damaged += 1
    tally.rebuilt += 1
    # Structure and CRC only: the topic's max.message.bytes may have been lowered
    # since these batches were accepted, and they must not be cut for it.
    cut = segment.recover()
    if not last and not cut:
        segment.seal()
    if cut:
        log.debug(
            "%s: truncated %d invalid bytes from the end of %s",
            name,
            cut,
            segment.log_path.name,
        )
        tally.truncated += cut
    return bool(cut)


def remove_stray_files(directory: Path, name: str) -> int:
    """Delete leftovers of interrupted operations and index files without a .log."""
    removed = 0
    stray_suffixes = (fmt.DELETED_SUFFIX, fmt.CLEANED_SUFFIX, fmt.SWAP_SUFFIX, fmt.TEMP_SUFFIX)
    log_bases = {p.stem for p in directory.glob("*" + fmt.LOG_SUFFIX)}
    for path in sorted(directory.iterdir()):
        orphan_index = (
            path.suffix in (fmt.INDEX_SUFFIX, fmt.TIME_INDEX_SUFFIX) and path.stem not in log_bases
        )
        if path.name.endswith(stray_suffixes) or orphan_index:
            log.debug("%s: removing stray file %s", name, path.name)
            if path.is_dir():  # the log cleaner's work directory
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def segment_bases_on_disk(directory: Path, name: str) -> list[int]:
    """Base offsets of the .log files named as segments (20 digits), ascending."""
    bases = []
    for path in directory.glob("*" + fmt.LOG_SUFFIX):
        stem = path.stem
        if len(stem) == fmt.OFFSET_NAME_DIGITS and stem.isdigit():
            bases.append(int(stem))
        else:
            log.warning("%s: ignoring unexpected file %s", name, path.name)
    return sorted(bases)


def _drop_segments_after(segments: list[LogSegment], index: int, name: str) -> int:
    """Delete every segment after `index` (they follow a torn write, so are not valid)."""
    doomed = segments[index + 1 :]
    for segment in doomed:
        log.debug("%s: deleting %s, which follows a torn write", name, segment)
        segment.close_quietly()
        for path in segment.paths():
            path.unlink(missing_ok=True)
    del segments[index + 1 :]
    return len(doomed)


def _check_continuity(segments: list[LogSegment], name: str) -> int:
    """Segments must chain: each starts where the previous ends. Cut at the first gap."""
    for i in range(len(segments) - 1):
        if segments[i].next_offset != segments[i + 1].base_offset:
            log.debug(
                "%s: %s ends at offset %d but the next segment starts at %d",
                name,
                segments[i],
                segments[i].next_offset,
                segments[i + 1].base_offset,
            )
            return _drop_segments_after(segments, i, name)
    return 0


def _ready_active_segment(active: LogSegment, recovery_point: int, clock: Clock) -> None:
    """Make the last segment writable, aged by its first batch, and durable."""
    first_ts = active.first_batch_timestamp()
    active.created_ms = clock.now_ms() if first_ts is None else first_ts
    active.make_writable()
    if max(recovery_point, 0) < active.next_offset:
        # Everything that survived validation is on disk now; make that durable.
        active.flush()


def load_leader_epoch_cache(
    cache: LeaderEpochCache, segments: Sequence[LogSegment], name: str
) -> None:
    """Make the leader epoch cache agree with the log as opened.

    A missing or corrupt checkpoint is rebuilt from the batch headers when the log
    holds stamped batches (a log that never had a leader epoch is not scanned: only
    its last batch is looked at). Otherwise entries past the log end (a crash after a
    truncation, before the cache followed) or before the log start are dropped.
    """
    if cache.needs_rebuild:
        if cache.path.exists() or _last_batch_leader_epoch(segments) >= 0:
            log.info("%s: rebuilding %s from the log", name, cache.path.name)
            cache.rebuild(_scan_leader_epochs(segments))
        return
    cache.truncate_from_end(segments[-1].next_offset)
    cache.truncate_from_start(segments[0].base_offset)


def _last_batch_leader_epoch(segments: Sequence[LogSegment]) -> int:
    """partitionLeaderEpoch of the log's last batch; -1 for an empty log."""
    for segment in reversed(segments):
        if segment.next_offset > segment.base_offset:
            found = segment.find_batch(segment.next_offset - 1)
            if found is not None:
                return found[1].partition_leader_epoch
    return fmt.NO_PARTITION_LEADER_EPOCH


def _scan_leader_epochs(segments: Sequence[LogSegment]) -> Iterator[tuple[int, int]]:
    """(partitionLeaderEpoch, base offset) of every batch, in log order (headers only)."""
    for segment in segments:
        for _, header in segment.iter_headers(0):
            yield header.partition_leader_epoch, header.base_offset

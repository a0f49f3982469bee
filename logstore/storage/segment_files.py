"""Changes to a partition log's segment files that must leave a valid log wherever a crash
interrupts them: cutting a follower's divergent tail, swapping in a compacted copy,
unlinking a deleted segment.

Invariants:
- A cut happens at a batch boundary; a cut at a segment's first batch keeps the previous
  segment instead, so the log is laid out as if it had never held what was cut.
- Each step that must be durable before the next is followed by an fsync of the file or
  of the directory, so a crash leaves either the old state or the new one, never a
  segment without a whole .log; an index that is missing is rebuilt when the log opens.
- A segment object that readers may hold is never closed under them: its files are
  renamed, replaced, cut or unlinked, and a cut segment is reopened as a new object.

Not thread-safe: the owning partition log calls these under its lock.
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Protocol

from logstore.codec import format as fmt
from logstore.errors import CorruptRecordError
from logstore.storage.fileutil import fsync_directory
from logstore.storage.offset_index import CorruptIndexError
from logstore.storage.read_range import SegmentsView
from logstore.storage.segment import LogSegment

log = logging.getLogger(__name__)


class SegmentOpener(Protocol):
    """Opens the segment at `base_offset` of the log's directory (existing: read-only
    indexes, as sealed) or creates it, with the log's index settings."""

    def __call__(self, base_offset: int, *, existing: bool = False) -> LogSegment: ...


def cut_point(view: SegmentsView, offset: int, name: str) -> tuple[int, int, int]:
    """Where truncating the log in `view` (`name`: the partition) to `offset`, within
    [log start, log end), cuts: (index of the segment that becomes the active one, the
    byte position to cut its .log at, the offset the log then ends at). That offset is
    the base offset of the batch holding `offset`: the whole batch goes."""
    segments, base_offsets = view
    index = bisect.bisect_right(base_offsets, offset) - 1
    found = segments[index].find_batch(offset)
    if found is None:  # unreachable while offsets are dense: keep the log as it is
        raise CorruptRecordError(f"{name}: no batch holds offset {offset}")
    position, header = found
    if position == 0 and index > 0:
        # Cut at a segment's start: the previous segment becomes the active one
        # again, as if the log had never rolled there.
        index -= 1
        position = segments[index].size
    return index, position, header.base_offset


def cut_segment(
    segment: LogSegment, position: int, cut: int, reopen: SegmentOpener, name: str
) -> LogSegment:
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
    cut_segment = reopen(segment.base_offset)
    try:
        cut_segment.offset_index.truncate_to(cut)
        cut_segment.time_index.truncate_to(cut)
        cut_segment.load_state_from_indexes()
    except (CorruptIndexError, CorruptRecordError) as exc:
        log.warning("%s: rebuilding the index of %s: %s", name, cut_segment, exc)
        cut_segment.recover()
    cut_segment.created_ms = segment.created_ms
    cut_segment.flush()
    return cut_segment


def swap_in_copy(old: LogSegment, copy: LogSegment, directory: Path) -> None:
    """Put the files of `copy` (sealed, in another directory) in place of `old`'s in
    `directory`: `old`'s index files go first, then the copy's .log replaces `old`'s in
    one atomic rename, then the copy's indexes move in; the directory is synced after
    each step. Readers that took `old` go on reading it through its open descriptors."""
    copy.close()
    for path in (old.offset_index.path, old.time_index.path):
        path.unlink(missing_ok=True)
    fsync_directory(directory)
    os.replace(copy.log_path, old.log_path)
    fsync_directory(directory)
    os.replace(copy.offset_index.path, old.offset_index.path)
    os.replace(copy.time_index.path, old.time_index.path)
    fsync_directory(directory)


def unlink_deleted(segment: LogSegment) -> None:
    """Unlink the files of a segment renamed to .deleted, without closing it.

    A read that took the segment before it was deleted may still be using its
    descriptors. They close when the last reference goes (LogSegment.__del__), so a
    descriptor number is never reused under a reader's feet.
    """
    for path in segment.paths():
        Path(str(path) + fmt.DELETED_SUFFIX).unlink(missing_ok=True)

"""Where a lock-free read of a partition log starts and ends, in bytes of one segment.

Invariants:
- A read works on one `SegmentsView` (segments oldest first, their base offsets), taken
  once: the log replaces the view whole and never mutates it, so the list and offsets
  belong together.
- The log end offset and the active segment's readable bytes come from one `end` of the
  active segment (size, next offset), so whatever a read returns within that end holds
  only offsets below the log end offset it reports.
- A read starts at the batch that holds the offset asked for and ends at a batch
  boundary; bounded by `max_offset` (a consumer's high watermark), it returns only
  batches whose last offset is below it.
"""

from __future__ import annotations

import bisect
from typing import TypeAlias

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import OffsetOutOfRangeError
from logstore.storage.segment import LogSegment, SegmentEnd

#: (segments oldest first, their base offsets): what a partition log publishes to readers
SegmentsView: TypeAlias = tuple[tuple[LogSegment, ...], tuple[int, ...]]
#: (segment, position of the batch holding the offset, the segment's end to read up to)
Located: TypeAlias = tuple[LogSegment, int, SegmentEnd]


def locate(
    view: SegmentsView, name: str, offset: int, find: bool = True, max_offset: int | None = None
) -> tuple[Located | None, int, int]:
    """(where the batch holding `offset` is, or None at the end of the log, at or past
    `max_offset`, or when not `find`; log end offset; log start offset) in `view` of the
    partition `name`. Raises OffsetOutOfRangeError outside the log.

    The log end offset and the active segment's readable bytes come from one `end`
    value, so whatever the caller reads within that end holds only offsets below the
    log end offset returned.
    """
    segments, base_offsets = view
    active = segments[-1]
    active_end = active.end
    log_start = segments[0].base_offset
    log_end = active_end[1]
    if offset < log_start or offset > log_end:
        raise OffsetOutOfRangeError(name, offset, log_start, log_end)
    limit = log_end if max_offset is None else min(max_offset, log_end)
    if find and offset < limit:
        index = max(bisect.bisect_right(base_offsets, offset) - 1, 0)
        for segment in segments[index:]:
            seen = active_end if segment is active else segment.end
            found = segment.find_batch(offset, seen)
            if found is not None:
                return (segment, found[0], seen), log_end, log_start
    return None, log_end, log_start


def end_below(
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


def offset_at(segment: LogSegment, position: int, seen: SegmentEnd) -> int:
    """The base offset of the batch at `position` of `segment` (a batch boundary), or
    the next offset in `seen` when `position` is the size in `seen`."""
    size, next_offset = seen
    if position >= size:
        return next_offset
    head = segment.read_bytes(position, fmt.BATCH_HEADER_SIZE, seen)
    return rb.read_header(head, 0).base_offset

"""Which segment an append goes to and which segments retention deletes: decisions
from a segment list and the topic's configuration, taking no lock and changing nothing.

Invariants:
- An empty active segment is never rolled; a non-empty one is rolled when the incoming
  bytes would take it past segment.bytes, when it is older than segment.ms (its
  `created_ms`: when it was created, or its first batch's timestamp once reopened), when
  its offset index is full, or when the incoming last offset does not fit its relative
  offsets (uint32).
- A run of stored batches given to one segment is at least one batch; any further batch
  fits segment.bytes, the relative offsets and the offset index.
- Retention picks a prefix of the oldest segments and never the active one: it stops at
  the first segment that neither retention.ms (by its largest record timestamp, never
  file times, which change on copy and restore) nor retention.bytes (the log stays at or
  above retention.bytes without it) removes, and, for a replicated log, at the first
  segment that reaches past the high watermark.
"""

from __future__ import annotations

from collections.abc import Sequence

from logstore.codec.record_batch import BatchHeader
from logstore.storage.log_config import LogConfig
from logstore.storage.segment import LogSegment


def should_roll(
    active: LogSegment,
    incoming_bytes: int,
    last_offset: int,
    batches: int,
    now_ms: int,
    config: LogConfig,
) -> bool:
    """Whether a non-empty `active` segment must be sealed before it takes `batches`
    batches of `incoming_bytes` bytes ending at `last_offset` (`now_ms`: wall clock)."""
    too_big = active.size + incoming_bytes > config.segment_bytes
    too_old = now_ms - active.created_ms > config.segment_ms
    index_full = not active.has_index_room(batches)
    return too_big or too_old or index_full or not active.can_hold(last_offset)


def batches_fitting(
    headers: Sequence[BatchHeader], start: int, segment: LogSegment, segment_bytes: int
) -> tuple[int, int]:
    """The end (exclusive) of the run of batches from `start` that `segment` (the active
    segment, already rolled for the first of them) takes, at least one batch, and the
    run's size in bytes."""
    room = segment_bytes - segment.size
    end = start
    total = 0
    while end < len(headers):
        header = headers[end]
        fits = total + header.size <= room and segment.can_hold(header.last_offset)
        if end > start and not (fits and segment.has_index_room(end - start + 1)):
            break
        total += header.size
        end += 1
    return end, total


def deletable_segments(
    segments: Sequence[LogSegment],
    config: LogConfig,
    *,
    now_ms: int,
    high_watermark: int | None,
) -> list[LogSegment]:
    """The oldest segments that retention.ms or retention.bytes remove (wall clock
    `now_ms`); `high_watermark` is a replicated log's, None otherwise."""
    retention_ms = config.retention_ms
    retention_bytes = config.retention_bytes
    size = sum(s.size for s in segments)
    excess = size - retention_bytes if retention_bytes >= 0 else 0
    doomed: list[LogSegment] = []
    for segment in segments[:-1]:  # never the active segment
        expired = retention_ms >= 0 and now_ms - segment.max_timestamp > retention_ms
        oversize = retention_bytes >= 0 and excess - segment.size >= 0
        if not (expired or oversize):
            break
        if high_watermark is not None and segment.next_offset > high_watermark:
            break
        excess -= segment.size
        doomed.append(segment)
    return doomed


def segments_ending_by(segments: Sequence[LogSegment], offset: int) -> list[LogSegment]:
    """The oldest non-active segments whose every offset is below `offset`."""
    doomed = []
    for segment in segments[:-1]:
        if segment.next_offset > offset:
            break
        doomed.append(segment)
    return doomed

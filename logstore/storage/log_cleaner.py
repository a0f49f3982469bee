"""Log compaction (`cleanup.policy=compact`): keep the latest record of every key.

Kafka's contract, which this keeps: a consumer reading a compacted partition from the start
sees, for every key, at least the latest value written (in the sealed segments the cleaner
has reached; the active segment is never touched), records keep their offsets, and order
is unchanged. A tombstone (a record whose value is null) deletes its key: it stays until
its batch's newest record is `delete.retention.ms` old, so consumers that are behind still
see the delete, and is then removed too.

How a pass works (`clean`):
1. Segments are cleanable once sealed and their newest record is `min.compaction.lag.ms`
   old. The ones after the last pass's end (`PartitionLog.cleaner_checkpoint`) are dirty;
   a pass runs when they are at least `min.cleanable.dirty.ratio` (0.5 by default, as in
   Kafka) of the cleanable bytes, so a big log is not rewritten for every roll.
2. Latest offset of every key in the dirty segments (one decoding pass).
3. Each cleanable segment is copied batch by batch into a new segment, each batch holding
   only the records it keeps (`record_batch.rewrite_batch`): base offset, last offset
   delta and producer fields stay, so offsets stay dense from batch to batch and
   idempotent producers' state replays the same. Batches whose records all go remain as
   empty 61-byte batches, adjacent ones of the same producer joined into one. Batches
   that lose nothing are copied byte for byte; a segment that changes in no way is not
   rewritten. A compressed batch that loses records keeps its codec (gzip, snappy, lz4
   or zstd): its records are inflated, under the decompression cap, and compressed again
   in the form `logstore.codec.compression` writes, which every Kafka client reads.
4. `PartitionLog.replace_segment` swaps the copy in (see there for crash safety).

Records without a key (written before the topic became compacted; LogStore refuses new
ones on compacted topics) are kept. Memory: one entry per distinct key in the dirty
segments.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.storage.partition_log import PartitionLog
from logstore.storage.segment import LogSegment

log = logging.getLogger(__name__)

#: where a pass builds its new segments, inside the partition directory (a leftover from
#: a crash is removed when the log is opened)
WORK_DIR_NAME: Final = "cleaner" + fmt.CLEANED_SUFFIX


@dataclass(frozen=True)
class CleanResult:
    """What one pass did: segments rewritten, records removed, bytes before and after."""

    segments_rewritten: int
    records_removed: int
    bytes_before: int
    bytes_after: int


def cleanable_segments(log_: PartitionLog, now_ms: int) -> list[LogSegment]:
    """The sealed segments, oldest first, up to the first younger than the compaction lag."""
    lag = log_.config.min_compaction_lag_ms
    chosen = []
    for segment in log_.segments()[:-1]:
        if lag > 0 and now_ms - segment.max_timestamp < lag:
            break  # (with no lag, producer clocks ahead of ours do not hold compaction up)
        chosen.append(segment)
    return chosen


class CleanerStopped(Exception):
    """The pass was abandoned because the broker is stopping; the log is unchanged."""


def _never() -> bool:
    return False


def clean(
    log_: PartitionLog, now_ms: int, force: bool = False, stop: Callable[[], bool] = _never
) -> CleanResult | None:
    """One compaction pass over `log_` if it is compacted and dirty enough; `force` cleans
    every cleanable segment as if all were dirty. None when there was nothing to do.

    `now_ms` is wall-clock time (ms). `stop` is asked between batches: when it answers
    True the pass ends with CleanerStopped, having replaced only whole segments."""
    if not log_.config.compact:
        return None
    segments = cleanable_segments(log_, now_ms)
    checkpoint = 0 if force else log_.cleaner_checkpoint
    dirty = [s for s in segments if s.base_offset >= checkpoint]
    if not dirty:
        return None
    total = sum(s.size for s in segments)
    if not force and sum(s.size for s in dirty) < log_.config.min_cleanable_dirty_ratio * total:
        return None
    latest = latest_offsets(dirty, stop)
    horizon = now_ms - log_.config.delete_retention_ms
    work = log_.directory / WORK_DIR_NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    rewritten = removed = after = 0
    try:
        for segment in segments:
            copy, dropped = _copy_segment(log_, segment, work, latest, horizon, stop)
            if copy is None:
                after += segment.size
                continue
            after += copy.size
            if log_.replace_segment(segment, copy):
                rewritten += 1
                removed += dropped
            else:  # deleted by retention meanwhile: the copy is not needed
                copy.close_quietly()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log_.cleaner_checkpoint = segments[-1].next_offset
    log_.compacted_records += removed
    result = CleanResult(rewritten, removed, total, after)
    if rewritten:
        log.info(
            "%s: compacted %d segments: %d records removed, %d -> %d bytes",
            log_.name,
            rewritten,
            removed,
            total,
            after,
        )
    return result


def latest_offsets(
    segments: Iterable[LogSegment], stop: Callable[[], bool] = _never
) -> dict[bytes, int]:
    """The offset of the last record of every key in `segments`."""
    latest: dict[bytes, int] = {}
    for segment in segments:
        for header, _, records in _batches(segment, stop):
            if header.is_control:
                continue
            for record in records:
                if record.key is not None:
                    latest[record.key] = record.offset
    return latest


def _batches(
    segment: LogSegment, stop: Callable[[], bool]
) -> Iterable[tuple[rb.BatchHeader, bytes, list[rb.Record]]]:
    """Each batch of `segment`: header, bytes, decoded records."""
    for position, header in segment.iter_headers(0):
        if stop():
            raise CleanerStopped
        data = segment.read_bytes(position, header.size)
        yield header, data, rb.decode_batch(data).records


def _keeps(record: rb.Record, latest: dict[bytes, int], tombstone_expired: bool) -> bool:
    if record.key is None:
        return True
    if latest.get(record.key, -1) > record.offset:
        return False  # a later record of the same key supersedes it
    return not (record.value is None and tombstone_expired)


def _copy_segment(
    log_: PartitionLog,
    segment: LogSegment,
    work: Path,
    latest: dict[bytes, int],
    horizon_ms: int,
    stop: Callable[[], bool],
) -> tuple[LogSegment | None, int]:
    """A sealed copy of `segment` in `work` keeping only what compaction keeps, and the
    number of records dropped; (None, 0) when it would change nothing.

    Adjacent batches left empty are written as one empty batch where `_extends` allows,
    so a topic written one record per batch shrinks to about one header per run of
    superseded records instead of one per record."""
    copy: LogSegment | None = None
    dropped = merged = 0
    empty_run: rb.BatchHeader | None = None
    try:
        copy = log_.new_work_segment(work, segment.base_offset)
        for header, data, records in _batches(segment, stop):
            expired = header.max_timestamp < horizon_ms
            kept = [r for r in records if header.is_control or _keeps(r, latest, expired)]
            if len(kept) != len(records):
                dropped += len(records) - len(kept)
                data = rb.rewrite_batch(header, kept)
                header = rb.read_header(data)
            if header.record_count == 0 and not header.is_control:
                if empty_run is not None and _extends(empty_run, header):
                    empty_run = empty_run._replace(
                        last_offset_delta=header.last_offset - empty_run.base_offset,
                        max_timestamp=max(empty_run.max_timestamp, header.max_timestamp),
                    )
                    merged += 1
                    continue
                _write_empty(copy, empty_run)
                empty_run = header
                continue
            _write_empty(copy, empty_run)
            empty_run = None
            copy.append([data], [header])
        _write_empty(copy, empty_run)
        if dropped == 0 and merged == 0:
            copy.close_quietly()
            return None, 0
        copy.seal()
        return copy, dropped
    except BaseException:
        if copy is not None:
            copy.close_quietly()
        raise


def _extends(run: rb.BatchHeader, header: rb.BatchHeader) -> bool:
    """Whether the empty batch `header`, right after the empty `run`, can join it: same
    attributes, producer and epoch, and for an idempotent producer sequences that carry
    on, so the joined batch's last sequence is `header`'s and producer state replays to
    the same place."""
    if (run.attributes, run.producer_id, run.producer_epoch) != (
        header.attributes,
        header.producer_id,
        header.producer_epoch,
    ):
        return False
    if header.base_offset != run.next_offset:
        return False
    if run.producer_id < 0:
        return True
    joined = run._replace(last_offset_delta=header.last_offset - run.base_offset)
    return run.base_sequence >= 0 and joined.last_sequence == header.last_sequence


def _write_empty(copy: LogSegment, run: rb.BatchHeader | None) -> None:
    if run is not None:
        data = rb.rewrite_batch(run, [])
        copy.append([data], [rb.read_header(data)])

"""Idempotent producers' state as the batch headers of a partition log make it.

Invariants:
- Only batch headers are read, never records: a batch of an idempotent producer
  (producerId >= 0) carries everything the state needs.
- An append applies each batch it wrote with `update_producer_state`, whose checks may
  fence a producer; replaying the log takes the log's order as the truth, so a
  producer epoch that goes back (possible once a producer's state expired) replaces the
  producer's entry instead of failing.
- After `replay_segments` the state is complete up to the log end offset
  (`map_end_offset`), whatever snapshot it started from.

Not thread-safe: the owning partition log calls these under its lock, or while opening.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from logstore.codec.record_batch import BatchHeader
from logstore.errors import InvalidProducerEpochError
from logstore.storage.producer_state import ProducerStateManager
from logstore.storage.segment import LogSegment

log = logging.getLogger(__name__)


def update_producer_state(state: ProducerStateManager, header: BatchHeader) -> None:
    """Record a batch just appended (a batch without a producer id changes nothing)."""
    if header.producer_id < 0:
        return
    state.update(
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
        header.last_sequence,
        header.base_offset,
        header.last_offset_delta,
        header.max_timestamp,
    )


def replay_producer_state(state: ProducerStateManager, header: BatchHeader, name: str) -> None:
    """Like `update_producer_state`, but the log is the truth: an epoch that went back
    (possible once a producer's state expired) replaces the entry instead of failing."""
    try:
        update_producer_state(state, header)
    except InvalidProducerEpochError:
        log.warning(
            "%s: producer %d goes back to epoch %d at offset %d; taking the log's order",
            name,
            header.producer_id,
            header.producer_epoch,
            header.base_offset,
        )
        state.forget(header.producer_id)
        update_producer_state(state, header)


def load_producer_state(
    directory: Path, log_start_offset: int, log_end_offset: int
) -> tuple[ProducerStateManager, int]:
    """The newest usable snapshot at or below `log_end_offset` and the offset to replay
    the log from; a new, empty state and `log_start_offset` when no snapshot reaches the
    log start. Corrupt snapshots are deleted."""
    loaded = ProducerStateManager.load_latest_snapshot(directory, log_end_offset)
    for path in loaded.corrupt:
        path.unlink(missing_ok=True)
    state = loaded.manager
    if state is not None and state.map_end_offset >= log_start_offset:
        return state, state.map_end_offset
    return ProducerStateManager(), log_start_offset


def replay_segments(
    state: ProducerStateManager, segments: Sequence[LogSegment], start: int, name: str
) -> None:
    """Replay the header of every batch at or after `start` (`name`: the partition, for
    log lines), then mark the state complete up to the last segment's next offset."""
    for segment in segments:
        if segment.next_offset <= start:
            continue
        for _, header in segment.iter_headers(0):
            if header.base_offset >= start:
                replay_producer_state(state, header, name)
    state.map_end_offset = segments[-1].next_offset

"""The record buffer: fetched records waiting for poll(), and the bytes they hold.

Pure state, no locks and no I/O: the consumer's threads share it under one lock (see
`fetcher.SharedFetchState`). Offsets are record offsets; sizes are bytes of RecordBatch
data as fetched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

from logstore import errors
from logstore.types import ConsumerRecord, TopicPartition

if TYPE_CHECKING:
    from logstore.client.consumer.fetch_positions import PartitionState


class Chunk:
    """Records of one partition from one fetch, in offset order, consumed from `pos`.

    Draining the last record moves the partition's position to `next_offset` (which also
    covers offsets without a record to return). An `error` chunk carries no records: it is
    raised once the records before it are returned. `nbytes` are the fetched bytes the
    chunk holds against the buffer bounds.
    """

    __slots__ = ("error", "nbytes", "next_offset", "pos", "records", "tp")

    def __init__(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        pos: int,
        next_offset: int,
        nbytes: int,
        error: errors.LogStoreError | None = None,
    ) -> None:
        self.tp = tp
        self.records = records
        self.pos = pos
        self.next_offset = next_offset
        self.nbytes = nbytes
        self.error = error


class RecordBuffer:
    """Chunks in arrival order and the fetched bytes they hold.

    Invariants: a partition's chunks are in offset order, the first starting at its
    `position`; `buffered` (bytes) is the sum of every partition state's `buffered`. Each
    record is handed out by `drain` at most once: a chunk's `pos` only grows, and a chunk
    leaves the deque once drained or purged. The fetcher sends nothing while `buffered` >=
    `limit`, nor for a partition holding `partition_limit` bytes or more.
    """

    __slots__ = ("buffered", "chunks", "limit", "partition_limit")

    def __init__(self, limit: int, partition_limit: int) -> None:
        self.limit = limit
        self.partition_limit = partition_limit
        self.chunks: deque[Chunk] = deque()
        self.buffered = 0

    def add(self, state: PartitionState, nbytes: int) -> None:
        """Reserve `nbytes` for an answer of `state`'s partition before it is decoded."""
        state.buffered += nbytes
        self.buffered += nbytes

    def release(self, state: PartitionState, nbytes: int) -> None:
        state.buffered -= nbytes
        self.buffered -= nbytes

    def purge(self, tp: TopicPartition, state: PartitionState) -> None:
        """Drop the buffered records of `tp` (a revoke or a seek) and release their bytes."""
        if state.buffered:
            self.buffered -= state.buffered
            state.buffered = 0
        if any(chunk.tp == tp for chunk in self.chunks):
            self.chunks = deque(chunk for chunk in self.chunks if chunk.tp != tp)

    def drain(
        self, states: Mapping[TopicPartition, PartitionState], limit: int
    ) -> list[ConsumerRecord]:
        """Up to `limit` buffered records of partitions not paused, advancing positions past
        them. Raises a chunk's error when it is reached with nothing else to return (the
        partition's position is then the failed offset, and it is fetchable again).
        """
        if not any(states[c.tp].paused for c in self.chunks):
            return self._drain(states, limit)
        # Set the paused partitions' chunks aside (each partition's chunks stay in order).
        held = deque(c for c in self.chunks if states[c.tp].paused)
        self.chunks = deque(c for c in self.chunks if not states[c.tp].paused)
        try:
            return self._drain(states, limit)
        finally:
            self.chunks.extend(held)

    def _drain(
        self, states: Mapping[TopicPartition, PartitionState], limit: int
    ) -> list[ConsumerRecord]:
        out: list[ConsumerRecord] = []
        chunks = self.chunks
        while chunks and len(out) < limit:
            chunk = chunks[0]
            state = states[chunk.tp]
            if chunk.error is not None:
                if out:
                    break  # deliver what precedes the error first
                self._raise_chunk_error(chunk, state)
            records = chunk.records
            end = len(records)
            if chunk.pos < end:
                stop = min(end, chunk.pos + limit - len(out))
                out += records[chunk.pos : stop]
                chunk.pos = stop
                state.position = records[stop - 1].offset + 1
                if stop < end:
                    break
            chunks.popleft()
            state.position = chunk.next_offset
            if chunk.nbytes:
                self.release(state, chunk.nbytes)
        return out

    def _raise_chunk_error(self, chunk: Chunk, state: PartitionState) -> None:
        self.chunks.popleft()
        state.position = chunk.next_offset
        self.release(state, chunk.nbytes)
        # Fetching resumes at the failed offset; a persistent fault is raised again there.
        state.halted = False
        assert chunk.error is not None
        raise chunk.error

"""A log segment: `<base>.log` with its sparse `<base>.index` and `<base>.timeindex`.

Invariants:
- The .log file holds whole RecordBatch v2 batches back to back, offsets dense and
  increasing, the first batch's base offset equal to the segment's `base_offset`. Bytes
  past `size` (a torn tail) are never served and are cut off by `recover`.
- An offset index entry (last offset of a batch, start position of that batch) is written
  whenever more than `index_interval_bytes` bytes were appended since the previous entry,
  so finding an offset scans at most about that many bytes of batch headers.
- The time index holds (largest timestamp so far, offset that has it), strictly rising.
- `end` (a `SegmentEnd`: size in bytes, next offset) is published as one tuple, replaced
  whole: its size is a batch boundary, and the whole batches before it hold exactly the
  offsets below its next offset.

Appends are serialised by the owning partition log. Reads use positional I/O (`pread`) and
never move a shared file position, so any number may run while one append is in progress.
A lock-free reader takes `end` once and passes it as `seen` to each read method it calls:
the offsets it finds and the bytes it reads then belong to one state of the segment, never
to a half-published append, and never reach past the log end offset it was told.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.codec.record_batch import BatchHeader
from logstore.errors import CorruptRecordError, LogStoreError
from logstore.storage.offset_index import CorruptIndexError, OffsetIndex
from logstore.storage.time_index import TimeIndex

log = logging.getLogger(__name__)

#: bytes read per pread while recovering or scanning a segment
_SCAN_CHUNK_BYTES = 8 * 1024 * 1024
#: bytes read per pread when hopping from one batch header to the next
_HEADER_READ_BYTES = 4096


#: Where a segment's batches end: (size in bytes, next offset). The whole batches in the
#: first `size` bytes hold exactly the offsets below `next_offset`. A plain tuple, not a
#: NamedTuple: one is built per append, and a NamedTuple costs far more to build.
SegmentEnd: TypeAlias = tuple[int, int]


class LogSegment:
    """One segment of a partition log. See the module docstring for the invariants."""

    def __init__(
        self,
        directory: Path,
        base_offset: int,
        *,
        index_interval_bytes: int,
        max_index_bytes: int,
        created_ms: int,
        writable: bool = True,
    ) -> None:
        """Open or create the segment's files. `writable=False` maps existing indexes
        read-only at their trimmed size (a sealed segment); missing ones are created."""
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        self.log_path = directory / fmt.offset_file_name(base_offset, fmt.LOG_SUFFIX)
        self._fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT, 0o644)
        #: replaced whole, never mutated (see the module docstring); for a segment opened
        #: on an existing file, the file size and base offset until `recover` or
        #: `load_state_from_indexes` has read the batches
        self._end: SegmentEnd = (os.fstat(self._fd).st_size, base_offset)
        self._max_index_bytes = max_index_bytes
        self.offset_index, self.time_index = self._open_indexes(writable)
        self._bytes_since_last_index_entry = 0
        #: largest record timestamp in the segment (ms), -1 if none
        self.max_timestamp = fmt.NO_TIMESTAMP
        self._offset_of_max_timestamp = base_offset
        #: when this segment started, for segment.ms rolling (ms since epoch)
        self.created_ms = created_ms
        self._closed = False

    @property
    def end(self) -> SegmentEnd:
        """The published (size in bytes, next offset): a lock-free reader takes it once."""
        return self._end

    @property
    def size(self) -> int:
        """Bytes of whole batches in the .log file."""
        return self._end[0]

    @property
    def next_offset(self) -> int:
        """The offset after the last batch in this segment (== base_offset when empty)."""
        return self._end[1]

    def _index_paths(self) -> tuple[Path, Path]:
        return (
            self.directory / fmt.offset_file_name(self.base_offset, fmt.INDEX_SUFFIX),
            self.directory / fmt.offset_file_name(self.base_offset, fmt.TIME_INDEX_SUFFIX),
        )

    def _open_indexes(self, writable: bool) -> tuple[OffsetIndex, TimeIndex]:
        index_path, time_index_path = self._index_paths()
        writable = writable or not (index_path.exists() and time_index_path.exists())
        return (
            OffsetIndex(index_path, self.base_offset, self._max_index_bytes, writable=writable),
            TimeIndex(time_index_path, self.base_offset, self._max_index_bytes, writable=writable),
        )

    def make_writable(self) -> None:
        """Map the indexes writable with room to grow (to append to or rebuild them)."""
        if self.offset_index.writable and self.time_index.writable:
            self.offset_index.resize(self._max_index_bytes)
            self.time_index.resize(self._max_index_bytes)
            return
        self.offset_index.close()
        self.time_index.close()
        self.offset_index, self.time_index = self._open_indexes(writable=True)

    # --- appending ---------------------------------------------------------------------------

    def append(self, buffers: Sequence[bytes | memoryview], headers: Sequence[BatchHeader]) -> int:
        """Write batches (already carrying their final offsets) at the end; return position.

        `buffers` are written back to back with one system call (scatter-gather), and
        `headers` describe the batches they form, in order.
        """
        position, next_offset = self._end
        total = sum(len(b) for b in buffers)
        # Disk blocks for the index entries first: on a full disk this fails cleanly
        # (ENOSPC) before the log changes, instead of faulting on the mapping afterwards.
        self.offset_index.reserve(len(headers))
        self.time_index.reserve(len(headers) + 1)
        written = os.pwritev(self._fd, buffers, position)
        if written != total:
            # pwritev may write partially only on a full disk; undo so no torn tail remains.
            os.ftruncate(self._fd, position)
            raise OSError(28, f"short write to {self.log_path}: {written} of {total} bytes")
        batch_position = position
        for header in headers:
            self._index_batch(header, batch_position)
            batch_position += header.size
        # One store publishes the new bytes and the offsets they hold together: a lock-free
        # reader sees the append whole or not at all, so it never returns batches past the
        # log end offset it reports (as separate size and offset stores would let it).
        if headers:
            next_offset = headers[-1].next_offset
        self._end = (position + total, next_offset)
        return position

    def _index_batch(self, header: BatchHeader, position: int) -> None:
        if header.max_timestamp > self.max_timestamp:
            self.max_timestamp = header.max_timestamp
            self._offset_of_max_timestamp = header.last_offset
        if self._bytes_since_last_index_entry > self.index_interval_bytes:
            self.offset_index.append(header.last_offset, position)
            self.time_index.maybe_append(self.max_timestamp, self._offset_of_max_timestamp)
            self._bytes_since_last_index_entry = 0
        self._bytes_since_last_index_entry += header.size

    def can_hold(self, last_offset: int) -> bool:
        """Whether `last_offset` fits the indexes' 32-bit relative offsets."""
        return 0 <= last_offset - self.base_offset <= 0xFFFFFFFF

    def has_index_room(self, batches: int) -> bool:
        """Whether both indexes can take an entry for each of `batches` more batches."""
        return (
            self.offset_index.entries + batches <= self.offset_index.max_entries
            and self.time_index.entries + batches <= self.time_index.max_entries
        )

    # --- reading -----------------------------------------------------------------------------

    def read_bytes(self, position: int, length: int, seen: SegmentEnd | None = None) -> bytes:
        """Up to `length` bytes from `position`, never past the size in `seen` (the end the
        caller took; None takes the current one)."""
        length = min(length, (self._end if seen is None else seen)[0] - position)
        if length <= 0:
            return b""
        return os.pread(self._fd, length, position)

    def iter_headers(
        self, position: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, BatchHeader]]:
        """Yield (position, header) of each whole batch from `position`, reading headers only."""
        end = self.size if end is None else end
        while end - position >= fmt.BATCH_HEADER_SIZE:
            chunk = os.pread(self._fd, min(_HEADER_READ_BYTES, end - position), position)
            consumed = 0
            for rel, header in rb.iter_batches(chunk, 0):
                consumed = rel + header.size
                yield position + rel, header
            if consumed == 0:
                # The batch at `position` is larger than the chunk: hop over it by its length.
                header = rb.read_header(chunk, 0)
                if header.size <= 0 or position + header.size > end:
                    return
                yield position, header
                consumed = header.size
            position += consumed

    def find_batch(
        self, offset: int, seen: SegmentEnd | None = None
    ) -> tuple[int, BatchHeader] | None:
        """Position and header of the batch holding `offset`, or None if past this segment
        as of `seen` (the end the caller took; None takes the current one).

        One binary search in the offset index, then a forward walk over batch headers of at
        most about `index_interval_bytes`, never past the size in `seen`.
        """
        size, next_offset = self._end if seen is None else seen
        if offset >= next_offset:
            return None
        # An index entry of a batch appended after `seen` has a larger offset: not chosen.
        _, start = self.offset_index.lookup(offset)
        for position, header in self.iter_headers(start, size):
            if header.last_offset >= offset:
                return position, header
        return None

    def read_batches(self, position: int, max_bytes: int, seen: SegmentEnd | None = None) -> bytes:
        """Whole batches starting at `position`, as many as fit in `max_bytes`, none past
        `seen` (the end the caller took; None takes the current one).

        The first batch is returned whole even when larger than `max_bytes`, so a consumer
        always makes progress (Kafka's KIP-74 rule).
        """
        seen = self._end if seen is None else seen
        return self.read_bytes(position, self.end_of_read(position, max_bytes, seen) - position)

    def end_of_read(self, position: int, max_bytes: int, seen: SegmentEnd | None = None) -> int:
        """The position (bytes) where `read_batches(position, max_bytes, seen)` ends: a batch
        boundary at or before the size in `seen`, or `position` itself when no whole batch
        is there. None for `seen` takes the current end."""
        seen = self._end if seen is None else seen
        size = seen[0]
        limit = position + max(max_bytes, fmt.BATCH_HEADER_SIZE)
        if limit >= size:
            # up to the end of the log: that end is a batch boundary, nothing to cut
            return max(size, position)
        end = self._end_of_whole_batches(position, limit, size)
        if end == position:
            head = self.read_bytes(position, fmt.BATCH_HEADER_SIZE, seen)
            if len(head) < fmt.BATCH_HEADER_SIZE:
                return position
            return min(position + rb.read_header(head, 0).size, size)
        return end

    def _end_of_whole_batches(self, position: int, limit: int, size: int) -> int:
        """The end of the last whole batch from `position` that ends by `limit` (bytes).

        Reading exactly up to it in one pread avoids reading past it and then copying the
        part to keep. The offset index (whose positions are batch starts) jumps close to
        `limit`, so only about `index_interval_bytes` of batch headers are walked.
        """
        start = self.offset_index.batch_start_at_most(limit)
        end = start if start is not None and start > position else position
        for batch_position, header in self.iter_headers(end, size):
            if batch_position + header.size > limit:
                break
            end = batch_position + header.size
        return end

    def find_offset_by_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with timestamp >= `timestamp_ms`, or None.

        Uses the time index to skip ahead, then batch max timestamps, then decodes the one
        batch that holds the answer.
        """
        if self.max_timestamp < timestamp_ms:
            return None
        _, indexed_offset = self.time_index.lookup(timestamp_ms)
        _, start = self.offset_index.lookup(indexed_offset)
        # One end for the whole walk: the answer is an offset the segment held when asked.
        for position, header in self.iter_headers(start, self.size):
            if header.max_timestamp >= timestamp_ms:
                batch = rb.decode_batch(self.read_bytes(position, header.size))
                for record in batch.records:
                    if record.timestamp >= timestamp_ms:
                        return record.offset, record.timestamp
        return None

    # --- recovery ----------------------------------------------------------------------------

    def recover(
        self,
        max_batch_bytes: int | None = None,
        on_batch: Callable[[BatchHeader], None] | None = None,
    ) -> int:
        """Validate every batch, rebuild both indexes, cut the file at the first bad byte.

        A batch is kept only if its length, magic, CRC and record count are sound and its
        base offset continues the segment densely. Returns the bytes truncated (0 if none).
        """
        self.make_writable()
        self.offset_index.reset()
        self.time_index.reset()
        # A damaged file may have been opened at its odd size: give it room to rebuild.
        self.offset_index.resize(self._max_index_bytes)
        self.time_index.resize(self._max_index_bytes)
        self._bytes_since_last_index_entry = 0
        self._end = (0, self.base_offset)
        self.max_timestamp = fmt.NO_TIMESTAMP
        self._offset_of_max_timestamp = self.base_offset
        file_size = os.fstat(self._fd).st_size
        valid_end = self._validate_from(0, file_size, max_batch_bytes, on_batch)
        if valid_end < file_size:
            os.ftruncate(self._fd, valid_end)
            os.fsync(self._fd)
        # `end` is already (valid_end, offset after the last valid batch): each valid batch
        # moved it past itself.
        return file_size - valid_end

    def _validate_from(
        self,
        position: int,
        file_size: int,
        max_batch_bytes: int | None,
        on_batch: Callable[[BatchHeader], None] | None,
    ) -> int:
        """Walk and check batches from `position`; return the end of the last valid one."""
        while position < file_size:
            remaining = file_size - position
            chunk = os.pread(self._fd, min(_SCAN_CHUNK_BYTES, remaining), position)
            consumed = self._validate_chunk(chunk, position, max_batch_bytes, on_batch)
            if consumed == 0 and len(chunk) < remaining:
                # The first batch may simply be larger than a chunk: read it whole, once.
                consumed = self._validate_large_batch(
                    chunk, position, remaining, max_batch_bytes, on_batch
                )
            if consumed == 0:
                return position
            position += consumed
            if consumed < len(chunk) and len(chunk) == remaining:
                return position  # the bytes after the last valid batch are the torn tail
        return position

    def _validate_large_batch(
        self,
        chunk: bytes,
        position: int,
        remaining: int,
        max_batch_bytes: int | None,
        on_batch: Callable[[BatchHeader], None] | None,
    ) -> int:
        if len(chunk) < fmt.BATCH_HEADER_SIZE:
            return 0
        size = rb.read_header(chunk, 0).size
        if size <= len(chunk) or size > remaining:
            return 0
        return self._validate_chunk(
            os.pread(self._fd, size, position), position, max_batch_bytes, on_batch
        )

    def _validate_chunk(
        self,
        chunk: bytes,
        position: int,
        max_batch_bytes: int | None,
        on_batch: Callable[[BatchHeader], None] | None,
    ) -> int:
        """Validate whole batches in `chunk`; index them; return bytes of valid batches."""
        pos = 0
        while len(chunk) - pos >= fmt.BATCH_HEADER_SIZE:
            try:
                # dense=False: compaction leaves batches with fewer records than offsets
                header = rb.validate_batch(chunk, pos, max_batch_bytes, dense=False)
            except LogStoreError:
                return pos
            if header.base_offset != self.next_offset:
                log.warning(
                    "%s: batch at position %d has base offset %d, expected %d",
                    self.log_path,
                    position + pos,
                    header.base_offset,
                    self.next_offset,
                )
                return pos
            self._index_batch(header, position + pos)
            self._end = (position + pos + header.size, header.next_offset)
            if on_batch is not None:
                on_batch(header)
            pos += header.size
        return pos

    def load_state_from_indexes(self) -> None:
        """After a clean shutdown: trust the indexes, find the end by walking the last stretch.

        Raises CorruptIndexError when an index fails its sanity check (the caller rebuilds).
        """
        self.offset_index.sanity_check()
        self.time_index.sanity_check()
        last_offset, start = self.offset_index.last_entry()
        if start > self.size:
            raise CorruptIndexError(f"{self.offset_index.path}: entry points past the log end")
        self.max_timestamp, self._offset_of_max_timestamp = self.time_index.last_entry()
        next_offset = self.base_offset
        end = start
        indexed = self.offset_index.entries > 0
        for position, header in self.iter_headers(start):
            if position != start:
                expected = next_offset  # dense: each batch follows the previous one
            elif indexed:
                expected = last_offset - header.last_offset_delta  # it ends at the entry
            else:
                expected = self.base_offset
            if header.base_offset != expected:
                raise CorruptRecordError(f"{self.log_path}: offsets are not dense at {position}")
            next_offset = header.next_offset
            if header.max_timestamp > self.max_timestamp:
                self.max_timestamp = header.max_timestamp
                self._offset_of_max_timestamp = header.last_offset
            end = position + header.size
        if end != self.size:
            raise CorruptRecordError(f"{self.log_path}: {self.size - end} stray bytes at the end")
        self._end = (end, next_offset)
        self._bytes_since_last_index_entry = end - start

    # --- lifecycle ---------------------------------------------------------------------------

    def first_batch_timestamp(self) -> int | None:
        """Max timestamp of the first batch (Kafka's rolling base for segment.ms), if any."""
        for _, header in self.iter_headers(0):
            return header.max_timestamp
        return None

    def flush(self) -> None:
        """fsync the .log file (indexes are rebuilt by recovery, so they need no fsync here)."""
        os.fsync(self._fd)

    def seal(self) -> None:
        """The segment stops being active: final time index entry, trim and sync indexes."""
        if self.max_timestamp >= 0:
            self.time_index.maybe_append(self.max_timestamp, self._offset_of_max_timestamp)
        self.offset_index.trim_to_valid_size()
        self.time_index.trim_to_valid_size()
        os.fsync(self._fd)
        self.offset_index.flush()
        self.time_index.flush()

    def close(self) -> None:
        """fsync and close the files; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.offset_index.close()
        self.time_index.close()
        os.fsync(self._fd)
        os.close(self._fd)

    def paths(self) -> list[Path]:
        return [self.log_path, self.offset_index.path, self.time_index.path]

    def rename_to_deleted(self) -> list[Path]:
        """Rename the segment's files with the `.deleted` suffix; return the new paths.

        Open file descriptors and mmaps stay valid, so a read in progress completes.
        """
        renamed = []
        for path in self.paths():
            target = path.with_name(path.name + fmt.DELETED_SUFFIX)
            try:
                os.replace(path, target)
                renamed.append(target)
            except FileNotFoundError:
                continue
        return renamed

    def close_quietly(self) -> None:
        """Close without syncing (the segment is being deleted)."""
        if self._closed:
            return
        self._closed = True
        self.offset_index.close()
        self.time_index.close()
        os.close(self._fd)

    def release(self) -> None:
        """Close the descriptors without touching the files (no fsync, no index trim)."""
        if self._closed:
            return
        self._closed = True
        self.offset_index.release()
        self.time_index.release()
        os.close(self._fd)

    def __del__(self) -> None:
        # A deleted segment is closed here, once no reader holds it any more. Release only:
        # an abandoned segment's files may belong to a newer open of the same log.
        try:  # noqa: SIM105 - contextlib may already be torn down at interpreter exit
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"LogSegment({self.log_path.name}, next_offset={self.next_offset}, size={self.size})"

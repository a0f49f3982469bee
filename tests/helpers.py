"""Builders and reference scans shared by the segment and partition log tests, and the one
wait helper every test uses.

Every record a test writes is recognisable: its key names the batch it came from and its
position there, so a read-back can be compared field for field with what was appended.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from logstore.codec import format as fmt
from logstore.codec.record_batch import (
    BatchHeader,
    Header,
    Record,
    RecordInput,
    decode_all,
    encode_batch,
    iter_batches,
)
from logstore.storage.log_config import LogConfig
from logstore.storage.partition_log import AppendResult, PartitionLog

#: (offset, key, value, headers, timestamp): a record as a test compares it
Row = tuple[int, bytes | None, bytes | None, tuple[Header, ...], int]

#: how long `wait_until` waits by default (s): generous for a loaded 2-core machine
WAIT_S = 10.0
#: pause between two checks of a condition (s)
POLL_S = 0.05


def wait_until(
    condition: Callable[[], object], what: str, timeout_s: float = WAIT_S, step_s: float = POLL_S
) -> None:
    """Poll `condition` until it is truthy; raise AssertionError naming `what` after
    `timeout_s` seconds.

    Bounded twice: by the deadline and by a round count, so a clock that stalls cannot turn
    it into an endless loop. The condition is checked once more after the deadline, so a
    condition met during the last pause still counts.
    """
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s / step_s) + 2):
        if condition():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(step_s)
    if condition():
        return
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


#: small files everywhere: index files of 4 KiB, deleted segments removed at once
BASE_PROPS: Mapping[str, int | str] = {"segment.index.bytes": 4096, "file.delete.delay.ms": 0}


def make_config(props: Mapping[str, int | str] | None = None) -> LogConfig:
    """A LogConfig from Kafka-named properties over `BASE_PROPS`."""
    return LogConfig.from_properties({**BASE_PROPS, **(props or {})})


def make_records(
    tag: str,
    count: int,
    *,
    value_size: int = 16,
    timestamps: int | Sequence[int] = 1_000,
    with_headers: bool = False,
) -> list[RecordInput]:
    """`count` records whose keys are `tag/i` and whose values are `value_size` bytes."""
    out: list[RecordInput] = []
    for i in range(count):
        ts = timestamps if isinstance(timestamps, int) else timestamps[i]
        stamp = f"{tag}/{i}|".encode()
        value = (stamp * (value_size // len(stamp) + 1))[:value_size]
        headers: list[Header] | None = None
        if with_headers and i % 2 == 0:
            headers = [("n", str(i).encode()), ("null", None)]
        key = None if with_headers and i % 3 == 2 else f"{tag}/{i}".encode()
        out.append((key, value, headers, ts))
    return out


def rows_of(records: Sequence[RecordInput], base_offset: int) -> list[Row]:
    """The rows `records` become once appended at `base_offset` (CreateTime)."""
    return [
        (base_offset + i, k, v, tuple(h or ()), t)  # type: ignore[misc]
        for i, (k, v, h, t) in enumerate(records)
    ]


def rows_from(records: Sequence[Record]) -> list[Row]:
    return [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in records]


def scan_bytes(data: bytes) -> list[tuple[int, BatchHeader]]:
    """(position, header) of every whole batch in `data`, by walking batch lengths."""
    return list(iter_batches(data))


def scan_file(path: Path) -> list[tuple[int, BatchHeader]]:
    return scan_bytes(path.read_bytes())


def expected_offset_index(
    batches: Sequence[tuple[int, BatchHeader]], interval: int
) -> list[tuple[int, int]]:
    """The documented rule: an entry (batch last offset, batch start position) is written
    for a batch when more than `interval` bytes were appended since the previous entry."""
    since = 0
    entries: list[tuple[int, int]] = []
    for position, header in batches:
        if since > interval:
            entries.append((header.last_offset, position))
            since = 0
        since += header.size
    return entries


def log_files(directory: Path, suffix: str = fmt.LOG_SUFFIX) -> list[Path]:
    return sorted(directory.glob("*" + suffix))


@dataclass
class LogModel:
    """What a partition log should hold: every appended row, and where each append went."""

    rows: list[Row] = field(default_factory=list)
    #: (base offset, last offset, total bytes) of every append
    appends: list[tuple[int, int, int]] = field(default_factory=list)
    #: (base offset, record count, bytes) of every batch
    batches: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def end(self) -> int:
        return len(self.rows)

    def append(self, log: PartitionLog, batches: Sequence[Sequence[RecordInput]]) -> AppendResult:
        """Append `batches` (non-idempotent, CreateTime) in one call and check the result."""
        encoded = [encode_batch(records) for records in batches]
        result = log.append(b"".join(encoded))
        count = sum(len(records) for records in batches)
        assert (result.base_offset, result.last_offset) == (self.end, self.end + count - 1)
        assert not result.duplicate
        self.appends.append((self.end, self.end + count - 1, sum(len(b) for b in encoded)))
        for records, data in zip(batches, encoded, strict=True):
            self.batches.append((self.end, len(records), len(data)))
            self.rows.extend(rows_of(records, self.end))
        return result

    def truncate_to(self, end: int) -> None:
        """Forget everything at or after offset `end` (a batch boundary)."""
        self.rows = self.rows[:end]
        self.batches = [b for b in self.batches if b[0] < end]
        assert not self.batches or self.batches[-1][0] + self.batches[-1][1] == end


def read_rows(
    log: PartitionLog, start: int = 0, max_bytes: Callable[[], int] | int = 1 << 20
) -> list[Row]:
    """Read from `start` to the log end by repeated `read(next, max_bytes)` calls and check
    each fetch is whole batches starting with the one holding `next`."""
    rows: list[Row] = []
    next_offset = start
    end = log.log_end_offset
    for _ in range(end - start + 2):  # every non-empty read advances by at least one
        limit = max_bytes() if callable(max_bytes) else max_bytes
        fetch = log.read(next_offset, limit)
        if next_offset >= end:
            assert fetch.data == b""
            return rows
        assert fetch.data, f"empty read at {next_offset} below the log end {end}"
        batches = scan_bytes(fetch.data)
        assert batches, "a fetch holds at least one whole batch"
        last_pos, last = batches[-1]
        assert last_pos + last.size == len(fetch.data), "a fetch holds only whole batches"
        first = batches[0][1]
        assert first.base_offset <= next_offset <= first.last_offset
        assert len(fetch.data) <= limit or len(batches) == 1
        _check_nothing_more_fitted(log, last, len(fetch.data), limit)
        assert fetch.high_watermark >= end
        assert fetch.log_start_offset == log.log_start_offset
        rows.extend(r for r in rows_from(decode_all(fetch.data)) if r[0] >= next_offset)
        next_offset = last.next_offset
    raise AssertionError(f"reading from {start} did not reach the log end {end}")


def _check_nothing_more_fitted(
    log: PartitionLog, last: BatchHeader, fetched: int, limit: int
) -> None:
    """A fetch stops inside a segment only when the next batch would exceed `limit`."""
    holder = next(s for s in log.segments() if s.base_offset <= last.base_offset < s.next_offset)
    if last.next_offset < holder.next_offset:
        found = holder.find_batch(last.next_offset)
        assert found is not None
        assert fetched + found[1].size > limit, "a fetch stopped before max_bytes was reached"

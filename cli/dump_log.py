"""`logstore dump-log`: decode and verify a segment file offline, like kafka-dump-log.

Reads `.log` files (and, with --verify-index, the `.index` and `.timeindex` beside them)
without a broker. Every check appends a one-line problem; the command exits non-zero when
there is any, after printing everything it could read.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from logstore.cli.common import fail
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.errors import LogStoreError
from logstore.storage.offset_index import OFFSET_INDEX_DTYPE
from logstore.storage.time_index import TIME_INDEX_DTYPE

#: bytes of a key, value or header value shown before it is cut
DEFAULT_MAX_BYTES = 100
#: mismatches listed per index file; the rest are only counted
MAX_LISTED_MISMATCHES = 10


@dataclass
class BatchInfo:
    """A framed batch: where it starts, its header, and what is wrong with it (if anything)."""

    position: int
    header: rb.BatchHeader
    computed_crc: int
    problem: str | None = None

    @property
    def crc_valid(self) -> bool:
        return self.computed_crc == self.header.crc


@dataclass
class LogScan:
    """Everything learned from one pass over a `.log` file."""

    path: Path
    base_offset: int
    size: int
    batches: list[BatchInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(b.header.record_count for b in self.batches)


# --- reading the log ----------------------------------------------------------------------------


@contextlib.contextmanager
def map_file(path: Path) -> Iterator[bytes | mmap.mmap]:
    """The file's bytes, memory-mapped so a 1 GiB segment is not read into memory."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""  # mmap refuses empty files
            return
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mapped
        finally:
            with contextlib.suppress(BufferError):
                mapped.close()


def segment_base_offset(path: Path) -> int | None:
    """The base offset in a segment's file name (20 digits), or None for another name."""
    stem = path.name.removesuffix(fmt.LOG_SUFFIX)
    return int(stem) if stem.isdigit() else None


def scan_batches(buf: bytes | mmap.mmap, base_offset: int | None) -> Iterator[BatchInfo | str]:
    """Each framed batch in order, then a problem string if bytes remain that frame none."""
    pos, end = 0, len(buf)
    previous_last = None if base_offset is None else base_offset - 1
    while pos < end:
        try:
            header = rb.read_header(buf, pos)
            rb.check_header(header, end - pos)
        except LogStoreError as exc:
            yield f"position {pos}: {exc}; {end - pos} byte(s) from here not read"
            return
        info = BatchInfo(pos, header, rb.compute_crc(buf, pos, header.size))
        info.problem = batch_problem(info, previous_last)
        yield info
        previous_last = max(previous_last or -1, header.last_offset)
        pos += header.size


def batch_problem(info: BatchInfo, previous_last: int | None) -> str | None:
    """Why the batch is invalid: bad CRC, impossible contents, or offsets out of order."""
    header = info.header
    if not info.crc_valid:
        return f"CRC {header.crc} stored but the bytes give {info.computed_crc}"
    try:
        rb.check_contents(header, dense=False)  # compacted batches are sparse
    except LogStoreError as exc:
        return str(exc)
    if previous_last is not None and header.base_offset <= previous_last:
        return f"base offset {header.base_offset} does not follow offset {previous_last}"
    return None


# --- formatting -----------------------------------------------------------------------------


def shorten(data: bytes | None, max_bytes: int) -> str:
    """Bytes shown on one line: UTF-8 with escapes, cut after `max_bytes`."""
    if data is None:
        return "null"
    text = data[:max_bytes].decode("utf-8", errors="backslashreplace")
    text = text.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if len(data) > max_bytes:
        text += f"...(+{len(data) - max_bytes} bytes)"
    return text


def timestamp_label(header: rb.BatchHeader) -> str:
    return "LogAppendTime" if header.timestamp_type else "CreateTime"


def batch_line(info: BatchInfo) -> str:
    """One batch as kafka-dump-log prints it, plus base/max timestamps."""
    h = info.header
    valid = "true" if info.problem is None else "false"
    return (
        f"baseOffset: {h.base_offset} lastOffset: {h.last_offset} count: {h.record_count} "
        f"baseSequence: {h.base_sequence} lastSequence: {h.last_sequence} "
        f"producerId: {h.producer_id} producerEpoch: {h.producer_epoch} "
        f"partitionLeaderEpoch: {h.partition_leader_epoch} "
        f"isTransactional: {str(h.is_transactional).lower()} "
        f"isControl: {str(h.is_control).lower()} position: {info.position} "
        f"{timestamp_label(h)}: {h.max_timestamp} baseTimestamp: {h.base_timestamp} "
        f"maxTimestamp: {h.max_timestamp} size: {h.size} magic: {h.magic} "
        f"compresscodec: {fmt.CODEC_NAMES.get(h.codec, str(h.codec))} crc: {h.crc} "
        f"isvalid: {valid}"
    )


def record_line(record: rb.Record, header: rb.BatchHeader, max_bytes: int) -> str:
    key_size = -1 if record.key is None else len(record.key)
    value_size = -1 if record.value is None else len(record.value)
    sequence = (
        -1
        if header.base_sequence < 0
        else header.base_sequence + record.offset - header.base_offset
    )
    headers = ", ".join(f"{k}={shorten(v, max_bytes)}" for k, v in record.headers)
    return (
        f"| offset: {record.offset} {timestamp_label(header)}: {record.timestamp} "
        f"keySize: {key_size} valueSize: {value_size} sequence: {sequence} "
        f"headers: [{headers}] key: {shorten(record.key, max_bytes)} "
        f"payload: {shorten(record.value, max_bytes)}"
    )


def record_lines(
    buf: bytes | mmap.mmap, info: BatchInfo, max_bytes: int
) -> tuple[list[str], str | None]:
    """The batch's records, decoded (inflated first, whichever of Kafka's codecs) even when
    its CRC is wrong, as the batch line says; and why they cannot be decoded, if so."""
    try:
        decoded = rb.decode_batch(buf, info.position, verify_crc=False)
    except LogStoreError as exc:
        return [f"| records cannot be decoded: {exc}"], str(exc)
    return [record_line(r, info.header, max_bytes) for r in decoded.records], None


# --- index verification -----------------------------------------------------------------------


def read_index(path: Path, dtype: np.dtype, problems: list[str]) -> tuple[np.ndarray, int]:
    """(every whole entry, how many are used): trailing all-zero slots are space the broker
    preallocates for an active segment, not entries."""
    raw = path.read_bytes()
    if len(raw) % dtype.itemsize:
        problems.append(
            f"{path.name}: size {len(raw)} is not a multiple of {dtype.itemsize}-byte entries"
        )
    entries = np.frombuffer(raw[: len(raw) - len(raw) % dtype.itemsize], dtype=dtype)
    used = np.zeros(len(entries), dtype=bool)
    for name in dtype.names or ():
        used |= entries[name] != 0
    filled = np.flatnonzero(used)
    return entries, int(filled[-1]) + 1 if len(filled) else 0


def _listed(path: Path, mismatches: list[str]) -> list[str]:
    shown = [f"{path.name}: {m}" for m in mismatches[:MAX_LISTED_MISMATCHES]]
    if len(mismatches) > MAX_LISTED_MISMATCHES:
        shown.append(f"{path.name}: ... and {len(mismatches) - MAX_LISTED_MISMATCHES} more")
    return shown


def check_offset_index(path: Path, scan: LogScan) -> tuple[int, list[str]]:
    """(entries, problems): each entry must point at a batch start whose last offset it names."""
    problems: list[str] = []
    entries, used = read_index(path, OFFSET_INDEX_DTYPE, problems)
    first = scan.batches[0].header if scan.batches else None
    if used == 0 and len(entries) and first is not None and first.last_offset == scan.base_offset:
        used = 1  # (0, 0) is a real entry when the first batch holds only the base offset
    entries = entries[:used]
    starts = {b.position: b.header for b in scan.batches}
    mismatches: list[str] = []
    previous = (-1, -1)
    for slot, (relative, position) in enumerate(entries.tolist()):
        offset = scan.base_offset + relative
        header = starts.get(position)
        if header is None:
            mismatches.append(f"entry {slot} (offset {offset}): no batch starts at {position}")
        elif header.last_offset != offset:
            mismatches.append(
                f"entry {slot} (offset {offset}): the batch at position {position} "
                f"ends at offset {header.last_offset}"
            )
        if relative <= previous[0] or position <= previous[1]:
            mismatches.append(f"entry {slot} (offset {offset}): does not follow entry {slot - 1}")
        previous = (relative, position)
    return len(entries), problems + _listed(path, mismatches)


def check_time_index(path: Path, scan: LogScan) -> tuple[int, list[str]]:
    """(entries, problems): timestamps must rise, offsets not fall and lie in the segment,
    and each timestamp must be the largest the log holds up to that offset."""
    problems: list[str] = []
    entries, used = read_index(path, TIME_INDEX_DTYPE, problems)
    entries = entries[:used]
    last_offsets = [b.header.last_offset for b in scan.batches]
    running_max = list(np.maximum.accumulate([b.header.max_timestamp for b in scan.batches]))
    mismatches: list[str] = []
    previous = (fmt.NO_TIMESTAMP, -1)
    for slot, (timestamp, relative) in enumerate(entries.tolist()):
        offset = scan.base_offset + relative
        where = bisect.bisect_left(last_offsets, offset)
        if where == len(last_offsets):
            mismatches.append(f"entry {slot}: offset {offset} is past the segment's last offset")
        elif running_max[where] != timestamp:
            mismatches.append(
                f"entry {slot}: timestamp {timestamp} at offset {offset}, but the largest "
                f"timestamp up to that offset is {running_max[where]}"
            )
        if timestamp <= previous[0] or relative < previous[1]:
            mismatches.append(f"entry {slot}: timestamp or offset goes back from entry {slot - 1}")
        previous = (timestamp, relative)
    return len(entries), problems + _listed(path, mismatches)


def verify_indexes(scan: LogScan) -> tuple[list[str], list[str]]:
    """(report lines, problems) for the `.index` and `.timeindex` beside the log."""
    lines: list[str] = []
    problems: list[str] = []
    stem = scan.path.with_suffix("")
    for suffix, check in (
        (fmt.INDEX_SUFFIX, check_offset_index),
        (fmt.TIME_INDEX_SUFFIX, check_time_index),
    ):
        path = stem.with_name(stem.name + suffix)
        if not path.exists():
            lines.append(f"{path.name}: missing")
            problems.append(f"{path.name}: missing")
            continue
        count, found = check(path, scan)
        verdict = "ok" if not found else f"{len(found)} problem(s)"
        lines += [f"Verified {path.name}: {count} entries, {verdict}", *found]
        problems += found
    return lines, problems


# --- the command ------------------------------------------------------------------------------


@click.command("dump-log")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--print-records", is_flag=True, help="Also print every record.")
@click.option(
    "--verify-index",
    is_flag=True,
    help="Check the .index and .timeindex beside the log against it.",
)
@click.option(
    "--max-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BYTES,
    show_default=True,
    help="With --print-records: bytes of each key, value and header value shown.",
)
def dump_log(path: Path, print_records: bool, verify_index: bool, max_bytes: int) -> None:
    """Decode and verify segment file PATH (offline; no broker needed).

    Prints one line per batch: offsets, count, position, size, CRC validity, codec,
    timestamp type, base/max timestamps, producer id/epoch/sequence. --print-records
    decodes every batch, whichever codec compressed it (none, gzip, snappy, lz4, zstd).
    Exits non-zero if a batch is invalid (bad CRC, torn or garbled bytes, offsets out of
    order), with --print-records if a batch's records do not decode, or with
    --verify-index if an index disagrees with the log.

    \b
    Examples:
      logstore dump-log data/orders-0/00000000000000000000.log
      logstore dump-log data/orders-0/00000000000000000000.log --print-records --max-bytes 40
      logstore dump-log data/orders-0/00000000000000000000.log --verify-index
    """
    base = segment_base_offset(path)
    click.echo(f"Dumping {path}")
    with map_file(path) as buf:
        scan = _scan(path, buf, base, print_records, max_bytes)
    click.echo(_summary(scan))
    problems = scan.problems
    if verify_index:
        lines, index_problems = verify_indexes(scan)
        for line in lines:
            click.echo(line)
        problems = problems + index_problems
    if problems:
        fail(f"{len(problems)} problem(s) found checking {path.name}; first: {problems[0]}")


def _scan(
    path: Path, buf: bytes | mmap.mmap, base: int | None, print_records: bool, max_bytes: int
) -> LogScan:
    """Print each batch (and its records) while collecting the scan."""
    scan = LogScan(path, base if base is not None else 0, len(buf))
    if base is None:
        click.echo("Log starting offset: unknown (not a segment file name)")
    else:
        click.echo(f"Log starting offset: {base}")
    for item in scan_batches(buf, base):
        if isinstance(item, str):
            click.echo(f"Invalid data at {item}")
            scan.problems.append(item)
            continue
        scan.batches.append(item)
        click.echo(batch_line(item))
        if item.problem is not None:
            click.echo(f"| invalid batch: {item.problem}")
            scan.problems.append(f"batch at position {item.position}: {item.problem}")
        if print_records:
            lines, undecodable = record_lines(buf, item, max_bytes)
            for line in lines:
                click.echo(line)
            if undecodable is not None and item.problem is None:
                # a valid CRC over records that do not decode: damaged compressed data
                # or records from a faulty producer
                scan.problems.append(
                    f"batch at position {item.position}: records cannot be decoded: {undecodable}"
                )
    if base is None and scan.batches:
        scan.base_offset = scan.batches[0].header.base_offset
    return scan


def _summary(scan: LogScan) -> str:
    invalid = sum(1 for b in scan.batches if b.problem is not None)
    offsets = _offset_range(scan.batches)
    return (
        f"Summary: {len(scan.batches)} batch(es), {invalid} invalid, {scan.records} record(s), "
        f"offsets {offsets}, {scan.size} bytes"
    )


def _offset_range(batches: Sequence[BatchInfo]) -> str:
    if not batches:
        return "none"
    return f"{batches[0].header.base_offset}..{batches[-1].header.last_offset}"

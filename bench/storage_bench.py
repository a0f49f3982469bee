"""Storage-engine microbenchmarks for LogStore.

Run from the repository root::

    .venv/bin/python -m bench.storage_bench            # full run (under a minute on 2 cores)
    .venv/bin/python -m bench.storage_bench --quick    # smoke run (~10 s)
    .venv/bin/python bench/storage_bench.py --write    # also save bench/results/storage-<date>.md

Every LogStore number is printed beside a baseline measured in the same run on the same
machine, so the ratio stays meaningful on small, noisy machines. The measurements (see
bench/README.md for the details and the reasoning behind each baseline):

1. append   pre-built ~1 MiB batches to a PartitionLog vs plain buffered file writes (MB/s)
2. encode   encode_batch + PartitionLog.append of 1,000-record batches vs encode alone
3. decode   decode_all(read(...).data) of a partition of 1,000-record batches (records/s)
4. read     read(random offset, 1 MiB) on a small and a large partition (mean time/read)
5. recovery reopening an unclean segment vs sequential read + CRC-32C of the same file
6. compaction a forced pass over a compacted partition (keyed records, many versions of
             each key) vs reading and decoding every record of the same segments once

Units: sizes are MiB (2**20 bytes); bandwidth is MB/s (10**6 bytes per second).
Progress goes to stderr, the results table to stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import logging
import os
import platform
import pstats
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import crc32c

from logstore.codec import format as fmt
from logstore.codec import record_batch as rb
from logstore.storage.log_config import LogConfig
from logstore.storage.partition_log import PartitionLog

MIB = 1024 * 1024
MB = 1_000_000
VALUE_SIZE = 100
RECORDS_PER_BATCH = 1_000
#: bytes a consumer asks for per fetch (Kafka's max.partition.fetch.bytes default)
FETCH_BYTES = MIB
#: chunk size of the plain sequential read baseline (the same as segment recovery uses)
SCAN_CHUNK = 8 * MIB
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("append", "encode", "decode", "read", "recovery", "compaction")

Profiler = cProfile.Profile | None


# --- plan and results ----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much work each benchmark does. Sizes in MiB."""

    repeat: int = 5
    append_mib: int = 512
    encode_batches: int = 300
    decode_batches: int = 300
    small_mib: int = 10
    large_mib: int = 1024
    large_segment_mib: int = 128
    reads: int = 500
    recovery_mib: int = 256
    compaction_mib: int = 64
    fsync_variants: bool = True


QUICK_PLAN = Plan(
    repeat=3,
    append_mib=128,
    encode_batches=100,
    decode_batches=100,
    large_mib=128,
    large_segment_mib=32,
    reads=200,
    recovery_mib=64,
    compaction_mib=8,
)


@dataclass
class Row:
    """One line of the results table. `passed` is None for an informational row."""

    metric: str
    value: str
    baseline: str
    ratio: float | None
    target: str
    passed: bool | None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def progress(message: str) -> None:
    print(f"[storage-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_rate(records_per_s: float) -> str:
    if records_per_s >= 1e6:
        return f"{records_per_s / 1e6:.2f} M rec/s"
    return f"{records_per_s / 1e3:.0f} k rec/s"


def fmt_bw(bytes_per_s: float) -> str:
    return f"{bytes_per_s / MB:,.0f} MB/s"


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} us"


# --- helpers -------------------------------------------------------------------------------


class Stopwatch:
    """Times one region; enables a profiler around exactly that region when given one."""

    def __init__(self, profiler: Profiler = None) -> None:
        self._profiler = profiler
        self._start = 0.0
        self.elapsed = 0.0

    def __enter__(self) -> Stopwatch:
        if self._profiler is not None:
            self._profiler.enable()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._start
        if self._profiler is not None:
            self._profiler.disable()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def value_pool(seed: int, count: int = 1024) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(VALUE_SIZE) for _ in range(count)]


def make_records(values: Sequence[bytes], count: int, timestamp: int) -> list[rb.RecordInput]:
    """`count` fresh record tuples: null key, a 100-byte value, no headers, a timestamp."""
    n = len(values)
    return [(None, values[i % n], None, timestamp) for i in range(count)]


def batch_filling(target_bytes: int, values: Sequence[bytes], timestamp: int) -> bytes:
    """The largest batch of 100-byte records that is at most `target_bytes` long."""
    low, high = 1, max(1, target_bytes // VALUE_SIZE)
    best = rb.encode_batch(make_records(values, 1, timestamp))
    while low <= high:
        mid = (low + high) // 2
        batch = rb.encode_batch(make_records(values, mid, timestamp))
        if len(batch) <= target_bytes:
            best, low = batch, mid + 1
        else:
            high = mid - 1
    return best


def record_count(batch: bytes) -> int:
    return rb.read_header(batch).record_count


def config(segment_mib: int | None = None) -> LogConfig:
    if segment_mib is None:
        return LogConfig()
    return LogConfig.from_properties({"segment.bytes": segment_mib * MIB})


def fill_partition(plog: PartitionLog, batch: bytes, total_bytes: int, per_call: int) -> int:
    """Append `batch` until about `total_bytes` are in the log, `per_call` batches per append.

    Returns the bytes appended.
    """
    count = max(1, total_bytes // len(batch))
    chunk = batch * per_call
    appended = 0
    for _ in range(count // per_call):
        plog.append(chunk)
        appended += len(chunk)
    for _ in range(count % per_call):
        plog.append(batch)
        appended += len(batch)
    return appended


def log_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*" + fmt.LOG_SUFFIX))


def read_file_with_crc(path: Path) -> int:
    """Plain sequential read in 8 MiB chunks with a running CRC-32C; returns bytes read."""
    total = 0
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(SCAN_CHUNK):
            crc = crc32c.crc32c(chunk, crc)
            total += len(chunk)
    return total


def discard_partition(plog: PartitionLog) -> None:
    """Close without fsync and delete: dirty pages of a deleted file are never written back,
    so one repetition does not leave disk write-back running into the next."""
    plog.close_for_delete()
    shutil.rmtree(plog.directory)


def profile_text(profiler: cProfile.Profile, limit: int = 18) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(limit)
    return out.getvalue()


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repetitions of numerator[i] / denominator[i].

    Each repetition runs LogStore and its baseline back to back, so load from other
    processes that slows both cancels out of that repetition's ratio.
    """
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def wants_profile(mode: str, rows: Sequence[Row]) -> bool:
    return mode == "all" or (mode == "failed" and any(r.passed is False for r in rows))


# --- 1. append pre-built 1 MiB batches ----------------------------------------------------


def bench_append(workdir: Path, plan: Plan, report: Report, profile: str) -> None:
    timestamp = now_ms()
    batch = batch_filling(MIB, value_pool(1), timestamp)
    count = max(1, plan.append_mib * MIB // len(batch))
    total = count * len(batch)
    cfg = config()
    progress(
        f"append: {count} x {len(batch):,}-byte batch ({record_count(batch)} records) = "
        f"{total / MIB:.0f} MiB, {plan.repeat} repetitions"
    )
    runs = 0

    def logstore_once(fsync: bool, profiler: Profiler = None) -> float:
        nonlocal runs
        runs += 1
        plog = PartitionLog(workdir / f"append-{runs}", cfg, clean_shutdown=True)
        append = plog.append
        with Stopwatch(profiler) as sw:
            for _ in range(count):
                append(batch)
            if fsync:
                plog.flush()
        assert plog.log_end_offset == count * record_count(batch)
        discard_partition(plog)
        return sw.elapsed

    def baseline_once(fsync: bool) -> float:
        path = workdir / "plain-append.bin"
        with Stopwatch() as sw, open(path, "ab") as f:
            write = f.write
            for _ in range(count):
                write(batch)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        path.unlink()
        return sw.elapsed

    ours: list[float] = []
    base: list[float] = []
    for i in range(plan.repeat):
        base.append(baseline_once(fsync=False))
        ours.append(logstore_once(fsync=False))
        progress(
            f"append: rep {i + 1}: logstore {fmt_bw(total / ours[-1])}, "
            f"file.write {fmt_bw(total / base[-1])}"
        )
    ours_bw, base_bw = total / min(ours), total / min(base)
    ratio = paired_ratio(base, ours)
    rows = [
        Row(
            "1. append 1 MiB batches, no fsync",
            fmt_bw(ours_bw),
            f"{fmt_bw(base_bw)} (file.write)",
            ratio,
            ">= 0.60 x baseline",
            ratio >= 0.60,
        )
    ]
    if plan.fsync_variants:
        ours_sync = logstore_once(fsync=True)
        base_sync = baseline_once(fsync=True)
        progress(
            f"append+fsync: logstore {fmt_bw(total / ours_sync)}, "
            f"file.write {fmt_bw(total / base_sync)}"
        )
        rows.append(
            Row(
                "1b. append 1 MiB batches + fsync at end (1 run)",
                fmt_bw(total / ours_sync),
                f"{fmt_bw(total / base_sync)} (file.write + fsync)",
                base_sync / ours_sync,
                "info",
                None,
            )
        )
    report.rows.extend(rows)
    if wants_profile(profile, rows[:1]):
        profiler = cProfile.Profile()
        logstore_once(fsync=False, profiler=profiler)
        report.profiles.append(("1. append 1 MiB batches", profile_text(profiler)))


# --- 2. encode + append of 1,000-record batches -------------------------------------------


def bench_encode(workdir: Path, plan: Plan, report: Report, profile: str) -> None:
    values = value_pool(2)
    timestamp = now_ms()
    batches = plan.encode_batches
    total_records = batches * RECORDS_PER_BATCH
    progress(
        f"encode: {batches} batches x {RECORDS_PER_BATCH} records of {VALUE_SIZE} bytes, "
        f"{plan.repeat} repetitions"
    )
    cfg = config()
    encode = rb.encode_batch
    runs = 0

    def fresh_inputs() -> list[list[rb.RecordInput]]:
        # Built outside the timed region: a producer hands over its own record tuples.
        return [make_records(values, RECORDS_PER_BATCH, timestamp) for _ in range(batches)]

    def logstore_once(profiler: Profiler = None) -> float:
        nonlocal runs
        runs += 1
        inputs = fresh_inputs()
        plog = PartitionLog(workdir / f"encode-{runs}", cfg, clean_shutdown=True)
        append = plog.append
        with Stopwatch(profiler) as sw:
            for records in inputs:
                append(encode(records))
        assert plog.log_end_offset == total_records
        discard_partition(plog)
        return sw.elapsed

    def encode_only_once() -> float:
        inputs = fresh_inputs()
        with Stopwatch() as sw:
            for records in inputs:
                encode(records)
        return sw.elapsed

    def append_only_once() -> float:
        nonlocal runs
        runs += 1
        encoded = [encode(records) for records in fresh_inputs()]
        plog = PartitionLog(workdir / f"encode-{runs}", cfg, clean_shutdown=True)
        append = plog.append
        with Stopwatch() as sw:
            for batch in encoded:
                append(batch)
        discard_partition(plog)
        return sw.elapsed

    ours: list[float] = []
    base: list[float] = []
    append_only: list[float] = []
    for i in range(plan.repeat):
        base.append(encode_only_once())
        ours.append(logstore_once())
        append_only.append(append_only_once())
        progress(
            f"encode: rep {i + 1}: encode+append {fmt_rate(total_records / ours[-1])}, "
            f"encode {fmt_rate(total_records / base[-1])}, "
            f"append {fmt_rate(total_records / append_only[-1])}"
        )
    ours_rate = total_records / min(ours)
    base_rate = total_records / min(base)
    rows = [
        Row(
            "2. encode + append, 1,000 x 100 B records per batch",
            fmt_rate(ours_rate),
            f"{fmt_rate(base_rate)} (encode_batch alone)",
            paired_ratio(base, ours),
            ">= 1.00 M rec/s",
            ours_rate >= 1_000_000,
        ),
        Row(
            "2b. append alone of the same pre-encoded batches",
            fmt_rate(total_records / min(append_only)),
            f"{fmt_rate(base_rate)} (encode_batch alone)",
            paired_ratio(base, append_only),
            "info",
            None,
        ),
    ]
    report.rows.extend(rows)
    if wants_profile(profile, rows[:1]):
        profiler = cProfile.Profile()
        logstore_once(profiler)
        report.profiles.append(("2. encode + append", profile_text(profiler)))


# --- 3. decode fetched batches -------------------------------------------------------------

_PREFIX = struct.Struct(">qi")
_COUNT = struct.Struct(">i")


def walk_records(buf: bytes) -> list[tuple[int, bytes]]:
    """The floor for a Python consumer: one (offset, record bytes) tuple per record.

    Reads each record's length varint and slices the record out; no CRC, no field parsing,
    no validation. Used as the in-run baseline for decoding.
    """
    out: list[tuple[int, bytes]] = []
    append = out.append
    end = len(buf)
    pos = 0
    while end - pos >= fmt.BATCH_HEADER_SIZE:
        base_offset, batch_length = _PREFIX.unpack_from(buf, pos)
        batch_end = pos + fmt.LOG_OVERHEAD + batch_length
        if batch_end > end:
            break
        p = pos + fmt.RECORDS_OFFSET
        for delta in range(_COUNT.unpack_from(buf, pos + fmt.RECORD_COUNT_OFFSET)[0]):
            byte = buf[p]
            if byte < 0x80:
                length = byte >> 1
                p += 1
            else:
                length, p = rb.decode_varint(buf, p)
            append((base_offset + delta, buf[p : p + length]))
            p += length
        pos = batch_end
    return out


def consume(plog: PartitionLog, decode: Callable[[bytes], list], end_offset: int) -> int:
    """Fetch from offset 0 to `end_offset` like a consumer; returns records decoded."""
    offset = 0
    records = 0
    read = plog.read
    while offset < end_offset:
        decoded = decode(read(offset, FETCH_BYTES).data)
        records += len(decoded)
        offset = decoded[-1][0] + 1
    return records


def bench_decode(workdir: Path, plan: Plan, report: Report, profile: str) -> None:
    values = value_pool(3)
    timestamp = now_ms()
    batches = plan.decode_batches
    total_records = batches * RECORDS_PER_BATCH
    progress(
        f"decode: partition of {batches} batches x {RECORDS_PER_BATCH} records, fetches of "
        f"{FETCH_BYTES // MIB} MiB, {plan.repeat} repetitions"
    )
    plog = PartitionLog(workdir / "decode", config(), clean_shutdown=True)
    for _ in range(batches):
        plog.append(rb.encode_batch(make_records(values, RECORDS_PER_BATCH, timestamp)))
    end = plog.log_end_offset
    fetched: list[bytes] = []
    offset = 0
    while offset < end:
        data = plog.read(offset, FETCH_BYTES).data
        fetched.append(data)
        offset = [h for _, h in rb.iter_batches(data)][-1].next_offset
    decode_all = rb.decode_all

    def logstore_once(profiler: Profiler = None) -> float:
        with Stopwatch(profiler) as sw:
            n = consume(plog, decode_all, end)
        assert n == total_records, n
        return sw.elapsed

    def baseline_once() -> float:
        with Stopwatch() as sw:
            n = consume(plog, walk_records, end)
        assert n == total_records, n
        return sw.elapsed

    def decode_only_once() -> float:
        with Stopwatch() as sw:
            for data in fetched:
                decode_all(data)
        return sw.elapsed

    ours: list[float] = []
    base: list[float] = []
    decode_only: list[float] = []
    for i in range(plan.repeat):
        base.append(baseline_once())
        ours.append(logstore_once())
        decode_only.append(decode_only_once())
        progress(
            f"decode: rep {i + 1}: read+decode_all {fmt_rate(total_records / ours[-1])}, "
            f"read+walk {fmt_rate(total_records / base[-1])}"
        )
    ours_rate = total_records / min(ours)
    base_rate = total_records / min(base)
    rows = [
        Row(
            "3. decode_all(read(...).data), 1,000-record batches",
            fmt_rate(ours_rate),
            f"{fmt_rate(base_rate)} (read + minimal record walk)",
            paired_ratio(base, ours),
            ">= 500 k rec/s",
            ours_rate >= 500_000,
        ),
        Row(
            "3b. decode_all alone on pre-fetched data",
            fmt_rate(total_records / min(decode_only)),
            f"{fmt_rate(base_rate)} (read + minimal record walk)",
            paired_ratio(base, decode_only),
            "info",
            None,
        ),
    ]
    report.rows.extend(rows)
    if wants_profile(profile, rows[:1]):
        profiler = cProfile.Profile()
        logstore_once(profiler)
        report.profiles.append(("3. decode fetched batches", profile_text(profiler)))
    discard_partition(plog)


# --- 4. random 1 MiB reads, small vs large partition ---------------------------------------


def bench_read(workdir: Path, plan: Plan, report: Report, profile: str) -> None:
    timestamp = now_ms()
    batch = batch_filling(16 * 1024, value_pool(4), timestamp)
    per_batch = record_count(batch)
    cfg = config(plan.large_segment_mib)
    per_call = max(1, MIB // len(batch))
    logs: dict[str, PartitionLog] = {}
    for name, mib in (("small", plan.small_mib), ("large", plan.large_mib)):
        progress(f"read: building {mib} MiB partition of {len(batch):,}-byte batches")
        directory = workdir / f"read-{name}"
        plog = PartitionLog(directory, cfg, clean_shutdown=True)
        fill_partition(plog, batch, mib * MIB, per_call)
        plog.close()
        # Reopen as a broker would after a clean restart.
        logs[name] = PartitionLog(directory, cfg, clean_shutdown=True)
    small, large = logs["small"], logs["large"]
    progress(
        f"read: small {small.size_bytes / MIB:.0f} MiB / {small.segment_count} segment(s), "
        f"large {large.size_bytes / MIB:.0f} MiB / {large.segment_count} segments; warming cache"
    )
    for plog in (small, large):
        for path in log_files(plog.directory):
            read_file_with_crc(path)
    rng = random.Random(4)
    # A random offset can start at most one MiB of records before the end, so every read
    # can return a full MiB in either partition.
    mib_records = per_call * per_batch

    def offsets(plog: PartitionLog, n: int) -> list[int]:
        high = max(1, plog.log_end_offset - mib_records)
        return [rng.randrange(0, high) for _ in range(n)]

    def read_once(plog: PartitionLog, profiler: Profiler = None) -> tuple[float, int]:
        targets = offsets(plog, plan.reads)
        read = plog.read
        got = 0
        with Stopwatch(profiler) as sw:
            for offset in targets:
                got += len(read(offset, MIB).data)
        return sw.elapsed / len(targets), got // len(targets)

    for plog in (small, large):
        read_once(plog)  # warm-up: lazily built index keys, interpreter caches
    times: dict[str, list[float]] = {"small": [], "large": []}
    sizes: dict[str, list[int]] = {"small": [], "large": []}
    for i in range(plan.repeat + 2):
        for name, plog in (("small", small), ("large", large)):
            t, size = read_once(plog)
            times[name].append(t)
            sizes[name].append(size)
        progress(
            f"read: rep {i + 1}: small {fmt_us(times['small'][-1])}, "
            f"large {fmt_us(times['large'][-1])} per read"
        )
    t_small, t_large = min(times["small"]), min(times["large"])
    ratio = paired_ratio(times["large"], times["small"])
    rows = [
        Row(
            f"4. read(random offset, 1 MiB), {plan.large_mib} MiB partition "
            f"({large.segment_count} segments)",
            fmt_us(t_large),
            f"{fmt_us(t_small)} ({plan.small_mib} MiB partition)",
            ratio,
            "ratio <= 2.0",
            ratio <= 2.0,
        )
    ]
    report.rows.extend(rows)
    report.notes.append(
        f"read: {len(batch):,}-byte batches of {per_batch} records; mean bytes returned per "
        f"read: small {statistics.mean(sizes['small']):,.0f}, "
        f"large {statistics.mean(sizes['large']):,.0f}; {plan.reads} reads per repetition"
    )
    if wants_profile(profile, rows):
        profiler = cProfile.Profile()
        read_once(large, profiler)
        report.profiles.append(("4. random reads, large partition", profile_text(profiler)))
    for plog in (small, large):
        discard_partition(plog)


# --- 5. recovery of an unclean segment -----------------------------------------------------


def bench_recovery(workdir: Path, plan: Plan, report: Report, profile: str) -> None:
    timestamp = now_ms()
    batch = batch_filling(64 * 1024, value_pool(5), timestamp)
    # one segment holds everything (Kafka's default segment.bytes unless that is too small)
    cfg = config(max(1024, plan.recovery_mib + 1))
    directory = workdir / "recovery"
    progress(f"recovery: writing {plan.recovery_mib} MiB of {len(batch):,}-byte batches")
    plog = PartitionLog(directory, cfg, clean_shutdown=True)
    fill_partition(plog, batch, plan.recovery_mib * MIB, per_call=1)
    end_offset = plog.log_end_offset
    plog.close()
    (log_path,) = log_files(directory)
    size = log_path.stat().st_size
    # warm the page cache for both sides
    read_file_with_crc(log_path)
    torn_tail = batch[: len(batch) // 2]

    def recover_once(torn: bool = False, profiler: Profiler = None) -> float:
        if torn:
            with open(log_path, "ab") as f:
                f.write(torn_tail)
        with Stopwatch(profiler) as sw:
            reopened = PartitionLog(directory, cfg, clean_shutdown=False, recovery_point=0)
        rec = reopened.recovery_report
        assert rec.recovered and rec.rebuilt_indexes == 1, rec
        assert rec.truncated_bytes == (len(torn_tail) if torn else 0), rec
        assert reopened.log_end_offset == end_offset
        reopened.close()
        return sw.elapsed

    def baseline_once() -> float:
        with Stopwatch() as sw:
            read_file_with_crc(log_path)
        return sw.elapsed

    ours: list[float] = []
    base: list[float] = []
    torn: list[float] = []
    for i in range(plan.repeat):
        base.append(baseline_once())
        ours.append(recover_once())
        torn.append(recover_once(torn=True))
        progress(
            f"recovery: rep {i + 1}: recover {fmt_bw(size / ours[-1])}, "
            f"torn tail {fmt_bw(size / torn[-1])}, read+crc32c {fmt_bw(size / base[-1])}"
        )
    ours_bw, base_bw = size / min(ours), size / min(base)
    rows = [
        Row(
            f"5. recover unclean {size / MIB:.0f} MiB segment (64 KiB batches)",
            fmt_bw(ours_bw),
            f"{fmt_bw(base_bw)} (8 MiB reads + crc32c)",
            paired_ratio(base, ours),
            ">= 200 MB/s",
            ours_bw >= 200 * MB,
        ),
        Row(
            "5b. same, with a torn half batch at the end",
            fmt_bw(size / min(torn)),
            f"{fmt_bw(base_bw)} (8 MiB reads + crc32c)",
            paired_ratio(base, torn),
            "info",
            None,
        ),
    ]
    report.rows.extend(rows)
    if wants_profile(profile, rows[:1]):
        profiler = cProfile.Profile()
        recover_once(profiler=profiler)
        report.profiles.append(("5. recovery", profile_text(profiler)))
    shutil.rmtree(directory)


#: distinct keys in the compaction benchmark: each is written many times over
COMPACTION_KEYS = 10_000


def bench_compaction(workdir: Path, plan: Plan, report: Report, profile: str) -> None:
    from logstore.storage import log_cleaner

    timestamp = now_ms()
    values = value_pool(6)
    cfg = replace(config(8), cleanup_policy="compact")
    pristine = workdir / "compaction-pristine"
    progress(f"compaction: writing {plan.compaction_mib} MiB of keyed 1,000-record batches")
    plog = PartitionLog(pristine, cfg, clean_shutdown=True)
    written = 0
    while written < plan.compaction_mib * MIB:
        start = plog.log_end_offset
        keys = [b"key-%06d" % ((start + i) % COMPACTION_KEYS) for i in range(RECORDS_PER_BATCH)]
        records = [(k, values[i % len(values)], (), timestamp) for i, k in enumerate(keys)]
        batch = rb.encode_batch(records)
        plog.append(batch)
        written += len(batch)
    plog.roll()
    records = plog.log_end_offset
    size = plog.size_bytes
    plog.close()
    directory = workdir / "compaction"

    def clean_once(profiler: Profiler = None) -> float:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(pristine, directory)
        part = PartitionLog(directory, cfg, clean_shutdown=True)
        for path in log_files(directory):
            read_file_with_crc(path)  # warm, as the baseline's files are
        with Stopwatch(profiler) as sw:
            result = log_cleaner.clean(part, timestamp, force=True)
        assert result is not None and result.records_removed > 0, result
        part.close()
        return sw.elapsed

    def baseline_once() -> float:
        with Stopwatch() as sw:
            decoded = sum(len(rb.decode_all(path.read_bytes())) for path in log_files(pristine))
        assert decoded == records, (decoded, records)
        return sw.elapsed

    ours: list[float] = []
    base: list[float] = []
    for i in range(plan.repeat):
        base.append(baseline_once())
        ours.append(clean_once())
        progress(
            f"compaction: rep {i + 1}: pass {fmt_rate(records / ours[-1])}, "
            f"read+decode {fmt_rate(records / base[-1])}"
        )
    rows = [
        Row(
            f"6. compaction pass over {size / MIB:.0f} MiB ({records:,} records, "
            f"{COMPACTION_KEYS:,} keys)",
            f"{fmt_rate(records / min(ours))} ({fmt_bw(size / min(ours))})",
            f"{fmt_rate(records / min(base))} (read + decode once)",
            paired_ratio(base, ours),
            "info",
            None,
        )
    ]
    report.rows.extend(rows)
    if profile == "all":
        profiler = cProfile.Profile()
        clean_once(profiler=profiler)
        report.profiles.append(("6. compaction", profile_text(profiler)))
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(pristine)


# --- driver ------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Path, Plan, Report, str], None]] = {
    "append": bench_append,
    "encode": bench_encode,
    "decode": bench_decode,
    "read": bench_read,
    "recovery": bench_recovery,
    "compaction": bench_compaction,
}


TABLE_LEGEND = (
    "value and baseline: best repetition of each; ratio: median over repetitions of "
    "LogStore / baseline measured back to back (for 4.: large / small time)."
)


def render_table(rows: Sequence[Row]) -> str:
    lines = [
        "| metric | value | baseline | ratio | target | pass? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}"
        verdict = "info" if r.passed is None else ("PASS" if r.passed else "FAIL")
        lines.append(
            f"| {r.metric} | {r.value} | {r.baseline} | {ratio} | {r.target} | {verdict} |"
        )
    return "\n".join(lines)


def environment_lines(args: argparse.Namespace, plan: Plan, elapsed: float) -> list[str]:
    return [
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- python {platform.python_version()} on {platform.platform()}, "
        f"{os.cpu_count()} CPUs, processor {platform.processor() or platform.machine()}",
        f"- mode: {'quick' if args.quick else 'full'}; plan: {plan}",
        f"- work directory filesystem: {args.dir or tempfile.gettempdir()}",
        f"- total runtime: {elapsed:.1f} s",
    ]


def write_results(text: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"storage-{datetime.date.today().isoformat()}"
    path = RESULTS_DIR / f"{stem}.md"
    n = 2
    while path.exists():
        path = RESULTS_DIR / f"{stem}-{n}.md"
        n += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="LogStore storage-engine microbenchmarks (each beside an in-run baseline)."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, ~10 s smoke run")
    parser.add_argument("--write", action="store_true", help="save bench/results/storage-<date>.md")
    parser.add_argument("--dir", type=Path, help="parent of the temporary work directory")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--repeat", type=int, help="repetitions per measurement (best is kept)")
    parser.add_argument("--append-mb", type=int, help="MiB appended per repetition (1.)")
    parser.add_argument("--encode-batches", type=int, help="1,000-record batches (2.)")
    parser.add_argument("--decode-batches", type=int, help="1,000-record batches (3.)")
    parser.add_argument("--small-mb", type=int, help="small partition size in MiB (4.)")
    parser.add_argument("--large-mb", type=int, help="large partition size in MiB (4.)")
    parser.add_argument("--segment-mb", type=int, help="segment.bytes in MiB for (4.)")
    parser.add_argument("--reads", type=int, help="random reads per repetition (4.)")
    parser.add_argument("--recovery-mb", type=int, help="segment size in MiB to recover (5.)")
    parser.add_argument("--compaction-mb", type=int, help="MiB of keyed records compacted (6.)")
    parser.add_argument("--no-fsync", action="store_true", help="skip the fsync variants (1b.)")
    parser.add_argument(
        "--profile",
        choices=("none", "failed", "all"),
        default="failed",
        help="cProfile one extra LogStore run of failing (default) or all benchmarks",
    )
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    plan = QUICK_PLAN if args.quick else Plan()
    overrides = {
        "repeat": args.repeat,
        "append_mib": args.append_mb,
        "encode_batches": args.encode_batches,
        "decode_batches": args.decode_batches,
        "small_mib": args.small_mb,
        "large_mib": args.large_mb,
        "large_segment_mib": args.segment_mb,
        "reads": args.reads,
        "recovery_mib": args.recovery_mb,
        "compaction_mib": args.compaction_mb,
    }
    plan = replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_fsync:
        plan = replace(plan, fsync_variants=False)
    for name in (
        "repeat",
        "append_mib",
        "encode_batches",
        "decode_batches",
        "reads",
        "compaction_mib",
    ):
        if getattr(plan, name) < 1:
            raise SystemExit(f"--{name.replace('_mib', '-mb').replace('_', '-')} must be >= 1")
    if not 1 <= plan.recovery_mib <= 2000:
        raise SystemExit("--recovery-mb must be in 1..2000 (one segment, segment.bytes <= 2 GiB)")
    if not 1 <= plan.large_segment_mib <= 2047:
        raise SystemExit("--segment-mb must be in 1..2047 (segment.bytes is an int32)")
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    # LogStore's own warnings (e.g. the torn tail cut in 5b.) go to stderr beside progress.
    logging.basicConfig(level=logging.WARNING, format="[logstore] %(name)s: %(message)s")
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    report = Report()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="logstore-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        for name in BENCHMARKS:
            if name in selected:
                RUNNERS[name](workdir, plan, report, args.profile)
    elapsed = time.perf_counter() - started
    table = render_table(report.rows) + "\n\n" + TABLE_LEGEND
    print(table)
    for note in report.notes:
        print(f"\n{note}")
    for title, text in report.profiles:
        print(f"\nProfile ({title}):\n\n```\n{text.strip()}\n```")
    progress(f"done in {elapsed:.1f} s")
    if args.write:
        body = [
            "# LogStore storage benchmarks",
            "",
            *environment_lines(args, plan, elapsed),
            "",
            table,
            "",
            *(f"- {note}" for note in report.notes),
        ]
        for title, text in report.profiles:
            body += ["", f"## Profile: {title}", "", "```", text.strip(), "```"]
        path = write_results("\n".join(body) + "\n")
        progress(f"wrote {path}")
    return 1 if any(r.passed is False for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Record batch codecs: compression ratio and speed of Kafka's four codecs in LogStore.

Run from the repository root::

    .venv/bin/python -m bench.codec_bench                 # 1 MiB records section, 9 reps
    .venv/bin/python -m bench.codec_bench --mib 4 --reps 5

One records section (about `--mib` MiB of JSON-like records with keys and a header, as
`record_batch.encode_records` lays them out) goes through `logstore.codec.compression`
for every codec: the ratio, and compress and decompress speed in MB/s of records section
(10**6 bytes of uncompressed data per second), the median of `--reps` runs. Decompression
is the consumer's path, compression the producer's and the cleaner's. A last line
compares gzip inflation through the standard library's zlib, which LogStore uses (it
caps output natively), with cramjam's gzip.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import cramjam

from logstore.codec import compression
from logstore.codec import format as fmt
from logstore.codec import record_batch as rb

MIB = 1024 * 1024
MB = 1_000_000
CODECS = (fmt.CODEC_GZIP, fmt.CODEC_SNAPPY, fmt.CODEC_LZ4, fmt.CODEC_ZSTD)


def records_section(size: int, seed: int = 1) -> bytes:
    """At least `size` bytes of records: JSON-ish values over a 500-word vocabulary."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 5)).hex() for _ in range(500)]
    records: list[rb.RecordInput] = []
    total = 0
    while total < size:
        i = len(records)
        value = (
            f'{{"user":"u{rng.randint(0, 9999)}","items":[{rng.randint(0, 99999)},'
            f'{rng.randint(0, 99999)}],"note":"{" ".join(rng.choices(words, k=12))}"}}'
        ).encode()
        records.append(
            (b"user-%d" % (i % 100), value, [("source", b"bench")], 1_700_000_000_000 + i)
        )
        total += len(value) + 30
    return rb.encode_records(records, 1_700_000_000_000)


def median_seconds(*works: Callable[[], object], reps: int) -> list[float]:
    """The median time (s) of each of `works`, run in turn `reps` times, so that a busy
    machine slows them alike."""
    times: list[list[float]] = [[] for _ in works]
    for work in works:
        work()  # warm up
    for _ in range(reps):
        for work, samples in zip(works, times, strict=True):
            start = time.perf_counter()
            work()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=1.0, help="records section size (MiB)")
    parser.add_argument("--reps", type=int, default=9, help="runs per measurement")
    args = parser.parse_args()
    section = records_section(int(args.mib * MIB))
    cap = fmt.MAX_DECOMPRESSED_BYTES
    print(f"records section: {len(section):,} bytes; median of {args.reps} runs")
    print("| codec | ratio | compress MB/s | decompress MB/s |")
    print("|---|---|---|---|")
    for codec in CODECS:
        stored = compression.compress(codec, section)
        assert compression.decompress(codec, stored, cap) == section
        packing, unpacking = median_seconds(
            lambda c=codec: compression.compress(c, section),
            lambda c=codec, s=stored: compression.decompress(c, s, cap),
            reps=args.reps,
        )
        print(
            f"| {fmt.CODEC_NAMES[codec]} | {len(section) / len(stored):.2f} "
            f"| {len(section) / packing / MB:.0f} | {len(section) / unpacking / MB:.0f} |"
        )
    gzipped = compression.compress(fmt.CODEC_GZIP, section)
    ours, theirs = median_seconds(
        lambda: compression.decompress(fmt.CODEC_GZIP, gzipped, cap),
        lambda: cramjam.gzip.decompress(gzipped),
        reps=4 * args.reps,
    )
    print(
        f"gzip inflate: zlib (capped, LogStore's) {len(section) / ours / MB:.0f} MB/s, "
        f"cramjam.gzip (uncapped) {len(section) / theirs / MB:.0f} MB/s"
    )


if __name__ == "__main__":
    main()

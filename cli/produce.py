"""`logstore produce`: send lines from stdin or a file as records."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import BinaryIO

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from logstore.cli.common import bootstrap_option, fail, note, open_admin, parse_key_values
from logstore.client.producer import Producer
from logstore.codec import format as fmt
from logstore.types import RecordMetadata

#: the CLI gives up on a record sooner than a long-running application would (ms)
DELIVERY_TIMEOUT_MS = 30_000
MAX_BLOCK_MS = 30_000


class Summary:
    """Counts what was acknowledged per partition; producer threads report into it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.first_error: BaseException | None = None
        #: partition -> [records, lowest offset, highest offset]
        self.partitions: dict[int, list[int]] = {}

    def track(self, future: Future[RecordMetadata]) -> None:
        self.sent += 1
        future.add_done_callback(self._done)

    def _done(self, future: Future[RecordMetadata]) -> None:
        error = future.exception()
        with self._lock:
            if error is not None:
                self.failed += 1
                self.first_error = self.first_error or error
                return
            md = future.result()
            row = self.partitions.setdefault(md.partition, [0, md.offset, md.offset])
            row[0] += 1
            row[1] = min(row[1], md.offset)
            row[2] = max(row[2], md.offset)

    def report(self, topic: str) -> None:
        """Print the summary on stderr, one line per partition."""
        delivered = self.sent - self.failed
        note(f"produced {delivered} record(s) to {topic}")
        for partition, (count, low, high) in sorted(self.partitions.items()):
            offsets = "offsets not reported (acks=0)" if high < 0 else f"offsets {low}..{high}"
            note(f"  partition {partition}: {count} record(s), {offsets}")


@click.command()
@click.argument("topic")
@click.option("--key-separator", metavar="SEP", help="Split each line into KEY<SEP>VALUE.")
@click.option("--partition", type=click.IntRange(min=0), help="Send every record here.")
@click.option("--acks", type=click.Choice(["all", "1", "0"]), default="all", show_default=True)
@click.option(
    "--compression", type=click.Choice(fmt.COMPRESSION_TYPES), default="none", show_default=True
)
@click.option(
    "--header", "headers", multiple=True, metavar="KEY=VALUE", help="Add to every record."
)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="Read lines from this file instead of stdin.",
)
@bootstrap_option
def produce(
    topic: str,
    key_separator: str | None,
    partition: int | None,
    acks: str,
    compression: str,
    headers: tuple[str, ...],
    path: str | None,
    bootstrap: str,
) -> None:
    """Send each line of stdin (or --file) to TOPIC as one record.

    Without --key-separator the whole line is the value and the records are spread by
    the producer's sticky partitioner; with it, each line is KEY<SEP>VALUE and the key
    picks the partition (murmur2, as Kafka). A summary (records, partitions, offset
    ranges) goes to stderr at the end.

    \b
    Examples:
      echo hello | logstore produce orders
      printf 'u1:signup\\nu2:login\\n' | logstore produce orders --key-separator :
      logstore produce orders --file events.txt --acks 1 --compression zstd
      logstore produce orders --partition 2 --header source=cli --header v=1 < lines.txt
    """
    if key_separator == "":
        raise click.UsageError("--key-separator must not be empty")
    header_map = {k: v.encode() for k, v in parse_key_values(headers, "--header").items()}
    acks_value: int | str = acks if acks == "all" else int(acks)
    with open_admin(bootstrap) as admin:
        count = len(admin.describe_topic(topic).partitions)
    if partition is not None and partition >= count:
        fail(f"partition {partition} of topic {topic!r} does not exist: valid 0..{count - 1}")
    summary = Summary()
    producer = Producer(
        bootstrap,
        acks=acks_value,
        compression=compression,
        delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
        max_block_ms=MAX_BLOCK_MS,
    )
    bad_line = None
    try:
        with _input(path) as (stream, size):
            bad_line = _send_lines(
                producer, topic, stream, size, key_separator, partition, header_map, summary
            )
    finally:
        producer.close()
    summary.report(topic)
    _finish(summary, bad_line, key_separator)


def _finish(summary: Summary, bad_line: int | None, key_separator: str | None) -> None:
    if bad_line is not None:
        fail(f"line {bad_line} has no key separator {key_separator!r}; stopped there")
    if summary.failed:
        fail(f"{summary.failed} of {summary.sent} record(s) failed: {summary.first_error}")


@contextlib.contextmanager
def _input(path: str | None) -> Iterator[tuple[BinaryIO, int | None]]:
    """The byte stream to read and its size when known (for the progress bar)."""
    if path is None:
        yield sys.stdin.buffer, None
        return
    with open(path, "rb") as stream:
        yield stream, os.fstat(stream.fileno()).st_size


def _send_lines(
    producer: Producer,
    topic: str,
    stream: BinaryIO,
    size: int | None,
    key_separator: str | None,
    partition: int | None,
    headers: dict[str, bytes],
    summary: Summary,
) -> int | None:
    """Send every line; return the number of a line missing the separator, if any."""
    separator = key_separator.encode() if key_separator is not None else None
    with _progress(size) as advance:
        for number, raw in enumerate(stream, start=1):
            advance(len(raw))
            line = raw.removesuffix(b"\n").removesuffix(b"\r")
            key = None
            if separator is not None:
                key, found, line = line.partition(separator)
                if not found:
                    return number
            future = producer.send(
                topic, value=line, key=key, headers=headers or None, partition=partition
            )
            summary.track(future)
    return None


@contextlib.contextmanager
def _progress(size: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on an interactive stderr for a file of known size; else nothing."""
    if size is None or not sys.stderr.isatty():
        yield lambda n: None
        return
    columns = (
        TextColumn("producing"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("produce", total=size)
        yield lambda n: progress.advance(task, n)

"""`logstore consume`: print a topic's records, one per line."""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from logstore.cli.common import (
    bootstrap_option,
    fail,
    json_option,
    note,
    open_admin,
    silence_stdout,
)
from logstore.client.consumer import Consumer, ConsumerRebalanceListener
from logstore.errors import CommitFailedError
from logstore.types import ConsumerRecord, TopicPartition

DEFAULT_TIMEOUT_MS = 10_000
#: records asked of one poll; small enough that output starts flowing at once
POLL_RECORDS = 500
#: the longest one poll waits, so Ctrl-C and the idle timeout are noticed promptly (s)
POLL_WAIT_S = 1.0
CLIENT_ID = "logstore-console-consumer"
#: how often a group's progress is committed while consuming (s); also on exit
COMMIT_INTERVAL_S = 5.0


class Printer:
    """Formats records as lines and remembers, per partition, the offset after the last
    one written: that is what the group commits, never a record that was not printed."""

    def __init__(self, print_key: bool, print_offset: bool, as_json: bool) -> None:
        self.print_key = print_key
        self.print_offset = print_offset
        self.as_json = as_json
        self.count = 0
        self.positions: dict[TopicPartition, int] = {}
        self._out = getattr(sys.stdout, "buffer", None)

    def write(self, records: list[ConsumerRecord]) -> None:
        text = "".join(self.format(r) + "\n" for r in records)
        if self._out is not None:
            sys.stdout.flush()
            self._out.write(text.encode("utf-8"))
            self._out.flush()
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        for r in records:
            self.positions[(r.topic, r.partition)] = r.offset + 1
        self.count += len(records)

    def format(self, r: ConsumerRecord) -> str:
        if self.as_json:
            return json.dumps(record_as_json(r), ensure_ascii=False)
        fields = [str(r.partition), str(r.offset)] if self.print_offset else []
        if self.print_key:
            fields.append(as_text(r.key))
        fields.append(as_text(r.value))
        return "\t".join(fields)


def as_text(data: bytes | None) -> str:
    """Bytes as UTF-8, undecodable bytes escaped (\\xNN); a null key or value as "null"."""
    return "null" if data is None else data.decode("utf-8", errors="backslashreplace")


#: how a key, value or header value that is not UTF-8 is written in JSON
BASE64 = "base64"


def as_json_string(data: bytes) -> tuple[str, str | None]:
    """(text, None) for bytes that are valid UTF-8; (base64 text, "base64") otherwise, so
    binary data survives a JSON round trip and is never mistaken for text."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), BASE64


def _put(out: dict[str, Any], name: str, data: bytes | None) -> None:
    """`name` (null for a null key or value), and `name_encoding` only when base64."""
    if data is None:
        out[name] = None
        return
    out[name], encoding = as_json_string(data)
    if encoding is not None:
        out[f"{name}_encoding"] = encoding


def _header_as_json(key: str, value: bytes | None) -> list[str | None]:
    """[key, value] for a text (or null) value; [key, base64 value, "base64"] otherwise."""
    if value is None:
        return [key, None]
    text, encoding = as_json_string(value)
    return [key, text] if encoding is None else [key, text, encoding]


def record_as_json(r: ConsumerRecord) -> dict[str, Any]:
    """A record as `consume --json` prints it: text stays text, other bytes are base64
    with a `key_encoding` / `value_encoding` field (a third header element) saying so."""
    out: dict[str, Any] = {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
    }
    _put(out, "key", r.key)
    _put(out, "value", r.value)
    out["headers"] = [_header_as_json(k, v) for k, v in r.headers]
    return out


class Committer(ConsumerRebalanceListener):
    """Commits a group's printed positions every few seconds, as Kafka's console consumer
    auto-commits, so a consumer that is killed outright loses little progress; and, when a
    rebalance takes partitions away, commits them at once so their next owner resumes
    right after what was printed here."""

    def __init__(self, consumer: Consumer, printer: Printer, group: str | None) -> None:
        self._consumer = consumer
        self._printer = printer
        self._enabled = group is not None
        self._next = time.monotonic() + COMMIT_INTERVAL_S

    def maybe_commit(self) -> None:
        """The periodic commit. One the group refuses (this member was dropped, e.g. by a
        broker restart) is reported and consumption goes on: the next poll rejoins, and
        the following commit covers what was printed meanwhile."""
        if self._enabled and time.monotonic() >= self._next:
            self._next = time.monotonic() + COMMIT_INTERVAL_S
            try:
                self.commit()
            except CommitFailedError as exc:
                note(f"warning: {exc}")

    def commit(self) -> None:
        """Commit after the last printed record of each partition; a partition with nothing
        printed commits its current position, as Kafka does, so the next run in the group
        does not skip what is produced meanwhile."""
        if not self._enabled:
            return
        printed = self._printer.positions
        offsets = {
            tp: printed[tp] if tp in printed else self._consumer.position(tp)
            for tp in self._consumer.assignment()
        }
        offsets.update(printed)
        if offsets:
            self._consumer.commit(offsets)

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        printed = self._printer.positions
        offsets = {tp: printed[tp] for tp in revoked if tp in printed}
        if self._enabled and offsets:
            self._consumer.commit(offsets)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        """Lost partitions may already belong to someone else: nothing to commit."""


@click.command()
@click.argument("topic")
@click.option("--group", help="Consume as this group: resume from its commits, commit progress.")
@click.option(
    "--from-beginning",
    is_flag=True,
    help="Start at the log start (with --group: only where nothing is committed).",
)
@click.option("--partition", type=click.IntRange(min=0), help="Read only this partition.")
@click.option(
    "--offset", metavar="N|earliest|latest", help="Start --partition here (needs --partition)."
)
@click.option("--max-messages", type=click.IntRange(min=1), help="Exit after this many.")
@click.option(
    "--timeout-ms",
    type=click.IntRange(min=-1),
    default=DEFAULT_TIMEOUT_MS,
    show_default=True,
    help="Exit after this long with nothing new; -1 waits until Ctrl-C.",
)
@click.option("--print-key", is_flag=True, help="Print KEY<TAB>VALUE.")
@click.option("--print-offset", is_flag=True, help="Prefix lines with PARTITION<TAB>OFFSET<TAB>.")
@json_option
@bootstrap_option
def consume(
    topic: str,
    group: str | None,
    from_beginning: bool,
    partition: int | None,
    offset: str | None,
    max_messages: int | None,
    timeout_ms: int,
    print_key: bool,
    print_offset: bool,
    as_json: bool,
    bootstrap: str,
) -> None:
    """Print TOPIC's record values, one per line (UTF-8, bad bytes escaped as \\xNN).

    Without --group every partition (or --partition) is read from the end, or from the
    start with --from-beginning, or from --offset. With --group the group's committed
    offsets are the start and what is printed is committed. Exits after --max-messages,
    after --timeout-ms with nothing new, or on Ctrl-C (status 0).

    With --json each line is an object: topic, partition, offset, timestamp, key, value,
    headers ([[key, value], ...]). A key, value or header value that is valid UTF-8 is a
    JSON string; any other bytes are base64, marked by "key_encoding": "base64",
    "value_encoding": "base64", or a third header element "base64". Null stays null.

    \b
    Examples:
      logstore consume orders --from-beginning --max-messages 10
      logstore consume orders --group billing --print-key --timeout-ms 5000
      logstore consume orders --partition 2 --offset 1500 --print-offset
      logstore consume orders --from-beginning --json | jq -r .value
      logstore consume images --json | jq -r 'select(.value_encoding == "base64") | .value'
    """
    start = _parse_offset(offset, partition)
    with open_admin(bootstrap) as admin:
        count = len(admin.describe_topic(topic).partitions)
    if partition is not None and partition >= count:
        fail(f"partition {partition} of topic {topic!r} does not exist: valid 0..{count - 1}")
    consumer = Consumer(
        bootstrap,
        group_id=group,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        client_id=CLIENT_ID,
    )
    printer = Printer(print_key, print_offset, as_json)
    committer = Committer(consumer, printer, group)
    finished = False
    try:
        with _interrupts_as_keyboard_interrupt(), contextlib.suppress(KeyboardInterrupt):
            _position(consumer, committer, topic, count, group, partition, start)
            _run(consumer, printer, committer, max_messages, timeout_ms)
        finished = True
    finally:
        _shutdown(consumer, committer, raise_errors=finished)
    note(f"processed {printer.count} message(s)")


def _parse_offset(offset: str | None, partition: int | None) -> int | str | None:
    if offset is None:
        return None
    if partition is None:
        raise click.UsageError("--offset needs --partition")
    if offset in ("earliest", "latest"):
        return offset
    if not offset.isdigit():
        raise click.UsageError(f"--offset {offset!r}: give N >= 0, 'earliest' or 'latest'")
    return int(offset)


def _position(
    consumer: Consumer,
    committer: Committer,
    topic: str,
    count: int,
    group: str | None,
    partition: int | None,
    start: int | str | None,
) -> None:
    """Own the partitions to read and put the position where the options say."""
    if partition is None and group is not None:
        consumer.subscribe([topic], listener=committer)
        return
    chosen = range(count) if partition is None else [partition]
    consumer.assign([(topic, p) for p in chosen])
    if start == "earliest":
        consumer.seek_to_beginning()
    elif start == "latest":
        consumer.seek_to_end()
    elif isinstance(start, int):
        consumer.seek(topic, chosen[0], start)


def _run(
    consumer: Consumer,
    printer: Printer,
    committer: Committer,
    max_messages: int | None,
    timeout_ms: int,
) -> None:
    """Poll and print until --max-messages or --timeout-ms; a closed pipe ends it quietly."""
    idle_s = None if timeout_ms < 0 else timeout_ms / 1000
    idle_until = None if idle_s is None else time.monotonic() + idle_s
    try:
        while max_messages is None or printer.count < max_messages:
            left = POLL_RECORDS if max_messages is None else max_messages - printer.count
            now = time.monotonic()
            wait = POLL_WAIT_S if idle_until is None else min(POLL_WAIT_S, idle_until - now)
            records = consumer.poll(timeout=max(wait, 0.0), max_records=min(left, POLL_RECORDS))
            if records:
                printer.write(records)
                idle_until = None if idle_s is None else time.monotonic() + idle_s
                committer.maybe_commit()
            elif idle_until is not None and time.monotonic() >= idle_until:
                return
    except BrokenPipeError:
        silence_stdout()


@contextlib.contextmanager
def _interrupts_as_keyboard_interrupt() -> Iterator[None]:
    """Make SIGTERM stop the consumer like Ctrl-C, so it still commits and exits 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _shutdown(consumer: Consumer, committer: Committer, raise_errors: bool) -> None:
    """Commit what was printed (in a group), then close; errors only surface when nothing
    else is already failing."""
    try:
        committer.commit()
    except Exception:
        if raise_errors:
            raise
    finally:
        with contextlib.suppress(Exception):
            consumer.close()

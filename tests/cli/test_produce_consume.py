"""`logstore produce` and `logstore consume` end to end against a real broker."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from logstore.cli import consume as consume_command
from logstore.client.consumer import Consumer
from logstore.codec.partitioner import partition_for_key
from logstore.types import ConsumerRecord
from tests.cli.conftest import RUN_TIMEOUT_S, Cli, table
from tests.server.conftest import BrokerProcess

KEYED = "".join(f"user{i % 5}:event-{i}\n" for i in range(30))


def test_keyed_lines_land_by_key_and_come_back_with_their_keys(cli: Cli) -> None:
    cli.ok("topics", "create", "events", "--partitions", "3")
    produced = cli.ok("produce", "events", "--key-separator", ":", stdin=KEYED)
    assert "produced 30 record(s) to events" in produced.err
    assert "partition" in produced.err and "offsets 0.." in produced.err

    consumed = cli.ok(
        "consume", "events", "--from-beginning", "--print-key", "--print-offset",
        "--max-messages", "30",
    )  # fmt: skip
    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    values = []
    for line in consumed.lines():
        partition, _offset, key, value = line.split("\t")
        partitions_of_key[key].add(int(partition))
        values.append(value)
    assert sorted(values) == sorted(f"event-{i}" for i in range(30))
    for key, partitions in partitions_of_key.items():
        assert partitions == {partition_for_key(key.encode(), 3)}
    assert "processed 30 message(s)" in consumed.err


def test_partition_headers_file_and_offset(cli: Cli, tmp_path: Path) -> None:
    cli.ok("topics", "create", "t", "--partitions", "3")
    lines = tmp_path / "lines.txt"
    lines.write_text("zero\none\ntwo\nthree\n")
    produced = cli.ok(
        "produce", "t", "--file", str(lines), "--partition", "2", "--header", "src=cli",
        "--header", "v=1", "--acks", "1", "--compression", "zstd",
    )  # fmt: skip
    assert "partition 2: 4 record(s), offsets 0..3" in produced.err

    records = [
        json.loads(line)
        for line in cli.ok(
            "consume", "t", "--partition", "2", "--offset", "1", "--json", "--max-messages", "3"
        ).lines()
    ]
    assert [r["value"] for r in records] == ["one", "two", "three"]
    assert [r["offset"] for r in records] == [1, 2, 3]
    assert all(r["partition"] == 2 and r["key"] is None for r in records)
    assert records[0]["headers"] == [["src", "cli"], ["v", "1"]]


def test_max_messages_timeout_and_undecodable_bytes(cli: Cli) -> None:
    cli.ok("topics", "create", "t")
    cli.ok("produce", "t", stdin=b"first\n\xff\xfebin\nthird\n")
    two = cli.ok("consume", "t", "--from-beginning", "--max-messages", "2")
    assert two.lines() == ["first", "\\xff\\xfebin"]

    started = time.monotonic()
    idle = cli.ok("consume", "t", "--timeout-ms", "500")  # from the end: nothing new
    assert idle.out == ""
    assert time.monotonic() - started < RUN_TIMEOUT_S / 2


def test_group_resumes_where_it_left_off(cli: Cli) -> None:
    cli.ok("topics", "create", "t", "--partitions", "2")
    cli.ok("produce", "t", "--key-separator", ":", stdin=KEYED)
    first = cli.ok("consume", "t", "--group", "g", "--from-beginning", "--max-messages", "30")
    assert len(first.lines()) == 30

    again = cli.ok("consume", "t", "--group", "g", "--from-beginning", "--timeout-ms", "1000")
    assert again.out == ""

    cli.ok("produce", "t", stdin="late\n")
    assert cli.ok("consume", "t", "--group", "g", "--max-messages", "1").lines() == ["late"]


def test_ctrl_c_exits_zero_and_commits(cli: Cli) -> None:
    cli.ok("topics", "create", "t")
    cli.ok("produce", "t", stdin="a\nb\nc\n")
    env = dict(os.environ, LOGSTORE_BOOTSTRAP=cli.address)
    proc = subprocess.Popen(
        [sys.executable, "-m", "logstore.cli.main", "consume", "t", "--group", "g",
         "--from-beginning", "--timeout-ms", "-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        # a shell running tests in the background may ignore SIGINT; a user's terminal does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = [proc.stdout.readline() for _ in range(3)]
        assert seen == [b"a\n", b"b\n", b"c\n"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    rows = table(cli.ok("groups", "describe", "g").out)
    assert rows[1][:6] == ["g", "t", "0", "3", "3", "0"]


def _poll_until(
    consumer: Consumer, done: Callable[[list[ConsumerRecord]], bool]
) -> list[ConsumerRecord]:
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for _ in range(1000):
        if done(records) or time.monotonic() > deadline:
            break
        records += consumer.poll(timeout=0.1)
    return records


def test_a_periodic_commit_the_group_refuses_is_a_warning_and_consuming_goes_on(
    cli: Cli,
    broker: BrokerProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a broker restart the group no longer knows the consumer: `consume --group`
    reports the refused commit and keeps going, as the next poll rejoins."""
    cli.ok("topics", "create", "t")
    cli.ok("produce", "t", stdin="a\nb\n")
    monkeypatch.setattr(consume_command, "COMMIT_INTERVAL_S", 0.0)  # every call commits
    printer = consume_command.Printer(print_key=False, print_offset=False, as_json=False)
    with Consumer(
        cli.address, group_id="g", auto_offset_reset="earliest", enable_auto_commit=False
    ) as consumer:
        committer = consume_command.Committer(consumer, printer, "g")
        consumer.subscribe(["t"], listener=committer)
        printer.write(_poll_until(consumer, lambda got: len(got) >= 2))
        broker.restart()
        committer.maybe_commit()
        at_refusal = capsys.readouterr()
        assert "warning: group g: commit refused" in at_refusal.err
        again = _poll_until(consumer, lambda got: bool(consumer.assignment()) and len(got) >= 2)
        assert [r.value for r in again] == [b"a", b"b"]  # nothing was committed before
        printer.write(again)
        committer.maybe_commit()
    assert at_refusal.out + capsys.readouterr().out == "a\nb\na\nb\n"
    rows = table(cli.ok("groups", "describe", "g").out)
    assert rows[1][:6] == ["g", "t", "0", "2", "2", "0"]


def test_line_without_separator_stops_with_an_error(cli: Cli) -> None:
    cli.ok("topics", "create", "t")
    result = cli("produce", "t", "--key-separator", ":", stdin="k:v\nno-separator\nk:w\n")
    assert result.code == 1
    assert "error: line 2 has no key separator ':'" in result.err
    assert "produced 1 record(s)" in result.err


BINARY = b"\xff\xfe\x00binary"
LOOKS_ESCAPED = b"\\xff\\xfe\x00binary"  # valid UTF-8 text that reads like escaped bytes


def test_json_tells_binary_from_text_and_round_trips_both(cli: Cli) -> None:
    from logstore import Producer

    cli.ok("topics", "create", "bin")
    with Producer(cli.address, acks="all") as producer:
        for key, value, headers in (
            (BINARY, LOOKS_ESCAPED, [("raw", BINARY), ("txt", b"caf\xc3\xa9"), ("nil", None)]),
            (b"k", BINARY, []),
            (None, None, []),
        ):
            producer.send("bin", value=value, key=key, headers=headers).result(timeout=30)
    lines = cli.ok("consume", "bin", "--from-beginning", "--json", "--max-messages", "3").lines()
    first, second, third = (json.loads(line) for line in lines)

    assert first["key_encoding"] == "base64" and base64.b64decode(first["key"]) == BINARY
    assert "value_encoding" not in first and first["value"].encode() == LOOKS_ESCAPED
    raw, txt, nil = first["headers"]
    assert raw[0] == "raw" and raw[2] == "base64" and base64.b64decode(raw[1]) == BINARY
    assert txt == ["txt", "café"] and nil == ["nil", None]

    assert (second["key"], "key_encoding" in second) == ("k", False)
    assert second["value_encoding"] == "base64"
    assert base64.b64decode(second["value"]) == BINARY

    assert (third["key"], third["value"], third["headers"]) == (None, None, [])
    assert "key_encoding" not in third and "value_encoding" not in third


def test_consume_help_documents_the_json_encoding() -> None:
    from click.testing import CliRunner

    from logstore.cli.main import cli as main_cli

    text = " ".join(CliRunner().invoke(main_cli, ["consume", "--help"]).stdout.split())
    assert '"value_encoding": "base64"' in text and "valid UTF-8" in text


def test_every_kafka_compression_type_is_accepted(
    cli: Cli, broker: BrokerProcess, tmp_path: Path
) -> None:
    """--compression takes Kafka's compression.type names; batches are stored in that codec."""
    names = ["gzip", "snappy", "lz4", "zstd"]
    cli.ok("topics", "create", "zipped")
    for name in names:
        cli.ok("produce", "zipped", "--compression", name, stdin=f"{name}-1\n{name}-2\n")
    consumed = cli.ok("consume", "zipped", "--from-beginning", "--max-messages", "8")
    assert consumed.lines() == [f"{name}-{i}" for name in names for i in (1, 2)]
    copy = tmp_path / "zipped-0"
    shutil.copytree(broker.data_dir / "zipped-0", copy)
    dumped = cli.ok("dump-log", str(copy / "00000000000000000000.log"))
    assert list(dict.fromkeys(re.findall(r"compresscodec: (\w+)", dumped.out))) == names
    refused = cli("produce", "zipped", "--compression", "brotli", stdin="x\n")
    assert refused.code == 2 and "'brotli'" in refused.err

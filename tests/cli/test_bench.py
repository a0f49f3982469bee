"""`logstore bench`: smoke runs of each benchmark with tiny counts, checked via --json."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.cli.conftest import Cli, run_cli

SMALL = ("--num-records", "2000", "--record-size", "100", "--json")


def bench(*args: str) -> dict[str, Any]:
    result = run_cli("bench", *args, *SMALL)
    assert result.code == 0, result.err
    return json.loads(result.out)


def assert_cleaned_up(report: dict[str, Any]) -> None:
    """The temporary broker was stopped and its data dir removed."""
    broker = report["broker"]
    assert broker["external"] is False
    assert not os.path.exists(broker["data_dir"])
    with pytest.raises(ProcessLookupError):
        os.kill(broker["pid"], 0)


def assert_ordered(latency: dict[str, Any]) -> None:
    assert latency["samples"] > 0
    assert 0 <= latency["p50"] <= latency["p99"] <= latency["p999"] <= latency["max"]


def test_produce_send_mode_reports_latency_and_cleans_up() -> None:
    report = bench("produce", "--mode", "send", "--partitions", "2")
    assert report["records_per_s"] > 0 and report["mb_per_s"] > 0
    assert_ordered(report["latency_ms"])
    assert_cleaned_up(report)


def test_produce_batch_mode() -> None:
    report = bench("produce", "--mode", "batch", "--compression", "zstd", "--acks", "1")
    assert report["records_per_s"] > 0
    assert report["latency_ms"] is None
    assert_cleaned_up(report)


@pytest.mark.parametrize("group", [None, "bench-group"])
def test_consume_with_and_without_group(group: str | None) -> None:
    args = ("consume", "--partitions", "2") + (("--group", group) if group else ())
    report = bench(*args)
    assert report["num_records"] == 2000
    assert report["bytes"] == 2000 * 100
    assert report["records_per_s"] > 0
    assert_cleaned_up(report)


def test_e2e_reports_ordered_percentiles() -> None:
    report = bench("e2e", "--throughput", "20000")
    assert report["num_records"] == 2000
    assert report["records_per_s"] > 0
    assert_ordered(report["latency_ms"])
    assert_cleaned_up(report)


def test_external_broker_keeps_running_and_loses_the_topic(cli: Cli) -> None:
    result = cli.ok("bench", "produce", "--bootstrap-server", cli.address, *SMALL)
    report = json.loads(result.out)
    assert report["broker"]["external"] is True
    assert report["records_per_s"] > 0
    assert report["topic"] not in cli.ok("topics", "list").lines()


def test_e2e_rejects_records_too_small_for_the_timestamp() -> None:
    result = run_cli(
        "bench", "e2e", "--num-records", "10", "--record-size", "4", "--throughput", "10"
    )
    assert result.code != 0
    assert "--record-size" in result.err


def test_produce_with_several_producer_processes_counts_every_record() -> None:
    report = bench("produce", "--mode", "send", "--producers", "2", "--acks", "1")
    assert report["producers"] == 2
    assert report["num_records"] == 2000
    assert report["records_per_s"] > 0
    assert_ordered(report["latency_ms"])
    # both processes sampled latency: together about as many samples as records
    assert report["latency_ms"]["samples"] == 2000
    assert_cleaned_up(report)


def _default_of(command: str, option: str) -> str:
    """The `[default: X; ...]` click prints for `option` in `bench COMMAND --help`."""
    result = run_cli("bench", command, "--help")
    assert result.code == 0, result.err
    options = " ".join(result.out[result.out.index("Options:") :].split())
    after = options[options.index(option + " ") :]
    return after[after.index("[default: ") + len("[default: ") :].split(";")[0].split("]")[0]


@pytest.mark.parametrize(
    ("command", "records", "extra"),
    [
        ("produce", "1000000", {}),
        ("consume", "1000000", {}),
        ("e2e", "20000", {"--throughput": "5000.0"}),
    ],
)
def test_every_bench_has_kafka_like_defaults(
    command: str, records: str, extra: dict[str, str]
) -> None:
    assert _default_of(command, "--num-records") == records
    assert _default_of(command, "--record-size") == "100"
    for option, value in extra.items():
        assert _default_of(command, option) == value


@pytest.mark.parametrize("command", ["produce", "consume"])
def test_a_run_needs_only_a_count_and_prints_no_blank_lines(command: str) -> None:
    result = run_cli("bench", command, "--num-records", "2000")
    assert result.code == 0, result.err
    assert len(result.lines()) == 1 and result.lines()[0].startswith("2000 records")
    assert "" not in result.err.splitlines(), repr(result.err)
    as_json = run_cli("bench", command, "--num-records", "2000", "--json")
    assert as_json.code == 0, as_json.err
    assert "" not in as_json.err.splitlines(), repr(as_json.err)
    report = json.loads(as_json.out)
    assert (report["record_size"], report["num_records"]) == (100, 2000)

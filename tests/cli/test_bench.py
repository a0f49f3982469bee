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

"""`logstore topics ...` against a real broker."""

from __future__ import annotations

import json

import pytest

from logstore.cli.topics import leadership_line
from logstore.types import NO_LEADER, PartitionInfo
from tests.cli.conftest import Cli, table


def test_create_list_describe_alter_delete(cli: Cli) -> None:
    created = cli.ok(
        "topics", "create", "orders", "--partitions", "3", "--config", "retention.ms=60000"
    )
    assert "created topic orders with 3 partition(s)" in created.err
    cli.ok("topics", "create", "audit")

    assert cli.ok("topics", "list").lines() == ["audit", "orders"]
    assert json.loads(cli.ok("topics", "list", "--json").out) == ["audit", "orders"]

    cli.ok("produce", "orders", "--partition", "1", stdin="a\nb\n")
    described = json.loads(cli.ok("topics", "describe", "orders", "--json").out)
    assert [p["partition"] for p in described["partitions"]] == [0, 1, 2]
    assert [p["log_end_offset"] for p in described["partitions"]] == [0, 2, 0]
    assert described["partitions"][1]["size_bytes"] > 0
    assert all(p["segment_count"] == 1 for p in described["partitions"])
    assert described["config_overrides"] == {"retention.ms": "60000"}

    rows = table(cli.ok("topics", "describe", "orders").out)
    assert rows[0][:2] == ["Topic:", "orders"]
    header = rows.index(
        ["PARTITION", "LOG-START-OFFSET", "LOG-END-OFFSET", "SIZE-BYTES", "SEGMENTS"]
    )
    assert rows[header + 2][:3] == ["1", "0", "2"]
    assert ["retention.ms", "60000", "topic"] in rows
    assert ["segment.bytes", "1073741824", "default"] in rows

    altered = cli.ok(
        "topics", "alter", "orders", "--partitions", "4",
        "--config", "segment.bytes=1048576", "--delete-config", "retention.ms",
    )  # fmt: skip
    assert "4 partition(s)" in altered.err
    described = json.loads(cli.ok("topics", "describe", "orders", "--json").out)
    assert len(described["partitions"]) == 4
    assert described["config_overrides"] == {"segment.bytes": "1048576"}

    assert "deleted topic orders" in cli.ok("topics", "delete", "orders").err
    assert cli.ok("topics", "list").lines() == ["audit"]


def test_alter_that_shrinks_or_changes_nothing_fails_with_one_line(cli: Cli) -> None:
    cli.ok("topics", "create", "t", "--partitions", "2")
    shrink = cli("topics", "alter", "t", "--partitions", "1")
    assert shrink.code != 0
    assert shrink.err.count("\n") == 1 and shrink.err.startswith("error: ")
    nothing = cli("topics", "alter", "t")
    assert nothing.code == 2
    assert nothing.err.startswith("error: nothing to change")


@pytest.mark.parametrize("count", ["100000", "2147483648", "99999999999999999999"])
def test_any_out_of_range_partition_count_gets_the_same_clean_message(cli: Cli, count: str) -> None:
    expected = f"error: invalid partition count '{count}': expected an integer in 1..10000\n"
    created = cli("topics", "create", "t", "--partitions", count)
    assert (created.code, created.err) == (1, expected)
    cli.ok("topics", "create", "t")
    altered = cli("topics", "alter", "t", "--partitions", count)
    assert (altered.code, altered.err) == (1, expected)
    assert cli.ok("topics", "list").lines() == ["t"]


def test_describe_shows_leader_replicas_and_isr_as_kafka_topics_does(cli: Cli) -> None:
    """A standalone broker is broker 0: it leads every partition, alone in its ISR."""
    created = cli.ok("topics", "create", "orders", "--partitions", "2", "--replication-factor", "1")
    assert "created topic orders with 2 partition(s), replication factor 1" in created.err

    text = cli.ok("topics", "describe", "orders").out
    lines = text.splitlines()
    assert "ReplicationFactor: 1" in lines[0]
    assert lines[1:3] == [
        "\tTopic: orders\tPartition: 0\tLeader: 0\tReplicas: 0\tIsr: 0",
        "\tTopic: orders\tPartition: 1\tLeader: 0\tReplicas: 0\tIsr: 0",
    ]
    # the offsets table is still there
    assert ["PARTITION", "LOG-START-OFFSET", "LOG-END-OFFSET", "SIZE-BYTES", "SEGMENTS"] in table(
        text
    )

    described = json.loads(cli.ok("topics", "describe", "orders", "--json").out)
    for p in described["partitions"]:
        assert (p["leader"], p["replicas"], p["isr"]) == (0, [0], [0])
        assert isinstance(p["leader_epoch"], int) and p["leader_epoch"] >= 0


def test_more_copies_than_brokers_is_refused_in_one_line(cli: Cli) -> None:
    result = cli("topics", "create", "t", "--replication-factor", "2")
    assert result.code == 1
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert "replication factor 2" in result.err
    assert cli.ok("topics", "list").out == ""


@pytest.mark.parametrize("factor", ["0", "-1", "x"])
def test_a_replication_factor_below_one_is_a_usage_error(cli: Cli, factor: str) -> None:
    result = cli("topics", "create", "t", "--replication-factor", factor)
    assert result.code == 2
    assert "--replication-factor" in result.err


def test_a_partition_without_a_leader_reads_as_kafka_prints_it() -> None:
    leaderless = PartitionInfo(3, 0, 0, 0, 0, 1, leader=NO_LEADER, replicas=[2, 1], isr=[])
    assert leadership_line("t", leaderless) == (
        "\tTopic: t\tPartition: 3\tLeader: none\tReplicas: 2,1\tIsr: -"
    )

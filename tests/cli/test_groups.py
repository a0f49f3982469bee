"""`logstore groups ...` against a real broker."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from click.testing import CliRunner

from logstore.cli.main import cli as main_cli
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.cli.conftest import Cli, table

DESCRIBE_HEADER = [
    "GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
    "CONSUMER-ID", "HOST", "CLIENT-ID",
]  # fmt: skip
PLAN_HEADER = ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"]


@pytest.fixture
def stub(cli: Cli) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(cli.address) as channel:
        yield pb_grpc.LogStoreStub(channel)


def _consumed_group(cli: Cli) -> None:
    """Topic t (2 partitions, 3 + 2 records) fully read by group g."""
    cli.ok("topics", "create", "t", "--partitions", "2")
    cli.ok("produce", "t", "--partition", "0", stdin="a\nb\nc\n")
    cli.ok("produce", "t", "--partition", "1", stdin="d\ne\n")
    cli.ok("consume", "t", "--group", "g", "--from-beginning", "--max-messages", "5")


def test_list_and_describe_show_kafka_columns(cli: Cli) -> None:
    _consumed_group(cli)
    cli.ok("produce", "t", "--partition", "0", stdin="f\n")

    rows = table(cli.ok("groups", "describe", "g").out)
    assert rows[0] == DESCRIBE_HEADER
    assert rows[1:] == [
        ["g", "t", "0", "3", "4", "1", "-", "-", "-"],
        ["g", "t", "1", "2", "2", "0", "-", "-", "-"],
    ]
    described = json.loads(cli.ok("groups", "describe", "g", "--json").out)
    assert described["group_id"] == "g" and described["members"] == []
    assert [o["lag"] for o in described["offsets"]] == [1, 0]

    assert table(cli.ok("groups", "list").out) == [
        ["GROUP", "STATE", "MEMBERS"],
        ["g", "Empty", "0"],
    ]
    assert json.loads(cli.ok("groups", "list", "--json").out) == [
        {"group_id": "g", "state": "Empty", "members": 0}
    ]

    missing = cli("groups", "describe", "nobody")
    assert missing.code == 1 and "does not exist" in missing.err


def test_reset_dry_run_then_execute_then_consume_replays(cli: Cli) -> None:
    _consumed_group(cli)

    dry = cli.ok("groups", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--dry-run")
    assert table(dry.out) == [PLAN_HEADER, ["g", "t", "0", "3", "0"], ["g", "t", "1", "2", "0"]]
    assert "dry run" in dry.err
    assert table(cli.ok("groups", "describe", "g").out)[1][3] == "3"  # nothing changed

    executed = cli.ok(
        "groups", "reset-offsets", "g", "--topic", "t:0", "--shift-by", "-2", "--execute"
    )
    assert table(executed.out) == [PLAN_HEADER, ["g", "t", "0", "3", "1"]]
    assert table(cli.ok("groups", "describe", "g").out)[1][3] == "1"

    replay = cli.ok("consume", "t", "--group", "g", "--max-messages", "2", "--print-offset")
    assert replay.lines() == ["0\t1\tb", "0\t2\tc"]

    plan = json.loads(
        cli.ok(
            "groups",
            "reset-offsets",
            "g",
            "--all-topics",
            "--to-offset",
            "1",
            "--dry-run",
            "--json",
        ).out
    )
    assert plan["executed"] is False
    assert [(e["partition"], e["current_offset"], e["new_offset"]) for e in plan["plan"]] == [
        (0, 3, 1),
        (1, 2, 1),
    ]


def test_active_member_blocks_reset_and_delete_and_shows_in_describe(
    cli: Cli, stub: pb_grpc.LogStoreStub
) -> None:
    _consumed_group(cli)
    joined = stub.JoinGroup(
        pb.GroupHeartbeatRequest(
            group_id="g",
            subscription=pb.Subscription(topics=["t"]),
            client_id="tester",
            session_timeout_ms=30_000,
        ),
        timeout=10,
    )
    stub.Heartbeat(
        pb.GroupHeartbeatRequest(
            group_id="g", member_id=joined.member_id, member_epoch=joined.member_epoch
        ),
        timeout=10,
    )

    rows = table(cli.ok("groups", "describe", "g").out)
    assert rows[0] == DESCRIBE_HEADER
    assert {row[6] for row in rows[1:]} == {joined.member_id}
    assert {row[8] for row in rows[1:]} == {"tester"}
    assert table(cli.ok("groups", "describe", "g", "--members").out)[1][1] == joined.member_id

    for args in (
        ("groups", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--execute"),
        ("groups", "delete", "g"),
    ):
        refused = cli(*args)
        assert refused.code != 0
        assert refused.err.count("\n") == 1 and refused.err.startswith("error: ")
        assert "active member" in refused.err and "Traceback" not in refused.err

    stub.LeaveGroup(
        pb.GroupHeartbeatRequest(group_id="g", member_id=joined.member_id, member_epoch=-1),
        timeout=10,
    )
    assert "deleted group g" in cli.ok("groups", "delete", "g").err
    assert cli.ok("groups", "list", "--json").out.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to-earliest", "--dry-run"], "exactly one scope"),
        (["--topic", "t", "--dry-run"], "exactly one target"),
        (["--topic", "t", "--to-latest", "--shift-by", "1", "--execute"], "exactly one target"),
        (["--topic", "t", "--to-latest"], "exactly one mode"),
        (["--topic", "t", "--to-latest", "--dry-run", "--execute"], "exactly one mode"),
        (["--topic", "t:x", "--to-latest", "--dry-run"], "partitions must be numbers"),
    ],
)
def test_reset_offsets_option_errors_are_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main_cli, ["groups", "reset-offsets", "g", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_deleting_an_unknown_group_fails_like_describing_it(cli: Cli) -> None:
    deleted = cli("groups", "delete", "nosuchgroup")
    described = cli("groups", "describe", "nosuchgroup")
    for result in (deleted, described):
        assert result.code == 1
        assert result.out == ""
        assert result.err == (
            "error: consumer group 'nosuchgroup' does not exist "
            "(no members, no committed offsets)\n"
        )


def test_admin_delete_group_raises_for_an_unknown_group(cli: Cli) -> None:
    from logstore import Admin
    from logstore.errors import UnknownGroupError

    with Admin(cli.address) as admin:
        admin.create_topic("t")
        admin.commit_offsets("g", {("t", 0): 0})
        assert admin.delete_group("g") == 1
        with pytest.raises(UnknownGroupError, match="consumer group 'g' does not exist"):
            admin.delete_group("g")

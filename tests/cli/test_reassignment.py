"""Kafka's partition reassignment JSON (`logstore.cli.reassignment`), and `logstore
partitions reassign`: every malformed file refused in one line before the broker is asked,
then the broker's view of the partitions checked (a standalone broker is broker 0)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logstore.cli.reassignment import (
    ReassignmentFileError,
    ReassignmentPlan,
    format_reassignment,
    parse_reassignment,
)
from tests.cli.conftest import Cli, run_cli

TOPICS = st.from_regex(r"[a-zA-Z0-9._-]{1,30}", fullmatch=True)
IDS = st.integers(0, 2**31 - 1)
PLANS = st.dictionaries(
    st.tuples(TOPICS, IDS), st.lists(IDS, min_size=1, max_size=6, unique=True), max_size=20
).filter(bool)


def document(*partitions: Any, version: Any = 1) -> str:
    return json.dumps({"version": version, "partitions": list(partitions)})


def entry(topic: str = "t", partition: int = 0, replicas: Any = (1, 2)) -> dict[str, Any]:
    return {"topic": topic, "partition": partition, "replicas": list(replicas)}


def refused(text: str) -> str:
    with pytest.raises(ReassignmentFileError) as error:
        parse_reassignment(text)
    message = str(error.value)
    assert "\n" not in message
    return message


# --- parsing ---------------------------------------------------------------------------------


def test_kafkas_own_output_is_read() -> None:
    """What kafka-reassign-partitions --generate prints, log_dirs included."""
    text = (
        '{"version":1,"partitions":[{"topic":"orders","partition":0,"replicas":[2,3,1],'
        '"log_dirs":["any","any","any"]},{"topic":"orders","partition":1,"replicas":[3,1,2],'
        '"log_dirs":["any","any","any"]}]}'
    )
    assert parse_reassignment(text) == {("orders", 0): [2, 3, 1], ("orders", 1): [3, 1, 2]}


def test_the_plan_keeps_the_files_order_and_each_replica_order() -> None:
    text = document(entry("b", 1, [3, 1]), entry("a", 0, [1, 3]), entry("b", 0, [2]))
    plan = parse_reassignment(text)
    assert list(plan) == [("b", 1), ("a", 0), ("b", 0)]
    assert plan[("b", 1)] == [3, 1]


@given(PLANS)
def test_a_formatted_plan_reads_back_unchanged(plan: ReassignmentPlan) -> None:
    text = format_reassignment(plan)
    parsed = parse_reassignment(text)
    assert parsed == plan
    assert list(parsed) == list(plan)
    assert format_reassignment(parsed) == text


@given(PLANS, st.data())
def test_a_repeated_partition_is_always_refused(
    plan: ReassignmentPlan, data: st.DataObject
) -> None:
    entries = json.loads(format_reassignment(plan))["partitions"]
    repeated = data.draw(st.sampled_from(entries))
    at = data.draw(st.integers(0, len(entries)))
    text = document(*entries[:at], repeated, *entries[at:])
    assert f"{repeated['topic']}-{repeated['partition']} appears twice" in refused(text)


@given(PLANS, st.data())
def test_a_repeated_replica_is_always_refused(plan: ReassignmentPlan, data: st.DataObject) -> None:
    entries = json.loads(format_reassignment(plan))["partitions"]
    victim = data.draw(st.sampled_from(entries))
    twice = data.draw(st.sampled_from(victim["replicas"]))
    victim["replicas"].insert(data.draw(st.integers(0, len(victim["replicas"]))), twice)
    del victim["log_dirs"]
    message = refused(document(*entries))
    assert f"names broker {twice} more than once" in message
    assert f"{victim['topic']}-{victim['partition']}" in message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", ("not valid JSON",)),
        ("{", ("not valid JSON",)),
        ("[]", ("expected a JSON object", "got a list")),
        (json.dumps({"partitions": [entry()]}), ('missing "version"',)),
        (document(entry(), version=2), ("unsupported version 2", "only version 1")),
        (document(entry(), version="1"), ("unsupported version '1'",)),
        (document(entry(), version=True), ("unsupported version True",)),
        (json.dumps({"version": 1}), ('missing "partitions"',)),
        (json.dumps({"version": 1, "partitions": {}}), ('"partitions" must be a list',)),
        (document(), ('"partitions" is empty',)),
        (document(entry(), {"topic": "t"}), ("partitions[1]", 'missing "partition", "replicas"')),
        (document([1]), ("partitions[0]", "got a list")),
        (document(entry(topic="")), ('"topic" must be a non-empty string',)),
        (document(entry(topic=5)), ('"topic" must be a non-empty string',)),  # type: ignore[arg-type]
        (document(entry(partition=-1)), ('"partition" must be an integer', "got -1")),
        (document(entry(partition=1.5)), ('"partition" must be an integer',)),  # type: ignore[arg-type]
        (document(entry(partition=True)), ('"partition" must be an integer',)),  # type: ignore[arg-type]
        (document(entry(replicas=[])), ("t-0", '"replicas" is empty')),
        (document(entry(replicas=[1, -2])), ('"replicas" holds -2',)),
        (document(entry(replicas=[1, "2"])), ("\"replicas\" holds '2'",)),
        (document({**entry(), "replicas": 3}), ('"replicas" must be a list',)),
        (document(entry(replicas=[1, 2, 1])), ("[1, 2, 1] names broker 1 more than once",)),
        (document({**entry(), "log_dirs": ["any"]}), ('"log_dirs"', "one entry per replica (2)")),
        (document({**entry(), "log_dirs": ["any", "/d"]}), ('"log_dirs" must all be "any"',)),
        (document({**entry(), "replica": [1]}), ('unknown key "replica" in partitions[0]',)),
        (
            json.dumps({"version": 1, "partitions": [entry()], "throttle": 5}),
            ('unknown key "throttle" in the top level',),
        ),
        ('{"version": 1, "version": 1, "partitions": []}', ('"version" appears twice',)),
        (
            document(entry("t", 0), entry("u", 0), entry("t", 0)),
            ("partitions[2]", "t-0 appears twice (also partitions[0])"),
        ),
    ],
)
def test_malformed_files_are_refused_saying_where(text: str, words: tuple[str, ...]) -> None:
    message = refused(text)
    for word in words:
        assert word in message, message


# --- the command -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "move.json"
    path.write_text(text)
    return str(path)


def test_a_bad_file_fails_in_one_line_without_a_broker(tmp_path: Path, dead_address: str) -> None:
    path = write(tmp_path, document(entry(replicas=[1, 1])))
    for mode in ("--execute", "--verify"):
        result = run_cli(
            "partitions", "reassign", "--reassignment-json-file", path, mode, bootstrap=dead_address
        )
        assert result.code == 1
        assert result.err.count("\n") == 1
        assert result.err.startswith(f"error: {path}: partitions[0] (t-0): ")
        assert "more than once" in result.err


@pytest.mark.parametrize("modes", [(), ("--execute", "--verify")])
def test_exactly_one_of_execute_and_verify(tmp_path: Path, modes: tuple[str, ...]) -> None:
    path = write(tmp_path, document(entry()))
    result = run_cli("partitions", "reassign", "--reassignment-json-file", path, *modes)
    assert result.code == 2
    assert result.err.startswith("error: give exactly one of --execute and --verify")


def test_unknown_topics_and_partitions_are_named(cli: Cli, tmp_path: Path) -> None:
    cli.ok("topics", "create", "t", "--partitions", "2")
    unknown_topic = cli(
        "partitions", "reassign", "--verify",
        "--reassignment-json-file", write(tmp_path, document(entry("nope", 0, [0]))),
    )  # fmt: skip
    assert unknown_topic.code == 1 and "nope" in unknown_topic.err
    unknown_partition = cli(
        "partitions", "reassign", "--verify",
        "--reassignment-json-file", write(tmp_path, document(entry("t", 2, [0]))),
    )  # fmt: skip
    assert unknown_partition.code == 1
    assert unknown_partition.err == ("error: partition t-2 does not exist: t has 2 partition(s)\n")


def test_verify_reports_a_reassignment_already_in_place(cli: Cli, tmp_path: Path) -> None:
    """A standalone broker holds every partition on broker 0: [0] is where they are."""
    cli.ok("topics", "create", "t", "--partitions", "2")
    path = write(tmp_path, document(entry("t", 0, [0]), entry("t", 1, [0])))
    result = cli.ok("partitions", "reassign", "--reassignment-json-file", path, "--verify")
    assert result.lines() == [
        "Status of partition reassignment:",
        "Reassignment of partition t-0 is completed.",
        "Reassignment of partition t-1 is completed.",
    ]


def test_execute_prints_the_current_assignment_to_roll_back_with(cli: Cli, tmp_path: Path) -> None:
    cli.ok("topics", "create", "t", "--partitions", "2")
    path = write(tmp_path, document(entry("t", 1, [0])))
    result = cli.ok("partitions", "reassign", "--reassignment-json-file", path, "--execute")
    assert parse_reassignment(result.out) == {("t", 1): [0]}
    assert "started reassignment of t-1" in result.err

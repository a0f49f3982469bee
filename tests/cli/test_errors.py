"""Failures end in one `error: ...` line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from logstore.cli.main import cli as main_cli
from tests.cli.conftest import Cli, Result, run_cli


def assert_one_line_error(result: Result) -> None:
    assert result.code != 0
    assert result.err.startswith("error: "), result.err
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err


def test_unknown_topic(cli: Cli) -> None:
    for args, stdin in (
        (("topics", "describe", "nope"), None),
        (("topics", "delete", "nope"), None),
        (("consume", "nope", "--timeout-ms", "100"), None),
        (("produce", "nope"), "x\n"),
    ):
        result = cli(*args, stdin=stdin)
        assert_one_line_error(result)
        assert "nope" in result.err


def test_debug_shows_the_traceback(cli: Cli) -> None:
    result = cli("--debug", "topics", "describe", "nope")
    assert result.code != 0
    assert "Traceback" in result.err and "UnknownTopicOrPartitionError" in result.err


@pytest.mark.parametrize(
    "args",
    [
        ("topics", "list"),
        ("topics", "create", "t"),
        ("groups", "list"),
        ("groups", "describe", "g"),
        ("consume", "t"),
    ],
)
def test_broker_down(dead_address: str, args: tuple[str, ...]) -> None:
    result = run_cli(*args, bootstrap=dead_address)
    assert result.code != 0
    assert result.err == f"error: cannot reach broker at {dead_address}\n"


def test_broker_down_for_produce_via_option(dead_address: str) -> None:
    result = run_cli("produce", "t", "--bootstrap-server", dead_address, stdin="x\n")
    assert result.err == f"error: cannot reach broker at {dead_address}\n"


def test_bad_config_values(cli: Cli) -> None:
    bad_value = cli("topics", "create", "t", "--config", "retention.ms=soon")
    assert_one_line_error(bad_value)
    assert "retention.ms" in bad_value.err
    unknown_key = cli("topics", "create", "t", "--config", "retention.weeks=1")
    assert_one_line_error(unknown_key)
    assert "retention.weeks" in unknown_key.err
    assert cli.ok("topics", "list").out == ""


def test_config_without_equals_is_a_usage_error() -> None:
    result = CliRunner().invoke(main_cli, ["topics", "create", "t", "--config", "retention.ms"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --config 'retention.ms' is not KEY=VALUE")
    assert result.stderr.count("\n") == 1


def test_every_command_has_help_with_examples() -> None:
    runner = CliRunner()
    commands = [
        ["topics", "create"], ["topics", "list"], ["topics", "describe"], ["topics", "delete"],
        ["topics", "alter"], ["produce"], ["consume"], ["groups", "list"],
        ["groups", "describe"], ["groups", "delete"], ["groups", "reset-offsets"], ["dump-log"],
        ["cluster", "describe"], ["partitions", "reassign"],
    ]  # fmt: skip
    for command in commands:
        result = runner.invoke(main_cli, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Examples:" in result.stdout, command
        if command != ["dump-log"]:
            assert "--bootstrap-server" in result.stdout, command


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1:99999", ("99999", "1..65535")),
        ("127.0.0.1:0", ("port 0", "1..65535")),
        ("127.0.0.1", ("HOST:PORT",)),
        (":9092", ("HOST:PORT",)),
    ],
)
def test_bad_bootstrap_address(address: str, words: tuple[str, ...]) -> None:
    for result in (
        run_cli("topics", "list", "--bootstrap-server", address),
        run_cli("topics", "list", bootstrap=address),  # from LOGSTORE_BOOTSTRAP
    ):
        assert_one_line_error(result)
        assert result.code == 2
        assert "--bootstrap-server" in result.err
        for word in words:
            assert word in result.err, result.err

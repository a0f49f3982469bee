"""--bootstrap-server takes a cluster's comma-separated list: the first broker that answers
serves the command, and only when none does is it "cannot reach broker"."""

from __future__ import annotations

import socket

from tests.cli.conftest import Cli, run_cli
from tests.server.conftest import BrokerProcess


def another_dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_dead_broker_first_in_the_list_is_skipped(
    cli: Cli, broker: BrokerProcess, dead_address: str
) -> None:
    cli.ok("topics", "create", "t")
    for bootstrap in (f"{dead_address},{broker.address}", f" {broker.address} ,{dead_address}"):
        result = run_cli("topics", "list", "--bootstrap-server", bootstrap)
        assert (result.code, result.out, result.err) == (0, "t\n", "")
        from_env = run_cli("topics", "describe", "t", bootstrap=bootstrap)
        assert from_env.code == 0 and from_env.out.startswith("Topic: t ")


def test_no_broker_of_the_list_answering_names_the_list(dead_address: str) -> None:
    bootstrap = f"{dead_address},{another_dead_address()}"
    for result in (
        run_cli("topics", "list", "--bootstrap-server", bootstrap),
        run_cli("cluster", "describe", bootstrap=bootstrap),
    ):
        assert result.code == 1
        assert result.err == f"error: cannot reach broker at {bootstrap}\n"


def test_a_bad_entry_is_a_usage_error_naming_it() -> None:
    for bootstrap, words in (
        ("127.0.0.1:9092,nohost", ("'nohost' is not HOST:PORT",)),
        ("127.0.0.1:9092,,127.0.0.1:9093", ("empty entry",)),
        ("127.0.0.1:9092,127.0.0.1:0", ("port 0",)),
    ):
        result = run_cli("topics", "list", "--bootstrap-server", bootstrap)
        assert result.code == 2
        assert result.err.startswith("error: ") and result.err.count("\n") == 1
        assert "--bootstrap-server" in result.err
        for word in words:
            assert word in result.err, result.err

"""Fixtures for CLI tests: a real broker, and the `logstore` command run as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.server.conftest import BrokerProcess, broker  # noqa: F401

#: no CLI call in these tests should come near this (s)
RUN_TIMEOUT_S = 30


@dataclass
class Result:
    """A finished CLI run: exit status and decoded output."""

    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return self.out.splitlines()


def run_cli(*args: str, bootstrap: str | None = None, stdin: bytes | str | None = None) -> Result:
    """Run `python -m logstore.cli.main ARGS` with LOGSTORE_BOOTSTRAP set to `bootstrap`."""
    env = dict(os.environ)
    env.pop("LOGSTORE_DEBUG", None)
    if bootstrap is not None:
        env["LOGSTORE_BOOTSTRAP"] = bootstrap
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", *args],
        input=data if data is not None else b"",
        capture_output=True,
        env=env,
        timeout=RUN_TIMEOUT_S,
    )
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


class Cli:
    """`cli("topics", "list")` runs the command against the test broker."""

    def __init__(self, address: str) -> None:
        self.address = address

    def __call__(self, *args: str, stdin: bytes | str | None = None) -> Result:
        return run_cli(*args, bootstrap=self.address, stdin=stdin)

    def ok(self, *args: str, stdin: bytes | str | None = None) -> Result:
        """Run and insist on success, showing stderr when it fails."""
        result = self(*args, stdin=stdin)
        assert result.code == 0, f"{args} exited {result.code}: {result.err}"
        return result


@pytest.fixture
def cli(broker: BrokerProcess) -> Cli:  # noqa: F811 - the imported fixture
    return Cli(broker.address)


@pytest.fixture
def dead_address() -> str:
    """127.0.0.1:PORT where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def table(text: str) -> list[list[str]]:
    """A whitespace-separated table as rows of cells (header first)."""
    return [line.split() for line in text.splitlines() if line.strip()]

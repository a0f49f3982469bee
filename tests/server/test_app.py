"""Tests for `logstore.server.app` beyond what the RPC tests cover."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from logstore import Admin
from logstore.codec import format as fmt
from tests.server.conftest import BrokerProcess

_LOW_SOFT_LIMIT = 256

_PROBE = f"""
import resource
from logstore.server.app import raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({_LOW_SOFT_LIMIT}, hard))
print(*raise_open_file_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))
print(*raise_open_file_limit())
"""


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] <= _LOW_SOFT_LIMIT,
    reason="the hard open-file limit leaves no room to raise",
)
def test_serve_raises_the_soft_open_file_limit_to_the_hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    first, second = done.stdout.splitlines()
    assert [int(n) for n in first.split()] == [_LOW_SOFT_LIMIT, expected, expected, hard]
    assert [int(n) for n in second.split()] == [expected, expected]  # already raised


# --- start-up refusals: one line, non-zero exit, nothing written -----------------------------

#: no refused start should take anywhere near this (s)
SERVE_TIMEOUT_S = 60


def _serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `logstore serve` to completion (each case here must refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", "serve", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("LOGSTORE_")},
    )


def _assert_refused(done: subprocess.CompletedProcess[str], data_dir: Path, *words: str) -> None:
    """Refused in one `error:` line naming `words`, before the data dir was created."""
    assert done.returncode != 0, done.stdout
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert not data_dir.exists(), sorted(p.name for p in data_dir.iterdir())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--listen", "127.0.0.1:99999"), ("--listen", "99999", "0..65535")),
        (("--listen", "127.0.0.1:-1"), ("--listen", "HOST:PORT")),
        (("--listen", "127.0.0.1"), ("--listen", "HOST:PORT")),
        (("--metrics-listen", "127.0.0.1:65536"), ("--metrics-listen", "65536")),
        (("--log-level", "bogus"), ("--log-level", "bogus", "debug", "info")),
    ],
)
def test_bad_option_is_refused_in_one_line(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    data_dir = tmp_path / "data"
    _assert_refused(_serve(data_dir, *args), data_dir, *words)


def test_listen_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", "serve", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT_S,
        env=dict(os.environ, LOGSTORE_LISTEN="127.0.0.1:70000"),
    )
    _assert_refused(done, data_dir, "--listen", "70000")


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("max_worker = 4\n", ("'max_worker'", "did you mean 'max_workers'")),
        ("colour = 'blue'\n", ("'colour'", "known keys", "listen")),
        ('max_workers = "lots"\n', ("max_workers", "an integer", "'lots'")),
        ("max_workers = true\n", ("max_workers", "an integer")),
        ("offsets_retention_minutes = 0\n", ("offsets_retention_minutes", ">= 1")),
        ('listen = "127.0.0.1:99999"\n', ("listen", "0..65535")),
        ("topic-defaults = 3\n", ("topic-defaults", "a table")),
        ("[log-manager]\nretention_check_ms = 5\n", ("[log-manager]", "retention_check_ms")),
        ("[log-manager]\ncleaner_backoff_ms = 'soon'\n", ("cleaner_backoff_ms", "integer")),
    ],
)
def test_bad_config_file_is_refused_naming_the_key(
    tmp_path: Path, toml: str, words: tuple[str, ...]
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(toml)
    data_dir = tmp_path / "data"
    _assert_refused(_serve(data_dir, "--config", str(config)), data_dir, *words)


def test_a_port_in_use_is_refused_before_the_data_dir_is_touched(
    broker: BrokerProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "second"
    for args, prefix in (
        (("--listen", broker.address), ""),
        (("--listen", "127.0.0.1:0", "--metrics-listen", broker.address), "cannot serve metrics: "),
    ):
        done = _serve(data_dir, *args)
        _assert_refused(done, data_dir, broker.address)
        assert done.stderr == f"error: {prefix}{broker.address} is already in use\n"


# --- recovery is logged as a summary, and only after an unclean shutdown ---------------------


#: a line of the broker's log: "<date> <time> LEVEL logger: message"
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")


def _log_records(log_text: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every line of the broker's log."""
    matches = (_LOG_LINE.match(line) for line in log_text.splitlines())
    return [(m["level"], m["logger"], m["message"]) for m in matches if m]


def _storage_warnings(log_text: str) -> list[str]:
    """Every WARNING message of the storage layer's loggers, in order: a repair warned
    about twice shows up as a duplicate here."""
    return [
        message
        for level, logger, message in _log_records(log_text)
        if level == "WARNING" and logger.startswith("logstore.storage")
    ]


def _create_topic(address: str, topic: str, partitions: int) -> None:
    with Admin(address) as admin:
        admin.create_topic(topic, partitions=partitions)


def test_a_new_data_dir_logs_no_recovery(broker: BrokerProcess) -> None:
    assert "recovered" not in broker.start_line
    assert _storage_warnings(broker.logs()) == []
    broker.restart()  # after a clean shutdown: nothing to recover either
    assert "recovered" not in broker.start_line
    assert _storage_warnings(broker.logs()) == []
    # the parser reads this log format: the storage layer's own lines are seen
    closed = ("INFO", "logstore.storage.log_manager", "log manager closed cleanly")
    assert closed in _log_records(broker.logs())


def test_an_unclean_shutdown_logs_one_summary_line(broker: BrokerProcess) -> None:
    _create_topic(broker.address, "idle", 4)
    broker.kill9()
    broker.start()
    assert "recovered after unclean shutdown" in broker.start_line
    # __consumer_offsets and the four partitions of "idle": none needed repair
    assert _storage_warnings(broker.logs()) == [
        "recovered 5 partitions after an unclean shutdown: 0 repaired, 0 bytes of torn tail dropped"
    ]


def test_a_repaired_partition_gets_its_own_line_in_words(broker: BrokerProcess) -> None:
    _create_topic(broker.address, "torn", 2)
    broker.kill9()
    torn = b"\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00"  # a batch header cut short
    with open(broker.data_dir / "torn-0" / fmt.offset_file_name(0, fmt.LOG_SUFFIX), "ab") as f:
        f.write(torn)
    broker.start()
    assert _storage_warnings(broker.logs()) == [
        f"torn-0: recovery dropped {len(torn)} bytes of torn tail",
        f"recovered 3 partitions after an unclean shutdown: 1 repaired, "
        f"{len(torn)} bytes of torn tail dropped",
    ]


def test_serve_help_names_every_environment_variable_it_reads() -> None:
    from click.testing import CliRunner

    from logstore.cli.main import serve

    text = CliRunner().invoke(serve, ["--help"]).stdout
    envvars = [p.envvar for p in serve.params if isinstance(p.envvar, str)]
    assert "LOGSTORE_LISTEN" in envvars and "LOGSTORE_CONFIG" in envvars
    missing = [name for name in envvars if name not in text]
    assert missing == [], f"serve --help does not mention {missing}"
    for process_wide in ("XDG_DATA_HOME", "LOGSTORE_MALLOC_DEFAULTS"):
        assert process_wide in text


def test_a_config_file_using_the_documented_keys_starts(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        'listen = "127.0.0.1:0"\n'
        'metrics_listen = "127.0.0.1:0"\n'
        "max_workers = 16\n"
        "max_request_bytes = 8388608\n"
        "offsets_retention_minutes = 60\n"
        'authorizer = "acl"\n'
        'super_users = ["User:ANONYMOUS"]\n'
        '[topic-defaults]\n"retention.ms" = 3600000\n'
        "[log-manager]\ncleaner_backoff_ms = 1000\n"
    )
    process = BrokerProcess(tmp_path / "data", ["--config", str(config)])
    process.start()
    try:
        with Admin(process.address) as admin:
            created = admin.create_topic("t")
        assert created.config["retention.ms"] == "3600000"
        assert "authorization ACLs" in process.logs()
    finally:
        process.close()

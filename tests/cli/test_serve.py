"""`logstore serve --log-level`: Python's level names in any case, `warn` for `warning`,
from the option or LOGSTORE_LOG_LEVEL, checked against a real broker's log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from logstore import Admin
from logstore.cli.main import LOG_LEVELS, LogLevel
from logstore.codec import format as fmt
from tests.server.conftest import BrokerProcess

#: "<date> <time> LEVEL logger: message", the format `serve` logs in
_LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>\S+): (?P<message>.*)$")
#: a batch header cut short: recovery drops it, so there is a warning and debug detail
TORN = b"\x00" * 11


@pytest.mark.parametrize(
    ("given", "level"),
    [
        ("warn", "warning"),
        ("WARN", "warning"),
        ("Warning", "warning"),
        ("DEBUG", "debug"),
        ("info", "info"),
        ("Critical", "critical"),
    ],
)
def test_log_levels_are_taken_in_any_case_with_warn_for_warning(given: str, level: str) -> None:
    assert LogLevel().convert(given, None, None) == level


def test_an_unknown_level_is_refused_listing_the_levels() -> None:
    with pytest.raises(click.BadParameter) as refused:
        LogLevel().convert("verbose", None, None)
    assert "'verbose'" in str(refused.value)
    assert all(f"'{name}'" in str(refused.value) for name in LOG_LEVELS)


@pytest.fixture
def crashed_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker killed with -9 after creating topic t, whose t-0 log then got a torn tail."""
    process = BrokerProcess(tmp_path / "data")
    process.start()
    try:
        with Admin(process.address) as admin:
            admin.create_topic("t", partitions=1)
        process.kill9()
        with open(process.data_dir / "t-0" / fmt.offset_file_name(0, fmt.LOG_SUFFIX), "ab") as f:
            f.write(TORN)
        process.log_path.write_text("")  # only the next start's lines
        yield process
    finally:
        process.close()


def _levels(log_text: str) -> set[str]:
    matches = (_LOG_LINE.match(line) for line in log_text.splitlines())
    return {m["level"] for m in matches if m}


def test_warn_logs_warnings_and_nothing_below(crashed_broker: BrokerProcess) -> None:
    crashed_broker.extra_args = ["--log-level", "WARN"]
    crashed_broker.start()
    assert crashed_broker.stop() == 0
    logs = crashed_broker.logs()
    assert f"t-0: recovery dropped {len(TORN)} bytes of torn tail" in logs
    assert _levels(logs) == {"WARNING"}, logs


def test_the_level_from_the_environment_in_any_case(
    crashed_broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGSTORE_LOG_LEVEL", "Debug")
    crashed_broker.start()
    assert crashed_broker.stop() == 0
    logs = crashed_broker.logs()
    # the file-level detail of the repair is logged at DEBUG only
    log_name = fmt.offset_file_name(0, fmt.LOG_SUFFIX)
    assert f"t-0: truncated {len(TORN)} invalid bytes from the end of {log_name}" in logs
    assert {"DEBUG", "INFO", "WARNING"} <= _levels(logs), logs

"""Fixtures for fault, load and hostile-input tests: a real broker with a chosen config.

The `long` marker (registered in pyproject.toml and skipped by tests/conftest.py unless
LOGSTORE_LONG_TESTS=1) marks the long versions; the short versions run in CI.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server.conftest import BrokerProcess

LONG = os.environ.get("LOGSTORE_LONG_TESTS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    # Already in pyproject.toml; repeated so this package also works on its own.
    config.addinivalue_line("markers", "long: long fault, soak and fuzz runs")


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded RNG; the seed is printed so a failing run can be replayed with
    LOGSTORE_FAULT_SEED=<seed>."""
    seed = int(os.environ.get("LOGSTORE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n{request.node.name}: seed {seed} (LOGSTORE_FAULT_SEED={seed} replays it)")
    return random.Random(seed)


BrokerFactory = Callable[..., BrokerProcess]


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start brokers with an optional TOML config (text) and data dir; all are killed at
    the end of the test."""
    started: list[BrokerProcess] = []

    def make(config: str = "", data_dir: Path | None = None, start: bool = True) -> BrokerProcess:
        home = tmp_path / f"broker{len(started)}"
        home.mkdir()
        args: list[str] = []
        if config:
            path = home / "broker.toml"
            path.write_text(config)
            args = ["--config", str(path)]
        process = BrokerProcess(data_dir or home / "data", args)
        process.log_path = home / "broker.log"
        started.append(process)
        if start:
            process.start()
        return process

    try:
        yield make
    finally:
        for process in started:
            process.close()

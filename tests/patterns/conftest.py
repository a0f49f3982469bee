"""One real broker per test module: the pattern tests use unique topic and group names, so
they can share it and skip a broker start per test."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server.conftest import BrokerProcess

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    root: Path = tmp_path_factory.mktemp("patterns-broker")
    process = BrokerProcess(root / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def bootstrap(shared_broker: BrokerProcess) -> str:
    return shared_broker.address


@pytest.fixture
def unique() -> Callable[[str], str]:
    """`unique("orders")` -> a topic or group name no other test in the module uses."""
    return lambda base: f"{base}-{next(_names)}"

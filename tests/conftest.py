"""Suite-wide options: the `long` marker runs only when LOGSTORE_LONG_TESTS=1."""

from __future__ import annotations

import os

import pytest

LONG_TESTS_ENV = "LOGSTORE_LONG_TESTS"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LONG_TESTS_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"long run; set {LONG_TESTS_ENV}=1 to include it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)

"""Fixtures of the producer's core tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from logstore.client.producer.futures import VIEW_FUTURES

from . import world


@pytest.fixture(
    scope="module",  # not per test: Hypothesis refuses function-scoped fixtures
    params=[
        pytest.param(
            "view",
            marks=pytest.mark.skipif(not VIEW_FUTURES, reason="record views are off here"),
        ),
        "plain",
    ],
)
def record_futures(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a module's tests with each kind of record future: the batch view, and the plain
    `Future` per record the producer falls back to where the view cannot be used."""
    previous = world.NEW_FUTURE
    world.NEW_FUTURE = world.RECORD_FUTURES[request.param]
    try:
        yield request.param
    finally:
        world.NEW_FUTURE = previous

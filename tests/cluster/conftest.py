"""Fixtures for tests of a whole cluster: a real etcd (tests/cluster/etcd.py), and a
three-broker cluster under produce and consume load (tests/cluster/workload.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.etcd import etcd_server
from tests.cluster.workload import Workload, running_workload

__all__ = ["etcd_server", "workload"]


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Workload]:
    """A cluster whose topic has three in-sync replicas, a producer and a consumer running."""
    with running_workload(tmp_path) as running:
        yield running

"""Fixtures for tests of a whole cluster: a real etcd (tests/cluster/etcd.py)."""

from __future__ import annotations

from tests.cluster.etcd import etcd_server

__all__ = ["etcd_server"]

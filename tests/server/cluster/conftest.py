"""Fixtures for the cluster modules' tests: a real etcd (tests/cluster/etcd.py)."""

from __future__ import annotations

from tests.cluster.etcd import etcd_server

__all__ = ["etcd_server"]

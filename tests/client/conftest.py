"""Fixtures for client tests: a real broker process (shared with the server tests)."""

from tests.server.conftest import broker  # noqa: F401

"""Tests for `logstore.server.app` beyond what the RPC tests cover."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

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

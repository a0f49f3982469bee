"""Tests for `logstore.allocator`: freed memory is kept for reuse, once per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from logstore import allocator

#: encodes fifty 1 MiB batches after a warm-up and prints the page faults they took
_PROBE = """
import resource, sys
from logstore import allocator
from logstore.codec.record_batch import encode_batch
value = b"x" * 1_048_000
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
for _ in range(5):
    encode_batch([(None, value, None, 1)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    encode_batch([(None, value, None, 1)])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keeping_freed_memory_is_idempotent() -> None:
    first = allocator.keep_freed_memory()
    assert allocator.keep_freed_memory() is first


def test_opting_out_leaves_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.OPT_OUT_ENV, "1")
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_kept_memory_stops_page_faults_on_fresh_megabyte_buffers() -> None:
    """The point of the module: a 1 MiB batch is encoded without re-faulting its pages.

    Counted in page faults, not seconds. Each probe runs in its own process, since the
    setting is process-wide: with glibc's defaults every encode faults its 2 MiB of
    buffers in again (about 500 faults of 4 KiB); with the thresholds raised, almost none.
    """

    def page_faults(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env={allocator.OPT_OUT_ENV: "1" if mode == "default" else "0"},
        )
        return int(done.stdout)

    default, kept = page_faults("default"), page_faults("keep")
    assert default > 50 * 256, default  # at least one fresh MiB per encode
    assert kept < 50 * 16, kept

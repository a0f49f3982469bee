"""`python -m bench.cluster`: a smoke run with tiny counts into a temporary directory.

Checks that every measurement ran, that the JSON holds every raw run with sane numbers,
and that no process the run started outlives it; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.etcd import etcd_binary

ROOT = Path(__file__).resolve().parents[2]
#: a tiny run takes about 30 s on 2 cores; this only stops a hung one
RUN_TIMEOUT_S = 170
SESSION_TIMEOUT_MS = 2000


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Any]:
    etcd_binary()  # fails with one line naming the package when etcd is missing
    out = tmp_path_factory.mktemp("cluster-bench")
    argv = [sys.executable, "-m", "bench.cluster", "--records", "20000", "--repeat", "1"]
    argv += ["--kills-other", "1", "--session-timeouts-ms", str(SESSION_TIMEOUT_MS)]
    argv += ["--catchup-mb", "2", "--catchup-repeat", "1", "--out", str(out)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the run stop its brokers and etcd; the test then fails below
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    written = sorted(out.glob("cluster-*.json"))
    raw = json.loads(written[0].read_text()) if len(written) == 1 else None
    return done, raw


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, exited but unreaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_run_succeeds_and_prints_the_table(
    run: tuple[subprocess.CompletedProcess[str], Any],
) -> None:
    done, raw = run
    assert done.returncode == 0, done.stderr[-3000:]
    assert raw is not None
    for line in ("RF=3 acks=all / RF=1 acks=1", "2. failover", "3. catch-up", "target:"):
        assert line in done.stdout


def test_throughput_holds_every_case_and_same_run_ratios(
    run: tuple[subprocess.CompletedProcess[str], Any],
) -> None:
    _, raw = run
    cases = raw["throughput"]["cases"]
    assert {"rf1.acks1", "rf1.acksall", "rf3.acks1", "rf3.acksall", "standalone.acks1"} <= set(
        cases
    )
    for case in cases.values():
        (only,) = case["runs"]
        assert only["records_per_s"] > 0 and only["bytes"] > 0
        assert case["records_per_s"]["median"] == only["records_per_s"]
        assert only["cpu_s"]["client"] >= 0
    ratio = raw["throughput"]["ratios"]["RF=3 acks=all / RF=1 acks=1"]
    expected = (
        cases["rf3.acksall"]["runs"][0]["records_per_s"]
        / (cases["rf1.acks1"]["runs"][0]["records_per_s"])
    )
    assert ratio["runs"] == [pytest.approx(expected)]
    assert raw["machine"]["cores"] >= 1 and raw["machine"]["etcd"]


def test_failover_and_catchup_are_recorded(
    run: tuple[subprocess.CompletedProcess[str], Any],
) -> None:
    _, raw = run
    (failover,) = raw["failover"]
    assert failover["session_timeout_ms"] == SESSION_TIMEOUT_MS
    (kill,) = failover["runs"]
    assert failover["unfinished"] == 0
    # The new leader cannot be elected before the dead one's lease could have expired.
    assert kill["first_ack_ms"] >= SESSION_TIMEOUT_MS * 2 / 3 - 100
    assert kill["new_leader_seen_ms"] <= kill["first_ack_ms"]
    (catchup,) = raw["catchup"]["runs"]
    assert catchup["bytes"] > 1_500_000 and catchup["log_end_offset"] > 10_000
    assert catchup["catchup_mb_per_s"] > 0 and catchup["consumer_large_fetch_mb_per_s"] > 0
    assert {t["result"] for t in raw["targets"]} <= {"PASS", "MISS"}


def test_every_process_started_is_gone(run: tuple[subprocess.CompletedProcess[str], Any]) -> None:
    _, raw = run
    names = {p["name"] for p in raw["processes"]}
    assert {"etcd", "broker 1", "broker 2", "broker 3", "standalone broker"} <= names
    # the killed leader and the stopped follower were started again
    assert len(raw["processes"]) >= 2 * 4 + 1 + 2
    assert [p for p in raw["processes"] if _running(p["pid"])] == []


def test_unknown_measurement_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.cluster", "--only", "latency", "--out", os.devnull],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown measurements" in done.stderr

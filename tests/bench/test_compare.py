"""`python -m bench.compare`: a smoke run of the parts that need no external peer.

Runs LogStore, the file ceiling and the gRPC ceiling with tiny counts into a temporary
directory and checks the shape of what it writes; no timing is asserted.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: a tiny run takes a few seconds; this only stops a hung one
RUN_TIMEOUT_S = 120


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc; the tests run on Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("compare")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.compare",
            "--records",
            "3000",
            "--only",
            "logstore,file,grpc",
            "--out",
            str(out),
            "--big-mib",
            "8",
            "--no-install",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT_S)
    # The broker and the gRPC sink were children of the run: they must be gone with it.
    assert _children_of(proc.pid) == []
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), out


def _date() -> str:
    return dt.date.today().isoformat()


def test_run_succeeds_and_writes_markdown_with_ratios_and_targets(
    run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = run
    assert done.returncode == 0, done.stderr
    text = (out / f"{_date()}.md").read_text()
    for heading in ("## Measurements", "## Ratios", "## Targets", "cores", "Python"):
        assert heading in text
    assert "| LogStore | produce send_batch acks=1 |" in text
    assert "| ceiling | raw gRPC stream client->server, 1 MiB |" in text
    # Ratios against the ceilings are numbers; the peers that were not asked for are "-".
    assert "| 1 MiB produce / raw gRPC upload | " in text
    ratio_line = next(line for line in text.splitlines() if "1 MiB fetch / raw gRPC" in line)
    assert ratio_line.rstrip(" |").endswith("x")
    assert "| send_batch acks=1 / Redis XADD | - |" in text
    verdicts = [
        line.rsplit("|", 2)[-2].strip()
        for line in text.splitlines()
        if "records/s" in line and line.startswith("| batch produce >=")
    ]
    assert verdicts and all(v in ("PASS", "MISS", "n/a") for v in verdicts)


def test_json_holds_every_measurement(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = run
    raw = json.loads((out / f"{_date()}.json").read_text())
    keys = {r["key"]: r for r in raw["results"]}
    expected = {
        "ls.batch.acks1",
        "ls.batch.acksall",
        "ls.send",
        "ls.poll",
        "ls.poll.group",
        "ls.big.produce",
        "ls.big.fetch",
        "ls.gc.acks1",
        "ls.gc.fsync",
        "ls.e2e",
        "file.append",
        "grpc.up",
        "grpc.up.file",
        "grpc.down",
    }
    assert expected <= set(keys)
    for key in expected:
        assert keys[key]["error"] is None, keys[key]
        assert keys[key]["rate"] > 0
    latency = keys["ls.e2e"]["extra"]["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p99"] <= latency["p999"]
    assert raw["machine"]["cores"] >= 1
    assert raw["ratios"]["send_batch acks=1 / Redis XADD"] is None
    assert raw["ratios"]["1 MiB produce / raw gRPC upload"] > 0
    assert raw["ratios"]["1 MiB produce / raw gRPC upload + file append"] > 0
    assert {t["result"] for t in raw["targets"]} <= {"PASS", "MISS", "n/a"}


def test_png_chart(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (pip install 'logstore[bench]')")
    _, out = run
    assert (out / f"{_date()}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_system_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--only", "kafka", "--out", "/nonexistent"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 2
    assert "unknown systems" in done.stderr


def test_a_peer_that_cannot_run_is_reported_not_fatal(tmp_path: Path) -> None:
    """No redis-server on PATH and installing refused: the row says why, the run succeeds."""
    env = dict(os.environ, PATH=str(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.compare",
            "--only",
            "redis",
            "--no-install",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    text = (tmp_path / f"{_date()}.md").read_text()
    assert "unavailable (redis-server not found" in text
    assert "| poll() >= 5x Redis XREADGROUP | - | n/a |" in text

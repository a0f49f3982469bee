"""`logstore dev-cluster` as a user runs it: a real etcd and real brokers, in a subprocess.

What must hold whichever way it ends (Ctrl-C, a child dying, or being killed itself):
nothing it started is left running. A missing etcd or a busy port is one line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from logstore.cli.dev_cluster import (
    ETCD_CLIENT_OFFSET,
    ETCD_MISSING,
    ETCD_PEER_OFFSET,
    DevClusterLayout,
)
from logstore.cli.main import cli as main_cli
from logstore.client.admin import Admin
from tests.helpers import wait_until

#: bounds (s): the cluster's start (etcd, then each broker, then the cluster forming), its stop
START_S = 120.0
STOP_S = 60.0
#: how many base ports to try before giving up on finding a free range
PORT_ATTEMPTS = 50

_CHILD_LINE = re.compile(r"^\s+(broker \d+|etcd)\s+\S+\s+pid (\d+)\s+log ")
_DATA_LINE = re.compile(r"^data in (.+) \((kept|removed) at exit\)$")


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(brokers: int) -> int:
    """A base port whose whole dev-cluster range is free now."""
    for _ in range(PORT_ATTEMPTS):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + ETCD_PEER_OFFSET > 65_535:
            continue
        ports = [port for port, _ in DevClusterLayout(brokers, base, Path()).ports()]
        if all(port_free(p) for p in ports):
            return base
    raise AssertionError(f"no free dev-cluster port range in {PORT_ATTEMPTS} attempts")


def require_etcd() -> None:
    """Contract: a test needing a system package fails naming it, never skips."""
    assert shutil.which("etcd"), ETCD_MISSING


def gone(pid: int) -> bool:
    """Whether `pid` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


@dataclass
class Started:
    """A dev-cluster process and what it printed once ready."""

    process: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    bootstrap: str = ""
    pids: dict[str, int] | None = None
    data_dir: Path | None = None

    def out(self) -> str:
        return self.out_path.read_text()

    def err(self) -> str:
        return self.err_path.read_text()

    def children(self) -> dict[str, int]:
        assert self.pids is not None
        return self.pids


def start_dev_cluster(tmp_path: Path, *args: str) -> Started:
    out_path, err_path = tmp_path / "dev-cluster.out", tmp_path / "dev-cluster.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "logstore.cli.main", "dev-cluster", *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    started = Started(process, out_path, err_path)

    def ready() -> bool:
        assert process.poll() is None, f"dev-cluster exited early:\n{started.err()}"
        return "\nbootstrap: " in started.out() and "Ctrl-C stops the cluster." in started.out()

    wait_until(ready, "dev-cluster to print its bootstrap list", timeout_s=START_S)
    lines = started.out().splitlines()
    started.bootstrap = next(line for line in lines if line.startswith("bootstrap: "))[11:]
    started.pids = {m[1]: int(m[2]) for m in map(_CHILD_LINE.match, lines) if m}
    data = next(m for m in map(_DATA_LINE.match, lines) if m)
    started.data_dir = Path(data[1])
    return started


@pytest.fixture
def cleanup() -> Iterator[list[Started]]:
    """Whatever a test started is stopped at its end, even when it failed half-way."""
    started: list[Started] = []
    yield started
    for run in started:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(timeout=STOP_S)
        for pid in (run.pids or {}).values():
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


# --- without etcd running ----------------------------------------------------------------------


def test_help_documents_the_ports_data_and_shutdown() -> None:
    result = CliRunner().invoke(main_cli, ["dev-cluster", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for phrase in (
        "--brokers",
        "--data-dir",
        "--base-port",
        "127.0.0.1:BASE_PORT+i",
        f"BASE_PORT+{ETCD_CLIENT_OFFSET} for clients",
        f"BASE_PORT+{ETCD_PEER_OFFSET} for peers",
        "etcd-server",
        "min(3, N) copies",
        "Ctrl-C (or SIGTERM) stops every broker",
        "exits 1",
        "temporary directory removed at exit",
        "standalone",
        "When etcd is unreachable",
        "Examples:",
    ):
        assert phrase in text, phrase


def test_a_missing_etcd_is_one_line_naming_the_package(tmp_path: Path) -> None:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    data_dir = tmp_path / "dc"
    done = subprocess.run(
        [sys.executable, "-m", "logstore.cli.main", "dev-cluster",
         "--base-port", str(free_base_port(3)), "--data-dir", str(data_dir)],
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.decode() == f"error: {ETCD_MISSING}\n"
    assert not data_dir.exists()


def test_a_busy_port_is_one_line_naming_it(tmp_path: Path) -> None:
    base = free_base_port(2)
    busy = base + ETCD_CLIENT_OFFSET
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", busy))
        holder.listen()
        done = subprocess.run(
            [sys.executable, "-m", "logstore.cli.main", "dev-cluster", "--brokers", "2",
             "--base-port", str(base)],
            capture_output=True,
            timeout=30,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.decode() == (
        f"error: port {busy} (etcd's clients) is already in use: choose another --base-port\n"
    )


def test_the_layout_follows_the_documented_port_scheme(tmp_path: Path) -> None:
    layout = DevClusterLayout(4, 20_000, tmp_path)
    assert layout.bootstrap == ",".join(f"127.0.0.1:{20_000 + i}" for i in range(4))
    assert layout.kafka_bootstrap == ",".join(f"127.0.0.1:{20_200 + i}" for i in range(4))
    assert (layout.etcd_client_port, layout.etcd_peer_port) == (20_100, 20_101)
    assert layout.replication_factor == 3
    assert DevClusterLayout(2, 20_000, tmp_path).replication_factor == 2
    command = layout.broker_command(2)
    flags = dict(zip(command[4::2], command[5::2], strict=True))
    assert flags == {
        "--broker-id": "2",
        "--etcd-endpoints": "127.0.0.1:20100",
        "--listen": "127.0.0.1:20002",
        "--kafka-listen": "127.0.0.1:20202",
        "--data-dir": str(tmp_path / "broker-2"),
        "--default-replication-factor": "3",
    }


# --- with a real etcd and real brokers ---------------------------------------------------------


def test_ctrl_c_stops_every_child_and_keeps_a_given_data_dir(
    tmp_path: Path, cleanup: list[Started]
) -> None:
    require_etcd()
    data_dir = tmp_path / "dc"
    run = start_dev_cluster(
        tmp_path, "--brokers", "2", "--base-port", str(free_base_port(2)),
        "--data-dir", str(data_dir),
    )  # fmt: skip
    cleanup.append(run)
    assert sorted(run.children()) == ["broker 0", "broker 1", "etcd"]
    assert run.data_dir == data_dir.resolve()

    with Admin(run.bootstrap) as admin:
        cluster = admin.describe_cluster()
        assert cluster.cluster_mode is True
        assert [b.address for b in cluster.brokers] == run.bootstrap.split(",")
        assert cluster.etcd_healthy is True
    kafka_bootstrap = next(
        line for line in run.out().splitlines() if line.startswith("Kafka clients' bootstrap: ")
    ).split(": ", 1)[1]
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=20)
    assert sorted(f"{b.host}:{b.port}" for b in metadata.brokers.values()) == sorted(
        kafka_bootstrap.split(",")
    )
    assert metadata.controller_id in metadata.brokers

    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=STOP_S) == 0, run.err()
    for name, pid in run.children().items():
        assert gone(pid), f"{name} (pid {pid}) still runs"
    assert {p.name for p in data_dir.iterdir()} >= {"etcd", "broker-0", "broker-1", "etcd.log"}


def test_a_dead_broker_stops_everything_with_its_name(
    tmp_path: Path, cleanup: list[Started]
) -> None:
    require_etcd()
    run = start_dev_cluster(tmp_path, "--brokers", "2", "--base-port", str(free_base_port(2)))
    cleanup.append(run)
    assert run.data_dir is not None and run.data_dir.is_dir()
    assert "(removed at exit)" in run.out()

    victim = run.children()["broker 1"]
    os.kill(victim, signal.SIGKILL)
    assert run.process.wait(timeout=STOP_S) == 1
    last = run.err().splitlines()[-1]
    assert last == f"error: broker 1 (pid {victim}) was killed by SIGKILL: stopped the dev cluster"
    for name, pid in run.children().items():
        assert gone(pid), f"{name} (pid {pid}) still runs"
    assert not run.data_dir.exists()


def test_children_stop_when_dev_cluster_itself_is_killed(
    tmp_path: Path, cleanup: list[Started]
) -> None:
    require_etcd()
    run = start_dev_cluster(
        tmp_path, "--brokers", "1", "--base-port", str(free_base_port(1)),
        "--data-dir", str(tmp_path / "dc"),  # a temporary one would outlive it
    )  # fmt: skip
    cleanup.append(run)
    run.process.kill()  # no chance to stop anything itself
    run.process.wait(timeout=STOP_S)
    wait_until(
        lambda: all(gone(pid) for pid in run.children().values()),
        "every child to stop after its parent died",
        timeout_s=STOP_S,
    )

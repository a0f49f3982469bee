"""A real single-member etcd v3 on 127.0.0.1, for the cluster tests.

`EtcdServer` picks free client and peer ports, keeps its data in a directory of its own
and can be killed (SIGKILL), started again on the same data and ports, paused (SIGSTOP) and
resumed (SIGCONT), so tests can take etcd away from a running cluster and give it back.

etcd must be installed (Debian package `etcd-server`); without it every test that needs
it fails with one line naming the package, never skips (CONTRACT.md, section 10).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

ETCD_MISSING = (
    "etcd not found: install the Debian package etcd-server (apt-get install etcd-server)"
)
#: longest wait for etcd to elect itself and answer /health (s)
START_TIMEOUT_S = 30.0
#: longest wait for etcd to exit after SIGTERM, then after SIGKILL (s)
STOP_TIMEOUT_S = 10.0
#: raft heartbeat and election timeout (ms): small so a start or restart elects in under a
#: second, and so etcd's minimum lease TTL (1.5 election timeouts) is 1 s, not 2 s
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500
#: start attempts with fresh ports when the chosen ones were taken meanwhile
PORT_ATTEMPTS = 3


def etcd_binary() -> str:
    """The path of `etcd`; fails the calling test with one line when it is not installed."""
    path = shutil.which("etcd")
    if path is None:
        pytest.fail(ETCD_MISSING, pytrace=False)
    return path


#: where the kernel picks source ports of outgoing connections when it cannot read
#: /proc/sys/net/ipv4/ip_local_port_range (Linux's default)
DEFAULT_EPHEMERAL_PORTS = (32768, 60999)
#: the lowest port `free_port` hands out
LOWEST_PORT = 10000


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_PORTS


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the kernel's range of
    source ports: a server restarted on the same port must find it free, and a port of
    that range may meanwhile be taken by any outgoing connection on the machine."""
    low, high = _ephemeral_ports()
    candidates = [p for p in range(LOWEST_PORT, 65536) if not low <= p <= high]
    for port in random.sample(candidates, 50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port among 50 tried from {LOWEST_PORT} outside {low}-{high}")


class EtcdServer:
    """One etcd process; its data directory and ports survive `kill()` and `start()`."""

    def __init__(self, base_dir: Path | None = None, *, name: str = "logstore-test") -> None:
        self.binary = etcd_binary()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="logstore-etcd-")
            base_dir = Path(self._tmp.name)
        base_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self._started_once = False

    @property
    def endpoint(self) -> str:
        """The client endpoint, HOST:PORT."""
        return f"127.0.0.1:{self.client_port}"

    def _command(self) -> list[str]:
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            f"{self.name}={peer_url}",
            "--initial-cluster-state",
            "new",
            "--heartbeat-interval",
            str(HEARTBEAT_MS),
            "--election-timeout",
            str(ELECTION_TIMEOUT_MS),
        ]

    def start(self) -> None:
        """Start etcd (again, on the same data and ports after `kill()`) and wait, at most
        START_TIMEOUT_S, until it has a leader and answers."""
        if self.proc is not None:
            raise RuntimeError("etcd is already running")
        # The ports were free when chosen, but another process may take them before etcd
        # binds; only the first start may move to other ports (a restart keeps its address).
        attempts = 1 if self._started_once else PORT_ATTEMPTS
        for attempt in range(attempts):
            if self._launch():
                self._started_once = True
                return
            if attempt + 1 < attempts:
                self.client_port = free_port()
                self.peer_port = free_port()
        raise RuntimeError(f"etcd did not start; its log:\n{self._log_tail()}")

    def _launch(self) -> bool:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT)
        self.paused = False
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self.healthy():
                return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not answer within {START_TIMEOUT_S} s:\n{self._log_tail()}")

    def healthy(self) -> bool:
        """etcd answers /health with a leader elected."""
        url = f"http://{self.endpoint}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if etcd has not exited within STOP_TIMEOUT_S."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: etcd dies at once, as in a crash; `start()` brings it back."""
        if self.proc is None:
            raise RuntimeError("etcd is not running")
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: etcd keeps its connections open but answers nothing."""
        if self.proc is None:
            raise RuntimeError("etcd is not running")
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self.proc is None:
            raise RuntimeError("etcd is not running")
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Stop etcd and remove a data directory this object created."""
        try:
            self.stop()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd for one test, stopped at its end (re-exported by the cluster conftests)."""
    with EtcdServer(tmp_path / "etcd") as server:
        yield server

"""`logstore dev-cluster`: a local etcd and N brokers in cluster mode, in the foreground.

Ports, from the base port P (default 9092): broker i (ids 0..N-1) listens on
127.0.0.1:P+i for gRPC and 127.0.0.1:P+200+i for Kafka clients; etcd's client port is
P+100 and its peer port P+101. Up to 99 brokers, so the ranges never meet. Files
under the data dir: `etcd/` and `etcd.log`, `broker-<i>/` and `broker-<i>.log`.

Invariants: every child is started in its own session (the terminal's Ctrl-C reaches only
this process, which stops the children in order: brokers first, so they leave etcd
cleanly, then etcd) and, on Linux, is told to receive SIGTERM should this process die
without stopping it. Every stop is bounded: SIGTERM, a bounded wait, then SIGKILL, so
nothing is left running. A child that exits on its own stops everything with a non-zero
status naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from logstore.cli.common import fail, note
from logstore.cli.serve_cluster import CLUSTER_MODE_HELP
from logstore.errors import LogStoreError

#: etcd's client and peer ports, above the base port
ETCD_CLIENT_OFFSET = 100
ETCD_PEER_OFFSET = 101
#: broker i's Kafka listener: base port + this + i
KAFKA_OFFSET = 200
#: most brokers: their ports (base .. base+N-1) stay below etcd's
MAX_BROKERS = ETCD_CLIENT_OFFSET - 1
DEFAULT_BASE_PORT = 9092
DEFAULT_BROKERS = 3
#: the replication factor of topics created without one: Kafka's usual 3, or every broker
MAX_DEFAULT_REPLICATION_FACTOR = 3
ETCD_MISSING = "etcd not found: install the Debian package etcd-server"
#: etcd's member name (a restart on a kept data dir must use the same one)
ETCD_NAME = "logstore-dev"

#: bounds (s): etcd's start, each broker's start, the cluster forming, each stop phase
ETCD_START_TIMEOUT_S = 30.0
BROKER_START_TIMEOUT_S = 60.0
CLUSTER_FORM_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
#: pause between two checks while waiting (s)
POLL_S = 0.1
#: log lines shown of a child that died
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class DevClusterLayout:
    """Where each part of a dev cluster listens and keeps its files."""

    brokers: int
    base_port: int
    data_dir: Path

    def broker_port(self, broker_id: int) -> int:
        return self.base_port + broker_id

    def kafka_port(self, broker_id: int) -> int:
        return self.base_port + KAFKA_OFFSET + broker_id

    @property
    def kafka_bootstrap(self) -> str:
        """Every broker's Kafka listener, comma-separated, as Kafka clients take it."""
        return ",".join(f"127.0.0.1:{self.kafka_port(i)}" for i in range(self.brokers))

    @property
    def etcd_client_port(self) -> int:
        return self.base_port + ETCD_CLIENT_OFFSET

    @property
    def etcd_peer_port(self) -> int:
        return self.base_port + ETCD_PEER_OFFSET

    @property
    def etcd_endpoint(self) -> str:
        return f"127.0.0.1:{self.etcd_client_port}"

    @property
    def bootstrap(self) -> str:
        """Every broker's HOST:PORT, comma-separated, as clients take it."""
        return ",".join(f"127.0.0.1:{self.broker_port(i)}" for i in range(self.brokers))

    @property
    def replication_factor(self) -> int:
        return min(MAX_DEFAULT_REPLICATION_FACTOR, self.brokers)

    def ports(self) -> list[tuple[int, str]]:
        """Every port the cluster binds, with what binds it."""
        brokers = [(self.broker_port(i), f"broker {i}") for i in range(self.brokers)]
        kafka = [(self.kafka_port(i), f"broker {i}'s Kafka listener") for i in range(self.brokers)]
        return (
            brokers
            + kafka
            + [
                (self.etcd_client_port, "etcd's clients"),
                (self.etcd_peer_port, "etcd's peers"),
            ]
        )

    def etcd_command(self, etcd: str) -> list[str]:
        client = f"http://{self.etcd_endpoint}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            etcd,
            "--name", ETCD_NAME,
            "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{ETCD_NAME}={peer}",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]  # fmt: skip

    def broker_command(self, broker_id: int) -> list[str]:
        return [
            sys.executable, "-m", "logstore.cli.main", "serve",
            "--broker-id", str(broker_id),
            "--etcd-endpoints", self.etcd_endpoint,
            "--listen", f"127.0.0.1:{self.broker_port(broker_id)}",
            "--kafka-listen", f"127.0.0.1:{self.kafka_port(broker_id)}",
            "--data-dir", str(self.data_dir / f"broker-{broker_id}"),
            "--default-replication-factor", str(self.replication_factor),
        ]  # fmt: skip


DEV_CLUSTER_HELP = f"""Run a local etcd and N brokers in cluster mode, in the foreground.

Broker i (ids 0..N-1) listens on 127.0.0.1:BASE_PORT+i (gRPC) and
127.0.0.1:BASE_PORT+{KAFKA_OFFSET}+i (Kafka clients); etcd (the binary
`etcd`, Debian package etcd-server) on 127.0.0.1:BASE_PORT+{ETCD_CLIENT_OFFSET} for
clients and BASE_PORT+{ETCD_PEER_OFFSET} for peers. Topics created without
--replication-factor get min(3, N) copies. Once every broker answers, it prints
the bootstrap list and a short tour; Ctrl-C (or SIGTERM) stops every broker,
then etcd, and exits 0. Should a broker or etcd exit on its own, it says which,
shows the end of its log, stops the rest and exits 1.

Data and logs (etcd.log, broker-<i>.log) go under --data-dir, kept at exit, or
under a temporary directory removed at exit.

\b
Examples:
  logstore dev-cluster
  logstore dev-cluster --brokers 5 --base-port 19092 --data-dir ./dev-cluster

{CLUSTER_MODE_HELP}"""


@click.command(help=DEV_CLUSTER_HELP)
@click.option(
    "--brokers",
    type=click.IntRange(1, MAX_BROKERS),
    default=DEFAULT_BROKERS,
    show_default=True,
    help="How many brokers.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where etcd and the brokers keep their data and logs; kept at exit "
    "[default: a temporary directory, removed at exit].",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65_535 - KAFKA_OFFSET - MAX_BROKERS + 1),
    default=DEFAULT_BASE_PORT,
    show_default=True,
    help=f"Broker i listens on BASE_PORT+i (gRPC) and BASE_PORT+{KAFKA_OFFSET}+i (Kafka), "
    f"etcd on BASE_PORT+{ETCD_CLIENT_OFFSET} (clients) and BASE_PORT+{ETCD_PEER_OFFSET} (peers).",
)
def dev_cluster(brokers: int, data_dir: Path | None, base_port: int) -> None:
    """See DEV_CLUSTER_HELP."""
    if base_port + KAFKA_OFFSET + brokers - 1 > 65_535:
        fail(f"--base-port {base_port}: broker {brokers - 1}'s Kafka port would pass 65535")
    for port, user in DevClusterLayout(brokers, base_port, Path()).ports():
        if port_in_use(port):
            fail(f"port {port} ({user}) is already in use: choose another --base-port")
    etcd = shutil.which("etcd")
    if etcd is None:
        fail(ETCD_MISSING)
    keep = data_dir is not None
    root = data_dir if data_dir is not None else Path(tempfile.mkdtemp(prefix="logstore-dev-"))
    root.mkdir(parents=True, exist_ok=True)
    layout = DevClusterLayout(brokers, base_port, root.resolve())
    try:
        code = DevCluster(layout, etcd, keep).run()
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(code)


def port_in_use(port: int) -> bool:
    """Whether 127.0.0.1:`port` is taken (as the broker checks it: SO_REUSEADDR set, so a
    port held only by connections closing after a restart counts as free)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


class ChildDied(Exception):
    """A child exited on its own; the message names it and its status."""

    def __init__(self, child: Child) -> None:
        status = child.returncode or 0
        how = (
            f"was killed by {_signal_name(-status)}"
            if status < 0
            else f"exited with status {status}"
        )
        super().__init__(f"{child.name} (pid {child.pid}) {how}")
        self.child = child


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while the cluster was starting."""


class Child:
    """One started process with its output in a log file."""

    def __init__(self, name: str, command: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        env = child_environment()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                # A paused process (kill -STOP, as in the tour) would never act on SIGTERM.
                self.process.send_signal(signal.SIGCONT)
                self.process.terminate()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def stop_all(children: Sequence[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every child, wait up to `timeout_s` (s) for them together, SIGKILL the rest
    and reap them all: on return none of them is running."""
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            child.process.wait()


class DevCluster:
    """Starts etcd and the brokers, watches them in the foreground and stops them all."""

    def __init__(self, layout: DevClusterLayout, etcd: str, keep_data: bool) -> None:
        self.layout = layout
        self.etcd_binary = etcd
        self.keep_data = keep_data
        self.etcd: Child | None = None
        self.brokers: list[Child] = []
        self.stop_requested = threading.Event()

    def run(self) -> int:
        """Run until a signal (0) or a child's exit (1); nothing is running on return."""
        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._request_stop) for sig in signals}
        try:
            self._start()
            self._print_tour()
            self._watch()
            return 0
        except Stopped:
            return 0
        except ChildDied as exc:
            self._stop()
            tail = exc.child.log_tail()
            if tail:
                note(f"--- last lines of {exc.child.log_path} ---")
                for line in tail:
                    note(line)
            fail(f"{exc}: stopped the dev cluster")
        except (LogStoreError, OSError) as exc:
            self._stop()
            fail(f"dev cluster did not start: {exc}")
        finally:
            self._stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self.stop_requested.set()

    def _children(self) -> list[Child]:
        return [*self.brokers, *([self.etcd] if self.etcd else [])]

    def _check(self) -> None:
        """Raise Stopped on a signal, ChildDied when a child has exited."""
        if self.stop_requested.is_set():
            raise Stopped
        for child in self._children():
            if not child.alive():
                raise ChildDied(child)

    def _wait(self, condition: Callable[[], bool], what: str, timeout_s: float) -> None:
        """Poll `condition`, checking the children between polls; OSError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / POLL_S) + 2):
            self._check()
            if condition():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
        raise OSError(f"timed out after {timeout_s:g} s waiting for {what}")

    def _start(self) -> None:
        data = self.layout.data_dir
        note(f"starting etcd on {self.layout.etcd_endpoint} (log: {data / 'etcd.log'})")
        self.etcd = Child("etcd", self.layout.etcd_command(self.etcd_binary), data / "etcd.log")
        self._wait(
            lambda: etcd_healthy(self.layout.etcd_client_port),
            f"etcd at {self.layout.etcd_endpoint}",
            ETCD_START_TIMEOUT_S,
        )
        # Every child is forked before this process uses gRPC (whose threads would make
        # forking with a preexec function unsafe).
        for i in range(self.layout.brokers):
            note(f"starting broker {i} on 127.0.0.1:{self.layout.broker_port(i)}")
            self.brokers.append(
                Child(f"broker {i}", self.layout.broker_command(i), data / f"broker-{i}.log")
            )
        for i in range(self.layout.brokers):
            address = f"127.0.0.1:{self.layout.broker_port(i)}"
            serving = functools.partial(broker_serving, address)
            self._wait(serving, f"broker {i} at {address}", BROKER_START_TIMEOUT_S)
        self._wait(self._cluster_formed, "every broker to join the cluster", CLUSTER_FORM_TIMEOUT_S)

    def _cluster_formed(self) -> bool:
        """Whether broker 0 sees every broker; a broker that cannot tell raises its error."""
        from logstore.client.admin import Admin
        from logstore.errors import BrokerUnavailableError, ClusterMetadataUnavailableError

        with Admin(self.layout.bootstrap, request_timeout_ms=5_000) as admin:
            try:
                described = admin.describe_cluster()
            except (BrokerUnavailableError, ClusterMetadataUnavailableError):
                return False
        return len(described.brokers) == self.layout.brokers

    def _watch(self) -> None:
        """Block until a signal (returns) or a child's exit (raises ChildDied)."""
        while True:
            try:
                self._check()
            except Stopped:
                return
            self.stop_requested.wait(POLL_S * 5)

    def _stop(self) -> None:
        """Brokers first, while etcd still runs so they can leave the cluster; then etcd."""
        stop_all(self.brokers)
        if self.etcd is not None:
            stop_all([self.etcd])

    def _print_tour(self) -> None:
        """The bootstrap list and a tour, on stdout (flushed: a script may wait for it)."""
        layout, print_line = self.layout, click.echo
        print_line(
            f"LogStore dev cluster: {layout.brokers} broker(s), etcd at {layout.etcd_endpoint}, "
            f"default replication factor {layout.replication_factor}"
        )
        for i, child in enumerate(self.brokers):
            print_line(
                f"  broker {i}  127.0.0.1:{layout.broker_port(i)}  pid {child.pid}  "
                f"log {child.log_path}"
            )
        if self.etcd is not None:
            print_line(
                f"  etcd      {layout.etcd_endpoint}  pid {self.etcd.pid}  log {self.etcd.log_path}"
            )
        kept = "kept at exit" if self.keep_data else "removed at exit"
        print_line(f"data in {layout.data_dir} ({kept})")
        print_line("")
        print_line(f"bootstrap: {layout.bootstrap}")
        print_line(f"Kafka clients' bootstrap: {layout.kafka_bootstrap}")
        print_line("")
        victim = self.brokers[-1].pid if self.brokers else 0
        for line in (
            "Try, in another terminal:",
            f"  export LOGSTORE_BOOTSTRAP={layout.bootstrap}",
            "  logstore cluster describe",
            f"  logstore topics create orders --partitions 3 "
            f"--replication-factor {layout.replication_factor}",
            "  logstore topics describe orders            # Leader, Replicas, Isr per partition",
            "  printf 'a\\nb\\nc\\n' | logstore produce orders --acks all",
            "  logstore consume orders --from-beginning --max-messages 3",
            f"  kill -STOP {victim}   # pause broker {layout.brokers - 1}: after the session "
            "timeout its partitions get new leaders from their ISR",
            "  logstore topics describe orders",
            f"  kill -CONT {victim}   # it catches up and rejoins the ISR",
            f"  kcat -b {layout.kafka_bootstrap} -L   # any Kafka client works too",
            "Ctrl-C stops the cluster.",
        ):
            print_line(line)


def etcd_healthy(client_port: int) -> bool:
    """Whether etcd's /health at 127.0.0.1:`client_port` says it serves."""
    url = f"http://127.0.0.1:{client_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read()).get("health") == "true"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def broker_serving(address: str) -> bool:
    """Whether the broker at `address` answers gRPC health checks with SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError:
            return False
    return status.status == health_pb2.HealthCheckResponse.SERVING


def child_environment() -> dict[str, str]:
    """This environment without the variables that would override what dev-cluster tells
    each child (LOGSTORE_LISTEN, LOGSTORE_BROKER_ID, ... the `serve` options' variables),
    and with unbuffered Python output, so a child's log is complete when it dies."""
    from logstore.cli.main import serve

    names: set[str] = set()
    for param in serve.params:
        envvar = param.envvar
        names.update([envvar] if isinstance(envvar, str) else envvar or ())
    names.discard("LOGSTORE_LOG_LEVEL")  # the user's choice of log detail still applies
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: prctl(PR_SET_PDEATHSIG): the signal a process gets when its parent dies
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child should `parent_pid` die first
    (even by SIGKILL, which leaves no chance to stop the children); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the forked child only calls it
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec

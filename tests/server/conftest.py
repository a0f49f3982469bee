"""A real `logstore serve` process on 127.0.0.1 with a temp data dir, for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logstore.v1 import logstore_pb2_grpc as pb_grpc

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_LISTENING = re.compile(r"listening on (\S+), data in")


class BrokerProcess:
    """Starts, stops and kills one broker process; keeps its data dir across restarts."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.port = 0
        #: the broker's "listening on ..." line of its latest start
        self.start_line = ""
        self.log_path = data_dir.parent / "broker.log"
        #: how the readiness check connects (set for a broker serving TLS)
        self.channel_credentials: grpc.ChannelCredentials | None = None

    def start(self) -> None:
        # Reuse the port across restarts so clients can reconnect to the same address.
        listen = f"127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "logstore.cli.main",
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                listen,
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "a"),  # noqa: SIM115 - the process owns it
            text=True,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.start_line = line
        match = _LISTENING.search(line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"broker did not start: {line!r}\n{self.log_path.read_text()}")
        self.address = match.group(1)
        self.port = int(self.address.rsplit(":", 1)[1])
        self._wait_serving(deadline)

    def _wait_serving(self, deadline: float) -> None:
        if self.channel_credentials is not None:
            channel = grpc.secure_channel(self.address, self.channel_credentials)
        else:
            channel = grpc.insecure_channel(self.address)
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                    if status.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    time.sleep(0.05)
        raise RuntimeError("broker never reported SERVING")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def restart(self) -> None:
        if self.proc is not None:
            self.stop()
        self.start()

    def logs(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(tmp_path / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def stub(broker: BrokerProcess) -> Iterator[pb_grpc.LogStoreStub]:
    with grpc.insecure_channel(broker.address) as channel:
        yield pb_grpc.LogStoreStub(channel)

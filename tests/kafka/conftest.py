"""A real `logstore serve` process with a Kafka listener, for the Kafka client tests.

`kafka_broker.bootstrap` is the HOST:PORT Kafka clients connect to, read from the start
line (an IPv6 host in brackets: `[::1]:9092`); restarts keep both ports, so clients
reconnect to the same addresses. `module_kafka_broker` is one broker
shared by a whole test module, for modules whose tests each use their own topics and
groups and never restart it: the module pays for one start instead of one per test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import BrokerProcess

_KAFKA_LISTENING = re.compile(r"Kafka listener on (\S+)")


class KafkaBrokerProcess(BrokerProcess):
    """A broker serving gRPC on 127.0.0.1 and the Kafka protocol on `kafka_host`."""

    def __init__(
        self, data_dir: Path, extra_args: list[str] | None = None, kafka_host: str = "127.0.0.1"
    ) -> None:
        super().__init__(data_dir, extra_args)
        self.kafka_host = kafka_host
        self.kafka_port = 0
        self.bootstrap = ""

    def start(self) -> None:
        base = [a for a in self.extra_args if not a.startswith("--kafka-listen=")]
        host = f"[{self.kafka_host}]" if ":" in self.kafka_host else self.kafka_host
        self.extra_args = [*base, f"--kafka-listen={host}:{self.kafka_port}"]
        super().start()
        match = _KAFKA_LISTENING.search(self.start_line)
        if not match:
            self.close()
            raise RuntimeError(f"broker serves no Kafka listener: {self.start_line!r}")
        self.bootstrap = match.group(1)
        self.kafka_port = int(self.bootstrap.rsplit(":", 1)[1])


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[KafkaBrokerProcess]:
    process = KafkaBrokerProcess(tmp_path / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def module_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBrokerProcess]:
    process = KafkaBrokerProcess(tmp_path_factory.mktemp("kafka-broker") / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()

"""A real cluster for tests: one etcd and N `logstore serve --broker-id ...` processes.

Brokers listen on 127.0.0.1 with ports chosen at their first start and kept across
restarts; each has its own data directory. Short session and lag timeouts keep failovers
within a few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.cluster.etcd import EtcdServer
from tests.helpers import wait_until
from tests.server.conftest import BrokerProcess

#: etcd lease TTL of each broker (ms): a killed broker is replaced within about this
SESSION_TIMEOUT_MS = 2000
#: a follower that has not caught up for this long leaves the ISR (ms)
REPLICA_LAG_TIME_MAX_MS = 3000


class ClusterHarness:
    """etcd plus brokers 1..N, each a real process (see the module docstring)."""

    def __init__(self, base: Path, brokers: int = 3, extra_args: list[str] | None = None) -> None:
        self.base = base
        self.etcd = EtcdServer(base / "etcd")
        self.brokers: dict[int, BrokerProcess] = {}
        for broker_id in range(1, brokers + 1):
            directory = base / f"broker-{broker_id}"
            directory.mkdir(parents=True)
            self.brokers[broker_id] = BrokerProcess(
                directory / "data",
                [
                    "--broker-id",
                    str(broker_id),
                    "--etcd-endpoints",
                    "",  # filled in at start, once etcd's port is known
                    "--session-timeout-ms",
                    str(SESSION_TIMEOUT_MS),
                    "--replica-lag-time-max-ms",
                    str(REPLICA_LAG_TIME_MAX_MS),
                    *(extra_args or []),
                ],
            )

    def start(self) -> None:
        self.etcd.start()
        for process in self.brokers.values():
            process.extra_args[3] = self.etcd.endpoint
            process.start()
        wait_until(
            lambda: len(self.describe_cluster().brokers) == len(self.brokers),
            "every broker to register",
            timeout_s=30,
        )

    def close(self) -> None:
        for process in self.brokers.values():
            process.close()
        self.etcd.close()

    @property
    def bootstrap(self) -> str:
        return ",".join(p.address for p in self.brokers.values() if p.proc is not None)

    def live(self) -> list[BrokerProcess]:
        return [p for p in self.brokers.values() if p.proc is not None]

    def stub(self, broker_id: int | None = None) -> Iterator[pb_grpc.LogStoreStub]:
        """A stub to `broker_id`, or to any live broker."""
        process = self.brokers[broker_id] if broker_id is not None else self.live()[0]
        with grpc.insecure_channel(process.address) as channel:
            yield pb_grpc.LogStoreStub(channel)

    def call(self, method: str, request: object, broker_id: int | None = None) -> object:
        for stub in self.stub(broker_id):
            return getattr(stub, method)(request, timeout=10)
        raise AssertionError("unreachable")

    def describe_cluster(self, broker_id: int | None = None) -> pb.DescribeClusterResponse:
        answer = self.call("DescribeCluster", pb.DescribeClusterRequest(), broker_id)
        assert isinstance(answer, pb.DescribeClusterResponse)
        return answer

    def partition(
        self, topic: str, partition: int = 0, broker_id: int | None = None
    ) -> pb.PartitionMetadata:
        answer = self.call("Metadata", pb.MetadataRequest(topics=[topic]), broker_id)
        assert isinstance(answer, pb.MetadataResponse)
        return answer.topics[0].partitions[partition]

    def wait_for_leader(
        self, topic: str, partition: int = 0, *, not_on: int | None = None, timeout_s: float = 20
    ) -> int:
        """The partition's leader once it has one (other than `not_on`), as live brokers see it."""
        found: list[int] = []

        def elected() -> bool:
            try:
                leader = self.partition(topic, partition).leader
            except grpc.RpcError:
                return False
            if leader < 0 or leader == not_on:
                return False
            found[:] = [leader]
            return True

        wait_until(elected, f"a leader for {topic}-{partition}", timeout_s=timeout_s)
        return found[0]

    def wait_for_isr(
        self, topic: str, size: int, partition: int = 0, timeout_s: float = 30
    ) -> list[int]:
        isr: list[int] = []

        def full() -> bool:
            try:
                isr[:] = list(self.partition(topic, partition).isr)
            except grpc.RpcError:
                return False
            return len(isr) == size

        wait_until(full, f"an ISR of {size} for {topic}-{partition}", timeout_s=timeout_s)
        return isr


def settle(seconds: float) -> None:
    """Let background replication run for a moment (bounded)."""
    time.sleep(seconds)

"""A real cluster for tests: one etcd and N `logstore serve --broker-id ...` processes.

Brokers listen on 127.0.0.1 with ports chosen at their first start and kept across
restarts; each has its own data directory. Short session and lag timeouts keep failovers
within a few seconds.

Security: `broker_args` gives each broker flags of its own (its certificate, a token file),
after the shared `extra_args` (a flag given twice takes the last value); `ClientAuth` is
how the harness's own calls reach brokers that serve TLS or require a token.

Faults: a broker can be stopped (SIGTERM), killed (SIGKILL), paused (SIGSTOP) and resumed
(SIGCONT), or restarted with an empty data directory; etcd can be killed and started
again (`tests/cluster/etcd.py`). `heal()` undoes every fault at once. Calls from the tests
never go to a paused broker (they would hang until their deadline), and every call has a
deadline, so no test waits on a broker for longer than it asked.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from logstore.client._connection import _BearerToken
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc
from tests.cluster.etcd import EtcdServer, free_port
from tests.helpers import wait_until
from tests.server.conftest import BrokerProcess

#: etcd lease TTL of each broker (ms): a killed broker is replaced within about this
SESSION_TIMEOUT_MS = 2000
#: a follower that has not caught up for this long leaves the ISR (ms)
REPLICA_LAG_TIME_MAX_MS = 3000
#: deadline of a call from a test to a broker unless the caller gives one (s)
CALL_TIMEOUT_S = 10.0
#: gRPC's reconnect back-off grows to 120 s by default; a broker restarted by a test is
#: back within seconds, and the test's next call must reach it then
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@dataclass(frozen=True)
class ClientAuth:
    """How the harness's own calls (and readiness checks) reach secured brokers: TLS
    credentials (with a client certificate for mutual TLS) and a bearer token."""

    credentials: grpc.ChannelCredentials | None = None
    token: str | None = None

    def channel(self, address: str) -> grpc.Channel:
        if self.credentials is None:
            channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
            if self.token is None:
                return channel
            return grpc.intercept_channel(channel, _BearerToken(self.token))
        credentials = self.credentials
        if self.token is not None:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return grpc.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)


class UnknownPartitionError(LookupError):
    """No reachable broker could say anything about the partition (yet)."""


class ClusterHarness:
    """etcd plus brokers 1..N, each a real process (see the module docstring).

    Thread-safe for calls (`call`, `partition`, `leader_of`...) from several test threads
    while the main thread injects faults.
    """

    def __init__(
        self,
        base: Path,
        brokers: int = 3,
        extra_args: list[str] | None = None,
        *,
        broker_args: Mapping[int, Sequence[str]] | None = None,
        auth: ClientAuth | None = None,
    ) -> None:
        self.base = base
        self.auth = auth or ClientAuth()
        self.etcd = EtcdServer(base / "etcd")
        self.brokers: dict[int, BrokerProcess] = {}
        #: brokers stopped with SIGSTOP and not resumed yet
        self.paused: set[int] = set()
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[grpc.Channel, pb_grpc.LogStoreStub]] = {}
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
                    *(broker_args or {}).get(broker_id, ()),
                ],
            )
            self.brokers[broker_id].channel_credentials = self.auth.credentials
            # A port of our own, kept across restarts (see `free_port`).
            self.brokers[broker_id].port = free_port()

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
        """Kill every broker (SIGKILL ends a paused process too) and etcd."""
        for process in self.brokers.values():
            process.close()
        self.paused.clear()
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel, _ in channels:
            channel.close()
        self.etcd.close()

    @property
    def bootstrap(self) -> str:
        return ",".join(p.address for p in self.brokers.values() if p.proc is not None)

    def live(self) -> list[BrokerProcess]:
        return [p for p in self.brokers.values() if p.proc is not None]

    def running(self, broker_id: int) -> bool:
        return self.brokers[broker_id].proc is not None

    def reachable(self) -> list[int]:
        """Ids of the brokers that run and are not paused: they answer calls."""
        with self._lock:
            paused = set(self.paused)
        return [b for b, p in self.brokers.items() if p.proc is not None and b not in paused]

    # --- calls -------------------------------------------------------------------------------

    def stub(self, broker_id: int | None = None) -> Iterator[pb_grpc.LogStoreStub]:
        """A stub to `broker_id`, or to any reachable broker (one shared channel each)."""
        yield self._stub(self._target(broker_id))

    def _target(self, broker_id: int | None) -> int:
        if broker_id is not None:
            return broker_id
        reachable = self.reachable()
        if not reachable:
            raise AssertionError("no broker is reachable")
        return reachable[0]

    def _stub(self, broker_id: int) -> pb_grpc.LogStoreStub:
        address = self.brokers[broker_id].address
        with self._lock:
            found = self._channels.get(address)
            if found is None:
                channel = self.auth.channel(address)
                found = (channel, pb_grpc.LogStoreStub(channel))
                self._channels[address] = found
        return found[1]

    def call(
        self,
        method: str,
        request: object,
        broker_id: int | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> object:
        """One unary call to `broker_id` (or any reachable broker), with a deadline."""
        return getattr(self._stub(self._target(broker_id)), method)(request, timeout=timeout_s)

    def describe_cluster(
        self, broker_id: int | None = None, timeout_s: float = CALL_TIMEOUT_S
    ) -> pb.DescribeClusterResponse:
        answer = self.call("DescribeCluster", pb.DescribeClusterRequest(), broker_id, timeout_s)
        assert isinstance(answer, pb.DescribeClusterResponse)
        return answer

    def describe_topic(
        self, topic: str, broker_id: int, timeout_s: float = CALL_TIMEOUT_S
    ) -> pb.TopicDescription:
        """The topic as `broker_id`'s own logs hold it (log end offset, high watermark)."""
        answer = self.call(
            "DescribeTopic", pb.DescribeTopicRequest(name=topic), broker_id, timeout_s
        )
        assert isinstance(answer, pb.DescribeTopicResponse)
        return answer.topic

    def metadata(
        self, topic: str, partition: int, broker_id: int, timeout_s: float = CALL_TIMEOUT_S
    ) -> pb.PartitionMetadata:
        """The partition's leader, epoch and ISR as `broker_id` knows them."""
        answer = self.call("Metadata", pb.MetadataRequest(topics=[topic]), broker_id, timeout_s)
        assert isinstance(answer, pb.MetadataResponse)
        found = answer.topics[0] if answer.topics else None
        if found is None or found.error.code or len(found.partitions) <= partition:
            # A broker that has only just started may not know the topic yet.
            why = found.error.message if found is not None else "no topic in the answer"
            raise UnknownPartitionError(f"broker {broker_id}: {topic}-{partition}: {why}")
        return found.partitions[partition]

    def partition(
        self,
        topic: str,
        partition: int = 0,
        broker_id: int | None = None,
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> pb.PartitionMetadata:
        """The partition's metadata from `broker_id`, or else the newest any reachable broker
        has: the largest leader epoch, as its leader tells it when it answers (the leader
        writes the ISR, so its view of the ISR is the freshest)."""
        if broker_id is not None:
            return self.metadata(topic, partition, broker_id, timeout_s)
        answers: dict[int, pb.PartitionMetadata] = {}
        failure: grpc.RpcError | None = None
        for candidate in self.reachable():
            try:
                answers[candidate] = self.metadata(topic, partition, candidate, timeout_s)
            except (grpc.RpcError, UnknownPartitionError) as exc:
                failure = exc
        if not answers:
            if failure is not None:
                raise failure
            raise UnknownPartitionError("no broker is reachable")
        newest = max(answers.values(), key=lambda m: m.leader_epoch)
        return answers.get(newest.leader, newest)

    def leader_of(
        self, topic: str, partition: int = 0, timeout_s: float = 2.0
    ) -> tuple[int, int] | None:
        """(leader, leader_epoch) as the reachable brokers know it, or None while there is
        none or no broker answers."""
        try:
            found = self.partition(topic, partition, timeout_s=timeout_s)
        except (grpc.RpcError, UnknownPartitionError):
            return None
        return None if found.leader < 0 else (found.leader, found.leader_epoch)

    def leads(self, topic: str, partition: int, broker_id: int, timeout_s: float = 2.0) -> bool:
        """Whether `broker_id` serves the partition as its leader now: it answers a consumer's
        fetch (which only a leader does). Metadata may name a leader before the leader
        itself has taken up the role."""
        request = pb.FetchRequest(
            topics=[
                pb.FetchTopic(
                    topic=topic,
                    partitions=[pb.FetchPartition(partition=partition, fetch_offset=0)],
                )
            ],
            max_wait_ms=0,
            max_bytes=1,
        )
        try:
            answer = self.call("Fetch", request, broker_id, timeout_s)
        except grpc.RpcError:
            return False
        assert isinstance(answer, pb.FetchResponse)
        error = answer.topics[0].partitions[0].error
        # Out of range is answered after the leadership check passed.
        return not error.code or error.kind == "OffsetOutOfRangeError"

    def wait_for_leader(
        self, topic: str, partition: int = 0, *, not_on: int | None = None, timeout_s: float = 20
    ) -> int:
        """The partition's leader once it has one (other than `not_on`), as live brokers see
        it, and once that broker serves as leader."""
        found: list[int] = []

        def elected() -> bool:
            current = self.leader_of(topic, partition)
            if current is None or current[0] == not_on:
                return False
            if current[0] not in self.reachable() or not self.leads(topic, partition, current[0]):
                return False
            found[:] = [current[0]]
            return True

        wait_until(elected, f"a leader for {topic}-{partition}", timeout_s=timeout_s)
        return found[0]

    def wait_for_isr(
        self, topic: str, size: int, partition: int = 0, timeout_s: float = 30
    ) -> list[int]:
        isr: list[int] = []

        def full() -> bool:
            try:
                isr[:] = list(self.partition(topic, partition, timeout_s=2.0).isr)
            except (grpc.RpcError, UnknownPartitionError):
                return False
            return len(isr) == size

        wait_until(full, f"an ISR of {size} for {topic}-{partition}", timeout_s=timeout_s)
        return isr

    # --- faults ------------------------------------------------------------------------------

    def pause(self, broker_id: int) -> None:
        """SIGSTOP: the broker keeps its sockets open and answers nothing, renews no lease."""
        process = self.brokers[broker_id]
        assert process.proc is not None, f"broker {broker_id} is not running"
        with self._lock:
            self.paused.add(broker_id)
        process.proc.send_signal(signal.SIGSTOP)

    def resume(self, broker_id: int) -> None:
        """SIGCONT after `pause`."""
        process = self.brokers[broker_id]
        assert process.proc is not None, f"broker {broker_id} is not running"
        process.proc.send_signal(signal.SIGCONT)
        with self._lock:
            self.paused.discard(broker_id)

    def reload(self, broker_id: int) -> None:
        """SIGHUP: the broker re-reads its token and TLS files."""
        process = self.brokers[broker_id]
        assert process.proc is not None, f"broker {broker_id} is not running"
        process.proc.send_signal(signal.SIGHUP)

    def kill9(self, broker_id: int) -> None:
        with self._lock:
            self.paused.discard(broker_id)
        self.brokers[broker_id].kill9()

    def stop(self, broker_id: int) -> None:
        """SIGTERM, after resuming a paused broker (a stopped process ignores it)."""
        if broker_id in self.paused:
            self.resume(broker_id)
        self.brokers[broker_id].stop()

    def wipe(self, broker_id: int) -> None:
        """Delete the data directory of a broker that is not running (a replaced disk)."""
        process = self.brokers[broker_id]
        assert process.proc is None, f"broker {broker_id} is running"
        shutil.rmtree(process.data_dir, ignore_errors=True)

    def heal(self) -> None:
        """Undo every fault: start etcd if it is down, resume paused brokers, start stopped
        ones (etcd first: a broker does not start without it)."""
        if self.etcd.proc is None:
            self.etcd.start()
        for broker_id in sorted(self.paused):
            self.resume(broker_id)
        for process in self.brokers.values():
            if process.proc is None:
                process.start()

    def stop_all(self) -> None:
        """Stop every running broker cleanly, so its files are complete and closed."""
        for broker_id, process in self.brokers.items():
            if process.proc is not None:
                self.stop(broker_id)


def settle(seconds: float) -> None:
    """Let background replication run for a moment (bounded)."""
    time.sleep(seconds)

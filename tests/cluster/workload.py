"""A cluster under load for fault tests, and a probe of a leader woken from a pause.

`running_workload` gives a three-broker cluster whose topic TOPIC has three in-sync
replicas, with a `ProducerThread` and a `ConsumerThread` running (tests/cluster/history.py);
`Workload.heal_and_check` undoes every fault and runs the final checks.

`probe_woken_leader` sends produces straight to a paused (old) leader from the moment it
wakes, and records whatever it acknowledges in the history, so the final checks demand it
in the final log: a broker whose leadership lapsed while it slept must not acknowledge a
write the new leader never sees.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.cluster.harness import REPLICA_LAG_TIME_MAX_MS, SESSION_TIMEOUT_MS, ClusterHarness
from tests.cluster.history import (
    ACKS_ALL,
    ACKS_LEADER,
    TOPIC,
    ConsumerThread,
    FinalLogs,
    History,
    ProducerThread,
    check_healed,
    create_topic,
    produce,
    refusal,
)

#: how long a test probes a paused leader after waking it (s)
ZOMBIE_PROBE_S = 2.0
#: probe threads per acks setting: enough that produces are always queued at the broker,
#: so one is handled in any instant it would wrongly accept
ZOMBIE_PROBE_THREADS = 8
#: deadline of one probe produce (s): the first ones wait for the paused broker to wake
ZOMBIE_RPC_TIMEOUT_S = 3.0
#: a pause past both the session timeout and the lag time, with room for etcd and the
#: controller to act on it (s)
LONG_PAUSE_S = max(SESSION_TIMEOUT_MS, REPLICA_LAG_TIME_MAX_MS) / 1000 + 1.5


@dataclass
class Workload:
    """A cluster with a topic of three in-sync replicas, a producer and a consumer."""

    cluster: ClusterHarness
    history: History
    producer: ProducerThread
    consumer: ConsumerThread

    def heal_and_check(self) -> FinalLogs:
        """Undo every fault, let the producer go on a little, stop both threads, check."""
        self.cluster.heal()
        self.producer.wait_for_progress(5, "after healing", timeout_s=60)
        self.producer.finish()
        self.consumer.finish()
        assert not self.producer.failures, self.producer.failures
        final = check_healed(self.cluster, self.history)
        assert self.consumer.position > 0, "the consumer read nothing"
        return final


@contextlib.contextmanager
def running_workload(base: Path) -> Iterator[Workload]:
    """Start etcd and three brokers under `base`, create TOPIC with three in-sync
    replicas, start the producer and the consumer; kill everything on the way out."""
    cluster = ClusterHarness(base, brokers=3)
    history = History()
    producer = ProducerThread(cluster, history)
    consumer = ConsumerThread(cluster, history)
    try:
        cluster.start()
        create_topic(cluster)
        cluster.wait_for_leader(TOPIC)
        cluster.wait_for_isr(TOPIC, 3)
        producer.start()
        consumer.start()
        producer.wait_for_progress(10, "before any fault")
        yield Workload(cluster, history, producer, consumer)
    finally:
        producer.stopping.set()
        consumer.stopping.set()
        cluster.close()
        for thread in (producer, consumer):
            if thread.is_alive():
                thread.join(timeout=15)


@dataclass
class ProbeResult:
    """What a woken old leader answered to produces sent straight to it."""

    outcomes: Counter[str]
    #: (acks, base offset) of every produce it acknowledged
    acknowledged: list[tuple[int, int]]
    #: (s after the wake, answer) whenever a probe thread's answer changed: when the broker
    #: stopped refusing for one reason and started refusing for another
    changes: list[tuple[float, str]]


def probe_woken_leader(
    cluster: ClusterHarness, history: History, broker_id: int, wake: Callable[[], None]
) -> ProbeResult:
    """Send acks=1 and acks=all produces straight to paused `broker_id` from
    ZOMBIE_PROBE_THREADS threads each in a tight loop, call `wake()`, and keep sending for
    ZOMBIE_PROBE_S. The first produces reach the broker the moment it wakes. Whatever it
    acknowledges goes into the history: the final checks then demand it in the final log,
    at the offset acknowledged."""
    outcomes: Counter[str] = Counter()
    acknowledged: list[tuple[int, int]] = []
    changes: list[tuple[float, str]] = []
    lock = threading.Lock()
    woken_at: list[float] = []
    started = time.monotonic()

    def over() -> bool:
        now = time.monotonic()
        if woken_at:
            return now > woken_at[0] + ZOMBIE_PROBE_S
        return now > started + 30  # the main thread failed before waking it

    def send(acks: int, thread: int) -> None:
        last = ""
        for i in range(100_000):
            if over():
                return
            values = [f"zombie-acks{acks}-{thread}-{i}".encode()]
            try:
                result = produce(
                    cluster, broker_id, values, acks=acks, timeout_s=ZOMBIE_RPC_TIMEOUT_S
                )
            except grpc.RpcError as exc:
                outcome = f"acks={acks} {refusal(exc)}"
                detail = f"{outcome}: {exc.details() if hasattr(exc, 'details') else exc}"
            else:
                if result.error.code:
                    outcome = f"acks={acks} {result.error.kind}"
                    detail = f"{outcome}: {result.error.message}"
                else:
                    outcome = f"acks={acks} acknowledged"
                    detail = f"{outcome} at {result.base_offset}"
                    history.acknowledge(values, result.base_offset)
                    with lock:
                        acknowledged.append((acks, result.base_offset))
            with lock:
                outcomes[outcome] += 1
                if detail != last:
                    at = time.monotonic() - woken_at[0] if woken_at else -1.0
                    changes.append((round(at, 3), f"thread {thread}: {detail}"))
            last = detail

    threads = [
        threading.Thread(target=send, args=(acks, n), daemon=True)
        for acks in (ACKS_LEADER, ACKS_ALL)
        for n in range(ZOMBIE_PROBE_THREADS)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the first produces are on their way to the paused broker
    wake()
    woken_at.append(time.monotonic())
    for thread in threads:
        thread.join(timeout=ZOMBIE_PROBE_S + ZOMBIE_RPC_TIMEOUT_S + 5)
        assert not thread.is_alive(), "a probe thread did not stop"
    return ProbeResult(outcomes, acknowledged, sorted(changes))

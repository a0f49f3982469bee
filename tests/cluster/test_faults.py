"""Faults injected into a real three-broker cluster under acks=all load.

In every test a producer thread sends without pause (acks=all, each send retried with fresh
values until acknowledged) and a consumer thread reads from the leader, while the test
kills, pauses or wipes brokers, or kills etcd. After healing, `check_healed` checks the
history against the final logs (tests/cluster/history.py): every acknowledged record once,
at its offset; offsets dense; nothing a consumer read vanished; every replica's files
identical.

`test_random_fault_schedule` draws its faults from LOGSTORE_FAULT_SEED (random when unset)
for LOGSTORE_FAULT_CYCLES cycles (3 unless set); its output names the seed, so a failing
schedule can be replayed: LOGSTORE_FAULT_SEED=<seed> LOGSTORE_FAULT_CYCLES=<n> pytest -s -k
random tests/cluster/test_faults.py. LOGSTORE_FAULTS=kill9_leader,pause_follower,... draws
from those faults only (all of `Schedule.FAULTS` unless set).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter

import grpc
import pytest

from tests.cluster.harness import SESSION_TIMEOUT_MS, ClusterHarness, UnknownPartitionError
from tests.cluster.history import TOPIC
from tests.cluster.workload import LONG_PAUSE_S, Workload, probe_woken_leader
from tests.helpers import wait_until


def current_leader(cluster: ClusterHarness) -> int:
    return cluster.wait_for_leader(TOPIC)


def a_follower(cluster: ClusterHarness, leader: int) -> int:
    return next(b for b in sorted(cluster.brokers) if b != leader)


def isr_of(cluster: ClusterHarness) -> list[int]:
    try:
        return list(cluster.partition(TOPIC, timeout_s=2.0).isr)
    except (grpc.RpcError, UnknownPartitionError):
        return []


# --- the faults, one test each -------------------------------------------------------------


def test_kill9_of_the_leader_under_acks_all_load(workload: Workload) -> None:
    cluster, producer = workload.cluster, workload.producer
    leader = current_leader(cluster)
    cluster.kill9(leader)
    new_leader = cluster.wait_for_leader(TOPIC, not_on=leader)
    producer.wait_for_progress(20, f"by broker {new_leader} after broker {leader} was killed")
    assert any(who[0] == new_leader for who in producer.leaders)

    # The old leader comes back as a follower, truncates to the new leader and catches up.
    cluster.heal()
    wait_until(lambda: leader in isr_of(cluster), f"broker {leader} to rejoin the ISR", 30)
    workload.heal_and_check()
    assert producer.failovers >= 1, producer.leaders


def test_paused_follower_leaves_the_isr_and_rejoins(workload: Workload) -> None:
    cluster, producer = workload.cluster, workload.producer
    leader = current_leader(cluster)
    follower = a_follower(cluster, leader)
    cluster.pause(follower)
    paused_at = time.monotonic()
    wait_until(lambda: follower not in isr_of(cluster), f"broker {follower} to leave the ISR", 20)
    out_after_s = time.monotonic() - paused_at
    assert sorted(isr_of(cluster)) == sorted(b for b in cluster.brokers if b != follower)
    # acks=all goes on with the two in-sync replicas.
    producer.wait_for_progress(20, f"with broker {follower} out of the ISR")
    time.sleep(max(0.0, paused_at + LONG_PAUSE_S - time.monotonic()))

    cluster.resume(follower)
    wait_until(lambda: follower in isr_of(cluster), f"broker {follower} to rejoin the ISR", 30)
    producer.wait_for_progress(10, f"with broker {follower} back in the ISR")
    workload.heal_and_check()
    print(f"broker {follower} left the ISR {out_after_s:.1f} s after it was paused")


def test_paused_leader_is_replaced_and_acknowledges_nothing_once_woken(
    workload: Workload,
) -> None:
    cluster, producer = workload.cluster, workload.producer
    old_leader = current_leader(cluster)
    cluster.pause(old_leader)
    paused_at = time.monotonic()
    new_leader = cluster.wait_for_leader(TOPIC, not_on=old_leader)
    producer.wait_for_progress(20, f"by broker {new_leader} while broker {old_leader} sleeps")
    time.sleep(max(0.0, paused_at + LONG_PAUSE_S - time.monotonic()))

    probe = probe_woken_leader(
        cluster, workload.history, old_leader, lambda: cluster.resume(old_leader)
    )
    print(f"woken leader {old_leader} answered: {dict(probe.outcomes)}")
    for at, change in probe.changes:
        print(f"  {at:+.3f} s {change}")
    assert sum(probe.outcomes.values()) > 0
    # Whatever it acknowledged must be in the final log at that offset (check_healed).
    workload.heal_and_check()


def test_follower_restarted_with_an_empty_disk_rejoins_only_once_caught_up(
    workload: Workload,
) -> None:
    cluster, producer = workload.cluster, workload.producer
    producer.wait_for_progress(100, "to build a log worth copying")
    leader = current_leader(cluster)
    follower = a_follower(cluster, leader)
    cluster.stop(follower)
    cluster.wipe(follower)
    starting = threading.Thread(target=cluster.brokers[follower].start, daemon=True)
    starting.start()
    checked = 0
    # Bounded by wait_until's count and deadline; each round checks the invariant.
    rejoined: list[bool] = [False]

    def in_sync_only_when_caught_up() -> bool:
        nonlocal checked
        try:
            # The high watermark first: it only grows, so a later ISR naming the follower
            # must come with a log end at least this high.
            high_watermark = cluster.describe_topic(TOPIC, leader, 2.0).partitions[0].high_watermark
            state = cluster.metadata(TOPIC, 0, leader, 2.0)
        except (grpc.RpcError, UnknownPartitionError):
            return False
        assert state.leader != follower, f"broker {follower} leads with an empty disk"
        if starting.is_alive() or follower not in state.isr:
            return False
        try:
            log_end = cluster.describe_topic(TOPIC, follower, 2.0).partitions[0].log_end_offset
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                return False
            log_end = 0  # in the ISR before it even has the topic
        checked += 1
        assert log_end >= high_watermark, (
            f"broker {follower} is in the ISR {list(state.isr)} with log end {log_end} below "
            f"the high watermark {high_watermark}"
        )
        rejoined[0] = True
        return True

    wait_until(in_sync_only_when_caught_up, f"broker {follower} to rejoin the ISR", 60)
    assert rejoined[0] and checked >= 1
    producer.wait_for_progress(10, f"with broker {follower} back in the ISR")
    final = workload.heal_and_check()
    assert len(final.batches[follower]) == len(final.batches[leader])


def test_etcd_down_leaders_keep_acknowledging_then_failover_works_again(
    workload: Workload,
) -> None:
    cluster, producer = workload.cluster, workload.producer
    leader = current_leader(cluster)
    cluster.etcd.kill()
    killed_at = time.monotonic()

    def every_broker_reports(healthy: bool) -> bool:
        try:
            return all(
                cluster.describe_cluster(b, timeout_s=8.0).etcd_healthy == healthy
                for b in cluster.reachable()
            )
        except grpc.RpcError:
            return False

    wait_until(lambda: every_broker_reports(False), "brokers to report etcd unhealthy", 20)
    producer.wait_for_progress(20, "while etcd is down")
    # Past the session timeout: a broker whose lease lapsed because etcd is gone still leads.
    time.sleep(max(0.0, killed_at + 2 * SESSION_TIMEOUT_MS / 1000 - time.monotonic()))
    producer.wait_for_progress(20, "while etcd is down, past the session timeout")
    assert cluster.leader_of(TOPIC) is not None
    assert all(who[0] == leader for who in producer.leaders[-1:]), producer.leaders

    cluster.etcd.start()
    wait_until(lambda: every_broker_reports(True), "brokers to report etcd healthy", 20)
    producer.wait_for_progress(10, "after etcd returned")
    wait_until(lambda: len(isr_of(cluster)) == 3, "a full ISR after etcd returned", 30)

    # The cluster is whole again: a leader's death still fails over.
    leader = current_leader(cluster)
    cluster.kill9(leader)
    new_leader = cluster.wait_for_leader(TOPIC, not_on=leader)
    producer.wait_for_progress(20, f"by broker {new_leader} after broker {leader} was killed")
    workload.heal_and_check()


# --- a random schedule -----------------------------------------------------------------------


class Schedule:
    """Faults drawn from one seed, each healed before the next; counts what happened."""

    FAULTS = (
        "kill9_leader",
        "pause_follower",
        "pause_leader",
        "restart_follower_empty",
        "kill_etcd",
    )

    def __init__(self, workload: Workload, seed: int, faults: tuple[str, ...] = FAULTS) -> None:
        unknown = set(faults) - set(self.FAULTS)
        assert faults and not unknown, f"unknown faults {sorted(unknown)}; known: {self.FAULTS}"
        self.faults = faults
        self.workload = workload
        self.cluster = workload.cluster
        self.rng = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.probes: Counter[str] = Counter()

    def cycle(self, number: int) -> None:
        fault = self.rng.choice(self.faults)
        leader = current_leader(self.cluster)
        print(f"cycle {number}: {fault} (leader {leader})", flush=True)
        getattr(self, fault)(leader)
        self.cluster.heal()
        self.cluster.wait_for_isr(TOPIC, 3, timeout_s=60)
        self.workload.producer.wait_for_progress(5, f"after cycle {number} ({fault})", 60)
        self.done[fault] += 1

    def kill9_leader(self, leader: int) -> None:
        self.cluster.kill9(leader)
        self.cluster.wait_for_leader(TOPIC, not_on=leader)
        self.workload.producer.wait_for_progress(5, "after the leader was killed")
        time.sleep(self.rng.uniform(0, 2))

    def pause_follower(self, leader: int) -> None:
        follower = self.rng.choice([b for b in self.cluster.brokers if b != leader])
        self.cluster.pause(follower)
        time.sleep(self.rng.uniform(0.5, LONG_PAUSE_S + 1))
        self.cluster.resume(follower)

    def pause_leader(self, leader: int) -> None:
        self.cluster.pause(leader)
        paused_at = time.monotonic()
        if self.rng.random() < 0.25:
            # A short pause, within the session: the leader may keep its leadership.
            time.sleep(self.rng.uniform(0.2, SESSION_TIMEOUT_MS / 1000 / 2))
            self.cluster.resume(leader)
            return
        self.cluster.wait_for_leader(TOPIC, not_on=leader)
        time.sleep(max(0.0, paused_at + LONG_PAUSE_S - time.monotonic()))
        probe = probe_woken_leader(
            self.cluster, self.workload.history, leader, lambda: self.cluster.resume(leader)
        )
        print(f"  woken leader {leader} answered: {dict(probe.outcomes)}", flush=True)
        self.probes.update(probe.outcomes)

    def restart_follower_empty(self, leader: int) -> None:
        follower = self.rng.choice([b for b in self.cluster.brokers if b != leader])
        # A crash keeps the old registration alive until its lease runs out; the new
        # incarnation then registers with a new broker epoch (KIP-903).
        crash = self.rng.random() < 0.5
        if crash:
            self.cluster.kill9(follower)
        else:
            self.cluster.stop(follower)
        self.cluster.wipe(follower)
        self.cluster.brokers[follower].start()
        if self.rng.random() < 0.5:
            # The leader dies while the empty follower catches up: the other follower must
            # take over, never the empty one (the final checks would miss records).
            print(
                f"  broker {follower} {'crashed' if crash else 'stopped'}, wiped, "
                f"restarted; leader {leader} killed while it catches up",
                flush=True,
            )
            self.cluster.kill9(leader)
            self.cluster.wait_for_leader(TOPIC, not_on=leader)
            self.workload.producer.wait_for_progress(5, "after the leader was killed")

    def kill_etcd(self, leader: int) -> None:
        self.cluster.etcd.kill()
        time.sleep(self.rng.uniform(0.5, 2 * SESSION_TIMEOUT_MS / 1000 + 1))
        self.cluster.etcd.start()


#: cycles of the random schedule (3 in CI; LOGSTORE_FAULT_CYCLES=50 for a long run by hand)
FAULT_CYCLES = int(os.environ.get("LOGSTORE_FAULT_CYCLES") or 3)
#: a bound on one cycle (s): a fault, its healing and the full ISR again take far less
CYCLE_BOUND_S = 30


@pytest.mark.timeout(120 + CYCLE_BOUND_S * FAULT_CYCLES)
def test_random_fault_schedule(workload: Workload) -> None:
    seed = int(os.environ.get("LOGSTORE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
    cycles = FAULT_CYCLES
    chosen = os.environ.get("LOGSTORE_FAULTS", "")
    faults = tuple(f.strip() for f in chosen.split(",") if f.strip()) or Schedule.FAULTS
    print(
        f"LOGSTORE_FAULT_SEED={seed} LOGSTORE_FAULT_CYCLES={cycles} "
        f"LOGSTORE_FAULTS={','.join(faults)}",
        flush=True,
    )
    schedule = Schedule(workload, seed, faults)
    started = time.monotonic()
    for number in range(1, cycles + 1):
        schedule.cycle(number)
    workload.heal_and_check()
    producer = workload.producer
    print(
        f"seed {seed}: {cycles} cycles in {time.monotonic() - started:.0f} s "
        f"({dict(schedule.done)}), {workload.history.acknowledged_count} records acknowledged "
        f"in {producer.sends} sends, {producer.failovers} failovers seen, refusals "
        f"{dict(producer.refusals)}, woken leaders answered {dict(schedule.probes)}"
    )

"""A leader paused right after an etcd outage must not acknowledge anything once woken.

The sequence: etcd dies, so every broker marks it unreachable and leaders go on serving
with their ISR; the leader is paused (SIGSTOP) before it notices etcd is back; etcd
returns, the paused leader's lease expires and another broker is elected leader. When the
old leader wakes, its session has lapsed and etcd is up, so it must refuse every produce
(NotLeaderOrFollowerError) until it has re-read the cluster: anything it acknowledges
would be truncated when it follows the new leader, and the final checks would find it
missing.
"""

from __future__ import annotations

import time

from tests.cluster.history import TOPIC
from tests.cluster.workload import LONG_PAUSE_S, Workload, probe_woken_leader
from tests.helpers import wait_until

#: what a broker logs when a pass of its control loop cannot reach etcd
ETCD_UNREACHABLE_LINE = "etcd unreachable ("


def test_leader_paused_before_it_saw_etcd_return_acknowledges_nothing_once_woken(
    workload: Workload,
) -> None:
    cluster, producer = workload.cluster, workload.producer
    old_leader = cluster.wait_for_leader(TOPIC)
    process = cluster.brokers[old_leader]
    cluster.etcd.kill()
    wait_until(
        lambda: ETCD_UNREACHABLE_LINE in process.logs(),
        f"broker {old_leader} to notice etcd is gone",
        timeout_s=15,
    )
    producer.wait_for_progress(5, "while etcd is down")

    # The leader sleeps through etcd's return: its lease expires and it is replaced.
    cluster.pause(old_leader)
    paused_at = time.monotonic()
    cluster.etcd.start()
    new_leader = cluster.wait_for_leader(TOPIC, not_on=old_leader, timeout_s=30)
    producer.wait_for_progress(10, f"by broker {new_leader} while broker {old_leader} sleeps")
    time.sleep(max(0.0, paused_at + LONG_PAUSE_S - time.monotonic()))

    probe = probe_woken_leader(
        cluster, workload.history, old_leader, lambda: cluster.resume(old_leader)
    )
    print(f"woken leader {old_leader} answered: {dict(probe.outcomes)}")
    for at, change in probe.changes:
        print(f"  {at:+.3f} s {change}")
    # Whatever it acknowledged must be in the final log at that offset (check_healed).
    workload.heal_and_check()

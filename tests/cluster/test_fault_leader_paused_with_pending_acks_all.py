"""acks=all produces waiting at a leader that is replaced must not succeed later.

One follower stops fetching for a moment (SIGSTOP), so the high watermark stalls at its log
end and every producer's acks=all produce waits at the leader with batches beyond it. Then
the leader and the other follower are paused past their sessions, the lagging follower is
resumed, and it is elected: it is in the ISR and has every record below the high
watermark, but not the latest batches. When the old leader wakes, its session has lapsed
and it becomes a follower: it truncates the batches the new leader never had and copies
the new leader's log in their place, so its high watermark passes their offsets with other
records there. The produces still waiting for those batches must fail
(NotEnoughReplicasAfterAppendError or NotLeaderOrFollowerError), never be acknowledged:
every acknowledgement goes into the history, and the final checks find any that was not
kept. The output places each producer's acknowledgements around the wake.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.history import TOPIC, ProducerThread, send_until_acknowledged
from tests.cluster.workload import LONG_PAUSE_S, Workload, running_workload

#: producers beside the workload's own, each with a produce waiting when the leader pauses
EXTRA_PRODUCERS = 8
#: deadline of the extra producers' produces (s): they must still wait when the old leader
#: wakes, and the broker answers an acks=all produce within its replica ack timeout anyway
WAITING_RPC_TIMEOUT_S = 40.0
#: how long one follower fetches nothing before the leader pauses (s): well within the
#: session timeout and the lag time, so it stays registered and in the ISR
LAG_S = 0.3


@pytest.fixture
def busy_workload(tmp_path: Path) -> Iterator[tuple[Workload, list[ProducerThread]]]:
    with running_workload(tmp_path) as workload:
        extra = [
            ProducerThread(
                workload.cluster,
                workload.history,
                name=f"x{n}",
                batch_size=1,
                rpc_timeout_s=WAITING_RPC_TIMEOUT_S,
            )
            for n in range(EXTRA_PRODUCERS)
        ]
        try:
            for producer in extra:
                producer.start()
            for producer in extra:
                producer.wait_for_progress(5, "before any fault")
            yield workload, extra
        finally:
            for producer in extra:
                producer.stopping.set()


def test_acks_all_waiting_at_a_replaced_leader_is_never_acknowledged_for_lost_records(
    busy_workload: tuple[Workload, list[ProducerThread]],
) -> None:
    workload, extra = busy_workload
    cluster = workload.cluster
    old_leader = cluster.wait_for_leader(TOPIC)
    lagging, other = (b for b in sorted(cluster.brokers) if b != old_leader)
    cluster.pause(lagging)
    time.sleep(LAG_S)  # the producers' batches pile up above the high watermark
    cluster.pause(old_leader)
    cluster.pause(other)
    paused_at = time.monotonic()
    cluster.resume(lagging)
    new_leader = cluster.wait_for_leader(TOPIC, not_on=old_leader, timeout_s=30)
    assert new_leader == lagging, f"broker {new_leader} was elected, not {lagging}"
    # Every producer still waits for its produce at the old leader: send one more here.
    sent = send_until_acknowledged(
        cluster, lambda attempt: [f"main-{attempt}".encode()], timeout_s=20
    )
    assert sent is not None, f"broker {new_leader} acknowledged nothing"
    workload.history.acknowledge(sent.values, sent.base_offset)
    time.sleep(max(0.0, paused_at + LONG_PAUSE_S - time.monotonic()))
    # Wake it while the produces waiting there are well within their deadline.
    assert time.monotonic() - paused_at < WAITING_RPC_TIMEOUT_S / 2, "the election took long"
    cluster.resume(other)
    cluster.resume(old_leader)
    woken_at = time.monotonic()
    # The produces waiting at the old leader are answered within its wait for the ISR.
    for producer in extra:
        producer.wait_for_progress(3, f"after broker {old_leader} woke", timeout_s=60)
    refusals: Counter[str] = Counter()
    for producer in extra:
        producer.finish()
        assert not producer.failures, producer.failures
        refusals.update(producer.refusals)
    print(f"the producers' refused attempts: {dict(refusals)}")
    for producer in extra:
        around = [
            f"{at - woken_at:+.3f} s: {sent.base_offset} by {sent.leader}"
            for at, sent in producer.recent
            if -1 < at - woken_at < 2
        ]
        print(f"{producer.name} acknowledged, s after the wake: {around}")
    workload.heal_and_check()

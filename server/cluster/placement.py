"""Which brokers hold the replicas of new partitions (pure: no I/O, no clock).

`assign_replicas` follows Kafka's rack-unaware assignment
(`AdminUtils.assignReplicasToBrokers`): partition `p`'s first replica, its preferred
leader, is broker `(start + p) % n` of the list, so leaders go round-robin; the followers
come after it at a shift that grows by one every `n` partitions, so consecutive rounds of
partitions do not pair the same brokers again and again.

Invariants of every result:
- one tuple per partition `first_partition .. first_partition + partitions - 1`, in order;
- each tuple holds `replication_factor` distinct brokers, all from `broker_ids`; its first
  entry is the preferred leader;
- the same arguments give the same result (a random start only when `start_index` is None,
  drawn from the injected `rng`).

Without `existing_load`, over a multiple of `n` partitions every broker is preferred leader
equally often and holds the same number of replicas (within one otherwise).
With `existing_load` (replicas each broker holds already) the brokers holding the fewest
replicas are chosen first, leader and followers alike, so a newly joined broker receives
new partitions until it has caught up with the others.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from logstore.errors import (
    InvalidPartitionsError,
    InvalidReplicationFactorError,
    InvalidRequestError,
)

#: a partition's replicas, preferred leader first
Replicas = tuple[int, ...]


def assign_replicas(
    partitions: int,
    replication_factor: int,
    broker_ids: Sequence[int],
    *,
    start_index: int | None = None,
    first_partition: int = 0,
    existing_load: Mapping[int, int] | None = None,
    rng: random.Random | None = None,
) -> list[Replicas]:
    """The replicas of `partitions` new partitions numbered from `first_partition`.

    `broker_ids` are the live brokers, in the order the round-robin walks (callers pass
    them sorted). `start_index` picks the broker that leads the first partition of the
    round (Kafka draws it at random, which spreads the leaders of many small topics; when
    None it is drawn from `rng`, a fresh `random.Random()` by default). To add partitions
    to a topic in the same pattern, pass the topic's start index and its current partition
    count as `first_partition`: the result is then the tail of what creating all of them at
    once would have given (Kafka's own "add partitions" restarts the follower shift).

    With `existing_load`, `first_partition` does not matter and `start_index` only breaks
    ties (see `_least_loaded`).

    Raises InvalidReplicationFactorError when `replication_factor` is below 1 or above the
    number of brokers, InvalidPartitionsError for a negative count or first partition,
    InvalidRequestError when `broker_ids` names a broker twice.
    """
    brokers = _check(partitions, replication_factor, broker_ids, first_partition)
    if partitions == 0:
        return []
    n = len(brokers)
    if start_index is None:
        rng = rng or random.Random()
        start, shift = rng.randrange(n), rng.randrange(n)
    else:
        start = shift = start_index % n
    if existing_load is not None:
        return _least_loaded(partitions, replication_factor, brokers, start, existing_load)
    return [
        _kafka_replicas(p, replication_factor, brokers, start, shift)
        for p in range(first_partition, first_partition + partitions)
    ]


def assign_partitions(
    partitions: Iterable[int],
    replication_factor: int,
    broker_ids: Sequence[int],
    start_index: int,
) -> dict[int, Replicas]:
    """The replicas of the partitions numbered `partitions` (any numbers, in any order),
    each exactly as `assign_replicas(..., start_index=start_index)` over the same brokers
    places it: Kafka's placement of a partition depends on its number alone. The
    controller places the partitions whose states a crashed creator never wrote with the
    topic's recorded start index, so they land where the creator would have put them
    (given the same live brokers).

    Raises as `assign_replicas` does, and InvalidPartitionsError for a negative number.
    """
    numbers = sorted(set(partitions))
    brokers = _check(0, replication_factor, broker_ids, numbers[0] if numbers else 0)
    start = start_index % len(brokers)
    return {p: _kafka_replicas(p, replication_factor, brokers, start, start) for p in numbers}


def _check(
    partitions: int, replication_factor: int, broker_ids: Sequence[int], first_partition: int
) -> tuple[int, ...]:
    brokers = tuple(broker_ids)
    if len(set(brokers)) != len(brokers):
        raise InvalidRequestError(f"broker ids {list(brokers)} name a broker twice")
    if replication_factor < 1:
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} must be at least 1"
        )
    if replication_factor > len(brokers):
        listed = ", ".join(str(b) for b in brokers)
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} is larger than the "
            f"{len(brokers)} live brokers ({listed})"
        )
    if partitions < 0:
        raise InvalidPartitionsError(f"cannot place {partitions} partitions; must be >= 0")
    if first_partition < 0:
        raise InvalidPartitionsError(f"first partition {first_partition} must be >= 0")
    return brokers


def _kafka_replicas(
    partition: int, replication_factor: int, brokers: tuple[int, ...], start: int, shift: int
) -> Replicas:
    """Kafka's placement of one partition: the leader round-robin, followers shifted.

    The follower shift is `shift + partition // n`: Kafka bumps it at every multiple of
    `n`, which this computes directly so the result depends on the partition number only.
    """
    n = len(brokers)
    first = (partition + start) % n
    replica_shift = shift + partition // n
    followers = (
        # 1 + (...) % (n - 1) is never 0 and takes distinct values for j < n - 1, so the
        # followers differ from the leader and from each other
        brokers[(first + 1 + (replica_shift + j) % (n - 1)) % n]
        for j in range(replication_factor - 1)
    )
    return (brokers[first], *followers)


def _least_loaded(
    partitions: int,
    replication_factor: int,
    brokers: tuple[int, ...],
    start: int,
    existing_load: Mapping[int, int],
) -> list[Replicas]:
    """Greedy placement by load: each partition takes the `replication_factor` brokers that
    hold the fewest replicas so far (counting the ones placed here).

    The leader is the least-loaded broker, ties going to the one that has led the fewest of
    these partitions, then to the round-robin order from `start`; followers are the next
    least-loaded, ties going to the brokers right after the leader in the list. Picking the
    least-loaded brokers each time never widens the gap between the most and the least
    loaded broker beyond max(that gap before, 1).
    """
    n = len(brokers)
    load = {b: max(0, existing_load.get(b, 0)) for b in brokers}
    led = dict.fromkeys(brokers, 0)
    result: list[Replicas] = []
    for _ in range(partitions):
        leader_index = min(
            range(n), key=lambda i: (load[brokers[i]], led[brokers[i]], (i - start) % n)
        )
        leader = brokers[leader_index]
        others = sorted(
            (i for i in range(n) if i != leader_index),
            key=lambda i: (load[brokers[i]], (i - leader_index) % n),
        )
        replicas = (leader, *(brokers[i] for i in others[: replication_factor - 1]))
        for b in replicas:
            load[b] += 1
        led[leader] += 1
        result.append(replicas)
    return result

"""Partition assignors for consumer groups: pure functions from subscriptions to partitions.

Every assignor takes the group's members (member id -> subscribed topic names) and the
partition count of each topic, and returns one entry per member. Invariants, for every
assignor:

* every partition `0 .. count-1` of every topic that at least one member subscribes to is
  placed exactly once, always on a member subscribed to its topic;
* topics nobody subscribes to, topics missing from `partition_counts` and topics with no
  partitions are ignored; a member with nothing to take gets an empty set;
* the result depends only on the arguments (never on dict order or randomness), so the
  coordinator can recompute it at any time and get the same answer.

The three assignors, as in Kafka:

* ``range``: per topic, the members subscribed to it in member id order take contiguous
  ranges; the first ``count % members`` of them take one extra partition (RangeAssignor).
  Balanced within one per topic, not across topics.
* ``roundrobin``: all partitions of all subscribed topics in (topic, partition) order are
  dealt in turn to the members in id order, skipping a member not subscribed to the
  partition's topic (RoundRobinAssignor).
* ``sticky`` (the default): keeps what each member already has, then balances. With
  identical subscriptions the result is balanced within one and moves the fewest
  partitions that any within-one balance needs (see `sticky_assign`).
"""

from __future__ import annotations

from collections.abc import Mapping

from logstore.types import (  # noqa: F401 (the names are shared with the client)
    ASSIGNOR_NAMES,
    DEFAULT_ASSIGNOR,
    RANGE,
    ROUNDROBIN,
    STICKY,
    TopicPartition,
    check_assignor_name,
)

#: member id -> the partitions it is to own
Assignment = dict[str, frozenset[TopicPartition]]


def assign(
    name: str,
    members: Mapping[str, frozenset[str]],
    partition_counts: Mapping[str, int],
    current: Mapping[str, frozenset[TopicPartition]] | None = None,
) -> Assignment:
    """The assignment the assignor `name` computes; `current` only matters to ``sticky``.

    `current` may name members that are gone and partitions that no longer exist or that a
    member no longer subscribes to; such entries are ignored.
    """
    check_assignor_name(name)
    if name == RANGE:
        return range_assign(members, partition_counts)
    if name == ROUNDROBIN:
        return roundrobin_assign(members, partition_counts)
    return sticky_assign(members, partition_counts, current or {})


def range_assign(
    members: Mapping[str, frozenset[str]], partition_counts: Mapping[str, int]
) -> Assignment:
    """Kafka's RangeAssignor: contiguous ranges per topic, extras to the lowest member ids."""
    result: dict[str, set[TopicPartition]] = {member: set() for member in members}
    for topic, subscribers in sorted(_subscribers(members, partition_counts).items()):
        per_member, extra = divmod(partition_counts[topic], len(subscribers))
        start = 0
        for index, member in enumerate(subscribers):
            size = per_member + (1 if index < extra else 0)
            result[member].update((topic, p) for p in range(start, start + size))
            start += size
    return _freeze(result)


def roundrobin_assign(
    members: Mapping[str, frozenset[str]], partition_counts: Mapping[str, int]
) -> Assignment:
    """Kafka's RoundRobinAssignor: partitions dealt in turn, skipping unsubscribed members."""
    result: dict[str, set[TopicPartition]] = {member: set() for member in members}
    order = sorted(members)
    turn = 0
    for topic, subscribers in sorted(_subscribers(members, partition_counts).items()):
        eligible = set(subscribers)
        for partition in range(partition_counts[topic]):
            # terminates: `eligible` is non-empty and a subset of `order`
            while order[turn % len(order)] not in eligible:
                turn += 1
            result[order[turn % len(order)]].add((topic, partition))
            turn += 1
    return _freeze(result)


def sticky_assign(
    members: Mapping[str, frozenset[str]],
    partition_counts: Mapping[str, int],
    current: Mapping[str, frozenset[TopicPartition]],
) -> Assignment:
    """Keep valid current partitions, hand out the rest to the least loaded, then balance.

    1. Keep: each member keeps every partition of `current` that still exists and that it
       still subscribes to (a partition claimed by two members stays with the lower id).
    2. Fill: each unowned partition goes to the least-loaded member subscribed to its topic
       (ties to the lower id); partitions with fewer eligible members go first, so the
       constrained ones are placed while there is still a choice.
    3. Balance: while some member has at least two more partitions than a member that could
       take one of them, move one from the most loaded such donor to the least loaded
       receiver. Each move lowers the sum of squared loads, so this ends.

    With identical subscriptions (P partitions, M members, q, r = divmod(P, M)) this keeps
    min(c, quota) partitions of a member that had c valid ones, where the r members with
    the most get quota q + 1 and the rest q; that is the fewest moves any within-one
    balance allows. Why: a member that ever receives a partition stays within one of the
    minimum load and so never donates; a donor only gives while it is the maximum and at
    least two above the minimum, so donors end at q + 1 whenever a q + 1 slot is left.
    Keeping everything first and trimming only the excess in step 3 is therefore the same
    as keeping "within quota", without having to define a quota for mixed subscriptions.
    """
    subscribers = _subscribers(members, partition_counts)
    result: dict[str, set[TopicPartition]] = {member: set() for member in members}
    owned: set[TopicPartition] = set()
    for member in sorted(members):
        for tp in sorted(current.get(member, ())):
            if tp not in owned and _still_valid(tp, members[member], partition_counts):
                owned.add(tp)
                result[member].add(tp)
    unowned = [
        (topic, partition)
        for topic in subscribers
        for partition in range(partition_counts[topic])
        if (topic, partition) not in owned
    ]
    unowned.sort(key=lambda tp: (len(subscribers[tp[0]]), tp))
    for tp in unowned:
        taker = min(subscribers[tp[0]], key=lambda member: (len(result[member]), member))
        result[taker].add(tp)
    _balance(result, members)
    return _freeze(result)


def _balance(result: dict[str, set[TopicPartition]], members: Mapping[str, frozenset[str]]) -> None:
    while (move := _find_move(result, members)) is not None:
        donor, receiver, tp = move
        result[donor].remove(tp)
        result[receiver].add(tp)


def _find_move(
    result: dict[str, set[TopicPartition]], members: Mapping[str, frozenset[str]]
) -> tuple[str, str, TopicPartition] | None:
    """(donor, receiver, partition) of the most uneven allowed move, or None if balanced."""
    by_load = sorted(result, key=lambda member: (len(result[member]), member))
    for receiver in by_load:
        for donor in reversed(by_load):
            if len(result[donor]) < len(result[receiver]) + 2:
                break
            movable = [tp for tp in result[donor] if tp[0] in members[receiver]]
            if movable:
                # the highest partition, so the low ones (often read first) stay put
                return donor, receiver, max(movable)
    return None


def _subscribers(
    members: Mapping[str, frozenset[str]], partition_counts: Mapping[str, int]
) -> dict[str, list[str]]:
    """Topic -> the ids (sorted) of members subscribed to it, for topics with partitions."""
    out: dict[str, list[str]] = {}
    for member in sorted(members):
        for topic in members[member]:
            if partition_counts.get(topic, 0) > 0:
                out.setdefault(topic, []).append(member)
    return out


def _still_valid(
    tp: TopicPartition, subscription: frozenset[str], partition_counts: Mapping[str, int]
) -> bool:
    topic, partition = tp
    return topic in subscription and 0 <= partition < partition_counts.get(topic, 0)


def _freeze(result: Mapping[str, set[TopicPartition]]) -> Assignment:
    return {member: frozenset(tps) for member, tps in result.items()}

"""The controller's decisions about one partition (pure: no I/O, no clock).

Each decision takes the partition's current `PartitionState` (and the set of live broker
ids) and returns the state to write, or None when nothing changes, so the controller only
writes, with a compare-and-swap, what a decision actually changed.

Invariants of every state returned:
- it passes `PartitionState`'s checks: the leader is -1 or in the ISR, the ISR is within
  the replicas;
- the leader is -1 or a live broker, and it is in the old ISR unless an unclean election
  chose it (only `on_brokers_changed(..., unclean=True)` does);
- `leader_epoch` grows by exactly 1 whenever the leader changes, including to or from -1,
  and stays put otherwise, so requests stamped with an older leadership are fenced;
- the ISR is never emptied by a broker's death (Kafka's KIP-966 "last replica standing"):
  the replicas that were last in sync stay the ISR while they are down, so one of them,
  holding every acknowledged record, leads when it comes back.

Reassignment follows Kafka's KIP-455: while it runs, `replicas` is the target followed by
the original replicas that are leaving, `adding` and `removing` say which is which, and
the added replicas fetch like any follower until they join the ISR.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import replace

from logstore.errors import InvalidRequestError
from logstore.server.cluster.state import NO_LEADER, PartitionState


def initial_state(replicas: Sequence[int], live: Set[int]) -> PartitionState:
    """A new partition: the first live replica leads, the live replicas are the ISR.

    Every replica of a new partition has the same (empty) log, so when none is live the
    ISR is all of them and the leader -1: whichever comes first leads cleanly.
    Raises InvalidRequestError when `replicas` is empty or names a broker twice.
    """
    replicas = _check_replicas(replicas, "replicas")
    isr = tuple(b for b in replicas if b in live) or replicas
    leader = isr[0] if isr[0] in live else NO_LEADER
    return PartitionState(replicas=replicas, leader=leader, leader_epoch=0, isr=isr)


def on_brokers_changed(
    state: PartitionState, live: Set[int], *, unclean: bool
) -> PartitionState | None:
    """The partition after the set of live brokers became `live`; None if unchanged.

    Dead brokers leave the ISR, except that the ISR is never emptied: when no ISR member
    is live it stays as it was and the leader becomes -1 (KIP-966). A leader that is dead
    or -1 is replaced by the first replica, in `replicas` order, that is live and in the
    ISR. When there is none and `unclean` is true, the first live replica leads and becomes
    the whole ISR: records the old ISR acknowledged and this replica never received are
    lost (unclean.leader.election.enable), and its log becomes the truth the others
    truncate to.
    """
    live_isr = tuple(b for b in state.isr if b in live)
    isr = live_isr or state.isr
    if state.leader in live_isr:
        leader = state.leader
    else:
        leader = next((b for b in state.replicas if b in live_isr), NO_LEADER)
        if leader == NO_LEADER and unclean:
            leader = next((b for b in state.replicas if b in live), NO_LEADER)
            if leader != NO_LEADER:
                isr = (leader,)
    return _changed(state, _lead(state, leader, isr))


def preferred_leader(state: PartitionState, live: Set[int]) -> PartitionState | None:
    """Leadership back to the preferred replica (`replicas[0]`) when it is live, in the ISR
    and not the leader already; None otherwise. Balances leaders after a broker returns."""
    preferred = state.preferred_leader
    if preferred == state.leader or preferred not in live or preferred not in state.isr:
        return None
    return _lead(state, preferred, state.isr)


def reassignment_in_progress(state: PartitionState) -> bool:
    """True while replicas are being added to or removed from the partition."""
    return bool(state.adding or state.removing)


def start_reassignment(state: PartitionState, target: Sequence[int]) -> PartitionState:
    """The partition once a move to the replicas `target` has started (KIP-455).

    `replicas` becomes `target` followed by the original replicas not in it; `adding` is
    the target replicas that are not original ones, `removing` the original ones not in the
    target. Leader, ISR and epoch do not change here: the added replicas start fetching,
    and `complete_reassignment` finishes the move once they are in sync.

    A reassignment started while another runs replaces it, relative to the original
    replicas (`replicas` minus `adding`). A replica the earlier one was adding that is not
    in the new target is dropped at once if it is out of the ISR; if it is already in the
    ISR it may hold acknowledged records, so it is kept (and removed) like an original one.

    Raises InvalidRequestError when `target` is empty or names a broker twice.
    """
    target = _check_replicas(target, "target replicas")
    original = tuple(b for b in state.replicas if b not in state.adding)
    leaving = tuple(
        b for b in state.replicas if b not in target and (b in original or b in state.isr)
    )
    return replace(
        state,
        replicas=target + leaving,
        adding=tuple(b for b in target if b not in original),
        removing=leaving,
    )


def complete_reassignment(state: PartitionState, live: Set[int]) -> PartitionState | None:
    """The partition with its move finished, or None while it cannot finish yet.

    It finishes once every added replica is in the ISR: `replicas` becomes the target, the
    removed replicas leave the ISR, and if the leader is one of them the first target
    replica that is live and in the ISR leads (epoch + 1). It waits (None) when no
    reassignment runs, when an added replica is not yet in sync, when no in-sync replica
    would remain, or when the leader is leaving and no remaining in-sync replica is live.
    """
    if not reassignment_in_progress(state) or not set(state.adding) <= set(state.isr):
        return None
    target = tuple(b for b in state.replicas if b not in state.removing)
    isr = tuple(b for b in state.isr if b not in state.removing)
    if not isr:
        return None
    leader = state.leader
    if leader in state.removing:
        leader = next((b for b in target if b in isr and b in live), NO_LEADER)
        if leader == NO_LEADER:
            return None
    return _lead(state, leader, isr, replicas=target, adding=(), removing=())


def _lead(
    state: PartitionState, leader: int, isr: tuple[int, ...], **changes: tuple[int, ...]
) -> PartitionState:
    """`state` with `leader`, `isr` and `changes` (checked together, as one new state); the
    leader epoch grows by one iff the leader changed."""
    epoch = state.leader_epoch + (1 if leader != state.leader else 0)
    return replace(state, leader=leader, leader_epoch=epoch, isr=isr, **changes)


def _changed(old: PartitionState, new: PartitionState) -> PartitionState | None:
    return None if new == old else new


def _check_replicas(replicas: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(replicas)
    if not out:
        raise InvalidRequestError(f"{what} must name at least one broker")
    if len(set(out)) != len(out):
        raise InvalidRequestError(f"{what} {list(out)} name a broker twice")
    if any(b < 0 for b in out):
        raise InvalidRequestError(f"{what} {list(out)} must be broker ids >= 0")
    return out

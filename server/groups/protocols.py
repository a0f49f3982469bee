"""Which group protocol holds each consumer group: a group is one or the other, never both.

LogStore serves two group protocols over one set of group ids and one table of committed
offsets: its own server-assigned protocol (`coordinator.GroupCoordinator`, KIP-848 style,
used by `logstore.Consumer` over gRPC) and Kafka's classic protocol
(`classic.ClassicGroupCoordinator`, JoinGroup/SyncGroup, used by Kafka clients).

Invariant: a group is held by at most one protocol, and it is held by protocol P exactly
when P's coordinator has members in it (`members` is that count). An empty group (only
committed offsets, or nothing) is held by neither and may be taken up by either.

Each coordinator calls `update` under its own lock, before it adds a member (so a refused
claim changes nothing) and after it removes one. This registry's lock is always taken
last and never held while calling out, so the two coordinators' locks cannot deadlock.

Emptiness: seeing every change of both protocols, the registry knows when each group last
became empty (Kafka's Empty state, whichever protocol its members used), which committed
offsets' retention needs (KIP-211: offsets are kept for the retention period after the
group becomes empty). A group never seen with members counts as empty since the registry
was made (the broker's start): what happened before is unknown. Times are monotonic ms on
the injected clock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Final

from logstore.clock import SYSTEM_CLOCK, Clock

#: LogStore's own group protocol (gRPC heartbeats, server-side assignment)
NATIVE: Final = "logstore"
#: Kafka's classic group protocol (JoinGroup / SyncGroup, the leader member assigns)
CLASSIC: Final = "classic"

_DESCRIPTIONS: Final = {
    NATIVE: "LogStore's group protocol (logstore.Consumer over gRPC)",
    CLASSIC: "Kafka's classic group protocol (JoinGroup/SyncGroup, Kafka clients)",
}


@dataclass(frozen=True)
class Holder:
    """The protocol holding a group and how many members it has there (> 0)."""

    protocol: str
    members: int

    def describe(self) -> str:
        noun = "member" if self.members == 1 else "members"
        return f"{self.members} {noun} using {_DESCRIPTIONS[self.protocol]}"


class GroupProtocols:
    """group id -> the protocol holding it. Thread-safe; see the module docstring."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._holders: dict[str, Holder] = {}
        self._started_ms = clock.monotonic_ms()
        #: group -> when it last became empty (monotonic ms); oldest first, since an entry
        #: is removed and added again each time, so pruning stops at the first young one
        self._emptied: dict[str, int] = {}

    def update(self, group_id: str, protocol: str, members: int) -> Holder | None:
        """Record that `protocol` has `members` members in the group (0 releases it).

        Returns None when recorded, or the other protocol's holder, changing nothing, when
        another protocol holds the group and `members` > 0.
        """
        if protocol not in _DESCRIPTIONS:
            raise ValueError(f"unknown group protocol {protocol!r}")
        with self._lock:
            held = self._holders.get(group_id)
            if held is not None and held.protocol != protocol:
                return held if members > 0 else None
            if members > 0:
                self._holders[group_id] = Holder(protocol, members)
                self._emptied.pop(group_id, None)
            elif self._holders.pop(group_id, None) is not None:
                self._emptied.pop(group_id, None)
                self._emptied[group_id] = self._clock.monotonic_ms()
            return None

    def holder(self, group_id: str) -> Holder | None:
        """Who holds the group now; None when it has no members."""
        with self._lock:
            return self._holders.get(group_id)

    def empty_for_ms(self, group_id: str) -> int | None:
        """How long the group has had no members of either protocol (ms); None while it
        has some. A group never seen with members: since this registry was made."""
        with self._lock:
            if group_id in self._holders:
                return None
            now = self._clock.monotonic_ms()
            return now - self._emptied.get(group_id, self._started_ms)

    def forget_emptied_longer_than(self, age_ms: int) -> int:
        """Forget when groups became empty if that was at least `age_ms` ago; return how
        many. Bounds memory; a group forgotten so counts as empty since the start, which
        is longer still, so any "empty for at least `age_ms`" question keeps its answer."""
        with self._lock:
            now = self._clock.monotonic_ms()
            old = []
            for group_id, since in self._emptied.items():
                if now - since < age_ms:
                    break
                old.append(group_id)
            for group_id in old:
                del self._emptied[group_id]
            return len(old)

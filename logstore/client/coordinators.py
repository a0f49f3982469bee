"""Where a consumer group's requests go: its coordinator, as FindCoordinator named it.

I/O-free: `CoordinatorCache` is fed FindCoordinator answers (anything with the fields of a
`logstore.v1` BrokerDescription) and the kinds of the errors group requests met, and says
where the next request goes and whether, and after how long (ms on an injected clock), a
failed one is sent again. The gRPC side (`CoordinatorRouter` in
`logstore.client._connection`) does the asking.

Rules:

- In a cluster a group's coordinator is the leader of the group's partition of
  __consumer_offsets; every other broker refuses the group's requests with
  NotCoordinatorError. A standalone broker coordinates every group and names itself
  without a host ("the address you reached me at"); a broker without the FindCoordinator
  RPC is taken for one. Such a coordinator is `HOME`: whichever broker the client sends its
  other untargeted requests to, so a standalone client asks FindCoordinator once per group
  and then talks to its one broker exactly as it did before coordinators were found.
- A coordinator named by address is forgotten when it answers NotCoordinatorError (it
  lost the leadership, or has not taken it up yet) or cannot be reached; the request is
  then sent again after re-finding the coordinator, within the request's own deadline.
  Neither failure means the request was carried out: a refusal is answered before
  anything is done, and an unreachable broker did not take the request (a commit sent
  twice stores the same offsets twice). A request that timed out is not sent again here.
- A `HOME` coordinator that cannot be reached is kept, and the failure is the caller's, as
  for any other request to that broker (the home broker itself moves on). So is a lookup
  no broker answered; a lookup answered NotCoordinatorError (the group's offsets
  partition has no live leader yet) is asked again.
- A lookup refused for want of rights on the group (FindCoordinator needs describe) sends
  that one request to `HOME`, without remembering it: the broker checks the request's own
  rights first, so its refusal names what the request needed (read, delete...).
- Delays between attempts double from `backoff_ms` to `backoff_max_ms`, as Kafka's
  retry.backoff.ms: a coordinator that has just been elected may refuse for a moment.
"""

from __future__ import annotations

import threading
from typing import Protocol

from logstore.client.metadata import format_address
from logstore.clock import SYSTEM_CLOCK, Clock

#: the coordinator is the broker the lookup was asked of (a standalone broker)
HOME = "<home>"
#: error kinds after which the coordinator is found again and the request sent again
REFIND_KINDS = frozenset({"NotCoordinatorError", "BrokerUnavailableError"})
#: error kinds of a lookup that may succeed when asked again: the group's offsets partition
#: has no live leader yet, or the cluster metadata is away for a moment. A lookup no broker
#: answered is the caller's failure, as any request to an unreachable broker is.
LOOKUP_RETRY_KINDS = frozenset({"NotCoordinatorError", "ClusterMetadataUnavailableError"})
#: error kinds of a lookup after which the request goes to the broker asked instead
ASK_HOME_KINDS = frozenset({"AuthorizationError"})
DEFAULT_BACKOFF_MS = 100
DEFAULT_BACKOFF_MAX_MS = 1_000
_UNREACHABLE_KIND = "BrokerUnavailableError"


class CoordinatorAnswer(Protocol):
    """What `CoordinatorCache.found` reads: the fields of a BrokerDescription."""

    broker_id: int
    host: str
    port: int


class CoordinatorCache:
    """Each group's coordinator (`HOME` or "host:port"), as the last lookup said.

    Thread-safe (the consumer's heartbeat, commit and application threads share one).
    Invariants: a group maps to at most one coordinator; `forget` removes it only while it
    is the one that failed, so a failure reported late never drops a newer answer; `HOME`
    is never dropped for being unreachable. Times: ms of `clock.monotonic_ms()`.
    """

    def __init__(
        self,
        *,
        backoff_ms: float = DEFAULT_BACKOFF_MS,
        backoff_max_ms: float = DEFAULT_BACKOFF_MAX_MS,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.backoff_ms = max(backoff_ms, 1)
        self.backoff_max_ms = max(backoff_max_ms, self.backoff_ms)
        self.clock = clock
        self._lock = threading.Lock()
        self._coordinators: dict[str, str] = {}

    def get(self, group: str) -> str | None:
        """The group's coordinator, or None when it must be looked up."""
        with self._lock:
            return self._coordinators.get(group)

    def found(self, group: str, coordinator: CoordinatorAnswer | None) -> str:
        """Record a lookup's answer (None: the broker has no FindCoordinator RPC) and
        return where the group's requests go now."""
        address = (
            HOME
            if coordinator is None or not coordinator.host
            else format_address(coordinator.host, coordinator.port)
        )
        with self._lock:
            self._coordinators[group] = address
        return address

    def forget(self, group: str, address: str) -> None:
        """Look the group's coordinator up again, unless another lookup already replaced
        `address`."""
        with self._lock:
            if self._coordinators.get(group) == address:
                del self._coordinators[group]

    def failed(self, group: str, address: str, kind: str) -> bool:
        """A request for `group` sent to `address` failed with an error of `kind`: True
        when it is to be sent again (the coordinator is then forgotten, so it is found
        again first); False when the error is the caller's."""
        if kind not in REFIND_KINDS or (address == HOME and kind == _UNREACHABLE_KIND):
            return False
        self.forget(group, address)
        return True

    @staticmethod
    def lookup_failed(kind: str) -> bool:
        """Whether a FindCoordinator that failed with `kind` is worth asking again."""
        return kind in LOOKUP_RETRY_KINDS

    @staticmethod
    def ask_home_instead(kind: str) -> bool:
        """Whether a request whose lookup failed with `kind` goes to `HOME` instead."""
        return kind in ASK_HOME_KINDS

    def delay_ms(self, failures: int) -> float:
        """How long to wait before the attempt after `failures` (>= 1) failed ones."""
        return min(self.backoff_max_ms, self.backoff_ms * 2 ** max(0, failures - 1))

    def next_attempt_ms(self, failures: int, deadline_ms: float) -> float | None:
        """The wait before attempt `failures + 1`, or None when it would start at or after
        `deadline_ms` (then the last failure is the answer)."""
        delay = self.delay_ms(failures)
        if self.clock.monotonic_ms() + delay >= deadline_ms:
            return None
        return delay

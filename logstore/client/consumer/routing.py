"""The routing thread: which broker each assigned partition is fetched from.

Keeps every assigned partition's `PartitionState.leader` as the cluster metadata says and
one fetcher per leader broker. Learns the cluster at the first assignment (one Metadata
call to the bootstrap list), asks again when a fetcher hears that a broker no longer leads
a partition or cannot be reached, when a partition has no known leader, and every
metadata max age. With a standalone broker there is one leader for everything: one fetcher,
routed without waiting. Times are seconds unless a name ends in `_ms`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from logstore import errors
from logstore.client._connection import BrokerChannels
from logstore.client.consumer.fetcher import Fetcher, SharedFetchState, StreamFetcher
from logstore.client.consumer.options import Backoff, ConsumerOptions
from logstore.client.consumer.progress import ProgressMonitor
from logstore.types import TopicPartition

log = logging.getLogger("logstore.client.consumer")

#: makes the fetcher of one leader broker: (address, on_stale) -> a fetcher, not started
FetcherFactory = Callable[[str, Callable[[str | None], None]], Fetcher]


def fetcher_factory(
    shared: SharedFetchState,
    channels: BrokerChannels,
    options: ConsumerOptions,
    progress: ProgressMonitor,
    stream: bool,
) -> FetcherFactory:
    """Makes the fetcher of the partitions the broker at an address leads (not started): a
    `StreamFetcher` over its fetch stream when `stream`, else a unary `Fetcher`."""

    def make(address: str, on_stale: Callable[[str | None], None]) -> Fetcher:
        stub = channels.stub(address)
        if stream:
            channel = channels.channel(address)
            return StreamFetcher(shared, stub, options, address, progress, channel, on_stale)
        return Fetcher(shared, stub, options, address, progress, on_stale)

    return make


class FetchRouter:
    """Routes the assigned partitions to their leaders and keeps a fetcher per leader.

    Invariants: a fetcher exists for every leader some assigned partition is routed to
    (started by the routing thread, or at once when its broker already has one); a
    partition whose leader is not known has `leader` None and is not fetched. Fetchers of
    brokers the metadata no longer lists are retired. Lock order: the shared fetch lock,
    then `_cond`, then the channels' lock; the routing thread takes them one at a time.
    """

    def __init__(
        self,
        shared: SharedFetchState,
        channels: BrokerChannels,
        options: ConsumerOptions,
        progress: ProgressMonitor,
        make_fetcher: FetcherFactory,
    ) -> None:
        self._shared = shared
        self._channels = channels
        self._options = options
        self._progress = progress
        self._make_fetcher = make_fetcher
        self._timeout_s = options.request_timeout_ms / 1000
        self._backoff = Backoff(options.retry_backoff_ms / 1000)
        self._cond = threading.Condition()
        #: something to route or ask about (guarded by `_cond`)
        self._dirty = False
        self._closed = False
        #: the fetchers by broker address (guarded by `_cond`)
        self._fetchers: dict[str, Fetcher] = {}
        #: partitions were assigned at the last round (guarded by `_cond`)
        self._routing = False
        name = options.client_id or options.group_id or "standalone"
        self._thread = threading.Thread(
            target=self._run, name=f"logstore-consumer-routing[{name}]", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    # --- what other threads tell it -------------------------------------------------------

    def assignment_changed(self) -> None:
        """Route partitions without a leader to the leaders already known, at once (no
        I/O); the routing thread looks up the others. Caller holds the shared fetch lock."""
        states = self._shared.positions.states
        unrouted = [tp for tp, state in states.items() if state.leader is None]
        if not unrouted:
            return
        pending = False
        if self._channels.bootstrapped:
            leaders = self._channels.leaders(unrouted)
            with self._cond:
                for tp in unrouted:
                    leader = leaders[tp]
                    if leader is not None and leader in self._fetchers:
                        states[tp].leader = leader
                    else:
                        pending = True
        else:
            pending = True
        if pending:
            self.wake()

    def stale(self, topic: str | None) -> None:
        """A broker does not lead a partition of `topic` any more, or (None) a broker
        cannot be reached: ask for metadata and route again (any lock may be held)."""
        with self._channels.lock:
            self._channels.metadata.invalidate(topic)
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def stop(self, timeout_s: float) -> None:
        """Stop routing and every fetcher; wait up to `timeout_s` for each thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            fetchers = list(self._fetchers.values())
        with self._shared.lock:
            self._shared.closed = True
            self._shared.fetcher_wake.notify_all()
        deadline = time.monotonic() + timeout_s
        for thread in (self._thread, *fetchers):
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    # --- the routing thread ---------------------------------------------------------------

    def _run(self) -> None:
        while self._wait():
            try:
                self._round()
                self._backoff.reset()
            except errors.LogStoreError as exc:
                self._failed(exc)
            except Exception as exc:  # a fault here must not stop routing for good
                log.exception("consumer routing failed; retrying")
                self._failed(errors.InternalBrokerError(f"routing failed: {exc!r}"))

    def _wait(self) -> bool:
        """Wait until there is something to do, or a refresh is due; False once closed."""
        with self._cond:
            while not self._dirty and not self._closed:
                wait_s = self._refresh_in()
                if wait_s is not None and wait_s <= 0:
                    break
                self._cond.wait(wait_s)
            self._dirty = False
            return not self._closed

    def _refresh_in(self) -> float | None:
        """Seconds until the metadata should be asked again (None: only when told); caller
        holds `_cond`."""
        if not self._channels.bootstrapped or not self._routing:
            return None
        with self._channels.lock:
            due_ms = self._channels.metadata.next_refresh_ms()
            now_ms = self._channels.metadata.clock.monotonic_ms()
        return None if due_ms is None else max(0.0, (due_ms - now_ms) / 1000)

    def _failed(self, exc: errors.LogStoreError) -> None:
        if isinstance(exc, errors.BrokerUnavailableError):
            self._progress.broker_failed(str(exc))
        log.debug("routing fetches failed, retrying: %s", exc)
        delay = self._backoff.next()
        with self._cond:
            self._cond.wait_for(lambda: self._closed, delay)
            self._dirty = True

    def _round(self) -> None:
        """Learn the cluster if need be, ask again if need be, then route and start or
        retire fetchers."""
        with self._shared.lock:
            tps = list(self._shared.positions.states)
        with self._cond:
            self._routing = bool(tps)
        if not tps:
            return  # nothing assigned: no broker is asked before it is needed
        topics = sorted({topic for topic, _ in tps})
        channels = self._channels
        channels.bootstrap(self._timeout_s, topics)
        leaders = channels.leaders(tps)
        leaderless = [tp for tp, leader in leaders.items() if leader is None]
        with channels.lock:
            if leaderless:
                for topic in {topic for topic, _ in leaderless}:
                    channels.metadata.invalidate(topic)
            due = channels.metadata.refresh_due()
        if due:
            channels.refresh(topics, self._timeout_s)
            leaders = channels.leaders(tps)
            if any(leader is None for leader in leaders.values()):
                with channels.lock:
                    channels.metadata.refresh_failed()  # no leader yet: ask after a backoff
        self._route(leaders)

    def _route(self, leaders: dict[TopicPartition, str | None]) -> None:
        """Give the partitions their leaders, start the fetchers they need, retire those of
        brokers gone from the metadata."""
        with self._channels.lock:
            live = set(self._channels.metadata.addresses())
        wanted = {leader for leader in leaders.values() if leader is not None}
        with self._cond:
            if self._closed:
                return
            for address in wanted - self._fetchers.keys():
                fetcher = self._make_fetcher(address, self.stale)
                self._fetchers[address] = fetcher
                fetcher.start()
            retired = [
                self._fetchers.pop(address)
                for address in list(self._fetchers)
                if address not in live and address not in wanted
            ]
        self._apply(leaders)
        for fetcher in retired:
            log.info("broker %s left the cluster: no longer fetching from it", fetcher.address)
            fetcher.retire()

    def _apply(self, leaders: dict[TopicPartition, str | None]) -> None:
        """Set each still-assigned partition's leader; wake the fetchers if one moved.
        Partitions still without a leader are asked about again when the metadata's
        backoff allows (see `_refresh_in`)."""
        shared = self._shared
        with shared.lock:
            moved = False
            states = shared.positions.states
            for tp, leader in leaders.items():
                state = states.get(tp)
                if state is not None and state.leader != leader:
                    state.leader = leader
                    moved = True
            assigned_since = any(s.leader is None and tp not in leaders for tp, s in states.items())
            if moved:
                shared.fetcher_wake.notify_all()
        if assigned_since:
            self.wake()

"""The consumer's own requests (not fetches, not heartbeats): where each goes, and what
its failures and answers tell the rest of the consumer.

Topic descriptions go to the first broker that answered (`BrokerChannels.home`), and to
another live broker when it stops answering; offset lookups (ListOffsets) go to each
partition's leader; group requests (commits, committed offsets) go to the group's
coordinator (`CoordinatorRouter`: found with FindCoordinator, found again when it refuses
with NotCoordinatorError or stops answering; with a standalone broker, that broker).

Invariants: every failure leaves as a LogStore error (gRPC's are translated); every
answer tells the `ProgressMonitor` that the broker answered, and every broker that could
not be reached that it failed; a leader that cannot be reached, or that says it does not
lead a partition (or knows no such partition), makes the routing thread ask the metadata
again (`on_stale`). Keeps no state of its own: the application thread and the commit
thread both use it. Times are seconds unless a name ends in `_ms`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import grpc

from logstore import errors
from logstore.client._connection import (
    METADATA_STALE_KINDS,
    BrokerChannels,
    ClientSecurity,
    CoordinatorRouter,
    home_coordinators,
    partition_error,
    translate,
)
from logstore.client.consumer.options import MAX_RETRY_BACKOFF_S, ConsumerOptions
from logstore.client.consumer.progress import ProgressMonitor
from logstore.client.coordinators import CoordinatorCache
from logstore.client.metadata import DEFAULT_MAX_AGE_MS, ClusterMetadata
from logstore.types import OffsetAndTimestamp, TopicPartition
from logstore.v1 import logstore_pb2 as pb

#: ListOffsets answers: the offsets found, and the partitions that failed with their errors
ListedOffsets = tuple[
    dict[TopicPartition, OffsetAndTimestamp], dict[TopicPartition, errors.LogStoreError]
]


class Connections(NamedTuple):
    """A consumer's channels to the cluster; `home`, a stub whose calls go to the home
    broker (`BrokerChannels.home_stub`); and the router of group requests to the group's
    coordinator."""

    channels: BrokerChannels
    home: Any
    coordinators: CoordinatorRouter


def connect(address: str, security: ClientSecurity, options: ConsumerOptions) -> Connections:
    """The connections of a consumer of the cluster at `address` (the bootstrap list);
    nothing is sent until they are used."""
    backoff_max_ms = MAX_RETRY_BACKOFF_S * 1000
    # Leaders move rarely and fetch errors say when: Kafka's metadata age, not the
    # topic check's `metadata_max_age_ms`.
    metadata = ClusterMetadata(
        max_age_ms=DEFAULT_MAX_AGE_MS,
        backoff_ms=options.retry_backoff_ms,
        backoff_max_ms=backoff_max_ms,
    )
    channels = BrokerChannels(
        address, security, metadata, request_timeout_s=options.request_timeout_ms / 1000
    )
    cache = CoordinatorCache(backoff_ms=options.retry_backoff_ms, backoff_max_ms=backoff_max_ms)
    return Connections(channels, channels.home_stub(), home_coordinators(channels, cache))


class BrokerCalls:
    """Sends the consumer's requests to the home broker, a partition's leader or the
    group's coordinator (`address` is the bootstrap list, named in errors about home)."""

    def __init__(
        self,
        address: str,
        connections: Connections,
        options: ConsumerOptions,
        progress: ProgressMonitor,
        on_stale: Callable[[str | None], None],
    ) -> None:
        self._address = address
        self._home = connections.home
        self._channels = connections.channels
        self._coordinators = connections.coordinators
        self._options = options
        self._progress = progress
        self._on_stale = on_stale
        self._timeout_s = options.request_timeout_ms / 1000

    def call(self, method: str, request: Any, address: str | None = None) -> Any:
        """`method` at `address` (None: the home broker), failures as LogStore errors."""
        stub = self._home if address is None else self._channels.stub(address)
        try:
            response = getattr(stub, method)(request, timeout=self._timeout_s)
        except grpc.RpcError as exc:
            error = translate(exc, address or self._address)
            if isinstance(error, errors.BrokerUnavailableError):
                self._progress.broker_failed(str(error))
                if address is not None:
                    self._on_stale(None)  # a leader gone: where are its partitions?
            raise error from None
        self._progress.broker_answered()
        return response

    def group_call(self, method: str, request: Any) -> Any:
        """`method` at the group's coordinator, found again (within request_timeout_ms)
        while it refuses the group or cannot be reached; failures as LogStore errors."""
        group = self._options.require_group(method)
        try:
            response = self._coordinators.call(group, method, request, self._timeout_s)
        except errors.BrokerUnavailableError as exc:
            self._progress.broker_failed(str(exc))
            raise
        self._progress.broker_answered()
        return response

    def list_offsets_or_raise(
        self, specs: Mapping[TopicPartition, int]
    ) -> dict[TopicPartition, OffsetAndTimestamp]:
        """`list_offsets`, raising the first partition's error if any failed."""
        listed, failed = self.list_offsets(specs)
        for exc in failed.values():
            raise exc
        return listed

    def list_offsets(self, specs: Mapping[TopicPartition, int]) -> ListedOffsets:
        """ListOffsets for (tp -> -2 | -1 | timestamp ms): results and per-partition errors.

        Asked of each partition's leader; a partition whose leader is not known yet is
        asked of the home broker, which says whether it exists."""
        if not specs:
            return {}, {}
        by_leader: dict[str | None, dict[TopicPartition, int]] = {}
        for tp, leader in self._leaders(specs).items():
            by_leader.setdefault(leader, {})[tp] = specs[tp]
        listed: dict[TopicPartition, OffsetAndTimestamp] = {}
        failed: dict[TopicPartition, errors.LogStoreError] = {}
        for leader, asked in by_leader.items():
            request = pb.ListOffsetsRequest(
                topics=[
                    pb.ListOffsetsTopic(
                        topic=topic,
                        partitions=[
                            pb.ListOffsetsPartition(partition=p, timestamp=ts) for p, ts in ps
                        ],
                    )
                    for topic, ps in by_topic(asked.items()).items()
                ]
            )
            for topic in self.call("ListOffsets", request, leader).topics:
                for p in topic.partitions:
                    tp = (topic.topic, p.partition)
                    error = partition_error(p.error)
                    if error is None:
                        listed[tp] = OffsetAndTimestamp(p.offset, p.timestamp)
                        continue
                    failed[tp] = error
                    if type(error).__name__ in METADATA_STALE_KINDS:
                        self._on_stale(topic.topic)
        return listed, failed

    def _leaders(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, str | None]:
        """Each partition's leader address (None: not known), learning the cluster first if
        need be; a broker that cannot be reached is reported as `call` reports it."""
        tps = list(tps)
        if not self._channels.bootstrapped:
            try:
                self._channels.bootstrap(self._timeout_s, sorted({t for t, _ in tps}))
            except errors.BrokerUnavailableError as exc:
                self._progress.broker_failed(str(exc))
                raise
        return self._channels.leaders(tps)


def by_topic(items: Iterable[tuple[TopicPartition, Any]]) -> dict[str, list[tuple[int, Any]]]:
    """Group ((topic, partition), value) pairs by topic for the per-topic request layout."""
    grouped: dict[str, list[tuple[int, Any]]] = {}
    for (topic, partition), value in items:
        grouped.setdefault(topic, []).append((partition, value))
    return grouped

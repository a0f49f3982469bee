"""The consumers' read path, shared by the gRPC API and the Kafka listener: fetch, list
offsets (by time, earliest, latest) and the end offset of a leader epoch.

Both protocols describe a fetch as plain tuples (`FetchParams`) and get back each
partition's `PartitionRead`; they only translate requests in and answers out. Errors are
the core's exceptions (raised, or carried per partition).

Invariants:
- Records are the segment's bytes, whole batches from the one holding the fetch offset
  (a consumer skips the records before its offset), never decoded.
- A consumer reads below the high watermark only (cluster mode: the leader's, and only
  from the leader; standalone: the log end offset).
- A response carries at most `max_bytes`, except that its first batch is returned whole
  however large (KIP-74), so a consumer always makes progress.
- Long polling: the fetch is answered once `min_bytes` (at least 1) are there, an error
  occurred, `max_wait_ms` (capped at `MAX_WAIT_CAP_MS`) passed, the broker stops, the
  caller goes away (`keep_waiting`) or `interrupted()`; appends wake it at once.
- Leader epochs are the ones Metadata reports: the cluster's, or 0 on a standalone
  broker, so a client never sees one go backwards between APIs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from logstore.codec import record_batch as rb
from logstore.errors import (
    InvalidRequestError,
    LogStoreError,
    OffsetOutOfRangeError,
    UnknownLeaderEpochError,
)
from logstore.storage.leader_epoch_checkpoint import EpochEntry
from logstore.storage.log_manager import LogManager

if TYPE_CHECKING:
    from logstore.server.cluster.node import ClusterNode
    from logstore.server.cluster.replica_manager import Replica

#: the longest a consumer's fetch may wait for data (ms); a follower's too
#: (`logstore.server.cluster.service` keeps the same cap)
MAX_WAIT_CAP_MS = 30_000
#: the leader epoch of every partition of a standalone broker (what Metadata answers)
STANDALONE_LEADER_EPOCH = 0
#: a leader epoch the client does not know or does not want checked (Kafka's -1)
NO_LEADER_EPOCH = -1

#: (topic, partition)
Key = tuple[str, int]
#: the offset a fetch of (topic, partition, requested offset) reads from
Resolver = Callable[[str, int, int], int]


class FetchPartition(NamedTuple):
    """One partition a consumer fetches."""

    partition: int
    fetch_offset: int
    #: the most this partition may return (bytes); <= 0: only the request's limit applies
    max_bytes: int = 0
    #: bytes of whole batches from `fetch_offset` to skip (FetchStream's read-ahead)
    skip_bytes: int = 0
    #: the leader epoch the consumer knows; -1: not checked
    current_leader_epoch: int = NO_LEADER_EPOCH


class FetchParams(NamedTuple):
    """One fetch request."""

    topics: Sequence[tuple[str, Sequence[FetchPartition]]]
    max_wait_ms: int
    min_bytes: int
    #: the most the response may carry (bytes); <= 0: the broker's limit
    max_bytes: int


class PartitionRead(NamedTuple):
    """One partition's answer. With `error` set there are no records, and the offsets
    are the partition's when the error is OffsetOutOfRangeError, else -1."""

    partition: int
    error: LogStoreError | None
    high_watermark: int
    log_start_offset: int
    records: bytes


#: each topic's answers, in request order
ReadTopics = list[tuple[str, list[PartitionRead]]]


def check_leader(
    cluster: ClusterNode | None,
    topic: str,
    partition: int,
    current_leader_epoch: int = NO_LEADER_EPOCH,
) -> Replica | None:
    """The replica this broker leads (None standalone), checking the client's leader epoch
    as Kafka does: older than the leader's is fenced, newer is unknown. A standalone
    broker leads every partition at epoch 0. Raises the core's errors."""
    if cluster is not None:
        return cluster.replicas.leader(topic, partition, current_leader_epoch)
    if current_leader_epoch > STANDALONE_LEADER_EPOCH:
        raise UnknownLeaderEpochError(
            f"{topic}-{partition}: leader epoch {current_leader_epoch} is newer than "
            f"{STANDALONE_LEADER_EPOCH}, the epoch of every partition of a standalone broker"
        )
    return None


def read_all(
    manager: LogManager,
    cluster: ClusterNode | None,
    topics: Sequence[tuple[str, Sequence[FetchPartition]]],
    max_bytes: int,
    resolve: Resolver | None = None,
    ends: dict[Key, int] | None = None,
) -> tuple[ReadTopics, int, int]:
    """(the answers, their record bytes, how many partitions answered with an error).

    `resolve` maps a requested offset to the one to read from (FetchStream's
    continuation); `ends` (if given) gets the offset each answered partition ends at.
    """
    remaining = max_bytes
    total = 0
    errors = 0
    answers: ReadTopics = []
    for topic, partitions in topics:
        reads: list[PartitionRead] = []
        answers.append((topic, reads))
        for fp in partitions:
            limit = remaining if fp.max_bytes <= 0 else min(remaining, fp.max_bytes)
            try:
                read, offset = _read_partition(manager, cluster, topic, fp, limit, total, resolve)
            except LogStoreError as exc:
                reads.append(_error_read(manager, topic, fp.partition, exc))
                errors += 1
                continue
            if ends is not None:
                span = rb.batch_span(read.records)
                ends[(topic, fp.partition)] = offset if span is None else span[1]
            reads.append(read)
            total += len(read.records)
            remaining = max(0, remaining - len(read.records))
    return answers, total, errors


def _read_partition(
    manager: LogManager,
    cluster: ClusterNode | None,
    topic: str,
    fp: FetchPartition,
    limit: int,
    total: int,
    resolve: Resolver | None,
) -> tuple[PartitionRead, int]:
    """(one partition's answer, the offset it was read from); `total`: the bytes the
    response holds so far."""
    part = manager.partition(topic, fp.partition)
    offset = fp.fetch_offset
    if resolve is not None:
        offset = resolve(topic, fp.partition, offset)
    max_offset = None
    replica = check_leader(cluster, topic, fp.partition, fp.current_leader_epoch)
    if replica is not None:
        max_offset = part.high_watermark
    if fp.skip_bytes > 0:
        offset = part.offset_after_read(offset, fp.skip_bytes, max_offset=max_offset)
    # Over budget (limit 0): no bytes, but still the offsets and the range check.
    fetched = part.read(offset, limit, max_offset=max_offset)
    if total > 0 and len(fetched.data) > limit:
        # Only the response's first batch may exceed the budget (KIP-74).
        fetched = part.read(offset, 0, max_offset=max_offset)
    read = PartitionRead(
        fp.partition, None, fetched.high_watermark, fetched.log_start_offset, fetched.data
    )
    return read, offset


def _error_read(
    manager: LogManager, topic: str, partition: int, exc: LogStoreError
) -> PartitionRead:
    high_watermark = log_start_offset = -1
    if isinstance(exc, OffsetOutOfRangeError):
        # What the consumer needs to reset its position (Kafka's clients ask ListOffsets).
        try:
            part = manager.partition(topic, partition)
            high_watermark, log_start_offset = part.high_watermark, part.log_start_offset
        except LogStoreError:
            pass  # deleted meanwhile: the error stands, without offsets
    return PartitionRead(partition, exc, high_watermark, log_start_offset, b"")


def fetch(
    manager: LogManager,
    cluster: ClusterNode | None,
    params: FetchParams,
    max_fetch_bytes: int,
    keep_waiting: Callable[[], bool],
    resolve: Resolver | None = None,
    ends: dict[Key, int] | None = None,
    interrupted: Callable[[], bool] | None = None,
) -> ReadTopics:
    """Answer one fetch, long-polling as it asks (see the module docstring).

    `max_fetch_bytes`: the broker's limit on a response (bytes). `keep_waiting()` false
    (the broker is stopping, the caller left) or `interrupted()` true ends the wait early
    with what there is. See `read_all` for `resolve` and `ends`.
    """
    max_bytes = max_fetch_bytes
    if params.max_bytes > 0:
        max_bytes = min(max_bytes, params.max_bytes)
    wait_ms = min(max(params.max_wait_ms, 0), MAX_WAIT_CAP_MS)
    deadline = time.monotonic() + wait_ms / 1000
    # With no partitions nothing can arrive: waiting would only hold a thread.
    nothing_asked = not any(partitions for _, partitions in params.topics)
    while True:
        version = manager.appends.version
        if ends is not None:
            ends.clear()
        answers, total, errors = read_all(manager, cluster, params.topics, max_bytes, resolve, ends)
        remaining_s = deadline - time.monotonic()
        # As Kafka: an error (e.g. offset out of range) is news the client wants now.
        done = total >= max(params.min_bytes, 1) or remaining_s <= 0 or errors > 0
        if done or nothing_asked or not keep_waiting():
            return answers
        if interrupted is not None and interrupted():
            return answers
        manager.appends.wait_for_change(version, remaining_s, interrupted)


# --- offsets -----------------------------------------------------------------------------

#: ListOffsets timestamps that ask for the log start and the high watermark (Kafka's)
EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1


class ListedOffset(NamedTuple):
    """ListOffsets' answer for one partition: -1s when no record is that new."""

    offset: int
    #: the found record's timestamp (ms); -1 for the earliest and latest offsets
    timestamp: int
    #: the leader epoch of the batch holding `offset` (latest: the current leader's); -1
    #: when the log has no epoch for it (a standalone log's batches carry none)
    leader_epoch: int


def list_offset(
    manager: LogManager,
    cluster: ClusterNode | None,
    topic: str,
    partition: int,
    timestamp: int,
    current_leader_epoch: int = NO_LEADER_EPOCH,
) -> ListedOffset:
    """The log start offset (-2), the high watermark (-1: the offset a consumer at the end
    reads next), or the first offset whose record timestamp is >= `timestamp` (ms) and
    below the high watermark. Only the leader answers: it knows the high watermark."""
    part = manager.partition(topic, partition)
    replica = check_leader(cluster, topic, partition, current_leader_epoch)
    if timestamp == EARLIEST_TIMESTAMP:
        offset = part.log_start_offset
        return ListedOffset(offset, -1, epoch_at(part.leader_epoch_cache.entries(), offset))
    if timestamp == LATEST_TIMESTAMP:
        epoch = STANDALONE_LEADER_EPOCH if replica is None else replica.state.leader_epoch
        return ListedOffset(part.high_watermark, -1, epoch)
    if timestamp < 0:
        raise InvalidRequestError(
            f"timestamp {timestamp}: use -2 (earliest), -1 (latest) or ms >= 0"
        )
    found = part.find_offset_by_timestamp(timestamp)
    if found is None or found[0] >= part.high_watermark:
        return ListedOffset(-1, -1, NO_LEADER_EPOCH)  # not yet readable: as if none were
    offset, record_timestamp = found
    return ListedOffset(
        offset, record_timestamp, epoch_at(part.leader_epoch_cache.entries(), offset)
    )


def epoch_at(entries: Sequence[EpochEntry], offset: int) -> int:
    """The leader epoch whose range holds `offset` (entries oldest first), or -1."""
    epoch = NO_LEADER_EPOCH
    for entry in entries:
        if entry.start_offset > offset:
            break
        epoch = entry.epoch
    return epoch


def end_offset_for_epoch(
    manager: LogManager,
    cluster: ClusterNode | None,
    topic: str,
    partition: int,
    leader_epoch: int,
    current_leader_epoch: int = NO_LEADER_EPOCH,
) -> tuple[int, int]:
    """A consumer's OffsetForLeaderEpoch (KIP-320): (the largest epoch <= `leader_epoch`,
    the offset where it ends), or (-1, -1) below the first epoch. A consumer whose
    position is past that offset lost records to a truncation. Standalone, every
    partition is at epoch 0 for ever: it ends at the log end offset."""
    part = manager.partition(topic, partition)
    replica = check_leader(cluster, topic, partition, current_leader_epoch)
    if replica is not None:
        return replica.log.end_offset_for_leader_epoch(leader_epoch)
    if leader_epoch < STANDALONE_LEADER_EPOCH:
        return NO_LEADER_EPOCH, -1
    return STANDALONE_LEADER_EPOCH, part.log_end_offset

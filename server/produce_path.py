"""The produce path, shared by the gRPC API and the Kafka listener: validate, append, ack.

Both protocols hand over (topic, partition, record bytes) triples and get back one
`PartitionAppend` per triple; they only translate requests in and answers out.

Invariants:
- Every partition's batches are validated (framing, CRC, magic, codec, max.message.bytes,
  internal topic, leadership in cluster mode) before any of them is appended. `strict`:
  the first bad partition fails the whole request (raised), so nothing is written;
  otherwise a bad partition gets its own error and the others are appended, as Kafka does.
- Record bytes are never decoded or copied here: the storage patches offsets in place.
- acks=all (-1) is answered only once the batches are durable: fsynced up to their end
  (standalone; concurrent producers share one fsync) or held by every in-sync replica
  (cluster, `ReplicaManager.wait_for_replication`). A batch that does not get there is
  answered with its partition's error and base offset -1.
- acks=all in cluster mode is refused before the append when the ISR is below
  min.insync.replicas (NotEnoughReplicasError); acks 0 and 1 are answered once appended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from logstore.codec import record_batch as rb
from logstore.codec.record_batch import BatchHeader
from logstore.errors import InvalidRequestError, InvalidTopicError, LogStoreError
from logstore.storage.log_config import is_internal_topic
from logstore.storage.log_manager import LogManager
from logstore.storage.partition_log import AppendResult, PartitionLog

if TYPE_CHECKING:
    from logstore.server.cluster.node import ClusterNode
    from logstore.server.cluster.replica_manager import Replica

ACKS_ALL = -1
ACKS_VALUES = (0, 1, ACKS_ALL)


class PartitionBatches(NamedTuple):
    """One partition's part of a produce request: whole record batches, as received
    (a memoryview of the request where the protocol allows, so nothing is copied)."""

    topic: str
    partition: int
    records: bytes | memoryview


@dataclass(slots=True)
class PartitionAppend:
    """What became of one partition's batches. Offsets are -1 when `error` is set;
    `log_append_time` (ms) is -1 unless the topic stamps LogAppendTime; `duplicate`: an
    idempotent producer's retry, answered with the offsets it got the first time."""

    topic: str
    partition: int
    base_offset: int = -1
    log_append_time: int = -1
    log_start_offset: int = -1
    duplicate: bool = False
    error: LogStoreError | OSError | None = None

    def fail(self, exc: LogStoreError | OSError) -> None:
        self.error = exc
        self.base_offset = -1


class _Validated(NamedTuple):
    """Batches that passed every check, ready to append."""

    result: PartitionAppend
    log: PartitionLog
    records: bytes | memoryview
    headers: list[BatchHeader]
    #: the replica this broker leads (cluster mode), else None
    replica: Replica | None


class _AwaitingAck(NamedTuple):
    """An acks=all batch appended but not yet durable."""

    result: PartitionAppend
    log: PartitionLog
    #: the offset after the batch
    end_offset: int
    replica: Replica | None
    #: the leader epoch it was appended at (cluster mode), else -1
    leader_epoch: int


@dataclass
class AppendedRequest:
    """A produce request appended: one result per partition (those refused by validation
    first, then the appended ones, each group in request order), and the acks=all
    batches `await_acks` must still see durable."""

    results: list[PartitionAppend]
    awaiting: list[_AwaitingAck] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.error is not None for r in self.results)


def check_acks(acks: int) -> None:
    """Refuse an acks value other than 0, 1 or -1 (all), before anything is validated."""
    if acks not in ACKS_VALUES:
        raise InvalidRequestError(f"acks must be 0, 1 or -1 (all), got {acks}")


def validate_partition(
    manager: LogManager, cluster: ClusterNode | None, batches: PartitionBatches
) -> _Validated:
    """Check one partition's batches; raise the core's error for the first problem."""
    topic, partition, records = batches
    if is_internal_topic(topic):
        # Only the broker writes there (Kafka answers clients INVALID_TOPIC_EXCEPTION).
        raise InvalidTopicError(f"cannot produce to internal topic {topic!r}")
    replica = None
    if cluster is not None:
        replica = cluster.replicas.leader(topic, partition)
    part = manager.partition(topic, partition)
    try:
        headers = rb.split_batches(records, part.config.max_message_bytes)
    except LogStoreError as exc:
        raise type(exc)(f"{part.name}: {exc}") from exc
    return _Validated(PartitionAppend(topic, partition), part, records, headers, replica)


def validate(
    manager: LogManager,
    cluster: ClusterNode | None,
    partitions: list[PartitionBatches],
    strict: bool,
) -> tuple[list[_Validated], list[PartitionAppend]]:
    """(batches ready to append, results of the partitions refused). `strict`: raise the
    first refusal instead, so that nothing of the request is appended."""
    ready: list[_Validated] = []
    refused: list[PartitionAppend] = []
    for batches in partitions:
        try:
            ready.append(validate_partition(manager, cluster, batches))
        except LogStoreError as exc:
            if strict:
                raise
            refused.append(PartitionAppend(batches.topic, batches.partition, error=exc))
    return ready, refused


def append(
    manager: LogManager,
    cluster: ClusterNode | None,
    acks: int,
    partitions: list[PartitionBatches],
    strict: bool,
) -> AppendedRequest:
    """Validate, then append each partition's batches (see the module docstring); the
    acks=all ones are returned as awaiting durability."""
    check_acks(acks)
    ready, results = validate(manager, cluster, partitions, strict)
    acks_all = acks == ACKS_ALL
    awaiting: list[_AwaitingAck] = []
    for validated in ready:
        result, part = validated.result, validated.log
        try:
            appended, epoch = _append_one(cluster, validated, acks_all)
        except (LogStoreError, OSError) as exc:
            result.fail(exc)
        else:
            result.base_offset = appended.base_offset
            result.log_append_time = appended.log_append_time
            result.duplicate = appended.duplicate
            end = appended.last_offset + 1
            awaiting.append(_AwaitingAck(result, part, end, validated.replica, epoch))
        result.log_start_offset = part.log_start_offset
        results.append(result)
    return AppendedRequest(results, awaiting if acks_all else [])


def _append_one(
    cluster: ClusterNode | None, validated: _Validated, acks_all: bool
) -> tuple[AppendResult, int]:
    """(the storage's append result, the leader epoch appended at or -1)."""
    replica = validated.replica
    if replica is None:
        return validated.log.append(validated.records, validated_headers=validated.headers), -1
    assert cluster is not None
    if acks_all:
        cluster.replicas.check_min_isr(replica)
    return cluster.replicas.append(replica, validated.records, validated.headers)


def await_acks(cluster: ClusterNode | None, appended: AppendedRequest) -> None:
    """Block until each acks=all batch is durable: fsynced (standalone) or held by every
    in-sync replica (cluster); a batch that is not gets its partition's error."""
    for result, part, end, replica, epoch in appended.awaiting:
        if replica is None:
            part.flush_up_to(end)
            continue
        assert cluster is not None
        try:
            # The flush policy still applies to each copy: the ISR holds the batch in
            # every replica's log, fsynced as its topic's flush settings say.
            cluster.replicas.wait_for_replication(replica, end, epoch)
        except LogStoreError as exc:
            result.fail(exc)
    appended.awaiting = []


def fail_awaiting(appended: AppendedRequest, exc: LogStoreError | OSError) -> None:
    """`await_acks` raised (a failed fsync): no acks=all batch it had not confirmed is
    known durable, so each gets `exc` (an idempotent producer's retry is stored once)."""
    for waiting in appended.awaiting:
        if waiting.result.error is None:
            waiting.result.fail(exc)
    appended.awaiting = []


def produce(
    manager: LogManager,
    cluster: ClusterNode | None,
    acks: int,
    partitions: list[PartitionBatches],
    strict: bool,
) -> list[PartitionAppend]:
    """Append and, for acks=all, wait until durable: the per-partition results."""
    appended = append(manager, cluster, acks, partitions, strict)
    await_acks(cluster, appended)
    return appended.results

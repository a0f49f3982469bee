"""Exceptions raised by LogStore, in the core and in the clients.

Each exception carries a message that says what was wrong and what is allowed, so a
user reading it (or the gRPC status built from it) knows how to fix the call.
The server maps these classes to gRPC status codes; the core never imports gRPC.
"""

from __future__ import annotations


class LogStoreError(Exception):
    """Base class for every error LogStore raises on purpose."""


class InvalidRequestError(LogStoreError):
    """A request is malformed or names an impossible value."""


class CorruptRecordError(InvalidRequestError):
    """A record batch fails validation: bad length, magic, CRC, count or encoding."""


class UnsupportedCompressionError(InvalidRequestError):
    """A record batch uses a compression codec LogStore does not support."""


class InvalidRecordError(InvalidRequestError):
    """A batch breaks a rule of the log it is written to: a record without a key on a
    compacted topic, or several batches in one request from an idempotent producer
    (Kafka's INVALID_RECORD)."""


class RecordTooLargeError(InvalidRequestError):
    """A record batch is larger than the topic's `max.message.bytes`."""


class InvalidTopicError(InvalidRequestError):
    """A topic name breaks Kafka's naming rule."""


class InvalidConfigError(InvalidRequestError):
    """A topic configuration key is unknown or its value is out of range."""


class InvalidPartitionsError(InvalidRequestError):
    """A partition count is out of range or would shrink a topic."""


class UnknownTopicOrPartitionError(LogStoreError):
    """The named topic or partition does not exist."""


class TopicExistsError(LogStoreError):
    """A topic with that name already exists."""


class OffsetOutOfRangeError(LogStoreError):
    """An offset lies outside `[log_start_offset, log_end_offset]` of a partition."""

    def __init__(self, partition: str, offset: int, log_start_offset: int, log_end_offset: int):
        self.partition = partition
        self.offset = offset
        self.log_start_offset = log_start_offset
        self.log_end_offset = log_end_offset
        super().__init__(
            f"offset {offset} out of range for {partition}: "
            f"valid {log_start_offset}..{log_end_offset}"
        )


class OutOfOrderSequenceError(LogStoreError):
    """An idempotent producer's batch skips or repeats sequence numbers out of order."""


class InvalidProducerEpochError(LogStoreError):
    """A batch comes from an older epoch of a producer id than one already seen (fenced)."""


class LogClosedError(LogStoreError):
    """The log (or log manager) has been closed and takes no more requests."""


class StorageError(LogStoreError):
    """The disk failed under a write or read (I/O error, disk full)."""


# --- raised by the clients ------------------------------------------------------------------


class BrokerUnavailableError(LogStoreError):
    """The broker cannot be reached (down, restarting, or the address is wrong)."""


class RequestTimedOutError(LogStoreError):
    """A request (or a send, within delivery_timeout_ms) did not complete in time."""


class BufferExhaustedError(LogStoreError):
    """The producer's buffer_memory stayed full for max_block_ms."""


class NoOffsetForPartitionError(LogStoreError):
    """No committed offset and auto_offset_reset='error' (or the offset left the log)."""


class CommitFailedError(LogStoreError):
    """An offset commit was rejected (e.g. by the group coordinator after a rebalance)."""


class ClientClosedError(LogStoreError):
    """The client was closed and cannot be used any more."""


class InternalBrokerError(LogStoreError):
    """The broker failed in a way it did not expect; its log has the details."""


# --- consumer groups ------------------------------------------------------------------------


class UnknownMemberIdError(LogStoreError):
    """The group has no member with that id (it left or its session expired): rejoin."""


class FencedMemberEpochError(LogStoreError):
    """The member's epoch is not the one the coordinator gave it (a zombie): rejoin."""


class GroupNotEmptyError(LogStoreError):
    """The operation needs a group with no active members."""


class UnknownGroupError(LogStoreError):
    """No such consumer group (no members and no committed offsets)."""


# --- security -------------------------------------------------------------------------------


class AuthenticationError(LogStoreError):
    """The broker did not accept the client's credentials (no token, or an unknown one)."""


class AuthorizationError(LogStoreError):
    """The principal may not perform the operation on the resource (see the ACLs)."""


class InvalidAclError(LogStoreError):
    """An ACL binding or filter names an unknown resource type, operation or principal."""


# --- cluster --------------------------------------------------------------------------------


class NotLeaderOrFollowerError(LogStoreError):
    """The broker asked is not the partition's leader (or no longer holds a replica of it):
    refresh metadata and retry at the leader."""


class NotEnoughReplicasError(LogStoreError):
    """Fewer in-sync replicas than the topic's min.insync.replicas: an acks=all produce is
    refused before anything is appended. Retriable: the ISR grows back as followers catch
    up."""


class NotEnoughReplicasAfterAppendError(LogStoreError):
    """An acks=all batch was appended by the leader, but the in-sync replicas did not all
    confirm it in time. The producer may retry (idempotence keeps it from duplicating)."""


class FencedLeaderEpochError(LogStoreError):
    """A request named a leader epoch older than the partition's current one (the sender's
    view of the cluster is stale)."""


class UnknownLeaderEpochError(LogStoreError):
    """A request named a leader epoch newer than the broker knows (the broker has not yet
    seen the leadership change)."""


class BrokerNotRegisteredError(LogStoreError):
    """A broker-to-broker request came from a broker that is not registered in the cluster
    with the broker epoch it sent (it restarted, or its etcd lease lapsed)."""


class ClusterMetadataUnavailableError(LogStoreError):
    """The cluster's metadata store (etcd) cannot be reached, so the change asked for
    (e.g. creating a topic) cannot be made now. Retriable."""


class InvalidReplicationFactorError(InvalidRequestError):
    """The replication factor asked for is below 1 or above the number of live brokers."""


class NotCoordinatorError(LogStoreError):
    """The broker asked does not coordinate the group (it does not lead the group's
    partition of __consumer_offsets): find the coordinator again and retry there."""

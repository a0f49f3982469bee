"""LogStore's exceptions as Kafka error codes (the codes are kafka-python's `kafka.errors`).

Most specific class first: the first `isinstance` match wins. Anything unlisted is
UNKNOWN_SERVER_ERROR (-1), except a full disk (KAFKA_STORAGE_ERROR) and other OS errors.
"""

from __future__ import annotations

from typing import Final

from kafka import errors as kafka_errors

from logstore import errors

NONE: Final = 0
UNKNOWN_SERVER_ERROR: Final = kafka_errors.UnknownError.errno

_CODE_BY_CLASS: Final[list[tuple[type[BaseException], int]]] = [
    (errors.RecordTooLargeError, kafka_errors.MessageSizeTooLargeError.errno),
    (errors.CorruptRecordError, kafka_errors.CorruptRecordError.errno),
    (errors.InvalidRecordError, kafka_errors.InvalidRecordError.errno),
    (errors.UnsupportedCompressionError, kafka_errors.UnsupportedCompressionTypeError.errno),
    (errors.InvalidTopicError, kafka_errors.InvalidTopicError.errno),
    (errors.InvalidConfigError, kafka_errors.InvalidConfigurationError.errno),
    (errors.InvalidPartitionsError, kafka_errors.InvalidPartitionsError.errno),
    (errors.InvalidReplicationFactorError, kafka_errors.InvalidReplicationFactorError.errno),
    (errors.InvalidRequestError, kafka_errors.InvalidRequestError.errno),
    (errors.UnknownTopicOrPartitionError, kafka_errors.UnknownTopicOrPartitionError.errno),
    (errors.TopicExistsError, kafka_errors.TopicAlreadyExistsError.errno),
    (errors.OffsetOutOfRangeError, kafka_errors.OffsetOutOfRangeError.errno),
    (errors.OutOfOrderSequenceError, kafka_errors.OutOfOrderSequenceNumberError.errno),
    (errors.InvalidProducerEpochError, kafka_errors.InvalidProducerEpochError.errno),
    (errors.UnknownMemberIdError, kafka_errors.UnknownMemberIdError.errno),
    (errors.UnknownGroupError, kafka_errors.GroupIdNotFoundError.errno),
    (errors.FencedMemberEpochError, kafka_errors.IllegalGenerationError.errno),
    (errors.GroupNotEmptyError, kafka_errors.NonEmptyGroupError.errno),
    (errors.CommitFailedError, kafka_errors.RebalanceInProgressError.errno),
    (errors.AuthenticationError, kafka_errors.SaslAuthenticationFailedError.errno),
    (errors.AuthorizationError, kafka_errors.TopicAuthorizationFailedError.errno),
    (errors.LogClosedError, kafka_errors.NotLeaderForPartitionError.errno),
    (errors.StorageError, kafka_errors.KafkaStorageError.errno),
    (errors.NotLeaderOrFollowerError, kafka_errors.NotLeaderForPartitionError.errno),
    (errors.NotEnoughReplicasError, kafka_errors.NotEnoughReplicasError.errno),
    (
        errors.NotEnoughReplicasAfterAppendError,
        kafka_errors.NotEnoughReplicasAfterAppendError.errno,
    ),
    (errors.FencedLeaderEpochError, kafka_errors.FencedLeaderEpochError.errno),
    (errors.UnknownLeaderEpochError, kafka_errors.UnknownLeaderEpochError.errno),
    (errors.ClusterMetadataUnavailableError, kafka_errors.LeaderNotAvailableError.errno),
    (errors.NotCoordinatorError, kafka_errors.NotCoordinatorError.errno),
    (errors.RequestTimedOutError, kafka_errors.RequestTimedOutError.errno),
]


def error_code(exc: BaseException) -> int:
    """The Kafka error code for an exception raised while serving a request."""
    for cls, code in _CODE_BY_CLASS:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, OSError):  # a failed read or write, a full disk included
        return kafka_errors.KafkaStorageError.errno
    return UNKNOWN_SERVER_ERROR


def error_message(exc: BaseException) -> str:
    """The message sent beside the code, where the API has an error message field."""
    return str(exc) or type(exc).__name__

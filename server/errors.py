"""Mapping from LogStore's core exceptions to gRPC status codes."""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from logstore import errors
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)

#: trailing-metadata key naming the LogStore error class of a failed RPC
ERROR_KIND_KEY = "logstore-error-kind"

# Most specific classes first: the first isinstance match wins.
_STATUS_BY_CLASS: list[tuple[type[Exception], grpc.StatusCode]] = [
    (errors.RecordTooLargeError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.UnknownTopicOrPartitionError, grpc.StatusCode.NOT_FOUND),
    (errors.TopicExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.OffsetOutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (errors.OutOfOrderSequenceError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidProducerEpochError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnknownMemberIdError, grpc.StatusCode.NOT_FOUND),
    (errors.UnknownGroupError, grpc.StatusCode.NOT_FOUND),
    (errors.FencedMemberEpochError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.GroupNotEmptyError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.CommitFailedError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.AuthorizationError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.InvalidAclError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.LogClosedError, grpc.StatusCode.UNAVAILABLE),
    (errors.StorageError, grpc.StatusCode.UNAVAILABLE),
    (errors.NotLeaderOrFollowerError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotEnoughReplicasError, grpc.StatusCode.UNAVAILABLE),
    (errors.NotEnoughReplicasAfterAppendError, grpc.StatusCode.UNAVAILABLE),
    (errors.FencedLeaderEpochError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.UnknownLeaderEpochError, grpc.StatusCode.UNAVAILABLE),
    (errors.BrokerNotRegisteredError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ClusterMetadataUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (errors.NotCoordinatorError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, message, kind) for an exception raised while serving a request."""
    if _disk_full(exc):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"disk full: {exc}", "StorageError"
    for cls, code in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return code, str(exc), type(exc).__name__
    if isinstance(exc, errors.LogStoreError):
        return grpc.StatusCode.INTERNAL, str(exc), type(exc).__name__
    if isinstance(exc, OSError):
        return grpc.StatusCode.UNAVAILABLE, f"storage error: {exc}", "StorageError"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}", "Internal"


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from (e.g. a StorageError wrapping the
    OSError of a snapshot write), is a full disk or quota."""
    seen: BaseException | None = exc
    for _ in range(8):  # a cause chain is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__
    return False


def error_message(exc: BaseException) -> pb.Error:
    """A per-partition `Error` for an exception."""
    code, message, kind = status_for(exc)
    return pb.Error(code=code.value[0], message=message, kind=kind)


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """End the RPC with the status that fits `exc` (raises, as grpc's abort does)."""
    code, message, kind = status_for(exc)
    context.set_trailing_metadata(((ERROR_KIND_KEY, kind),))
    context.abort(code, message)


F = TypeVar("F", bound=Callable[..., Any])


def handles_errors(method: F) -> F:
    """Turn core exceptions into gRPC statuses; log unexpected ones with a traceback."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except (errors.LogStoreError, OSError) as exc:
            abort(context, exc)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or type(exc).__name__ == "_AbortError":
                raise
            log.exception("%s failed", method.__name__)
            abort(context, exc)
        return None  # unreachable: abort raises

    return wrapper  # type: ignore[return-value]

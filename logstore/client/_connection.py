"""Channels to the broker and the translation of gRPC failures into `logstore.errors`."""

from __future__ import annotations

import os
import re
from typing import Any

import grpc

from logstore import errors
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc

BOOTSTRAP_ENV = "LOGSTORE_BOOTSTRAP"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
ERROR_KIND_KEY = "logstore-error-kind"
#: the largest message a client sends or accepts (a produce request or fetch response)
MAX_MESSAGE_BYTES = 128 * 1024 * 1024

_KIND_TO_CLASS: dict[str, type[errors.LogStoreError]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.LogStoreError)
}
_CODE_TO_CLASS: dict[grpc.StatusCode, type[errors.LogStoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: errors.UnknownTopicOrPartitionError,
    grpc.StatusCode.ALREADY_EXISTS: errors.TopicExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.InvalidRequestError,
    grpc.StatusCode.UNAVAILABLE: errors.BrokerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.RequestTimedOutError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.StorageError,
    grpc.StatusCode.CANCELLED: errors.BrokerUnavailableError,
}
#: kinds and codes a client may retry (the request may succeed later unchanged)
RETRIABLE_KINDS = frozenset({"BrokerUnavailableError", "LogClosedError", "StorageError"})
RETRIABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


def resolve_bootstrap(bootstrap: str | None) -> str:
    """The broker address: the argument, else $LOGSTORE_BOOTSTRAP, else 127.0.0.1:9092."""
    return bootstrap or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def open_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Reconnect quickly after a broker restart instead of backing off for minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ],
    )


def make_stub(channel: grpc.Channel) -> pb_grpc.LogStoreStub:
    return pb_grpc.LogStoreStub(channel)


def error_from_kind(kind: str, message: str, code: int | None = None) -> errors.LogStoreError:
    """The LogStore exception for an error the broker described by kind (and code)."""
    cls = _KIND_TO_CLASS.get(kind)
    if cls is None:
        cls = _CODE_TO_CLASS.get(grpc_code(code), errors.InternalBrokerError) if code else None
    cls = cls or errors.InternalBrokerError
    # Some classes take structured constructor arguments; keep the broker's exact message.
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    if isinstance(exc, errors.OffsetOutOfRangeError):
        _fill_offset_range(exc, message)
    return exc


_OUT_OF_RANGE = re.compile(r"offset (-?\d+) out of range for (\S+): valid (-?\d+)\.\.(-?\d+)")


def _fill_offset_range(exc: errors.OffsetOutOfRangeError, message: str) -> None:
    """Give a client-side OffsetOutOfRangeError the attributes the broker's message states."""
    match = _OUT_OF_RANGE.search(message)
    exc.partition = match.group(2) if match else ""
    exc.offset, exc.log_start_offset, exc.log_end_offset = (
        (int(match.group(1)), int(match.group(3)), int(match.group(4))) if match else (-1, -1, -1)
    )


def grpc_code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


def translate(exc: grpc.RpcError, address: str = "") -> errors.LogStoreError:
    """Turn a failed RPC into the matching `logstore.errors` exception."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    kind = ""
    trailing: Any = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == ERROR_KIND_KEY:
            kind = value
    if code == grpc.StatusCode.UNAVAILABLE and not kind:
        where = f" at {address}" if address else ""
        return errors.BrokerUnavailableError(f"cannot reach broker{where}: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.RequestTimedOutError(f"request timed out: {details}")
    return error_from_kind(kind, details or code.name, code.value[0])


def partition_error(error: pb.Error) -> errors.LogStoreError | None:
    """The exception for a per-partition `Error`, or None when it is OK."""
    if error.code == 0:
        return None
    return error_from_kind(error.kind, error.message, error.code)


def is_retriable(exc: BaseException) -> bool:
    return type(exc).__name__ in RETRIABLE_KINDS or isinstance(
        exc, errors.BrokerUnavailableError | errors.RequestTimedOutError
    )

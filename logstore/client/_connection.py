"""Channels to the broker and the translation of gRPC failures into `logstore.errors`."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import grpc

from logstore import errors
from logstore.allocator import keep_freed_memory
from logstore.v1 import logstore_pb2 as pb
from logstore.v1 import logstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

BOOTSTRAP_ENV = "LOGSTORE_BOOTSTRAP"
TLS_CA_ENV = "LOGSTORE_TLS_CA"
TLS_CERT_ENV = "LOGSTORE_TLS_CERT"
TLS_KEY_ENV = "LOGSTORE_TLS_KEY"
TOKEN_ENV = "LOGSTORE_TOKEN"
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
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: errors.AuthorizationError,
}
#: kinds and codes a client may retry (the request may succeed later unchanged)
RETRIABLE_KINDS = frozenset(
    {
        "BrokerUnavailableError",
        "LogClosedError",
        "StorageError",
        "NotLeaderOrFollowerError",
        "NotEnoughReplicasError",
        "NotEnoughReplicasAfterAppendError",
        "FencedLeaderEpochError",
        "UnknownLeaderEpochError",
        "ClusterMetadataUnavailableError",
    }
)
#: kinds after which a client refreshes its metadata before retrying: leadership moved
METADATA_STALE_KINDS = frozenset(
    {"NotLeaderOrFollowerError", "FencedLeaderEpochError", "UnknownLeaderEpochError"}
)
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


class SecurityOptions(TypedDict, total=False):
    """The security keyword arguments of `Admin`, `Producer` and `Consumer`.

    - `ssl_cafile`: the CA bundle (PEM) the broker's certificate must chain to; setting
      it turns TLS on.
    - `ssl_certfile` / `ssl_keyfile`: client certificate and key (PEM) for mutual TLS.
    - `token`: bearer token sent with every request.

    Each falls back to its environment variable (LOGSTORE_TLS_CA, LOGSTORE_TLS_CERT,
    LOGSTORE_TLS_KEY, LOGSTORE_TOKEN).
    """

    ssl_cafile: str | None
    ssl_certfile: str | None
    ssl_keyfile: str | None
    token: str | None


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves who it is and checks the broker (paths to PEM files).

    TLS is used when `ssl_cafile` is set: the broker's certificate must chain to it.
    `ssl_certfile` and `ssl_keyfile` (both or neither, only with TLS) present a client
    certificate for mutual TLS. `token` is sent as ``authorization: Bearer <token>`` on
    every call. `repr` never shows the token.
    """

    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    token: str | None = field(default=None, repr=False)

    @classmethod
    def resolve(
        cls,
        ssl_cafile: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        token: str | None = None,
    ) -> ClientSecurity:
        """The given values, each falling back to its environment variable
        (LOGSTORE_TLS_CA, LOGSTORE_TLS_CERT, LOGSTORE_TLS_KEY, LOGSTORE_TOKEN)."""
        env = os.environ
        security = cls(
            ssl_cafile or env.get(TLS_CA_ENV) or None,
            ssl_certfile or env.get(TLS_CERT_ENV) or None,
            ssl_keyfile or env.get(TLS_KEY_ENV) or None,
            token or env.get(TOKEN_ENV) or None,
        )
        security.validate()
        return security

    def validate(self) -> None:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("give both ssl_certfile and ssl_keyfile, or neither")
        if self.ssl_certfile is not None and self.ssl_cafile is None:
            raise ValueError("a client certificate needs TLS: give ssl_cafile too")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials (with the token, if any, as per-call credentials)."""
        assert self.ssl_cafile is not None
        try:
            ca = Path(self.ssl_cafile).read_bytes()
            key = Path(self.ssl_keyfile).read_bytes() if self.ssl_keyfile else None
            chain = Path(self.ssl_certfile).read_bytes() if self.ssl_certfile else None
        except OSError as exc:
            raise errors.InvalidRequestError(f"cannot read TLS file: {exc}") from exc
        credentials = grpc.ssl_channel_credentials(ca, key, chain)
        if self.token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(self.token)
            )
        return credentials


def client_security(client: str, options: dict[str, Any]) -> ClientSecurity:
    """What a client constructor received as `**security`, resolved. Any other keyword
    lands there too, so it is refused here as Python would refuse it: by the client's
    name, not by this function's."""
    unknown = sorted(set(options) - SecurityOptions.__optional_keys__)
    if unknown:
        raise TypeError(f"{client}() got an unexpected keyword argument {unknown[0]!r}")
    return ClientSecurity.resolve(**options)


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call on a plaintext channel (gRPC
    refuses call credentials there, as they would cross the network in the clear)."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def open_channel(address: str, security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel to `address`; `security` None reads it from the environment.

    Every client opens its channels here, so this is also where the process's allocator
    is told to keep freed batch buffers (see `logstore.allocator`).
    """
    keep_freed_memory()
    if security is None:
        security = ClientSecurity.resolve()
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Reconnect quickly after a broker restart instead of backing off for minutes.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if security.ssl_cafile is not None:
        return grpc.secure_channel(address, security.channel_credentials(), options=options)
    channel = grpc.insecure_channel(address, options=options)
    if not security.token:
        return channel
    if not _is_loopback(address):
        log.warning(
            "sending a bearer token to %s without TLS: anyone on the path can read it", address
        )
    return grpc.intercept_channel(channel, _BearerToken(security.token))


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

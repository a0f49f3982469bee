"""Channels to the broker and the translation of gRPC failures into `logstore.errors`."""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import grpc

from logstore import errors
from logstore.addresses import parse_host_port
from logstore.allocator import keep_freed_memory
from logstore.client.coordinators import HOME, CoordinatorAnswer, CoordinatorCache
from logstore.client.metadata import ClusterMetadata
from logstore.types import TopicPartition
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
        "NotCoordinatorError",
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
    """The bootstrap list ("HOST:PORT[,HOST:PORT...]"): the argument, else
    $LOGSTORE_BOOTSTRAP, else 127.0.0.1:9092."""
    return bootstrap or os.environ.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP


def parse_bootstrap(value: str) -> list[str]:
    """ "h1:p1,h2:p2" -> ["h1:p1", "h2:p2"]: each entry HOST:PORT (`[::1]:9092` for IPv6),
    spaces around entries ignored, a repeated entry kept once, order kept (brokers are
    tried in it). Raises InvalidRequestError naming the bad entry and the form expected.
    """
    entries = [entry.strip() for entry in value.split(",")]
    if not any(entries):
        raise errors.InvalidRequestError(
            "the bootstrap list is empty: give HOST:PORT[,HOST:PORT...]"
        )
    addresses: list[str] = []
    for entry in entries:
        if not entry:
            raise errors.InvalidRequestError(
                f"bootstrap list {value!r} has an empty entry: give HOST:PORT[,HOST:PORT...]"
            )
        try:
            parse_host_port(entry)
        except ValueError as exc:
            raise errors.InvalidRequestError(f"bootstrap list {value!r}: {exc}") from None
        if entry not in addresses:
            addresses.append(entry)
    return addresses


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


# --- many brokers ----------------------------------------------------------------------------


def rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a failed call (None for anything else)."""
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


#: errors after which another broker is tried: this one is down, slow or unreachable
_TRY_ANOTHER = (errors.BrokerUnavailableError, errors.RequestTimedOutError)


class BrokerChannels:
    """One gRPC channel and stub per broker address, and the `ClusterMetadata` requests are
    routed by.

    Channels open lazily, with the client's security options (the first bootstrap address
    at once, as a single-broker client always did), and all close in `close()`. Start-up
    (`bootstrap`) asks the bootstrap addresses for Metadata in order until one answers; a
    broker without the Metadata RPC (UNIMPLEMENTED) is a standalone broker, recorded with
    `ClusterMetadata.update_standalone`, so a standalone client keeps one channel and one
    broker. `home` is where requests that have no partition leader go (topics, producer
    ids, groups): the broker that answered first; when it does not answer (UNAVAILABLE),
    the next live one. Refreshes ask any live broker, `home` first.

    Invariants: `lock` guards `metadata`, `home` and the channels; no other lock is taken
    while it is held, and `on_change` (the client's re-routing) runs without it. At most
    one background refresh runs at a time. Times: `timeout_s` arguments in seconds.
    """

    def __init__(
        self,
        bootstrap: str,
        security: ClientSecurity,
        metadata: ClusterMetadata,
        *,
        request_timeout_s: float,
    ) -> None:
        self.bootstrap_addresses = parse_bootstrap(bootstrap)
        #: the bootstrap list as given, for messages
        self.display = bootstrap
        self.metadata = metadata
        self.lock = threading.Lock()
        self.home = self.bootstrap_addresses[0]
        #: called (no lock held) after an answer changed some leader address
        self.on_change: Callable[[], None] | None = None
        self._security = security
        #: the timeout of a request that names none (s)
        self.request_timeout_s = request_timeout_s
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.LogStoreStub] = {}
        self._bootstrap_lock = threading.Lock()
        self._refreshing = False
        self._refresh_from = self.home
        self._closed = False
        self.channel(self.home)

    # --- channels ------------------------------------------------------------------------

    def channel(self, address: str) -> grpc.Channel:
        """The channel to `address`, opened on first use."""
        channel = self._channels.get(address)
        if channel is not None:
            return channel
        with self.lock:
            if self._closed:
                raise errors.ClientClosedError("the client is closed")
            channel = self._channels.get(address)
            if channel is None:
                channel = open_channel(address, self._security)
                self._stubs[address] = make_stub(channel)
                self._channels[address] = channel
            return channel

    def stub(self, address: str) -> pb_grpc.LogStoreStub:
        stub = self._stubs.get(address)
        if stub is None:
            self.channel(address)
            stub = self._stubs[address]
        return stub

    def home_stub(self) -> HomeStub:
        """A stub whose calls go to `home` (see `HomeStub`)."""
        return HomeStub(self)

    def home_failed(self, address: str) -> None:
        """`address` did not answer a call made to it as home: the next call goes to the
        next live broker (the bootstrap list while none is known), and the metadata is
        asked again."""
        with self.lock:
            self.metadata.invalidate()
            if self.home != address:
                return
            candidates = self._candidates_locked()
            if len(candidates) < 2:
                return
            index = candidates.index(address) if address in candidates else -1
            self.home = candidates[(index + 1) % len(candidates)]
        log.info("broker %s does not answer; requests go to %s now", address, self.home)

    def _candidates_locked(self) -> list[str]:
        """Every broker worth trying: the live ones, then the bootstrap list."""
        return list(dict.fromkeys([*self.metadata.addresses(), *self.bootstrap_addresses]))

    def close(self) -> None:
        with self.lock:
            self._closed = True
            channels = list(self._channels.values())
        for channel in channels:
            channel.close()

    # --- metadata ------------------------------------------------------------------------

    @property
    def bootstrapped(self) -> bool:
        return self.metadata.known

    def bootstrap(self, timeout_s: float, topics: Iterable[str] = ()) -> None:
        """Learn the cluster (and `topics`; none: every topic) from the first bootstrap
        address that answers, in list order, unless that happened already. Raises
        BrokerUnavailableError when none answered within `timeout_s` (each gets a fair share
        of what is left), or the error a broker answered with (e.g. AuthenticationError).
        """
        if self.metadata.known:
            return
        wanted = sorted(set(topics))
        with self._bootstrap_lock:
            if self.metadata.known:
                return
            address, answer = self._ask(self.bootstrap_addresses, wanted, timeout_s)
            with self.lock:
                self.home = self._refresh_from = address
            changed = self._apply(address, answer, wanted)
        self._notify(changed)

    def refresh(self, topics: Iterable[str], timeout_s: float | None = None) -> bool:
        """Ask a live broker about `topics` (and every invalidated one; none at all: every
        topic) and apply the answer. True when a leader address changed. Raises like
        `bootstrap`; a failure backs the next refresh off."""
        if not self.metadata.known:
            self.bootstrap(self.request_timeout_s if timeout_s is None else timeout_s, topics)
            return True
        with self.lock:
            wanted = sorted({*topics, *self.metadata.stale_topics()})
            candidates = self._candidates_locked()
            start = self._refresh_from
            if start in candidates:
                index = candidates.index(start)
                candidates = candidates[index:] + candidates[:index]
        try:
            address, answer = self._ask(
                candidates, wanted, self.request_timeout_s if timeout_s is None else timeout_s
            )
        except errors.LogStoreError:
            with self.lock:
                self.metadata.refresh_failed()
            raise
        changed = self._apply(address, answer, wanted)
        self._notify(changed)
        return changed

    def refresh_in_background(self, topics: Iterable[str]) -> None:
        """Start `refresh(topics)` on a thread of its own, unless one is running; failures
        are logged at debug level (the backoff is recorded in the metadata)."""
        with self.lock:
            if self._refreshing or self._closed:
                return
            self._refreshing = True
        wanted = list(topics)
        threading.Thread(
            target=self._refresh_quietly, args=(wanted,), name="logstore-metadata", daemon=True
        ).start()

    def _refresh_quietly(self, topics: list[str]) -> None:
        try:
            self.refresh(topics)
        except errors.LogStoreError as exc:
            log.debug("metadata refresh failed: %s", exc)
        except Exception:
            log.exception("metadata refresh failed")
        finally:
            with self.lock:
                self._refreshing = False

    def leaders(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, str | None]:
        """Each partition's leader address (None: unknown, or no leader now)."""
        with self.lock:
            return {tp: self.metadata.leader_address(*tp) for tp in tps}

    def _ask(
        self, candidates: list[str], topics: list[str], timeout_s: float
    ) -> tuple[str, pb.MetadataResponse | None]:
        """(address, answer) of the first candidate that answers Metadata, in order; the
        answer is None for a broker without the RPC."""
        request = pb.MetadataRequest(topics=topics)
        deadline = time.monotonic() + timeout_s
        failures: list[str] = []
        for index, address in enumerate(candidates):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                stub = self.stub(address)
                return address, stub.Metadata(
                    request, timeout=remaining / (len(candidates) - index)
                )
            except grpc.RpcError as exc:
                if rpc_code(exc) == grpc.StatusCode.UNIMPLEMENTED:
                    return address, None
                error = translate(exc, address)
                if not isinstance(error, _TRY_ANOTHER):
                    raise error from None
                failures.append(str(error))
            except ValueError as exc:  # the channel was closed under us
                raise errors.ClientClosedError(f"the client is closed: {exc}") from None
        if len(candidates) == 1 and failures:
            raise errors.BrokerUnavailableError(failures[0])
        raise errors.BrokerUnavailableError(
            f"no broker of {', '.join(candidates)} answered: {'; '.join(failures) or 'timed out'}"
        )

    def _apply(self, address: str, answer: pb.MetadataResponse | None, topics: list[str]) -> bool:
        """Record `address`'s answer; True when a leader address changed."""
        with self.lock:
            if answer is None:
                before = self.metadata.version
                self.metadata.update_standalone(address)
                changed = self.metadata.version != before
            else:
                changed = self.metadata.update(answer, address, topics)
            if self.metadata.lagging:
                # a lagging broker answered: start the next refresh at another one
                candidates = self._candidates_locked()
                if address in candidates:
                    index = candidates.index(address)
                    self._refresh_from = candidates[(index + 1) % len(candidates)]
        return changed

    def _notify(self, changed: bool) -> None:
        """Tell the client leaders moved; called with no lock of this object held."""
        listener = self.on_change
        if changed and listener is not None:
            listener()


class HomeStub:
    """A `LogStoreStub` whose calls go to `BrokerChannels.home`. A call home does not answer
    (UNAVAILABLE) fails as before, and moves home to the next live broker for the calls
    after it: callers retry as they always did. With several bootstrap addresses the first
    call learns the cluster first, so it goes to a broker that answers; with one, home is
    that broker and nothing is asked first."""

    __slots__ = ("_channels",)

    def __init__(self, channels: BrokerChannels) -> None:
        self._channels = channels

    def __getattr__(self, method: str) -> Callable[..., Any]:
        channels = self._channels

        def call(request: Any, **kwargs: Any) -> Any:
            if not channels.bootstrapped and len(channels.bootstrap_addresses) > 1:
                try:
                    channels.bootstrap(kwargs.get("timeout") or channels.request_timeout_s)
                except errors.LogStoreError as exc:
                    # the call below fails as calls to an unreachable home do
                    log.debug("no bootstrap broker answered: %s", exc)
            address = channels.home
            try:
                return getattr(channels.stub(address), method)(request, **kwargs)
            except grpc.RpcError as exc:
                if rpc_code(exc) == grpc.StatusCode.UNAVAILABLE:
                    channels.home_failed(address)
                raise

        return call


# --- group coordinators ----------------------------------------------------------------------


def coordinator_of(answer: pb.FindCoordinatorResponse | None) -> CoordinatorAnswer | None:
    """The broker a FindCoordinator answer names (None: there was no answer, the broker
    predates the RPC and coordinates every group itself); raises the answer's error."""
    if answer is None:
        return None
    error = partition_error(answer.error)
    if error is not None:
        raise error
    coordinator: CoordinatorAnswer = answer.coordinator
    return coordinator


class CoordinatorRouter:
    """Sends each consumer group's requests to the group's coordinator, found with
    FindCoordinator and kept in a `CoordinatorCache`, whose rules say when a failed request
    is sent again (after finding the coordinator again).

    `find(group, timeout_s)` asks the broker the client sends untargeted requests to (None:
    it has no FindCoordinator RPC) and raises LogStore errors; `stub(address)` is the stub
    for a coordinator address (`HOME`: that same broker); `describe(address)` names an
    address in error messages. Invariant: a call, its lookups and the waits between its
    attempts all end within the call's `timeout_s` (s); the deadline is kept on the
    cache's clock (ms).
    """

    def __init__(
        self,
        cache: CoordinatorCache,
        find: Callable[[str, float], CoordinatorAnswer | None],
        stub: Callable[[str], Any],
        describe: Callable[[str], str],
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cache = cache
        self._find = find
        self._stub = stub
        self._describe = describe
        self._sleep = sleep

    def call(self, group: str, method: str, request: Any, timeout_s: float) -> Any:
        """`method(request)` at `group`'s coordinator; raises the LogStore error of the
        last attempt when none succeeded within `timeout_s`."""
        cache = self.cache
        deadline_ms = cache.clock.monotonic_ms() + timeout_s * 1000
        for failures in itertools.count(1):
            address: str | None = None
            try:
                address = self.coordinator(group, deadline_ms)
                return self._attempt(address, method, request, deadline_ms)
            except errors.LogStoreError as exc:
                kind = type(exc).__name__
                again = (
                    cache.lookup_failed(kind)
                    if address is None
                    else cache.failed(group, address, kind)
                )
                delay_ms = cache.next_attempt_ms(failures, deadline_ms) if again else None
                if delay_ms is None:
                    raise
                where = "finding the coordinator" if address is None else self._describe(address)
                log.debug("group %s: %s failed at %s, retrying: %s", group, method, where, exc)
            self._sleep(delay_ms / 1000)
        raise AssertionError("unreachable: the loop above returns or raises")

    def coordinator(self, group: str, deadline_ms: float) -> str:
        """The group's coordinator, looked up (once) when it is not known; `HOME` for this
        request when the lookup was refused for want of rights."""
        known = self.cache.get(group)
        if known is not None:
            return known
        try:
            answer = self._find(group, self._remaining_s(deadline_ms, "FindCoordinator"))
        except errors.LogStoreError as exc:
            if not self.cache.ask_home_instead(type(exc).__name__):
                raise
            return HOME  # its refusal of the request itself names what was missing
        address = self.cache.found(group, answer)
        log.debug("group %s: coordinator %s", group, self._describe(address))
        return address

    def _attempt(self, address: str, method: str, request: Any, deadline_ms: float) -> Any:
        timeout_s = self._remaining_s(deadline_ms, method)
        try:
            return getattr(self._stub(address), method)(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise translate(exc, self._describe(address)) from None
        except ValueError as exc:  # the channel was closed under us
            raise errors.ClientClosedError(f"the client is closed: {exc}") from None

    def _remaining_s(self, deadline_ms: float, method: str) -> float:
        remaining_ms = deadline_ms - self.cache.clock.monotonic_ms()
        if remaining_ms <= 0:
            raise errors.RequestTimedOutError(f"request timed out before {method} was sent")
        return remaining_ms / 1000


def home_coordinators(channels: BrokerChannels, cache: CoordinatorCache) -> CoordinatorRouter:
    """The coordinator router of a client's `channels`: lookups go to the home broker, and
    a `HOME` coordinator is reached through `HomeStub`, as every group request was before
    coordinators were looked up."""
    home = channels.home_stub()

    def find(group: str, timeout_s: float) -> CoordinatorAnswer | None:
        """Ask home; while it cannot be reached, each other live broker once (home moves
        on to it), as long as `timeout_s` lasts."""
        request = pb.FindCoordinatorRequest(group_id=group)
        deadline = time.monotonic() + timeout_s
        asked: set[str] = set()
        while True:
            asked.add(channels.home)
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                return coordinator_of(home.FindCoordinator(request, timeout=remaining))
            except grpc.RpcError as exc:
                if rpc_code(exc) == grpc.StatusCode.UNIMPLEMENTED:
                    return None  # a broker from before cluster mode: it coordinates every group
                error = translate(exc, channels.display)
                fresh = channels.home not in asked and time.monotonic() < deadline
                if not isinstance(error, errors.BrokerUnavailableError) or not fresh:
                    raise error from None

    def stub(address: str) -> Any:
        return home if address == HOME else channels.stub(address)

    def describe(address: str) -> str:
        return channels.display if address == HOME else address

    return CoordinatorRouter(cache, find, stub, describe)

"""How one broker opens gRPC channels to the other brokers of its cluster.

Every inter-broker call (replica fetches, leader epochs, ListOffsets sent to a partition's
leader) goes through `PeerChannels.open`, so the transport and credentials brokers use
with each other are decided in this one place (`security.inter_broker`): TLS checked
against the inter-broker CA, this broker's certificate for mutual TLS, and its token on
every call.

Invariants:
- A channel from `open` reaches the peer at `address` with the same transport and
  identity for every caller in this broker: those of the latest `replace`.
- After `replace`, every call sends the new token, and every call on a channel opened
  before goes through a new connection made with the new TLS files (the old connection is
  closed once the calls on it had time to end).
- A peer that refuses this broker (UNAUTHENTICATED, PERMISSION_DENIED, a failed TLS
  handshake) is named in one warning line with what to check, at most once per
  `REFUSAL_LOG_INTERVAL_S` for the same refusal, and its end is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from logstore.server.security.auth import AUTHORIZATION_KEY
from logstore.server.security.inter_broker import (
    PEER_CA_FLAG,
    PLAINTEXT,
    TOKEN_FILE_FLAG,
    PeerCredentials,
)

log = logging.getLogger(__name__)

#: gRPC channel options, as (name, value) pairs
ChannelOptions = Sequence[tuple[str, Any]]

#: the same refusal by the same peer is logged at most this often (s)
REFUSAL_LOG_INTERVAL_S = 60.0
#: after `replace`, a connection made with the old TLS files is closed this much later
#: (s): longer than any inter-broker call (a replica fetch waits 0.5 s, plus 5 s slack)
RETIRED_CHANNEL_GRACE_S = 30.0

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
#: statuses that say nothing of whether the peer accepts this broker (it did not answer)
_NO_ANSWER = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
#: what a failed TLS handshake says in the details of its UNAVAILABLE status
_HANDSHAKE_WORDS = ("handshake", "ssl", "certificate", "tls")


class PeerChannels:
    """Opens channels to peer brokers with this broker's `PeerCredentials` (see the module
    docstring). Thread-safe."""

    def __init__(self, credentials: PeerCredentials = PLAINTEXT) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[_PeerChannel] = weakref.WeakSet()
        #: (address, refusal) -> time.monotonic() it was last logged (s)
        self._refusals: dict[tuple[str, str], float] = {}

    @property
    def credentials(self) -> PeerCredentials:
        return self._credentials

    def open(self, address: str, options: ChannelOptions = ()) -> grpc.Channel:
        """A new channel to the broker listening at `address` ("host:port")."""
        with self._lock:  # made and listed at once, so no `replace` can pass it by
            channel = _PeerChannel(self, address, list(options))
            self._open.add(channel)
        return channel

    def forget(self, channel: _PeerChannel) -> None:
        """`channel` was closed: it needs no new connection any more."""
        with self._lock:
            self._open.discard(channel)

    def replace(self, credentials: PeerCredentials) -> None:
        """Use `credentials` from now on (SIGHUP re-read the files): the token from the
        next call, new TLS files from the next call on every channel."""
        with self._lock:
            renew = not credentials.same_transport(self._credentials)
            self._credentials = credentials
            channels = list(self._open) if renew else []
        for channel in channels:
            channel.renew()

    @property
    def plaintext(self) -> bool:
        """Whether brokers neither encrypt nor authenticate to each other (no TLS, no
        token; ACLs need one of them in cluster mode). Only then may inter-broker traffic
        take a path that bypasses the gRPC listener's security."""
        credentials = self._credentials
        return credentials.root_ca is None and credentials.token is None

    def describe(self) -> str:
        return self._credentials.describe()

    # --- what every call carries and what it says --------------------------------------------

    def metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._credentials.token
        return () if token is None else ((AUTHORIZATION_KEY, f"Bearer {token}"),)

    def observe(self, address: str, method: str, outcome: Any) -> None:
        """Log a peer's refusal of this broker (rate-limited), and its end."""
        try:
            code, details = outcome.code(), outcome.details() or ""
        except Exception:  # a call that failed before it had a status
            return
        refusal = _refusal(code, details)
        if refusal is not None:
            if self._due(address, refusal):
                log.warning(
                    "the broker at %s refused %s from this broker: %s: %s (%s)",
                    address,
                    method.rpartition("/")[2],
                    code.name,
                    details,
                    _hint(code, address),
                )
        elif code not in _NO_ANSWER and self._refusals and self._forget(address):
            log.info("the broker at %s accepts this broker's calls again", address)

    def _due(self, address: str, refusal: str) -> bool:
        """Whether this refusal by `address` is to be logged now (and note that it was)."""
        now = time.monotonic()
        with self._lock:
            last = self._refusals.get((address, refusal))
            if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
                return False
            self._refusals[(address, refusal)] = now
            return True

    def _forget(self, address: str) -> bool:
        """Forget the refusals of `address`; whether there were any."""
        with self._lock:
            ended = [key for key in self._refusals if key[0] == address]
            for key in ended:
                del self._refusals[key]
        return bool(ended)


def _refusal(code: grpc.StatusCode, details: str) -> str | None:
    """What kind of refusal a status is, None for a call that was not refused."""
    if code in _REFUSED:
        return f"{code.name}: {details}"
    lowered = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(w in lowered for w in _HANDSHAKE_WORDS):
        return "TLS handshake"
    return None


def _hint(code: grpc.StatusCode, address: str) -> str:
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"check {TOKEN_FILE_FLAG} against the --auth-tokens of the broker at {address}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "list the broker principal in --super-users on every broker"
    host = address.rpartition(":")[0]
    return (
        f"check {PEER_CA_FLAG}, that the peer's certificate names {host}, and with mutual "
        "TLS that this broker's certificate allows client authentication"
    )


class _PeerCalls(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the broker's token to every call, and reports each outcome to `PeerChannels`."""

    def __init__(self, peers: PeerChannels, address: str) -> None:
        self._peers = peers
        self._address = address

    def _details(self, details: Any) -> Any:
        extra = self._peers.metadata()
        if not extra:
            return details
        return details._replace(metadata=(*(details.metadata or ()), *extra))

    def _watched(self, details: Any, outcome: Any) -> Any:
        method = str(details.method)
        add = getattr(outcome, "add_done_callback", None)
        if add is not None:
            add(lambda done: self._peers.observe(self._address, method, done))
        return outcome

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._watched(details, continuation(self._details(details), request))

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self._watched(details, continuation(self._details(details), request))

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._watched(details, continuation(self._details(details), requests))

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return self._watched(details, continuation(self._details(details), requests))


class _PeerChannel(grpc.Channel):
    """A channel to one peer whose connection can be replaced under the stubs made on it
    (new TLS files): each multi-callable resolves the current connection at call time."""

    def __init__(self, peers: PeerChannels, address: str, options: list[tuple[str, Any]]) -> None:
        self._peers = peers
        self._address = address
        self._options = options
        self._lock = threading.Lock()
        self._generation = 0
        self._closed = False
        self._current = self._connect()

    def _connect(self) -> grpc.Channel:
        # Reads the credentials without PeerChannels' lock: `open` may hold it.
        credentials = self._peers.credentials.channel_credentials()
        if credentials is None:
            raw = grpc.insecure_channel(self._address, options=self._options)
        else:
            raw = grpc.secure_channel(self._address, credentials, options=self._options)
        return grpc.intercept_channel(raw, _PeerCalls(self._peers, self._address))

    def current(self) -> tuple[grpc.Channel, int]:
        with self._lock:
            return self._current, self._generation

    def renew(self) -> None:
        """Connect again with the current credentials; retire the old connection."""
        fresh = self._connect()
        with self._lock:
            if self._closed:
                fresh.close()
                return
            old, self._current = self._current, fresh
            self._generation += 1
        timer = threading.Timer(RETIRED_CHANNEL_GRACE_S, old.close)
        timer.daemon = True
        timer.start()

    def _callable(self, kind: str, method: str, **kwargs: Any) -> _CurrentCallable:
        return _CurrentCallable(self, lambda channel: getattr(channel, kind)(method, **kwargs))

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._callable("unary_unary", method, **_serializers(args, kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._callable("unary_stream", method, **_serializers(args, kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._callable("stream_unary", method, **_serializers(args, kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._callable("stream_stream", method, **_serializers(args, kwargs))

    def subscribe(self, callback: Callable[..., None], try_to_connect: bool = False) -> None:
        self.current()[0].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[..., None]) -> None:
        self.current()[0].unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            current = self._current
        self._peers.forget(self)
        current.close()

    def __enter__(self) -> _PeerChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _serializers(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A multi-callable's keyword arguments, the serializers given by position included."""
    named = dict(zip(("request_serializer", "response_deserializer"), args, strict=False))
    return {**named, **kwargs}


class _CurrentCallable:
    """A multi-callable of whichever connection its `_PeerChannel` holds at call time
    (`__call__`, `with_call`, `future`, as the wrapped kind offers them)."""

    __slots__ = ("_channel", "_made", "_make")

    def __init__(self, channel: _PeerChannel, make: Callable[[grpc.Channel], Any]) -> None:
        self._channel = channel
        self._make = make
        self._made: tuple[int, Any] | None = None

    def _target(self) -> Any:
        connection, generation = self._channel.current()
        made = self._made
        if made is None or made[0] != generation:
            made = self._made = (generation, self._make(connection))
        return made[1]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)

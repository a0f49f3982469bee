"""One Kafka connection as a state machine over bytes: no sockets, no threads, no clock.

The shell feeds what it received (`receive_data`) and takes events (`next_event`) until it
gets None (more bytes needed). Events:
- `Request`: a decoded request of a served (API, version), for a handler; its answer goes
  back through `encode_response`, in arrival order (the shell serves one at a time).
- `Reply`: bytes the connection answers by itself, without a handler: ApiVersions at a
  version above the served range gets a v0 body with UNSUPPORTED_VERSION and the range
  (KIP-511), so the client retries at a version it can use.
- `Close`: the stream broke a rule (bad frame size, unknown API, unserved version,
  undecodable request, an API the connection may not use yet); the shell logs the reason
  and closes, as Kafka's broker does. No handler has run, so nothing was written to any log.

Invariants:
- After a `Close` every later call returns the same `Close`.
- Flexible versions (compact encodings, KIP-482) are decoded only by the bounded decoders
  of `flexible`, never by the library's decoder, whose varints are unbounded: importing
  this module fails while a served flexible (API, version) has no bounded decoder.
- While `restrict_apis` names a set of API keys, a frame of any other API closes the
  connection as soon as its first two bytes (the API key) are in: before the rest of it is
  buffered or anything of it is decoded.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from logstore.server.kafka.apis import API_BY_KEY, API_VERSIONS_KEY, APIS, Api
from logstore.server.kafka.flexible import BOUNDED_DECODERS
from logstore.server.kafka.frames import FrameBuffer, FrameError

_HEADER_PREFIX = struct.Struct(">hhi")
_API_KEY = struct.Struct(">h")
#: Kafka's UNSUPPORTED_VERSION error code
UNSUPPORTED_VERSION = 35


@dataclass(frozen=True)
class Request:
    """A decoded request: what a handler gets."""

    api: Api
    version: int
    correlation_id: int
    client_id: str | None
    #: the kafka-python request object (fields by their schema names)
    body: Any
    #: the size of its frame (bytes)
    size: int


@dataclass(frozen=True)
class Reply:
    """An answer the connection made by itself: send `data` as is."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """The connection must close; `reason` says why (for the broker's log)."""

    reason: str


Event = Request | Reply | Close


class KafkaConnection:
    """The protocol state of one client connection."""

    def __init__(self, max_request_bytes: int) -> None:
        self._frames = FrameBuffer(max_request_bytes)
        self._closed: Close | None = None
        #: the API keys this connection may use now (None: every served one), and why
        self._allowed_apis: frozenset[int] | None = None
        self._restriction = ""

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed is None:
            self._frames.feed(data)

    @property
    def closed(self) -> Close | None:
        return self._closed

    def limit_request_bytes(self, max_bytes: int) -> None:
        """Refuse (`Close`) any request frame larger than `max_bytes` whose size prefix has
        not been read yet: the shell lowers the limit until the client authenticates."""
        self._frames.max_frame_bytes = max_bytes

    def restrict_apis(self, api_keys: frozenset[int] | None, reason: str = "") -> None:
        """Refuse (`Close`) a request of any API not in `api_keys` (None: allow every served
        API) from its frame's first two bytes, before it is decoded or even buffered whole:
        the shell allows only SASL's APIs until the client authenticates. `reason` says why,
        for the broker's log."""
        self._allowed_apis = api_keys
        self._restriction = reason

    @property
    def receiving(self) -> bool:
        """Whether part of a request has arrived and the rest has not (after `next_event`
        returned None): the shell bounds how long a request may take to arrive."""
        return self._closed is None and self._frames.buffered > 0

    def next_event(self) -> Event | None:
        """The next event, or None until more bytes arrive."""
        if self._closed is not None:
            return self._closed
        try:
            refusal = self._refused_api()
            frame = None if refusal else self._frames.next_frame()
        except FrameError as exc:
            return self._close(str(exc))
        if refusal:
            return self._close(refusal)
        if frame is None:
            return None
        return self._decode(frame)

    def _refused_api(self) -> str | None:
        """Why the frame being received may not be served here, judged by its API key
        alone; None while it may be (or its key has not arrived yet)."""
        if self._allowed_apis is None:
            return None
        head = self._frames.head(_API_KEY.size)
        if head is None:
            return None
        (api_key,) = _API_KEY.unpack(head)
        if api_key in self._allowed_apis:
            return None
        api = API_BY_KEY.get(api_key)
        name = f"{api.name} (API key {api_key})" if api else f"API key {api_key}"
        return f"{name} {self._restriction}".rstrip()

    def _close(self, reason: str) -> Close:
        self._closed = Close(reason)
        return self._closed

    def _decode(self, frame: bytes) -> Event:
        api_key, version, correlation_id = _HEADER_PREFIX.unpack_from(frame)
        api = API_BY_KEY.get(api_key)
        if api is None:
            return self._close(f"unknown API key {api_key} (correlation id {correlation_id})")
        if not api.supports(version):
            if api_key == API_VERSIONS_KEY and version > api.max_version:
                return Reply(unsupported_api_versions(correlation_id, version))
            return self._close(
                f"{api.name} v{version} is not served (versions "
                f"{api.min_version}-{api.max_version}; correlation id {correlation_id})"
            )
        try:
            body = decode_request(api, version, frame)
        except Exception as exc:  # any malformed input: the library raises many types
            return self._close(f"malformed {api.name} v{version}: {type(exc).__name__}: {exc}")
        return Request(api, version, correlation_id, body.header.client_id, body, len(frame))

    def encode_response(self, request: Request, response: Any) -> bytes:
        """`response` (a kafka-python response object) framed for `request`."""
        response.API_VERSION = request.version
        response.with_header(correlation_id=request.correlation_id)
        return bytes(response.encode(header=True, framed=True))


def decode_request(api: Api, version: int, frame: bytes) -> Any:
    """The request in `frame` (header and body), which must end exactly at the frame's end.

    The library's `decode` would hide both faults this checks: its compiled decoder slices
    byte and string fields, so a field cut short by a truncated frame comes out short
    rather than failing, and it ignores what follows the body. A flexible version goes to
    its bounded decoder (`flexible.BOUNDED_DECODERS`), which checks the same.
    """
    cls = api.request
    if cls.flexible_version_q(version):
        return BOUNDED_DECODERS[(api.key, version)](frame)
    header_data = io.BytesIO(frame)
    header = cls.parse_header(header_data, version=version)
    decode_from = cls._struct.compiled_decode_from(
        version, compact=False, tagged=False, data_class=cls[None]
    )
    body, end = decode_from(memoryview(frame), header_data.tell())
    if end != len(frame):
        raise ValueError(f"the request's fields end at byte {end} of a {len(frame)}-byte frame")
    body._header = header
    return body


def unsupported_api_versions(correlation_id: int, version: int) -> bytes:
    """KIP-511's answer to ApiVersions at an unserved version: a v0 body with
    UNSUPPORTED_VERSION and, for v3+ asks, the ApiVersions range the client may retry at."""
    api = API_BY_KEY[API_VERSIONS_KEY]
    entry = api.response.ApiVersion
    keys = [entry(api_key=api.key, min_version=api.min_version, max_version=api.max_version)]
    response = api.response(
        version=0,
        error_code=UNSUPPORTED_VERSION,
        api_keys=keys if version >= 3 else [],
        throttle_time_ms=0,
    )
    response.with_header(correlation_id=correlation_id)
    return bytes(response.encode(header=True, framed=True))


def unbounded_flexible_versions(apis: Iterable[Api]) -> list[str]:
    """The served flexible versions of `apis` that have no bounded decoder ("Name vN")."""
    return [
        f"{api.name} v{version}"
        for api in apis
        for version in range(api.min_version, api.max_version + 1)
        if api.request.flexible_version_q(version) and (api.key, version) not in BOUNDED_DECODERS
    ]


# Serving a flexible version through the library's decoder would let one small frame cost
# minutes of CPU (see `flexible`): refuse to run at all rather than serve it.
if _unbounded := unbounded_flexible_versions(APIS):
    raise RuntimeError(
        "these Kafka API versions are flexible but have no bounded decoder in "
        f"logstore.server.kafka.flexible: {', '.join(_unbounded)}"
    )

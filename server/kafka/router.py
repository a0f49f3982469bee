"""API key -> handler, and the checks every request passes before its handler runs.

Handlers register with `@handles(key)`; `logstore.server.kafka.handlers` imports every
handler module, so importing the router registers them all. A handler is a function
`(RequestContext, request body) -> response`, or None for a request that gets no answer
(Produce with acks=0). It answers errors in the response's error fields; an exception
escaping it is a bug, logged, and the connection closes (the client reconnects).

Before SASL completes on a listener that requires it, only ApiVersions, SaslHandshake and
SaslAuthenticate are served (Kafka closes the connection on anything else). The listener
refuses other APIs from a frame's first two bytes, before decoding it
(`KafkaConnection.restrict_apis`); `dispatch` checks again, whatever reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from logstore.server.kafka.context import RequestContext

Handler = Callable[[RequestContext, Any], Any]

HANDLERS: dict[int, Handler] = {}

#: what a connection that has not authenticated may ask: ApiVersions, SaslHandshake,
#: SaslAuthenticate
BEFORE_AUTHENTICATION: Final = frozenset({18, 17, 36})


class NotServed(Exception):
    """The request may not be served on this connection: close it."""


def handles(api_key: int) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `api_key`."""

    def register(handler: Handler) -> Handler:
        if api_key in HANDLERS:
            raise RuntimeError(f"API key {api_key} has two handlers")
        HANDLERS[api_key] = handler
        return handler

    return register


def dispatch(ctx: RequestContext, api_key: int, body: Any) -> Any:
    """The handler's response to `body` (None: send nothing back)."""
    if not ctx.session.authenticated and api_key not in BEFORE_AUTHENTICATION:
        raise NotServed(f"API key {api_key} before SASL authentication completed")
    handler = HANDLERS.get(api_key)
    if handler is None:
        raise NotServed(f"API key {api_key} has no handler")
    return handler(ctx, body)


def _register_all() -> None:
    from logstore.server.kafka import handlers  # noqa: F401  (registers on import)


_register_all()

"""What the Kafka listener reports about its connections and requests (to the broker's
metrics), kept apart from the listener so that a reader of these reports (`metrics`)
imports neither the protocol classes nor the handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from logstore.server.kafka.connection import Request

#: how a request handed to a handler ended (`KafkaObserver.request_done`'s `outcome`):
#: answered (or, acks=0, not answered by design); the connection stays open
SERVED: Final = "served"
#: the request may not be served on its connection (`NotServed`: before SASL
#: authentication, a failed acks=0 produce, a revoked token): the connection closed
NOT_SERVED: Final = "not_served"
#: the handler (or encoding its response) raised: a bug, logged; the connection closed
HANDLER_ERROR: Final = "handler_error"
#: answered, and the answer was the connection's last (`Session.closing`: a SASL refusal)
LAST_ANSWER: Final = "last_answer"


class KafkaObserver(Protocol):
    """Hears the Kafka listener's events. Each method is called on the connection's (or
    the acceptor's) thread with no lock of the listener held, once per event, so it must
    be quick and must not block; an exception it raises is logged and ignored."""

    def connection_accepted(self) -> None:
        """A connection was accepted; `connection_closed` follows exactly once."""

    def connection_refused(self) -> None:
        """A connection was closed at once: a connection limit was reached (the listener's,
        or its limit per peer address)."""

    def connection_closed(self) -> None:
        """An accepted connection is closed (for whatever reason)."""

    def protocol_violation(self, reason: str) -> None:
        """The stream broke a framing or decoding rule (bad frame size, unknown API,
        unserved version, undecodable request); its connection is closing."""

    def unserved_version_answered(self, response_bytes: int) -> None:
        """ApiVersions at a version above the served range was answered by the connection
        itself (KIP-511), in `response_bytes` bytes (size prefix included)."""

    def request_done(
        self,
        request: Request,
        response: Any,
        outcome: str,
        elapsed_s: float,
        response_bytes: int,
    ) -> None:
        """`request` (on the wire: a 4-byte size prefix and `request.size` bytes) was
        handed to its handler. `response`: the handler's response object (None: none by
        design, or the handler failed); `outcome`: SERVED, NOT_SERVED, HANDLER_ERROR or
        LAST_ANSWER; `elapsed_s`: seconds from the handler's start to its response
        encoded (the socket write excluded); `response_bytes`: bytes written, size prefix
        included (0 when nothing was)."""

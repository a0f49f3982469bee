"""The Kafka listener of one broker: its socket shell, bound to the handlers and the core."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from logstore.server.kafka.connection import Request
from logstore.server.kafka.context import (
    KafkaBroker,
    RequestContext,
    Session,
    advertised_endpoint,
)
from logstore.server.kafka.listener import KafkaListener
from logstore.server.kafka.observer import KafkaObserver
from logstore.server.kafka.router import NotServed, dispatch
from logstore.server.kafka.security import KafkaSecurity
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.security.settings import SecuritySettings

if TYPE_CHECKING:
    from logstore.server.broker import LogStoreServicer

log = logging.getLogger(__name__)


class KafkaService:
    """Binds at construction (so the port is known before the broker registers), serves
    from `start()` until `stop()`.

    `security` (from `security.kafka_security`) secures the listener as the broker's gRPC
    one is secured; None: plaintext, no SASL, no ACLs. `observer` (the broker's metrics)
    hears of every connection and request; None: nothing is counted.
    """

    def __init__(
        self,
        servicer: LogStoreServicer,
        settings: KafkaSettings,
        *,
        max_request_bytes: int,
        security: KafkaSecurity | None = None,
        observer: KafkaObserver | None = None,
    ) -> None:
        self.security = security or KafkaSecurity(SecuritySettings())
        self.listener = KafkaListener(
            settings.listen,
            self.serve,
            max_request_bytes=max_request_bytes,
            max_connections=settings.max_connections,
            max_connections_per_ip=settings.max_connections_per_ip,
            idle_timeout_s=settings.connections_max_idle_ms / 1000,
            request_timeout_s=settings.request_receive_timeout_ms / 1000,
            authentication_timeout_s=settings.authentication_timeout_ms / 1000,
            tls=self.security.tls,
            open_session=self.security.open_session,
            observer=observer,
        )
        self.broker = KafkaBroker(
            servicer,
            settings,
            advertised_endpoint(settings, self.listener.port),
            self.security.authorize,
            self.security.sasl,
        )

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def advertised(self) -> tuple[str, int]:
        return self.broker.advertised

    def serve(self, session: Session, request: Request) -> Any:
        self._check_credential(session)
        ctx = RequestContext(
            self.broker, session, request.version, request.client_id, request.correlation_id
        )
        return dispatch(ctx, request.api.key, request.body)

    def _check_credential(self, session: Session) -> None:
        """After a token reload, a connection whose token was revoked (or now names another
        principal) is closed at its next request, as gRPC ends such streams."""
        sasl = self.security.sasl
        if sasl is None or session.sasl_credential is None:
            return
        generation = sasl.tokens.generation
        if generation == session.sasl_generation:
            return
        if not sasl.still_valid(session.sasl_credential, session.principal):
            raise NotServed(f"the token {session.principal} authenticated with was revoked")
        session.sasl_generation = generation

    def reload_security(self) -> str:
        """Re-read the token and TLS files (on SIGHUP, after the gRPC listener's); raises
        SecurityConfigError and keeps the previous ones when a file is bad. Returns what
        was reloaded, for the log."""
        return self.security.reload()

    def start(self) -> None:
        self.listener.start()
        log.info("Kafka listener security: %s", self.security.describe())

    def stop(self) -> None:
        self.listener.stop()

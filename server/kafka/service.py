"""The Kafka listener of one broker: its socket shell, bound to the handlers and the core."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from logstore.server.kafka.connection import Request
from logstore.server.kafka.context import (
    Authorize,
    KafkaBroker,
    RequestContext,
    Session,
    advertised_endpoint,
)
from logstore.server.kafka.listener import KafkaListener
from logstore.server.kafka.router import dispatch
from logstore.server.kafka.settings import KafkaSettings

if TYPE_CHECKING:
    from logstore.server.broker import LogStoreServicer


class KafkaService:
    """Binds at construction (so the port is known before the broker registers), serves
    from `start()` until `stop()`."""

    def __init__(
        self,
        servicer: LogStoreServicer,
        settings: KafkaSettings,
        *,
        max_request_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        authorize: Authorize | None = None,
    ) -> None:
        self.listener = KafkaListener(
            settings.listen,
            self.serve,
            max_request_bytes=max_request_bytes,
            max_connections=settings.max_connections,
            idle_timeout_s=settings.connections_max_idle_ms / 1000,
            ssl_context=ssl_context,
        )
        self.broker = KafkaBroker(
            servicer, settings, advertised_endpoint(settings, self.listener.port), authorize
        )

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def advertised(self) -> tuple[str, int]:
        return self.broker.advertised

    def serve(self, session: Session, request: Request) -> Any:
        ctx = RequestContext(
            self.broker, session, request.version, request.client_id, request.correlation_id
        )
        return dispatch(ctx, request.api.key, request.body)

    def start(self) -> None:
        self.listener.start()

    def stop(self) -> None:
        self.listener.stop()

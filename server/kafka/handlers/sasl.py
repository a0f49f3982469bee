"""SaslHandshake (key 17) and SaslAuthenticate (key 36): SASL on the token principals.

Kafka's rules (`SaslServerAuthenticator`, `KafkaApis`), as the clients expect them:
- A listener without a token file offers no SASL: both APIs answer ILLEGAL_SASL_STATE and
  the connection goes on (Kafka's PLAINTEXT and SSL listeners do the same).
- SaslHandshake v1 agrees a mechanism, then SaslAuthenticate carries its bytes. An
  unoffered mechanism gets UNSUPPORTED_SASL_MECHANISM with the offered list, and bytes
  that do not authenticate get SASL_AUTHENTICATION_FAILED with a message naming no
  secret; either way the connection closes once the answer is out, after a short delay
  (Kafka's connection.failed.authentication.delay.ms) that slows guessing.
- SaslHandshake v0 is answered UNSUPPORTED_VERSION and the connection closes: after v0 a
  client sends raw SASL tokens outside Kafka's framing, which only clients older than
  Kafka 1.0 do. kafka-python, aiokafka, librdkafka (kcat's 2.0.2 included) and kafkajs
  all use v1 and SaslAuthenticate when the broker advertises them, as it does here.
- No re-authentication (KIP-368): `session_lifetime_ms` is 0, and a SaslHandshake on a
  connection that completed SASL answers ILLEGAL_SASL_STATE, as Kafka with its default
  connections.max.reauth.ms = 0.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from kafka import errors as kafka_errors
from kafka.protocol.sasl import (
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

from logstore.server.kafka.context import RequestContext, Session
from logstore.server.kafka.router import handles
from logstore.server.kafka.security import SaslFailure

log = logging.getLogger(__name__)

ILLEGAL_SASL_STATE: Final = kafka_errors.IllegalSaslStateError.errno
UNSUPPORTED_SASL_MECHANISM: Final = kafka_errors.UnsupportedSaslMechanismError.errno
SASL_AUTHENTICATION_FAILED: Final = kafka_errors.SaslAuthenticationFailedError.errno
UNSUPPORTED_VERSION: Final = kafka_errors.UnsupportedVersionError.errno
#: how long a failed authentication waits before its answer (s): Kafka's
#: connection.failed.authentication.delay.ms default (100 ms)
FAILED_AUTHENTICATION_DELAY_S: Final = 0.1
#: the longest mechanism name quoted in a log line (characters): the client chose it
_MAX_QUOTED = 64


@handles(SaslHandshakeRequest.API_KEY)
def sasl_handshake(ctx: RequestContext, request: Any) -> Any:
    session, sasl = ctx.session, ctx.broker.sasl
    if sasl is None or session.sasl_credential is not None:
        return _handshake(ctx, ILLEGAL_SASL_STATE, [])
    offered = list(sasl.mechanisms)
    if ctx.version == 0:
        session.closing = (
            "SaslHandshake v0 (raw SASL tokens outside Kafka's framing) is not served; "
            "Kafka clients since 1.0 use v1"
        )
        return _handshake(ctx, UNSUPPORTED_VERSION, offered)
    if session.sasl_exchange is not None:
        session.closing = "a second SaslHandshake during SASL authentication"
        return _handshake(ctx, ILLEGAL_SASL_STATE, offered)
    mechanism = request.mechanism or ""
    exchange = sasl.begin(mechanism)
    if exchange is None:
        session.closing = f"SASL mechanism {mechanism[:_MAX_QUOTED]!r} is not offered"
        return _handshake(ctx, UNSUPPORTED_SASL_MECHANISM, offered)
    session.sasl_mechanism = mechanism
    session.sasl_exchange = exchange
    session.authenticated = False  # nothing but SASL until the exchange completes
    return _handshake(ctx, 0, offered)


@handles(SaslAuthenticateRequest.API_KEY)
def sasl_authenticate(ctx: RequestContext, request: Any) -> Any:
    session, sasl = ctx.session, ctx.broker.sasl
    exchange = session.sasl_exchange
    if sasl is None or exchange is None:
        if not session.authenticated:
            session.closing = "SaslAuthenticate before SaslHandshake"
            return _authenticate(ctx, ILLEGAL_SASL_STATE, "SaslAuthenticate before SaslHandshake")
        why = "no SASL authentication is in progress on this connection"
        return _authenticate(ctx, ILLEGAL_SASL_STATE, why)
    generation = sasl.tokens.generation  # before checking: a reload after it is seen later
    try:
        answer = exchange.evaluate(bytes(request.auth_bytes or b""))
    except SaslFailure as exc:
        return _refuse(ctx, str(exc))
    if exchange.principal is not None:
        _authenticated(session, exchange.principal, exchange.credential, generation)
    return _authenticate(ctx, 0, None, answer)


def _authenticated(
    session: Session, principal: str, credential: bytes | None, generation: int
) -> None:
    session.principal = principal
    session.sasl_credential = credential
    session.sasl_generation = generation
    session.sasl_exchange = None
    session.authenticated = True
    log.debug(
        "Kafka connection from %s authenticated as %s (SASL/%s)",
        session.peer,
        principal,
        session.sasl_mechanism,
    )


def _refuse(ctx: RequestContext, message: str) -> Any:
    session = ctx.session
    session.sasl_exchange = None
    session.closing = f"SASL/{session.sasl_mechanism} authentication failed: {message}"
    time.sleep(FAILED_AUTHENTICATION_DELAY_S)
    return _authenticate(ctx, SASL_AUTHENTICATION_FAILED, message)


def _handshake(ctx: RequestContext, code: int, mechanisms: list[str]) -> Any:
    return SaslHandshakeResponse(version=ctx.version, error_code=code, mechanisms=mechanisms)


def _authenticate(
    ctx: RequestContext, code: int, message: str | None, auth_bytes: bytes = b""
) -> Any:
    fields: dict[str, Any] = {
        "error_code": code,
        "error_message": message,
        "auth_bytes": auth_bytes,
    }
    if ctx.version >= 1:
        fields["session_lifetime_ms"] = 0  # no re-authentication (KIP-368)
    return SaslAuthenticateResponse(version=ctx.version, **fields)

"""SASL on the Kafka listener without sockets: PLAIN over the token file, the SaslHandshake
and SaslAuthenticate handlers, the gate before authentication, and token revocation.

Requests are encoded by kafka-python's classes (as a client would) and go through the
real connection state machine, router, handlers and `KafkaService.serve`, over a real
servicer on a temporary data dir; only the socket is left out.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.protocol.metadata import ApiVersionsRequest, MetadataRequest
from kafka.protocol.sasl import SaslAuthenticateRequest, SaslHandshakeRequest

from logstore.server.broker import LogStoreServicer
from logstore.server.groups.coordinator import GroupCoordinator
from logstore.server.groups.offsets_store import OffsetStore
from logstore.server.kafka.connection import KafkaConnection, Request
from logstore.server.kafka.context import ANONYMOUS, Session
from logstore.server.kafka.router import NotServed
from logstore.server.kafka.security import (
    KafkaSecurity,
    PlainExchange,
    SaslAuthenticator,
    SaslFailure,
    TokenPrincipals,
    certificate_principal,
)
from logstore.server.kafka.service import KafkaService
from logstore.server.kafka.settings import KafkaSettings
from logstore.server.producer_ids import ProducerIdManager
from logstore.server.security.auth import token_digest
from logstore.server.security.settings import SecurityConfigError, SecuritySettings
from logstore.storage.log_manager import LogManager

ALICE_TOKEN = "alice-s3cret-token"
BOB_TOKEN = "bob-s3cret-token"
TOKENS = {ALICE_TOKEN: "User:alice", BOB_TOKEN: "User:bob"}

ILLEGAL_SASL_STATE = kafka_errors.IllegalSaslStateError.errno
UNSUPPORTED_SASL_MECHANISM = kafka_errors.UnsupportedSaslMechanismError.errno
SASL_AUTHENTICATION_FAILED = kafka_errors.SaslAuthenticationFailedError.errno
UNSUPPORTED_VERSION = kafka_errors.UnsupportedVersionError.errno


def digests(tokens: dict[str, str]) -> dict[bytes, str]:
    return {token_digest(t): p for t, p in tokens.items()}


def plain(username: str, password: str, authzid: str = "") -> bytes:
    return f"{authzid}\0{username}\0{password}".encode()


# --- PLAIN -------------------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["alice", "User:alice"])
def test_plain_authenticates_the_tokens_principal(username: str) -> None:
    exchange = PlainExchange(TokenPrincipals(digests(TOKENS)))
    assert exchange.evaluate(plain(username, ALICE_TOKEN, authzid=username)) == b""
    assert exchange.principal == "User:alice"
    assert exchange.credential == token_digest(ALICE_TOKEN)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (plain("alice", "not-a-token"), "Invalid username or password"),
        (plain("bob", ALICE_TOKEN), "the username is not the name of the token's principal"),
        (plain("alice", ALICE_TOKEN, authzid="bob"), "authorization id that is different"),
        (plain("", ALICE_TOKEN), "username not specified"),
        (plain("alice", ""), "password not specified"),
        (b"alice\0" + ALICE_TOKEN.encode(), "expected 3 tokens, got 2"),
        (plain("alice", ALICE_TOKEN) + b"\0extra", "expected 3 tokens, got 4"),
        (b"\0alice\0\xff\xfe" + ALICE_TOKEN.encode(), "not UTF-8"),
        (b"", "expected 3 tokens, got 1"),
    ],
)
def test_plain_refusals_say_why_without_naming_the_token(message: bytes, why: str) -> None:
    exchange = PlainExchange(TokenPrincipals(digests(TOKENS)))
    with pytest.raises(SaslFailure, match=why) as refused:
        exchange.evaluate(message)
    assert ALICE_TOKEN not in str(refused.value)
    assert exchange.principal is None and exchange.credential is None


def test_plain_takes_one_message() -> None:
    exchange = PlainExchange(TokenPrincipals(digests(TOKENS)))
    exchange.evaluate(plain("alice", ALICE_TOKEN))
    with pytest.raises(SaslFailure, match="one message"):
        exchange.evaluate(plain("bob", BOB_TOKEN))
    assert exchange.principal == "User:alice"


def test_only_plain_is_offered() -> None:
    sasl = SaslAuthenticator(TokenPrincipals(digests(TOKENS)))
    assert sasl.mechanisms == ("PLAIN",)
    assert isinstance(sasl.begin("PLAIN"), PlainExchange)
    assert sasl.begin("plain") is None  # mechanism names are case-sensitive, as in Kafka
    assert sasl.begin("GSSAPI") is None


def test_token_generation_grows_with_every_replace() -> None:
    tokens = TokenPrincipals(digests(TOKENS))
    sasl = SaslAuthenticator(tokens)
    alice = token_digest(ALICE_TOKEN)
    assert (tokens.generation, len(tokens)) == (0, 2)
    tokens.replace(digests({ALICE_TOKEN: "User:alice"}))
    assert (tokens.generation, len(tokens)) == (1, 1)
    assert sasl.still_valid(alice, "User:alice")
    tokens.replace(digests({ALICE_TOKEN: "User:mallory"}))
    assert not sasl.still_valid(alice, "User:alice")
    tokens.replace({})
    assert tokens.generation == 3
    assert not sasl.still_valid(alice, "User:alice")


# --- sessions -----------------------------------------------------------------------------------


def test_certificate_principal_is_the_subject_cn() -> None:
    certificate = {
        "subject": ((("organizationName", "Acme"),), (("commonName", "alice"),)),
        "issuer": ((("commonName", "ca"),),),
    }
    assert certificate_principal(certificate) == "User:alice"
    assert certificate_principal({"subject": ((("organizationName", "Acme"),),)}) is None
    assert certificate_principal({}) is None
    assert certificate_principal(None) is None


def test_a_session_needs_sasl_only_where_tokens_are_configured() -> None:
    with_tokens = KafkaSecurity(SecuritySettings(), sasl=SaslAuthenticator(TokenPrincipals({})))
    fresh = with_tokens.open_session("127.0.0.1:5000", False, None)
    assert (fresh.principal, fresh.authenticated) == (ANONYMOUS, False)
    by_certificate = with_tokens.open_session("127.0.0.1:5000", True, "User:alice")
    assert (by_certificate.principal, by_certificate.authenticated) == ("User:alice", True)
    open_listener = KafkaSecurity(SecuritySettings()).open_session("127.0.0.1:5000", False, None)
    assert (open_listener.principal, open_listener.authenticated) == (ANONYMOUS, True)


def test_reload_rereads_the_tokens_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(f'[tokens]\n"{ALICE_TOKEN}" = "User:alice"\n')
    tokens = TokenPrincipals(digests({ALICE_TOKEN: "User:alice"}))
    security = KafkaSecurity(SecuritySettings(auth_tokens=path), sasl=SaslAuthenticator(tokens))
    path.write_text(f'[tokens]\n"{BOB_TOKEN}" = "User:bob"\n')
    assert security.reload() == "1 tokens"
    assert tokens.principal(token_digest(BOB_TOKEN)) == "User:bob"
    assert tokens.principal(token_digest(ALICE_TOKEN)) is None
    path.write_text("[tokens\n")
    with pytest.raises(SecurityConfigError, match="cannot read auth tokens file"):
        security.reload()
    assert tokens.principal(token_digest(BOB_TOKEN)) == "User:bob"
    assert tokens.generation == 1


# --- the handlers, through the connection and the service ---------------------------------------


@pytest.fixture
def servicer(tmp_path: Path) -> Iterator[LogStoreServicer]:
    manager = LogManager(tmp_path / "data")
    try:
        yield LogStoreServicer(
            manager,
            OffsetStore(manager),
            ProducerIdManager(tmp_path / "producer-id-block"),
            GroupCoordinator(partition_counts=lambda _topic: None),
        )
    finally:
        manager.close()


def service_for(servicer: LogStoreServicer, tokens: dict[str, str] | None) -> KafkaService:
    """A Kafka service over `servicer` (bound to a free port, never started)."""
    sasl = None if tokens is None else SaslAuthenticator(TokenPrincipals(digests(tokens)))
    security = KafkaSecurity(SecuritySettings(), sasl=sasl)
    service = KafkaService(
        servicer,
        KafkaSettings("127.0.0.1:0", auto_create_topics=False),
        max_request_bytes=1024 * 1024,
        security=security,
    )
    service.listener.stop()  # only its bound socket: no connection ever reaches it
    return service


@pytest.fixture
def service(servicer: LogStoreServicer) -> KafkaService:
    return service_for(servicer, TOKENS)


def decoded(request: Any, correlation_id: int = 1) -> Request:
    """`request` as the connection decodes it from a client's bytes."""
    request.with_header(correlation_id=correlation_id, client_id="test")
    connection = KafkaConnection(max_request_bytes=1024 * 1024)
    connection.receive_data(bytes(request.encode(header=True, framed=True)))
    event = connection.next_event()
    assert isinstance(event, Request), event
    return event


def ask(service: KafkaService, session: Session, request: Any) -> Any:
    """The response `service` gives `session` for `request`, decoded as a client would."""
    event = decoded(request)
    response = service.serve(session, event)
    assert response is not None
    wire = KafkaConnection(1024).encode_response(event, response)
    return event.api.response.decode(io.BytesIO(wire[4:]), version=event.version, header=True)


def new_session(service: KafkaService) -> Session:
    return service.security.open_session("127.0.0.1:40000", False, None)


def authenticate(service: KafkaService, session: Session, username: str, token: str) -> Any:
    shake = ask(service, session, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
    assert (shake.error_code, shake.mechanisms) == (0, ["PLAIN"])
    return ask(
        service, session, SaslAuthenticateRequest(version=1, auth_bytes=plain(username, token))
    )


def test_only_sasl_and_api_versions_before_authentication(service: KafkaService) -> None:
    session = new_session(service)
    assert ask(service, session, ApiVersionsRequest(version=0)).error_code == 0
    with pytest.raises(NotServed, match="before SASL authentication"):
        service.serve(session, decoded(MetadataRequest(version=1, topics=None)))


def test_plain_exchange_authenticates_the_connection(service: KafkaService) -> None:
    session = new_session(service)
    answer = authenticate(service, session, "alice", ALICE_TOKEN)
    assert (answer.error_code, answer.error_message, answer.auth_bytes) == (0, None, b"")
    assert answer.session_lifetime_ms == 0  # no re-authentication (KIP-368)
    assert (session.principal, session.authenticated, session.closing) == ("User:alice", True, None)
    assert len(ask(service, session, MetadataRequest(version=1, topics=None)).brokers) == 1


def test_wrong_token_fails_and_closes_after_the_answer(service: KafkaService) -> None:
    session = new_session(service)
    answer = authenticate(service, session, "alice", "guessed")
    assert answer.error_code == SASL_AUTHENTICATION_FAILED
    assert answer.error_message == "Authentication failed: Invalid username or password"
    assert session.closing is not None and "authentication failed" in session.closing
    assert (session.authenticated, session.principal) == (False, ANONYMOUS)


def test_saslauthenticate_v0_answers_without_session_lifetime(service: KafkaService) -> None:
    session = new_session(service)
    ask(service, session, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
    request = SaslAuthenticateRequest(version=0, auth_bytes=plain("bob", BOB_TOKEN))
    answer = ask(service, session, request)
    assert (answer.error_code, session.principal) == (0, "User:bob")


def test_an_unoffered_mechanism_is_refused_with_the_offered_ones(service: KafkaService) -> None:
    session = new_session(service)
    answer = ask(service, session, SaslHandshakeRequest(version=1, mechanism="SCRAM-SHA-512"))
    assert (answer.error_code, answer.mechanisms) == (UNSUPPORTED_SASL_MECHANISM, ["PLAIN"])
    assert session.closing == "SASL mechanism 'SCRAM-SHA-512' is not offered"


def test_handshake_v0_is_refused_and_closes(service: KafkaService) -> None:
    session = new_session(service)
    answer = ask(service, session, SaslHandshakeRequest(version=0, mechanism="PLAIN"))
    assert answer.error_code == UNSUPPORTED_VERSION
    assert session.closing is not None and "SaslHandshake v0" in session.closing


def test_authenticate_before_handshake_is_an_illegal_state(service: KafkaService) -> None:
    session = new_session(service)
    request = SaslAuthenticateRequest(version=1, auth_bytes=plain("alice", ALICE_TOKEN))
    answer = ask(service, session, request)
    assert answer.error_code == ILLEGAL_SASL_STATE
    assert session.closing is not None and not session.authenticated


def test_no_second_sasl_exchange_on_an_authenticated_connection(service: KafkaService) -> None:
    session = new_session(service)
    authenticate(service, session, "alice", ALICE_TOKEN)
    again = ask(service, session, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
    assert (again.error_code, again.mechanisms) == (ILLEGAL_SASL_STATE, [])
    stray = ask(service, session, SaslAuthenticateRequest(version=1, auth_bytes=b"x"))
    assert stray.error_code == ILLEGAL_SASL_STATE
    assert (session.principal, session.authenticated, session.closing) == ("User:alice", True, None)


def test_a_second_handshake_mid_exchange_closes(service: KafkaService) -> None:
    session = new_session(service)
    ask(service, session, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
    again = ask(service, session, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
    assert again.error_code == ILLEGAL_SASL_STATE
    assert session.closing is not None


def test_without_tokens_sasl_is_not_offered(servicer: LogStoreServicer) -> None:
    service = service_for(servicer, None)
    session = new_session(service)
    assert session.authenticated
    answer = ask(service, session, SaslHandshakeRequest(version=1, mechanism="PLAIN"))
    assert (answer.error_code, answer.mechanisms) == (ILLEGAL_SASL_STATE, [])
    stray = ask(service, session, SaslAuthenticateRequest(version=1, auth_bytes=b"\0a\0b"))
    assert stray.error_code == ILLEGAL_SASL_STATE
    assert session.closing is None  # Kafka's PLAINTEXT listener answers and goes on
    assert len(ask(service, session, MetadataRequest(version=1, topics=None)).brokers) == 1


def test_a_revoked_token_ends_its_connection_at_the_next_request(service: KafkaService) -> None:
    alice, bob = new_session(service), new_session(service)
    authenticate(service, alice, "alice", ALICE_TOKEN)
    authenticate(service, bob, "bob", BOB_TOKEN)
    metadata = MetadataRequest(version=1, topics=None)
    tokens = service.security.sasl.tokens  # type: ignore[union-attr]
    tokens.replace(digests({ALICE_TOKEN: "User:alice", "new-bob-token": "User:bob"}))
    assert len(ask(service, alice, metadata).brokers) == 1
    with pytest.raises(NotServed, match="User:bob authenticated with was revoked"):
        service.serve(bob, decoded(metadata))
    # a token that now names another principal counts as revoked for its connections
    tokens.replace(digests({ALICE_TOKEN: "User:mallory"}))
    with pytest.raises(NotServed, match="User:alice authenticated with was revoked"):
        service.serve(alice, decoded(metadata))

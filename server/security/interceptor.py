"""The gRPC interceptor that authenticates every call and checks it against the ACLs.

- TLS: the listener serves TLS when a certificate and key are configured; with a client
  CA it requires and verifies client certificates (mutual TLS).
- Authentication: a client names itself with ``authorization: Bearer <token>`` call
  metadata; a token file (TOML, ``[tokens]`` table of ``"token" = "User:alice"``) maps
  tokens to principals. Without a token, a verified client certificate gives
  ``User:<subject CN>``. With a token file, a call carrying neither is refused
  (UNAUTHENTICATED); without one, such a call is ``User:ANONYMOUS``. Tokens are never
  logged, and only their SHA-256 digests are kept in memory.
- Authorization: with ACLs enabled, every LogStore RPC is mapped (`RULES`) to the
  resources and operations it needs, checked against `logstore.acls.Authorizer`;
  a streamed request is checked message by message. List RPCs answer only what the
  principal may describe. Refusals are PERMISSION_DENIED naming principal, operation and
  resource. An RPC without a rule is refused: new RPCs fail closed.

Credentials rotate without a restart: `BrokerSecurity.reload` (SIGHUP) re-reads the token
and TLS files, all or nothing. Health checking and reflection stay open (TLS still
applies): they reveal no data.
`SecurityInterceptor` also serves the ACL management RPCs (CreateAcls, DeleteAcls,
DescribeAcls) from the `AclStore`, so the servicer in broker.py knows nothing of ACLs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from logstore.acls import (
    ANONYMOUS,
)
from logstore.server.broker import MalformedRequest
from logstore.server.security.acl_rules import RESPONSE_FILTERS, RULES, denial
from logstore.server.security.acl_service import AclService
from logstore.server.security.acl_store import Authorizer
from logstore.server.security.auth import AUTHORIZATION_KEY, CN_KEY, token_digest
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LogStore"].full_name

#: the same refusal of the same caller host is logged at most this often (s)
REFUSAL_LOG_INTERVAL_S = 60.0


class _RefusalLog:
    """Says which refusals to log: at most one per REFUSAL_LOG_INTERVAL_S for the same
    (caller host, reason), counting the ones left out. A misconfigured broker or client
    retrying every few hundred ms must not flood the log, yet its first refusal is told."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (host, reason) -> (time.monotonic() last logged (s), refusals left out since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def due(self, peer: str, reason: str) -> str | None:
        """None to leave this refusal out; else a suffix for its log line, naming how
        many were left out since the last one logged ("" when none was)."""
        host = peer.rpartition(":")[0] or peer  # "ipv4:127.0.0.1:53412": not the port
        key = (host, reason)
        now = time.monotonic()
        with self._lock:
            last, skipped = self._seen.get(key, (None, 0))
            if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
                self._seen[key] = (last, skipped + 1)
                return None
            if len(self._seen) > 10_000:  # unbounded callers must not grow memory forever
                self._seen.clear()
            self._seen[key] = (now, 0)
        return f" ({skipped} more like it since)" if skipped else ""


class SecurityInterceptor(grpc.ServerInterceptor):
    """Authenticates and authorizes LogStore RPCs; serves the ACL management RPCs."""

    def __init__(
        self,
        acl_service: AclService,
        tokens: dict[bytes, str] | None,
        authorizer: Authorizer | None,
    ) -> None:
        self._acl_handlers = acl_service.handlers()
        self._tokens = tokens
        #: bumped by every `replace_tokens`
        self._token_generation = 0
        self._authorizer = authorizer
        #: whether any call needs more than passing through
        self.active = tokens is not None or authorizer is not None
        self._prefix = f"/{SERVICE_NAME}/"
        self._refusals = _RefusalLog()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if not method.startswith(self._prefix):
            return continuation(handler_call_details)  # health, reflection: open
        name = method[len(self._prefix) :]
        handler = self._acl_handlers.get(name) or continuation(handler_call_details)
        if handler is None or not self.active:
            return handler
        return self._guard(handler, name)

    def replace_tokens(self, tokens: dict[bytes, str]) -> None:
        """Serve `tokens` from the next call on (a token file was re-read). Open streams
        authenticate again at their next message, so a revoked token ends them."""
        self._tokens = tokens
        self._token_generation += 1

    # --- who is calling --------------------------------------------------------------------

    def principal(self, context: grpc.ServicerContext) -> str:
        """The caller's principal; aborts with UNAUTHENTICATED when it cannot be trusted."""
        token: str | None = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTHORIZATION_KEY:
                scheme, _, rest = str(value).partition(" ")
                if scheme.lower() != "bearer" or not rest.strip():
                    self._refuse(context, "authorization metadata is not 'Bearer <token>'")
                token = rest.strip()
        if token is not None and self._tokens is not None:
            found = self._tokens.get(token_digest(token))
            if found is None:
                self._refuse(context, "unknown token")
            return found  # type: ignore[return-value]  # _refuse raises
        names = (context.auth_context() or {}).get(CN_KEY)
        if names:
            return f"User:{names[0].decode(errors='replace')}"
        if self._tokens is not None:
            self._refuse(context, "missing bearer token (send 'authorization: Bearer <token>')")
        return ANONYMOUS

    def _refuse(self, context: grpc.ServicerContext, why: str) -> None:
        peer = context.peer()
        more = self._refusals.due(peer, why)
        if more is not None:
            log.info("refused a call from %s: %s%s", peer, why, more)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, why)

    # --- what it may do --------------------------------------------------------------------

    def _check(self, principal: str, name: str, request: Any, context: Any) -> None:
        authorizer = self._authorizer
        if authorizer is None or isinstance(request, MalformedRequest):
            return  # unparseable bytes: the handler answers INVALID_ARGUMENT, naming no data
        rule = RULES.get(name)
        if rule is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{name} has no access rule")
        for resource_type, resource, operation in rule(request):  # type: ignore[misc]
            if not authorizer.authorize(principal, resource_type, resource, operation):
                message = denial(principal, resource_type, resource, operation, name)
                more = self._refusals.due(context.peer(), message)
                if more is not None:
                    log.info("denied %s: %s%s", name, message, more)
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    def _trim(self, principal: str, name: str, response: Any) -> Any:
        trim = RESPONSE_FILTERS.get(name)
        authorizer = self._authorizer
        if trim is not None and authorizer is not None and response is not None:
            trim(response, lambda t, n, o: authorizer.authorize(principal, t, n, o))
        return response

    def _checked(
        self,
        principal: str,
        name: str,
        requests: Iterator[Any],
        context: Any,
        generation: int,
    ) -> Iterator[Any]:
        for request in requests:
            if generation != self._token_generation:
                generation = self._token_generation
                if self.principal(context) != principal:  # aborts if the token is gone
                    self._refuse(context, "the token now names another principal")
            self._check(principal, name, request, context)
            yield request

    def _guard(self, handler: grpc.RpcMethodHandler, name: str) -> grpc.RpcMethodHandler:
        """`handler`, authenticating the caller and checking every request it reads."""
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            inner_ss = handler.stream_stream

            def stream_stream(requests: Iterator[Any], context: Any) -> Any:
                generation = self._token_generation  # before authenticating
                principal = self.principal(context)
                # A stream's first response may be long in coming: its initial metadata
                # tells the client now that the call was taken and authenticated.
                context.send_initial_metadata(())
                return inner_ss(
                    self._checked(principal, name, requests, context, generation), context
                )

            return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)
        if handler.request_streaming:
            inner_su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: Any) -> Any:
                generation = self._token_generation  # before authenticating
                principal = self.principal(context)
                response = inner_su(
                    self._checked(principal, name, requests, context, generation), context
                )
                return self._trim(principal, name, response)

            return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
        if handler.response_streaming:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: Any) -> Any:
                principal = self.principal(context)
                self._check(principal, name, request, context)
                return inner_us(request, context)

            return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: Any) -> Any:
            principal = self.principal(context)
            self._check(principal, name, request, context)
            return self._trim(principal, name, inner_uu(request, context))

        return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)

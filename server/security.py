"""TLS, authentication and ACL authorization for the broker's gRPC API.

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

import hashlib
import logging
import ssl
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from logstore import acls
from logstore.acls import (
    ALLOW,
    ANONYMOUS,
    CLUSTER,
    CLUSTER_NAME,
    GROUP,
    TOPIC,
    AclBinding,
    AclFilter,
    AclStore,
    Authorizer,
    InvalidAclError,
)
from logstore.errors import LogStoreError
from logstore.server.broker import MalformedRequest, lenient_parser, rejecting_malformed
from logstore.server.errors import abort
from logstore.v1 import logstore_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LogStore"].full_name
AUTHORIZATION_KEY = "authorization"
_CN_KEY = "x509_common_name"

#: (resource type, resource name, operation) one request needs
Need = tuple[str, str, str]
#: may the caller perform (resource type, name, operation)?
Allowed = Callable[[str, str, str], bool]


@dataclass
class SecuritySettings:
    """How `logstore serve` secures its listener (paths to PEM and TOML files)."""

    #: server certificate chain and private key (PEM); both or neither
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle (PEM) that client certificates must chain to; requires them (mutual TLS)
    tls_client_ca: Path | None = None
    #: TOML file with a [tokens] table mapping bearer tokens to principals
    auth_tokens: Path | None = None
    #: deny every request no ACL allows
    acls_enabled: bool = False
    #: principals that bypass ACLs (e.g. "User:admin")
    super_users: tuple[str, ...] = ()


class SecurityConfigError(LogStoreError):
    """The broker's TLS, token or ACL settings are unreadable or inconsistent."""


def load_tokens(path: Path) -> dict[bytes, str]:
    """SHA-256 digest of each token -> its principal, from a TOML ``[tokens]`` table."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SecurityConfigError(f"cannot read auth tokens file {path}: {exc}") from exc
    table = document.get("tokens")
    if not isinstance(table, dict) or not table:
        raise SecurityConfigError(
            f'auth tokens file {path} has no [tokens] table (token = "User:x")'
        )
    digests: dict[bytes, str] = {}
    for number, (token, principal) in enumerate(table.items(), start=1):
        # Name the entry by position: the token itself must not reach a log.
        if not isinstance(principal, str) or not token:
            raise SecurityConfigError(
                f'auth tokens file {path}: entry {number} is not token = "User:x"'
            )
        try:
            digests[_digest(token)] = acls.validate_principal(principal)
        except InvalidAclError as exc:
            raise SecurityConfigError(f"auth tokens file {path}: entry {number}: {exc}") from exc
    return digests


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes the listener serves: certificate chain, private key, client CA."""

    chain: bytes
    key: bytes
    client_ca: bytes | None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.chain)], root_certificates=self.client_ca
        )


def read_tls_files(settings: SecuritySettings) -> TlsFiles | None:
    """The listener's TLS files, checked as OpenSSL will use them (the key must match the
    certificate); None for plaintext. Raises SecurityConfigError naming what is wrong."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise SecurityConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise SecurityConfigError("TLS needs both --tls-cert and --tls-key")
    cert, key, ca = Path(settings.tls_cert), Path(settings.tls_key), settings.tls_client_ca

    def read() -> TlsFiles:
        return TlsFiles(cert.read_bytes(), key.read_bytes(), Path(ca).read_bytes() if ca else None)

    try:
        files = read()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key, password="")  # an encrypted key fails, no prompt
        if ca is not None:
            context.load_verify_locations(cafile=ca)
        again = read()  # what was checked must be what is served, not a file replaced since
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"TLS files: {exc}") from exc
    if again != files:
        raise SecurityConfigError("TLS files changed while they were read; try again")
    return files


class ReloadableTls:
    """Server credentials whose certificate, key and client CA can be replaced while the
    broker runs: gRPC asks `_next` before each new connection's handshake, and keeps the
    previous configuration when it answers None. Open connections are not affected."""

    def __init__(self, files: TlsFiles) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            files.configuration(),
            self._next,
            require_client_authentication=files.client_ca is not None,
        )

    def replace(self, files: TlsFiles) -> None:
        with self._lock:
            self._pending = files.configuration()

    def _next(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


# --- what each RPC needs ---------------------------------------------------------------------


def _topic_names(entries: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(e.topic for e in entries))


def _each_topic(operation: str, field: str = "topics") -> Callable[[Any], list[Need]]:
    def needs(request: Any) -> list[Need]:
        return [(TOPIC, t, operation) for t in _topic_names(getattr(request, field))]

    return needs


def _named_topic(operation: str) -> Callable[[Any], list[Need]]:
    return lambda request: [(TOPIC, request.name, operation)]


def _group(operation: str) -> Callable[[Any], list[Need]]:
    return lambda request: [(GROUP, request.group_id, operation)]


def _cluster(operation: str) -> Callable[[Any], list[Need]]:
    return lambda _request: [(CLUSTER, CLUSTER_NAME, operation)]


def _nothing(_request: Any) -> list[Need]:
    return []


def _commit_offsets(request: pb.CommitOffsetsRequest) -> list[Need]:
    return [(GROUP, request.group_id, "read"), *_each_topic("consume")(request)]


def _group_member(request: pb.GroupHeartbeatRequest) -> list[Need]:
    """A member acts for the group and names the topics it subscribes to: as in Kafka, it
    must see them, so a principal cannot learn a hidden topic's partitions from its
    assignment, nor take those partitions from members that may read them."""
    topics = dict.fromkeys(request.subscription.topics)
    return [(GROUP, request.group_id, "read"), *((TOPIC, t, "describe") for t in topics)]


def _fetch_committed(request: pb.FetchCommittedOffsetsRequest) -> list[Need]:
    return [(GROUP, request.group_id, "describe"), *_each_topic("describe")(request)]


def _reset_offsets(request: pb.ResetOffsetsRequest) -> list[Need]:
    # A dry run only reads; executing rewrites the group's position, as a commit does.
    group_op, topic_op = ("describe", "describe") if request.dry_run else ("read", "consume")
    return [(GROUP, request.group_id, group_op), *_each_topic(topic_op, "targets")(request)]


#: LogStore RPC name -> the (resource type, name, operation) triples a request needs.
#: InitProducerId only hands out an id: any authenticated principal may ask (each
#: produce is still checked per topic). ListTopics and ListGroups filter their answers.
RULES: dict[str, Callable[[Any], list[Need]]] = {
    "CreateTopic": _cluster("create"),
    "DeleteTopic": _named_topic("delete"),
    "ListTopics": _nothing,
    "DescribeTopic": _named_topic("describe"),
    "AlterTopicConfig": _named_topic("alter"),
    "AddPartitions": _named_topic("alter"),
    "InitProducerId": _nothing,
    "Produce": _each_topic("produce"),
    "ProduceStream": _each_topic("produce"),
    "Fetch": _each_topic("consume"),
    "FetchStream": _each_topic("consume"),
    "ListOffsets": _each_topic("describe"),
    "CommitOffsets": _commit_offsets,
    "FetchCommittedOffsets": _fetch_committed,
    "JoinGroup": _group_member,
    "Heartbeat": _group_member,
    "LeaveGroup": _group("read"),
    "ListGroups": _nothing,
    "DescribeGroup": _group("describe"),
    "DeleteGroup": _group("delete"),
    "ResetOffsets": _reset_offsets,
    "CreateAcls": _cluster("alter"),
    "DeleteAcls": _cluster("alter"),
    "DescribeAcls": _cluster("describe"),
}


def _keep(repeated: Any, wanted: Callable[[Any], bool]) -> None:
    kept = [item for item in repeated if wanted(item)]
    del repeated[:]
    repeated.extend(kept)


def _filter_topics(response: pb.ListTopicsResponse, allowed: Allowed) -> None:
    _keep(response.topics, lambda t: allowed(TOPIC, t.name, "describe"))


def _filter_groups(response: pb.ListGroupsResponse, allowed: Allowed) -> None:
    _keep(response.groups, lambda g: allowed(GROUP, g.group_id, "describe"))


def _filter_committed(response: pb.FetchCommittedOffsetsResponse, allowed: Allowed) -> None:
    # "Everything the group committed" must not reveal topics the caller may not see.
    _keep(response.offsets, lambda o: allowed(TOPIC, o.topic, "describe"))


#: RPC name -> trims its response to what the principal may describe
RESPONSE_FILTERS: dict[str, Callable[[Any, Allowed], None]] = {
    "ListTopics": _filter_topics,
    "ListGroups": _filter_groups,
    "FetchCommittedOffsets": _filter_committed,
}

_VERB = {"produce": "produce to", "consume": "consume from"}


def denial(principal: str, resource_type: str, name: str, operation: str) -> str:
    """The PERMISSION_DENIED message: who may not do what to which resource."""
    if resource_type == CLUSTER:
        what = "create topics" if operation == "create" else f"{operation} ACLs"
        return f"{principal} may not {what} ({operation} on the cluster)"
    return f"{principal} may not {_VERB.get(operation, operation)} {resource_type} {name}"


# --- ACL management RPCs ---------------------------------------------------------------------


def binding_from_proto(message: pb.AclBinding) -> AclBinding:
    name = message.resource_name
    if message.resource_type == CLUSTER and not name:
        name = CLUSTER_NAME
    return AclBinding(
        message.principal,
        message.resource_type,
        name,
        message.operation,
        message.permission or ALLOW,
    )


def binding_to_proto(binding: AclBinding) -> pb.AclBinding:
    return pb.AclBinding(**binding.to_dict())


def filter_from_proto(message: pb.AclFilter) -> AclFilter:
    return AclFilter(
        principal=message.principal or None,
        resource_type=message.resource_type or None,
        resource_name=message.resource_name or None,
        operation=message.operation or None,
        permission=message.permission or None,
    )


class AclService:
    """CreateAcls / DeleteAcls / DescribeAcls over the broker's `AclStore`."""

    def __init__(self, store: AclStore, enabled: bool) -> None:
        self.store = store
        self.enabled = enabled

    def _require_enabled(self, context: grpc.ServicerContext) -> None:
        if not self.enabled:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "ACLs are not enabled on this broker (start it with --acls-enabled)",
            )

    def create(
        self, request: pb.CreateAclsRequest, context: grpc.ServicerContext
    ) -> pb.CreateAclsResponse:
        self._require_enabled(context)
        try:
            bindings = [binding_from_proto(b) for b in request.acls]
            created = self.store.add(bindings)
        except (InvalidAclError, OSError) as exc:
            abort(context, exc)
        for binding in created:
            log.info("ACL added: %s", binding)
        return pb.CreateAclsResponse(created=[binding_to_proto(b) for b in created])

    def delete(
        self, request: pb.DeleteAclsRequest, context: grpc.ServicerContext
    ) -> pb.DeleteAclsResponse:
        self._require_enabled(context)
        try:
            deleted = self.store.remove(filter_from_proto(request.filter))
        except (InvalidAclError, OSError) as exc:
            abort(context, exc)
        for binding in deleted:
            log.info("ACL removed: %s", binding)
        return pb.DeleteAclsResponse(deleted=[binding_to_proto(b) for b in deleted])

    def describe(
        self, request: pb.DescribeAclsRequest, context: grpc.ServicerContext
    ) -> pb.DescribeAclsResponse:
        self._require_enabled(context)
        found = self.store.describe(filter_from_proto(request.filter))
        return pb.DescribeAclsResponse(acls=[binding_to_proto(b) for b in found])

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        def handler(method: Callable[..., Any], request_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                rejecting_malformed(method, streaming_request=False),
                request_deserializer=lenient_parser(request_type),
                response_serializer=lambda m: m.SerializeToString(),
            )

        return {
            "CreateAcls": handler(self.create, pb.CreateAclsRequest),
            "DeleteAcls": handler(self.delete, pb.DeleteAclsRequest),
            "DescribeAcls": handler(self.describe, pb.DescribeAclsRequest),
        }


# --- the interceptor -------------------------------------------------------------------------


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
            found = self._tokens.get(_digest(token))
            if found is None:
                self._refuse(context, "unknown token")
            return found  # type: ignore[return-value]  # _refuse raises
        names = (context.auth_context() or {}).get(_CN_KEY)
        if names:
            return f"User:{names[0].decode(errors='replace')}"
        if self._tokens is not None:
            self._refuse(context, "missing bearer token (send 'authorization: Bearer <token>')")
        return ANONYMOUS

    @staticmethod
    def _refuse(context: grpc.ServicerContext, why: str) -> None:
        log.info("refused a call from %s: %s", context.peer(), why)
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
                message = denial(principal, resource_type, resource, operation)
                log.info("denied %s: %s", name, message)
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


# --- the whole -------------------------------------------------------------------------------


class BrokerSecurity:
    """A broker's credentials, ACL store and interceptor, built from its settings.

    Raises `SecurityConfigError` (unreadable or inconsistent files) or `InvalidAclError` before
    anything is bound, so a misconfigured broker never starts open.
    """

    def __init__(self, settings: SecuritySettings, data_dir: Path) -> None:
        self.settings = settings
        tls = read_tls_files(settings)
        self._tls = None if tls is None else ReloadableTls(tls)
        self.credentials = None if self._tls is None else self._tls.credentials
        tokens = load_tokens(Path(settings.auth_tokens)) if settings.auth_tokens else None
        self.acl_store = AclStore(Path(data_dir))
        self.authorizer: Authorizer | None = None
        if settings.acls_enabled:
            self.authorizer = Authorizer(self.acl_store, settings.super_users)
        elif settings.super_users:
            raise SecurityConfigError("--super-users only means something with --acls-enabled")
        self.interceptor = SecurityInterceptor(
            AclService(self.acl_store, settings.acls_enabled), tokens, self.authorizer
        )

    def reload(self) -> str:
        """Re-read the token file and the TLS files (what `logstore serve` does on SIGHUP),
        all or nothing: if any file is unreadable or invalid this raises
        SecurityConfigError and the broker keeps serving what it had. Returns what was
        reloaded, for the log. New tokens apply from the next call; new TLS files from
        the next connection."""
        s = self.settings
        tokens = load_tokens(Path(s.auth_tokens)) if s.auth_tokens else None
        tls = read_tls_files(s) if self._tls is not None else None
        done = []
        if tokens is not None:
            self.interceptor.replace_tokens(tokens)
            done.append(f"{len(tokens)} tokens")
        if self._tls is not None and tls is not None:
            self._tls.replace(tls)
            done.append("TLS certificate" + (" and client CA" if tls.client_ca else ""))
        return ", ".join(done) or "nothing (no token or TLS files configured)"

    def add_port(self, server: grpc.Server, listen: str) -> int:
        """Bind `listen` with TLS when configured; the port bound (0 on failure)."""
        if self.credentials is None:
            return server.add_insecure_port(listen)
        return server.add_secure_port(listen, self.credentials)

    def describe(self) -> str:
        """One line for the log: what protects the listener (no secrets)."""
        s = self.settings
        tls = "mutual TLS" if s.tls_client_ca else "TLS" if self.credentials else "plaintext"
        auth = "bearer tokens" if s.auth_tokens else "none"
        if s.tls_client_ca:
            auth = f"{auth} + client certificates" if s.auth_tokens else "client certificates"
        acl = f"ACLs ({len(self.acl_store.bindings())} bindings)" if s.acls_enabled else "off"
        return f"transport {tls}, authentication {auth}, authorization {acl}"

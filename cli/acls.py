"""`logstore acls add|list|remove`, and the security options of `logstore serve`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from logstore.acls import (
    ALLOW,
    CLUSTER,
    CLUSTER_NAME,
    DENY,
    GROUP,
    TOPIC,
    AclBinding,
    AclFilter,
    InvalidAclError,
)
from logstore.cli.common import (
    bootstrap_option,
    fail,
    json_option,
    open_admin,
    print_json,
    print_table,
)

F = TypeVar("F", bound=Callable[..., Any])

_META_SERVE_SECURITY = "logstore.serve-security"
_COLUMNS = ("PRINCIPAL", "PERMISSION", "OPERATION", "RESOURCE-TYPE", "RESOURCE-NAME")


# --- choosing the resource ------------------------------------------------------------------


def _resource_options(func: F) -> F:
    """--topic NAME | --group NAME | --cluster: the resource an ACL is about."""
    func = click.option(
        "--cluster", "cluster", is_flag=True, help="The cluster (create topics, manage ACLs)."
    )(func)
    func = click.option(
        "--group", "group", metavar="NAME", help="A consumer group: exact, *, or prefix-*."
    )(func)
    return click.option(
        "--topic",
        "topic",
        metavar="NAME",
        help="A topic: exact name, *, or a prefix like orders-*.",
    )(func)


def _resource(
    topic: str | None, group: str | None, cluster: bool, required: bool
) -> tuple[str, str] | None:
    chosen = [
        (kind, name)
        for kind, name in (
            (TOPIC, topic),
            (GROUP, group),
            (CLUSTER, CLUSTER_NAME if cluster else None),
        )
        if name is not None
    ]
    if len(chosen) > 1:
        raise click.UsageError("give one of --topic, --group, --cluster")
    if not chosen:
        if required:
            raise click.UsageError("give one of --topic, --group, --cluster")
        return None
    return chosen[0]


def _rows(bindings: list[AclBinding]) -> list[tuple[str, str, str, str, str]]:
    return [
        (b.principal, b.permission, b.operation, b.resource_type, b.resource_name) for b in bindings
    ]


# --- the commands ---------------------------------------------------------------------------


@click.group()
def acls() -> None:
    """Manage access control lists (the broker must run with --acls-enabled).

    \b
    Examples:
      logstore acls add --principal User:alice --topic orders --operation produce
      logstore acls add --principal User:billing --group billing --operation read
      logstore acls add --principal User:ops --cluster --operation create
      logstore acls list --topic orders --json
      logstore acls remove --principal User:alice --topic orders
    """


_PRINCIPAL_HELP = "Type:name, e.g. User:alice (User:* for everyone); repeatable."
_OPERATION_HELP = (
    "topic: produce, consume, describe, alter, delete; group: read, describe, delete; "
    "cluster: create, alter, describe, cluster_action (brokers); or all. Repeatable."
)


@acls.command("add")
@bootstrap_option
@click.option("--principal", "principals", multiple=True, required=True, help=_PRINCIPAL_HELP)
@_resource_options
@click.option("--operation", "operations", multiple=True, required=True, help=_OPERATION_HELP)
@click.option("--deny", is_flag=True, help="Deny instead of allow (a deny beats every allow).")
def add(
    bootstrap: str,
    principals: tuple[str, ...],
    topic: str | None,
    group: str | None,
    cluster: bool,
    operations: tuple[str, ...],
    deny: bool,
) -> None:
    """Allow (or deny) principals operations on a resource."""
    resource = _resource(topic, group, cluster, required=True)
    assert resource is not None
    permission = DENY if deny else ALLOW
    try:
        bindings = [
            AclBinding(p, resource[0], resource[1], op.lower(), permission)
            for p in principals
            for op in operations
        ]
    except InvalidAclError as exc:
        raise click.UsageError(str(exc)) from None
    with open_admin(bootstrap) as admin:
        created = admin.create_acls(bindings)
    print_table(_COLUMNS, _rows(created))
    click.echo(f"added {len(created)} ACL(s), {len(bindings) - len(created)} already present")


@acls.command("list")
@bootstrap_option
@click.option("--principal", help="Only this principal's ACLs.")
@_resource_options
@json_option
def list_acls(
    bootstrap: str,
    principal: str | None,
    topic: str | None,
    group: str | None,
    cluster: bool,
    as_json: bool,
) -> None:
    """List ACLs, optionally only a principal's or a resource's (exact pattern match)."""
    resource = _resource(topic, group, cluster, required=False)
    selector = AclFilter(
        principal=principal,
        resource_type=resource[0] if resource else None,
        resource_name=resource[1] if resource else None,
    )
    with open_admin(bootstrap) as admin:
        found = admin.describe_acls(selector)
    if as_json:
        print_json([b.to_dict() for b in found])
    else:
        print_table(_COLUMNS, _rows(found))


@acls.command("remove")
@bootstrap_option
@click.option("--principal", help="Only this principal's ACLs.")
@_resource_options
@click.option("--operation", help="Only ACLs for this operation.")
@click.option("--deny", is_flag=True, help="Only deny ACLs.")
def remove(
    bootstrap: str,
    principal: str | None,
    topic: str | None,
    group: str | None,
    cluster: bool,
    operation: str | None,
    deny: bool,
) -> None:
    """Remove every ACL matching all the given fields (at least one)."""
    resource = _resource(topic, group, cluster, required=False)
    selector = AclFilter(
        principal=principal,
        resource_type=resource[0] if resource else None,
        resource_name=resource[1] if resource else None,
        operation=operation.lower() if operation else None,
        permission=DENY if deny else None,
    )
    if selector.is_empty():
        raise click.UsageError("give --principal, a resource, --operation or --deny")
    with open_admin(bootstrap) as admin:
        removed = admin.delete_acls(selector)
    if not removed:
        fail("no ACL matches")
    print_table(_COLUMNS, _rows(removed))
    click.echo(f"removed {len(removed)} ACL(s)")


# --- `logstore serve` security options ------------------------------------------------------

#: (flag, environment variable, help); broker-side names differ from the client's
#: LOGSTORE_TLS_* so one shell can run a broker and its clients
_SERVE_PATH_OPTIONS = (
    ("--tls-cert", "LOGSTORE_BROKER_TLS_CERT", "Server certificate chain (PEM); turns TLS on."),
    ("--tls-key", "LOGSTORE_BROKER_TLS_KEY", "Private key of --tls-cert (PEM)."),
    (
        "--tls-client-ca",
        "LOGSTORE_BROKER_TLS_CLIENT_CA",
        "CA bundle (PEM) client certificates must chain to; requires them (mutual TLS).",
    ),
    (
        "--auth-tokens",
        "LOGSTORE_AUTH_TOKENS",
        'TOML file whose [tokens] table maps bearer tokens to principals ("t0k3n" = '
        '"User:alice"); calls without a known token (or client certificate) are refused.',
    ),
    (
        "--inter-broker-tls-ca",
        "LOGSTORE_INTER_BROKER_TLS_CA",
        "Cluster mode with TLS: CA bundle (PEM) the other brokers' certificates must chain "
        "to when this broker connects to them (Kafka's inter-broker truststore) [default: "
        "--tls-client-ca, which with mutual TLS already signs every broker's certificate, "
        "as each broker presents its --tls-cert to the others as its client certificate; "
        "required with TLS but no --tls-client-ca]. Each broker's certificate must name "
        "the host it advertises, and with mutual TLS allow client authentication (checked "
        "at start). SIGHUP re-reads it.",
    ),
    (
        "--inter-broker-token-file",
        "LOGSTORE_INTER_BROKER_TOKEN_FILE",
        "Cluster mode: file holding the one bearer token this broker sends to the other "
        "brokers; required with --auth-tokens, whose table must map it to the broker "
        "principal (list that principal in --super-users with --acls-enabled). SIGHUP "
        "re-reads it.",
    ),
)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_META_SERVE_SECURITY, {})[param.name] = value
    return value


def serve_security_options(func: F) -> F:
    """TLS, token and ACL options for `logstore serve`, read back by `security_settings`."""
    func = click.option(
        "--super-users",
        envvar="LOGSTORE_SUPER_USERS",
        metavar="PRINCIPAL,...",
        expose_value=False,
        callback=_remember,
        help="Principals that bypass ACLs, comma-separated (e.g. User:admin); in cluster "
        "mode include the broker principal (Kafka's practice). Env: LOGSTORE_SUPER_USERS.",
    )(func)
    func = click.option(
        "--acls-enabled",
        is_flag=True,
        envvar="LOGSTORE_ACLS_ENABLED",
        expose_value=False,
        callback=_remember,
        help='Deny every request no ACL allows (config: authorizer = "acl"); in cluster '
        "mode the ACLs live in etcd, shared by every broker. Env: LOGSTORE_ACLS_ENABLED.",
    )(func)
    for flag, envvar, help_text in reversed(_SERVE_PATH_OPTIONS):
        func = click.option(
            flag,
            envvar=envvar,
            type=click.Path(dir_okay=False, exists=True),
            expose_value=False,
            callback=_remember,
            help=f"{help_text} Env: {envvar}.",
        )(func)
    return func


def _path(value: Any) -> Path | None:
    return Path(os.path.expanduser(str(value))) if value else None


def security_settings(file_conf: dict[str, Any]) -> Any:
    """The broker's `SecuritySettings`: command line (or env) first, then the config file.

    Config file keys: tls_cert, tls_key, tls_client_ca, auth_tokens, inter_broker_tls_ca,
    inter_broker_token_file (paths), authorizer = "acl" (or acls_enabled = true),
    super_users (list or comma string).
    """
    from logstore.server.security import SecuritySettings

    ctx = click.get_current_context()
    given: dict[str, Any] = ctx.meta.get(_META_SERVE_SECURITY, {})

    def pick(name: str) -> Any:
        return given.get(name) or file_conf.get(name)

    authorizer = str(file_conf.get("authorizer", "")).lower()
    if authorizer not in ("", "acl", "none"):
        raise click.ClickException(f'authorizer {authorizer!r}: use "acl" or "none"')
    super_users = pick("super_users") or ()
    if isinstance(super_users, str):
        super_users = [p for p in (s.strip() for s in super_users.split(",")) if p]
    return SecuritySettings(
        tls_cert=_path(pick("tls_cert")),
        tls_key=_path(pick("tls_key")),
        tls_client_ca=_path(pick("tls_client_ca")),
        auth_tokens=_path(pick("auth_tokens")),
        inter_broker_tls_ca=_path(pick("inter_broker_tls_ca")),
        inter_broker_token_file=_path(pick("inter_broker_token_file")),
        acls_enabled=bool(
            given.get("acls_enabled") or file_conf.get("acls_enabled") or authorizer == "acl"
        ),
        super_users=tuple(str(p) for p in super_users),
    )

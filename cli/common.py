"""What every client command shares: the broker option, error reporting and output."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from logstore.addresses import parse_host_port
from logstore.client._connection import (
    BOOTSTRAP_ENV,
    DEFAULT_BOOTSTRAP,
    TLS_CA_ENV,
    TLS_CERT_ENV,
    TLS_KEY_ENV,
    TOKEN_ENV,
    open_channel,
    parse_bootstrap,
)
from logstore.client.admin import Admin
from logstore.errors import BrokerUnavailableError, LogStoreError

#: how long the first request may take before the broker counts as unreachable (s): a
#: blackholed address would otherwise hang until the client's much longer request timeout
PROBE_TIMEOUT_S = 5.0
#: rich wraps tables to 80 columns when it cannot measure a terminal; piped output must not
#: be wrapped, or scripts splitting rows on whitespace would see broken lines
PIPE_WIDTH = 10_000
_META_BOOTSTRAP = "logstore.bootstrap"

F = TypeVar("F", bound=Callable[..., Any])


class CommandError(click.ClickException):
    """A failure reported as one `error: ...` line on stderr."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {one_line(self.format_message())}", err=True)


class BrokerDownError(CommandError):
    """The broker did not answer; the message is fixed so scripts can match it."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot reach broker at {address}")


def one_line(text: str) -> str:
    """Collapse a message onto one line: the error contract promises exactly one."""
    return " ".join(text.split())


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop the command with a one-line error and exit status `code`."""
    error = CommandError(message)
    error.exit_code = code
    raise error


# --- turning exceptions into one line ---------------------------------------------------------


def is_broker_down(exc: BaseException) -> bool:
    if isinstance(exc, BrokerUnavailableError):
        return True
    return isinstance(exc, grpc.RpcError) and _rpc_code(exc) == grpc.StatusCode.UNAVAILABLE


def _rpc_code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def as_command_error(exc: BaseException, bootstrap: str | None) -> CommandError:
    """The one-line error a user sees for `exc`."""
    if is_broker_down(exc):
        return BrokerDownError(bootstrap or DEFAULT_BOOTSTRAP)
    if isinstance(exc, LogStoreError):
        return CommandError(str(exc) or type(exc).__name__)
    if isinstance(exc, grpc.RpcError):
        details = getattr(exc, "details", None)
        text = details() if callable(details) else str(exc)
        return CommandError(f"broker error: {text}")
    if isinstance(exc, OSError):
        return CommandError(str(exc))
    # Anything else is a bug: still one line, with the way to get the full story.
    return CommandError(f"{type(exc).__name__}: {exc} (run with --debug for a traceback)")


def remember_bootstrap(address: str) -> None:
    """Note the broker address so errors raised anywhere later can name it."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_META_BOOTSTRAP] = address


def current_bootstrap(ctx: click.Context) -> str | None:
    return ctx.meta.get(_META_BOOTSTRAP)


# --- options ----------------------------------------------------------------------------------


def bootstrap_option(func: F) -> F:
    """`--bootstrap-server HOST:PORT[,HOST:PORT...]` (env LOGSTORE_BOOTSTRAP) and the
    security options."""
    func = security_options(func)
    return click.option(
        "--bootstrap-server",
        "bootstrap",
        envvar=BOOTSTRAP_ENV,
        default=DEFAULT_BOOTSTRAP,
        show_default=True,
        show_envvar=True,
        metavar="HOST:PORT[,...]",
        callback=check_bootstrap,
        help="Broker address, or a comma-separated list of a cluster's brokers (any live "
        "one is enough).",
    )(func)


#: (flag, environment variable, metavar, help) of the options that secure a connection
_SECURITY_OPTIONS = (
    (
        "--tls-ca",
        TLS_CA_ENV,
        "PEM",
        "CA bundle the broker's certificate must chain to; turns TLS on.",
    ),
    ("--tls-cert", TLS_CERT_ENV, "PEM", "Client certificate for mutual TLS (with --tls-key)."),
    ("--tls-key", TLS_KEY_ENV, "PEM", "Private key of --tls-cert."),
    (
        "--token",
        TOKEN_ENV,
        "TOKEN",
        "Bearer token naming the caller (prefer the environment variable: "
        "command lines are visible to other local users).",
    ),
)


def security_options(func: F) -> F:
    """`--tls-ca`, `--tls-cert`, `--tls-key`, `--token` (env LOGSTORE_TLS_CA, ...)."""
    for flag, envvar, metavar, help_text in reversed(_SECURITY_OPTIONS):
        func = click.option(
            flag,
            envvar=envvar,
            show_envvar=True,
            metavar=metavar,
            expose_value=False,
            callback=_export_security_value,
            help=help_text,
        )(func)
    return func


def _export_security_value(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    # Admin, Producer and Consumer fall back to these variables, so exporting them here
    # reaches every client the command builds, without threading them through each one.
    if value and param.envvar:
        os.environ[str(param.envvar)] = value
    return value


def check_listen(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback for a listener's HOST:PORT (port 0 picks a free port)."""
    if value is not None:
        try:
            parse_host_port(value, port_zero=True)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


def check_bootstrap(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback for a bootstrap list: HOST:PORT, or several joined by commas."""
    try:
        parse_bootstrap(value)
    except LogStoreError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    ctx.meta[_META_BOOTSTRAP] = value
    return value


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def parse_key_values(values: Iterable[str], what: str) -> dict[str, str]:
    """`k=v` strings -> dict; a string without `=` is a usage error."""
    parsed: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{what} {item!r} is not KEY=VALUE")
        parsed[key] = value
    return parsed


# --- talking to the broker ----------------------------------------------------------------------


def setup_client_logging() -> None:
    """Show client warnings on stderr; --debug also shows the clients' debug log."""
    ctx = click.get_current_context(silent=True)
    debug = bool(ctx and ctx.find_root().params.get("debug"))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def probe_broker(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """The first broker of the bootstrap list `address` that answers a health check, each
    given `timeout_s` (s); "cannot reach broker at ..." when none does."""
    remember_bootstrap(address)
    setup_client_logging()
    for candidate in parse_bootstrap(address):
        if _answers_health_check(candidate, timeout_s):
            return candidate
    raise BrokerDownError(address)


def _answers_health_check(address: str, timeout_s: float) -> bool:
    """Whether a LogStore broker answers at `address`; False when nothing does. Something
    else answering there is an error of its own: it is no broker to skip over silently."""
    channel = open_channel(address)
    try:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
        )
    except grpc.RpcError as exc:
        if _rpc_code(exc) in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return False
        # Every LogStore broker serves health checks: whatever refused one is something else.
        details = getattr(exc, "details", None)
        text = details() if callable(details) else str(exc)
        raise CommandError(f"no LogStore broker answers at {address}: {text}") from None
    finally:
        channel.close()
    return True


def open_admin(address: str) -> Admin:
    """An Admin client for the bootstrap list `address`, starting at a broker known to
    answer (the others stay in its list, to move on to should that one go)."""
    live = probe_broker(address)
    addresses = parse_bootstrap(address)
    start = addresses.index(live)
    return Admin(",".join(addresses[start:] + addresses[:start]))


# --- output -------------------------------------------------------------------------------------


def console(err: bool = False) -> Console:
    """A rich console that never wraps or colours output going to a pipe or file."""
    stream = sys.stderr if err else sys.stdout
    if stream.isatty():
        return Console(file=stream, highlight=False)
    return Console(file=stream, width=PIPE_WIDTH, no_color=True, highlight=False, soft_wrap=True)


def make_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Table:
    """A borderless table like Kafka's tools print: a header row, columns split by spaces."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(dash(cell) for cell in row))
    return table


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    console().print(make_table(columns, rows))


def dash(value: object) -> str:
    """Kafka prints "-" where a value is missing (None, "" or a -1 sentinel)."""
    if value is None or value == "" or value == -1:
        return "-"
    return str(value)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def note(message: str) -> None:
    """A line for the human on stderr, so stdout stays clean for pipes."""
    click.echo(message, err=True)


# --- the command group ------------------------------------------------------------------------


class LogStoreGroup(click.Group):
    """A click group whose failures end in one `error: ...` line and a non-zero status.

    Exceptions from the clients become that line unless the root `--debug` flag asks for
    the traceback; usage errors are folded onto one line with a pointer to `--help`.
    `lazy_commands` maps command names to "module:attribute", imported on first use.
    """

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None or cmd_name in self.commands:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # the reader left (`| head`): stop quietly, as click does for its own output
            silence_stdout()
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                raise
            raise as_command_error(exc, current_bootstrap(ctx)) from exc

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.Abort:
            sys.exit(130)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"error: {one_line(exc.format_message())}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        sys.exit(result if isinstance(result, int) else 0)

"""Groups of `logstore serve` options that are read back as one table, not as arguments.

A group's options (cluster mode, the Kafka listener) each name a config-file key too; the
command line and environment win over the file, so the group's values must be told apart
from defaults: every option defaults to None and only values actually given are kept, in
`ctx.meta` under the group's key, for `given_options` to return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: (name, which is also the config file key; environment variable; flags; metavar; click
#: type (click.BOOL for an --x/--no-x pair); help)
ServeOption = tuple[str, str, tuple[str, ...], str | None, Any, str]


def remembered_options(options: Sequence[ServeOption], meta_key: str) -> Callable[[F], F]:
    """A decorator adding `options` to a command, each value given kept under `meta_key`."""

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None and param.name is not None:
            ctx.meta.setdefault(meta_key, {})[param.name] = value
        return value

    def decorate(func: F) -> F:
        for name, envvar, flags, metavar, kind, help_text in reversed(options):
            func = click.option(
                *flags,
                name,
                type=kind,
                metavar=metavar,
                default=None,
                envvar=envvar,
                expose_value=False,
                callback=remember,
                help=f"{help_text} Env: {envvar}.",
            )(func)
        return func

    return decorate


def given_options(meta_key: str) -> dict[str, Any]:
    """The options of the group `meta_key` the running command got (flags or environment)."""
    ctx = click.get_current_context()
    return dict(ctx.meta.get(meta_key, {}))

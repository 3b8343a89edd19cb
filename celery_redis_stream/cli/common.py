"""What the `celery redis-stream` commands share: the configuration, a client, clean errors, output, rich cells.

rich is imported where a table or a progress bar is drawn, never at module
level: `celery worker` imports the CLI (it loads every celery.commands entry
point), and a worker has no use for rich and its dependencies.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
from redis.exceptions import RedisError

from ..client.connection import Client, connect, mapping, text
from ..config import BridgeConfig, StreamConfig, load_config
from ..exceptions import StreamConfigError
from ..redact import redact
from .terminal import safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = [
    "Client", "cell", "client_for", "config_of", "confirm", "console", "echo", "mapped",
    "redis_errors", "rows", "seconds", "table",
]  # fmt: skip


def config_of(ctx: click.Context) -> BridgeConfig:
    app = ctx.obj.app
    try:
        # The CLI may run where the tasks are not imported; only the worker checks registration.
        return load_config(app, check_registered=False)
    except StreamConfigError as exc:
        raise click.ClickException(safe(str(exc))) from exc


def client_for(config: BridgeConfig) -> Client:
    client: Client = connect(config, socket_timeout=10, client_name="celery-redis-stream-cli")
    return client


def mapped(config: BridgeConfig, name: str) -> StreamConfig:
    for sc in config.streams:
        if sc.stream == name:
            return sc
    known = ", ".join(sc.stream for sc in config.streams) or "none"
    raise click.UsageError(f"stream {name!r} is not mapped in stream_tasks (mapped: {known})")


@contextmanager
def redis_errors(config: BridgeConfig) -> Iterator[None]:
    """Redis failures become one clean line naming the sanitized URL, exit code 1."""
    try:
        yield
    except RedisError as exc:
        raise click.ClickException(safe(f"redis at {config.safe_url}: {redact(str(exc))}")) from exc


def confirm(question: str) -> None:
    """Ask at a terminal; a script (stdin not a terminal) has nobody to ask, and goes on as with --yes."""
    if sys.stdin is not None and sys.stdin.isatty():
        click.confirm(safe(question), abort=True)


def rows(value: object) -> list[Mapping[str, object]]:
    """A list reply of maps (XINFO GROUPS, a JSON array of objects) as mappings."""
    return [mapping(v) for v in value] if isinstance(value, (list, tuple)) else []


def console() -> Console:
    from rich.console import Console

    # Piped or captured output has no terminal width; rich would fold ids and
    # names at 80 columns, which breaks grep and scripts.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def echo(message: str, err: bool = False) -> None:
    click.echo(safe(redact(message)), err=err)


def cell(value: object, style: str = "") -> Text:
    """A table cell: never rich markup, never a control character (see terminal.safe)."""
    from rich.text import Text

    return Text(safe(redact(text(value))) if value is not None else "", style=style)


def seconds(value: object) -> str:
    return f"{value:.1f}s" if isinstance(value, (int, float)) else "?"


def table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return out

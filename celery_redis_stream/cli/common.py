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
from redis.exceptions import RedisClusterException, RedisError

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
    "EX_UNAVAILABLE", "Client", "Refused", "Unavailable", "cell", "client_for", "config_of", "confirm", "console",
    "echo", "mapped", "redis_errors", "rows", "seconds", "shown", "table",
]  # fmt: skip

#: The exit code of a command whose broker cannot be reached, as `celery inspect` (sysexits' EX_UNAVAILABLE).
EX_UNAVAILABLE = 69


class Refused(click.ClickException):
    """One ``Error: ...`` line and exit code 2: the command cannot act as asked and changed nothing.

    Unlike click.UsageError it prints no usage block: the command line was well
    formed, the state (no stream mapped, a position past the stream's end) is what is wrong.
    """

    exit_code = 2


class Unavailable(click.ClickException):
    """The broker cannot be reached: one ``Error: ...`` line and exit code 69, as Celery's own ``inspect``."""

    exit_code = EX_UNAVAILABLE


def config_of(ctx: click.Context) -> BridgeConfig:
    """The app's bridge configuration; refused (exit 2) when it maps no stream, so nothing says OK about nothing.

    Without ``-A`` Celery hands the command its default app, whose empty
    configuration would read redis://localhost:6379/0 and report an empty, healthy status.
    """
    app = ctx.obj.app
    try:
        # The CLI may run where the tasks are not imported; only the worker checks registration.
        config = load_config(app, check_registered=False)
    except StreamConfigError as exc:
        raise click.ClickException(safe(str(exc))) from exc
    if not config.streams:
        raise Refused(
            f"no stream is mapped in app {safe(str(app.main or 'default'))!r} (stream_tasks is empty): "
            "name the app that maps them with -A, e.g. `celery -A proj redis-stream status`"
        )
    return config


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
    except (RedisError, RedisClusterException) as exc:  # the cluster client's own errors are not RedisErrors
        raise click.ClickException(safe(f"redis at {config.safe_url}: {redact(str(exc))}")) from exc


def confirm(question: str, yes: bool) -> None:
    """Ask at a terminal before a change; without one and without ``--yes``, change nothing and exit 1.

    A script (``ssh host 'celery ... --purge'``, cron, a pipe) has nobody to
    answer: going on would delete without asking, so it must say ``--yes``, as
    `celery purge` aborts on EOF. A "no" at the terminal exits 1 as well.
    """
    if yes:
        return
    if sys.stdin is not None and sys.stdin.isatty():
        click.confirm(safe(question), abort=True)
        return
    raise click.ClickException(f"{safe(question)} Not confirmed: stdin is not a terminal; pass --yes to go ahead")


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


def shown(value: object) -> str:
    """A value for the terminal: bytes that are not UTF-8 escaped (``\\xff``, not a replacement character)."""
    decoded = value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else text(value)
    return safe(redact(decoded))


def cell(value: object, style: str = "") -> Text:
    """A table cell: never rich markup, never a control character (see terminal.safe)."""
    from rich.text import Text

    return Text(shown(value) if value is not None else "", style=style)


def seconds(value: object) -> str:
    return f"{value:.1f}s" if isinstance(value, (int, float)) else "?"


def table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    from rich.table import Table

    # At least as wide as its title: a narrower table wraps the title, and a long
    # word in it (the URL) mid-word.
    out = Table(title=title, title_justify="left", min_width=len(title))
    for column in columns:
        out.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return out

"""`celery redis-stream ...`: status, reset and dead-letters, registered as a celery.commands entry point."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click
from redis.exceptions import RedisError, ResponseError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from . import deadletters
from .config import BridgeConfig, StreamConfig, load_config
from .exceptions import StreamConfigError
from .reader import as_entry_id, connect, ensure_group, last_id
from .redact import redact
from .status import collect, parse_target, text

__all__ = ["redis_stream"]

#: Above this many entries, requeue and purge show a progress bar.
PROGRESS_MIN = deadletters.BATCH


def _config(ctx: click.Context) -> BridgeConfig:
    app = ctx.obj.app
    try:
        # The CLI may run where the tasks are not imported; only the worker checks registration.
        return load_config(app, check_registered=False)
    except StreamConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _client(config: BridgeConfig) -> Any:
    return connect(config, socket_timeout=10, client_name="celery-redis-stream-cli")


def _stream(config: BridgeConfig, name: str) -> StreamConfig:
    for sc in config.streams:
        if sc.stream == name:
            return sc
    mapped = ", ".join(sc.stream for sc in config.streams) or "none"
    raise click.UsageError(f"stream {name!r} is not mapped in stream_tasks (mapped: {mapped})")


@contextmanager
def _redis_errors(config: BridgeConfig) -> Iterator[None]:
    """Redis failures become one clean line naming the sanitized URL, exit code 1."""
    try:
        yield
    except RedisError as exc:
        raise click.ClickException(f"redis at {config.safe_url}: {redact(str(exc))}") from exc


def _console() -> Console:
    # Piped or captured output has no terminal width; rich would fold ids and
    # names at 80 columns, which breaks grep and scripts.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _echo(message: str, err: bool = False) -> None:
    click.echo(redact(message), err=err)


@click.group(name="redis-stream")
@click.pass_context
def redis_stream(ctx: click.Context) -> None:
    """Inspect and steer the Redis streams this app maps to tasks."""


# -- status -------------------------------------------------------------------------------------


def _lag(s: dict[str, Any]) -> str:
    if s.get("lag") is None:
        return "?"
    return f"{s['lag']}" if s.get("lag_exact", True) else f">={s['lag']}"


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table


def _render_status(data: dict[str, Any], console: Console) -> None:
    counts = ("length", "lag", "pending", "dead letters")
    streams = _table(f"streams at {data['url']}", "stream", "mode", *counts, "lease holder", right=counts)
    positions = _table("positions", "stream", "last id", "group / tracker key", "position")
    consumers = _table("consumers", "stream", "group", "consumer", "pending", "idle", right=("pending", "idle"))
    for s in data["streams"]:
        name = Text(s["stream"] if s.get("exists", True) else f"{s['stream']} (missing)")
        if s.get("error") and "length" not in s:
            streams.add_row(name, s["mode"], *[""] * 4, Text(f"error: {s['error']}", style="red"))
            continue
        lag = Text(_lag(s), style="bold red" if s["stream"] in data["over_max_lag"] else "")
        if s["mode"] == "group":
            streams.add_row(name, "group", str(s["length"]), lag, str(s["pending"]), str(s["dead_letter_length"]), "")
            where = s["group"] if s["group_exists"] else f"{s['group']} (missing)"
            positions.add_row(name, s["last_id"] or "-", Text(where), s["last_delivered_id"] or "-")
            for c in s["consumers"]:
                idle = f"{c['idle_ms'] / 1000:.1f}s"
                consumers.add_row(Text(s["stream"]), Text(s["group"]), Text(c["name"]), str(c["pending"]), idle)
        else:
            holder = Text(s["lease_holder"] or "-")
            streams.add_row(name, "tracker", str(s["length"]), lag, "", str(s["dead_letter_length"]), holder)
            positions.add_row(name, s["last_id"] or "-", Text(s["tracker_key"]), Text(s["position"] or "(not set)"))
        if s.get("error"):
            streams.add_row("", "", "", "", "", "", Text(f"error: {s['error']}", style="red"))
    console.print(streams)
    console.print(positions)
    if consumers.row_count:
        console.print(consumers)
    _render_retention(data, console)
    if data["max_lag"] is not None:
        if data["ok"]:
            console.print(f"OK: every lag is at most {data['max_lag']}")
        else:
            console.print(f"LAG: over {data['max_lag']} (or unknown) on {', '.join(data['over_max_lag'])}")


def _render_retention(data: dict[str, Any], console: Console) -> None:
    """Streams under stream_retention_ms: the retention, what the bridge trimmed (all workers) and when."""
    table = _table("retention", "stream", "retention", "trimmed", "last trim", "kept from", right=("trimmed",))
    for s in data["streams"]:
        if s.get("retention_ms") is None:
            continue
        last = s.get("retention_last_trim_ms")
        when = datetime.fromtimestamp(last / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if last else "-"
        retention = f"{s['retention_ms'] / 1000:g}s"
        table.add_row(Text(s["stream"]), retention, str(s["retention_trimmed"]), when, s["retention_minid"] or "-")
    if table.row_count:
        console.print(table)


@redis_stream.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--max-lag", type=click.IntRange(min=0), default=None,
              help="Exit 1 when any stream's lag is above N (a health or autoscaling probe).")  # fmt: skip
@click.pass_context
def status(ctx: click.Context, as_json: bool, max_lag: int | None) -> None:
    """Length, last id, position, lag, pending, consumers, lease and dead letters of every mapped stream.

    Exits 1 when --max-lag is given and a lag is above it or cannot be read.
    """
    config = _config(ctx)
    with _redis_errors(config):
        data = collect(_client(config), config, max_lag=max_lag)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _render_status(data, _console())
    ctx.exit(0 if data["ok"] else 1)


# -- inspect ------------------------------------------------------------------------------------


@redis_stream.command(name="inspect")
@click.option("--destination", "-d", default=None, help="Comma-separated worker node names (default: all).")
@click.option("--timeout", "-t", type=float, default=5.0, show_default=True, help="Seconds to wait for replies.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def inspect_readers(ctx: click.Context, destination: str | None, timeout: float, as_json: bool) -> None:
    """Each running worker's readers (the `inspect redis_stream` remote command, on any Celery version).

    Exits 1 when no worker replied.
    """
    app = ctx.obj.app
    nodes = [d.strip() for d in destination.split(",") if d.strip()] if destination else None
    # With named workers, return as soon as each of them answered.
    limit = len(nodes) if nodes else None
    replies = app.control.broadcast("redis_stream", reply=True, timeout=timeout, destination=nodes, limit=limit)
    workers: dict[str, Any] = {}
    for reply in replies or ():
        workers.update(reply)
    if as_json:
        _echo(json.dumps(workers, indent=2, sort_keys=True))
    else:
        table = _table(
            "Readers", "worker", "stream", "mode", "dispatched", "dead-lettered", "last id", "reading", "paused",
            "last error", right=("dispatched", "dead-lettered"),
        )  # fmt: skip
        for node, info in sorted(workers.items()):
            for s in info.get("streams", []):
                table.add_row(
                    node, s["stream"], s["mode"], str(s["dispatched"]), str(s["dead_lettered"]), s["last_id"] or "-",
                    "yes" if s["reading"] else "no", "yes" if s["paused"] else "no", redact(s["last_error"] or ""),
                )  # fmt: skip
            if not info.get("enabled", True):
                table.add_row(node, "-", "-", "-", "-", "-", "no", "no", "redis-stream is off in this worker")
        _console().print(table)
    if not workers:
        _echo("No worker replied within the timeout.", err=True)
        ctx.exit(1)


# -- reset --------------------------------------------------------------------------------------


def _to(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return parse_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@redis_stream.command()
@click.argument("stream")
@click.option("--to", "target", required=True, callback=_to, metavar="ID|0|$|TIME",
              help="Entry id, 0 (re-read everything), $ (skip to the end) or an ISO-8601 time (UTC unless it "
                   "has an offset; becomes <ms>-0).")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Tracker mode: move the tracker even while a worker holds the lease.")
@click.pass_context
def reset(ctx: click.Context, stream: str, target: str, yes: bool, force: bool) -> None:
    """Move the consumer group (XGROUP SETID) or the tracker of STREAM.

    Entries after the new position are read next; a group is created at it if missing.
    """
    config = _config(ctx)
    sc = _stream(config, stream)
    with _redis_errors(config):
        client = _client(config)
        if sc.mode == "group":
            _reset_group(client, sc, target, yes)
        else:
            _reset_tracker(client, sc, target, yes, force)


def _group_position(client: Any, sc: StreamConfig) -> str | None:
    try:
        groups = client.xinfo_groups(sc.stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    found = next((g for g in groups if text(g.get("name")) == sc.group), None)
    return text(found.get("last-delivered-id")) if found is not None else None


def _confirm(question: str) -> None:
    """Ask at a terminal; a script (stdin not a terminal) has nobody to ask, and goes on as with --yes."""
    if sys.stdin is not None and sys.stdin.isatty():
        click.confirm(question, abort=True)


def _reset_group(client: Any, sc: StreamConfig, target: str, yes: bool) -> None:
    current = _group_position(client, sc) or "(missing)"
    if not yes:
        _confirm(f"Move group {sc.group!r} of stream {sc.stream!r} from {current} to {target}?")
    if ensure_group(client, sc, target):
        _echo(f"{sc.stream}: created group {sc.group} at {_group_position(client, sc)}")
        return
    client.xgroup_setid(sc.stream, sc.group, target)
    _echo(f"{sc.stream}: group {sc.group} moved from {current} to {_group_position(client, sc)}")


def _reset_tracker(client: Any, sc: StreamConfig, target: str, yes: bool, force: bool) -> None:
    holder = client.get(sc.lease_key)
    if holder is not None and not force:
        raise click.ClickException(
            f"worker {text(holder)!r} holds the lease {sc.lease_key} and reads {sc.stream!r}; stop it first "
            "(or pass --force: a running reader keeps its own position until it restarts)"
        )
    # A tracker holds a concrete id: "$" is the end of the stream now, "0" the very start.
    position = as_entry_id(target, lambda: last_id(client, sc.stream))
    stored = client.get(sc.tracker_key)
    current = text(stored) if stored is not None else "(not set)"
    if not yes:
        _confirm(f"Move tracker {sc.tracker_key} of stream {sc.stream!r} from {current} to {position}?")
    client.set(sc.tracker_key, position)
    _echo(f"{sc.stream}: tracker {sc.tracker_key} moved from {current} to {position}")


# -- dead-letters -------------------------------------------------------------------------------


def _show(value: bytes | None, limit: int = 200) -> str:
    if value is None:
        return ""
    shown = redact(value.decode("utf-8", errors="replace"))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _render_dead(sc: StreamConfig, total: int, entries: list[deadletters.DeadEntry], console: Console) -> None:
    table = Table(title=f"{sc.dead_letter}: {total} dead letter(s), showing {len(entries)}", title_justify="left")
    for column in ("id", "source id", "reason", "error", "fields"):
        table.add_column(column, overflow="fold")
    for e in entries:
        own = e.original
        fields = " ".join(f"{_show(own[i], 60)}={_show(own[i + 1], 60)}" for i in range(0, len(own) - 1, 2))
        table.add_row(
            e.id, Text(_show(e.meta("dlq_source_id"))), Text(_show(e.meta("dlq_reason"))),
            Text(_show(e.meta("dlq_error"))), Text(fields),
        )  # fmt: skip
    console.print(table)


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr for large sets; a no-op below PROGRESS_MIN."""
    if total <= PROGRESS_MIN:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


@redis_stream.command("dead-letters")
@click.argument("stream")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most N entries, oldest first (default: 20 when listing, all with --requeue/--purge).",
)
@click.option("--requeue", is_flag=True, help="Append the entries' own fields to STREAM and delete them here.")
@click.option("--purge", is_flag=True, help="Delete the entries (asks for confirmation).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def dead_letters(ctx: click.Context, stream: str, limit: int | None, requeue: bool, purge: bool, yes: bool) -> None:
    """List, requeue or purge the dead-letter stream of STREAM (reason, source id, error, fields)."""
    if requeue and purge:
        raise click.UsageError("--requeue and --purge exclude each other")
    config = _config(ctx)
    sc = _stream(config, stream)
    with _redis_errors(config):
        client = _client(config)
        length = int(client.xlen(sc.dead_letter))
        if not (requeue or purge):
            entries = deadletters.read(client, sc, count=limit or 20)
            _render_dead(sc, length, entries, _console())
            return
        total = min(length, limit) if limit else length
        if total == 0:
            _echo(f"{sc.dead_letter}: no dead letters")
            return
        if requeue:
            with _progress(f"requeue to {sc.stream}", total) as advance:
                moved, skipped = deadletters.requeue(client, sc, total, progress=advance)
            note = f" ({skipped} without fields of their own kept)" if skipped else ""
            _echo(f"{sc.dead_letter}: requeued {moved} entr{'y' if moved == 1 else 'ies'} to {sc.stream}{note}")
            return
        if not yes:
            _confirm(f"Delete {total} dead letter(s) from {sc.dead_letter}? There is no undo.")
        with _progress(f"purge {sc.dead_letter}", total) as advance:
            purged = deadletters.purge(client, sc, total, progress=advance)
        _echo(f"{sc.dead_letter}: purged {purged} entr{'y' if purged == 1 else 'ies'}")

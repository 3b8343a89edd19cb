"""`celery redis-stream ...`: status, reset and dead-letters, registered as a celery.commands entry point."""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
from redis.exceptions import RedisError, ResponseError

from . import deadletters
from .config import BridgeConfig, StreamConfig, load_config
from .exceptions import StreamConfigError
from .reader import as_entry_id, connect, ensure_group, last_id
from .redact import redact
from .rows import Collected, StreamRow
from .status import collect, id_key, parse_target, text
from .terminal import safe

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

__all__ = ["redis_stream"]

# rich is imported where a table or a progress bar is drawn, never at module
# level: `celery worker` imports this module (it loads every celery.commands
# entry point), and a worker has no use for rich and its dependencies.

#: Above this many entries, requeue and purge show a progress bar.
PROGRESS_MIN = deadletters.BATCH


def _config(ctx: click.Context) -> BridgeConfig:
    app = ctx.obj.app
    try:
        # The CLI may run where the tasks are not imported; only the worker checks registration.
        return load_config(app, check_registered=False)
    except StreamConfigError as exc:
        raise click.ClickException(safe(str(exc))) from exc


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
        raise click.ClickException(safe(f"redis at {config.safe_url}: {redact(str(exc))}")) from exc


def _console() -> Console:
    from rich.console import Console

    # Piped or captured output has no terminal width; rich would fold ids and
    # names at 80 columns, which breaks grep and scripts.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)


def _echo(message: str, err: bool = False) -> None:
    click.echo(safe(redact(message)), err=err)


def _t(value: Any, style: str = "") -> Text:
    """A table cell: never rich markup, never a control character (see terminal.safe)."""
    from rich.text import Text

    return Text(safe(redact(text(value))) if value is not None else "", style=style)


@click.group(name="redis-stream")
@click.pass_context
def redis_stream(ctx: click.Context) -> None:
    """Inspect and steer the Redis streams this app maps to tasks."""


# -- status -------------------------------------------------------------------------------------


def _lag(s: StreamRow) -> str:
    """The exact lag, or ``>=N`` when only a lower bound is known, or ``?``."""
    if s.get("lag") is not None:
        return str(s["lag"])
    return f">={s['lag_at_least']}" if s.get("lag_at_least") is not None else "?"


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}s"


def _table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table


def _render_status(data: Collected, console: Console) -> None:
    from rich.text import Text

    counts = ("length", "lag", "time lag", "pending", "dead letters")
    streams = _table(f"streams at {data['url']}", "stream", "mode", *counts, "lease holder", right=counts)
    positions = _table("positions", "stream", "last id", "group / tracker key", "position")
    consumers = _table("consumers", "stream", "group", "consumer", "pending", "idle", right=("pending", "idle"))
    for s in data["streams"]:
        name = _t(s["stream"] if s.get("exists", True) else f"{s['stream']} (missing)")
        if s.get("error") and "length" not in s:
            streams.add_row(name, s["mode"], *[""] * 5, _t(f"error: {s['error']}", style="red"))
            continue
        lag = Text(_lag(s), style="bold red" if s["stream"] in data["over_max_lag"] else "")
        age = _seconds(s.get("lag_seconds"))
        if s["mode"] == "group":
            streams.add_row(
                name, "group", str(s["length"]), lag, age, str(s["pending"]), str(s["dead_letter_length"]), ""
            )  # fmt: skip
            where = s["group"] if s["group_exists"] else f"{s['group']} (missing)"
            positions.add_row(name, _t(s["last_id"] or "-"), _t(where), _t(s["last_delivered_id"] or "-"))
            for c in s["consumers"]:
                idle = f"{c['idle_ms'] / 1000:.1f}s"
                consumers.add_row(_t(s["stream"]), _t(s["group"]), _t(c["name"]), str(c["pending"]), idle)
        else:
            holder = _t(s["lease_holder"] or "-")
            streams.add_row(name, "tracker", str(s["length"]), lag, age, "", str(s["dead_letter_length"]), holder)
            positions.add_row(name, _t(s["last_id"] or "-"), _t(s["tracker_key"]), _t(s["position"] or "(not set)"))
        if s.get("error"):
            streams.add_row("", "", "", "", "", "", "", _t(f"error: {s['error']}", style="red"))
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


def _render_retention(data: Collected, console: Console) -> None:
    """Streams under stream_retention_ms: the retention, what the bridge trimmed (all workers) and when."""
    from rich.text import Text

    table = _table("retention", "stream", "retention", "trimmed", "last trim", "kept from", right=("trimmed",))
    for s in data["streams"]:
        retention_ms = s.get("retention_ms")
        if retention_ms is None:
            continue
        last = s.get("retention_last_trim_ms")
        when = datetime.fromtimestamp(last / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if last else "-"
        retention = f"{retention_ms / 1000:g}s"
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
@click.option("--timeout", "-t", type=float, default=1.0, show_default=True,
              help="Seconds to wait for replies (1, like celery inspect).")  # fmt: skip
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
        click.echo(redact(json.dumps(workers, indent=2, sort_keys=True)))  # JSON escapes control characters
    else:
        table = _table(
            "Readers", "worker", "stream", "mode", "dispatched", "dead-lettered", "time lag", "last id", "reading",
            "paused", "last error", right=("dispatched", "dead-lettered", "time lag"),
        )  # fmt: skip
        for node, info in sorted(workers.items()):
            for s in info.get("streams", []):
                table.add_row(
                    _t(node), _t(s["stream"]), s["mode"], str(s["dispatched"]), str(s["dead_lettered"]),
                    _seconds(s.get("lag_seconds")), _t(s["last_id"] or "-"), "yes" if s["reading"] else "no",
                    "yes" if s["paused"] else "no", _t(s["last_error"] or ""),
                )  # fmt: skip
            if not info.get("enabled", True):
                table.add_row(_t(node), "-", "-", "-", "-", "-", "-", "no", "no", "redis-stream is off in this worker")
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
        click.confirm(safe(question), abort=True)


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
            f"worker {safe(text(holder))!r} holds the lease {sc.lease_key} and reads {sc.stream!r}; stop it first "
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
    shown = safe(redact(value.decode("utf-8", errors="replace")))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _render_dead(
    sc: StreamConfig, total: int, entries: list[deadletters.DeadEntry], console: Console, chosen: str = ""
) -> None:
    from rich.table import Table
    from rich.text import Text

    title = f"{sc.dead_letter}: {total} dead letter(s), showing {len(entries)}{chosen}"
    table = Table(title=title, title_justify="left")
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


def _exact(value: bytes | None) -> Any:
    """JSON for raw bytes: the string when they are UTF-8, else ``{"base64": ...}``: nothing is lost or replaced."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _dead_json(e: deadletters.DeadEntry) -> dict[str, Any]:
    own = e.original
    return {
        "id": e.id,
        "source_stream": _exact(e.meta("dlq_source_stream")),
        "source_id": _exact(e.meta("dlq_source_id")),
        "reason": _exact(e.meta("dlq_reason")),
        "error": _exact(e.meta("dlq_error")),
        "task_id": _exact(e.meta("dlq_task_id")),
        # pairs, in order: an entry may repeat a field name (that is one reason to dead-letter it)
        "fields": [[_exact(own[i]), _exact(own[i + 1])] for i in range(0, len(own) - 1, 2)],
    }


def _ids(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    ids = [part.strip() for v in value for part in v.split(",") if part.strip()]
    for entry_id in ids:
        if "-" not in entry_id:
            raise click.BadParameter(f"{entry_id!r} is not a full entry id like 1700000000000-0", ctx=ctx, param=param)
        try:
            id_key(entry_id)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return list(dict.fromkeys(ids))


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr for large sets; a no-op below PROGRESS_MIN."""
    if total <= PROGRESS_MIN:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
@click.option("--reason", default=None, metavar="REASON",
              help="Only dead letters with this dlq_reason (not_utf8, too_large, converter_error, ...).")  # fmt: skip
@click.option("--id", "ids", multiple=True, callback=_ids, metavar="ID",
              help="Only the dead letter with this id (in the dead-letter stream); repeatable.")  # fmt: skip
@click.option("--requeue", is_flag=True, help="Append the entries' own fields to STREAM and delete them here.")
@click.option("--purge", is_flag=True, help="Delete the entries (asks for confirmation).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help='Print JSON (bytes exact: a string, or {"base64": ...}).')
@click.pass_context
def dead_letters(
    ctx: click.Context, stream: str, limit: int | None, reason: str | None, ids: list[str], requeue: bool,
    purge: bool, yes: bool, as_json: bool,
) -> None:  # fmt: skip
    """List, requeue or purge the dead-letter stream of STREAM (reason, source id, error, fields).

    --reason and --id choose which; exit code 1 when an --id was not found.
    """
    if requeue and purge:
        raise click.UsageError("--requeue and --purge exclude each other")
    config = _config(ctx)
    sc = _stream(config, stream)
    with _redis_errors(config):
        client = _client(config)
        length = int(client.xlen(sc.dead_letter))
        missing = _dead_letters(client, sc, length, limit, reason, ids, requeue, purge, yes, as_json)
    if missing:
        _echo(f"{sc.dead_letter}: not found: {', '.join(missing)}", err=True)
        ctx.exit(1)


def _chosen(reason: str | None, ids: list[str]) -> str:
    parts = ([f"reason {reason}"] if reason else []) + ([f"{len(ids)} id(s)"] if ids else [])
    return f" ({', '.join(parts)})" if parts else ""


def _counted(chunks: Iterable[list[deadletters.DeadEntry]], progress: Callable[[int], None]) -> Iterator[Any]:
    for chunk in chunks:
        yield chunk
        progress(len(chunk))


def _selection(
    client: Any, sc: StreamConfig, length: int, *, limit: int | None, reason: str | None, ids: list[str],
    progress: Callable[[int], None] = lambda n: None,
) -> tuple[Iterable[list[deadletters.DeadEntry]], list[str]]:  # fmt: skip
    """The dead letters chosen (by id, by reason, or the oldest), at most ``limit``, in batches; the ids not found."""
    if ids:
        found, missing = deadletters.fetch(client, sc, ids)
        if reason is not None:
            found = [e for e in found if e.meta("dlq_reason") == reason.encode()]
        found = found[:limit] if limit else found
        batch = deadletters.BATCH
        return _counted((found[i : i + batch] for i in range(0, len(found), batch)), progress), missing
    if reason is not None:  # progress counts what the scan read
        return deadletters.matching(client, sc, reason, limit=limit, scan=length, progress=progress), []
    return _counted(deadletters.batches(client, sc, min(length, limit) if limit else length), progress), []


def _dead_letters(
    client: Any, sc: StreamConfig, length: int, limit: int | None, reason: str | None, ids: list[str],
    requeue: bool, purge: bool, yes: bool, as_json: bool,
) -> list[str]:  # fmt: skip
    """The work of ``dead-letters``; returns the ids asked for that were not found."""
    if not (requeue or purge):
        chunks, missing = _selection(client, sc, length, limit=limit or 20, reason=reason, ids=ids)
        entries = [e for chunk in chunks for e in chunk]
        if as_json:
            data = {"stream": sc.stream, "dead_letter": sc.dead_letter, "length": length}
            click.echo(json.dumps({**data, "entries": [_dead_json(e) for e in entries], "missing": missing}, indent=2))
        else:
            _render_dead(sc, length, entries, _console(), _chosen(reason, ids))
        return missing
    total = len(ids) if ids else length if reason is not None else min(length, limit or length)
    if total == 0 or length == 0:
        _report(sc, as_json, f"{sc.dead_letter}: no dead letters", {"missing": ids})
        return ids
    if purge and not yes:
        what = f"the dead letters{_chosen(reason, ids)} among {length}" if reason or ids else f"{total} dead letter(s)"
        _confirm(f"Delete {what} from {sc.dead_letter}? There is no undo.")
    done = kept = 0
    with _progress(f"requeue to {sc.stream}" if requeue else f"purge {sc.dead_letter}", total) as advance:
        chunks, missing = _selection(client, sc, length, limit=limit, reason=reason, ids=ids, progress=advance)
        for chunk in chunks:
            if requeue:
                moved, skipped = deadletters.requeue_entries(client, sc, chunk)
                done, kept = done + moved, kept + skipped
            else:
                done += deadletters.purge_entries(client, sc, chunk)
    noun = f"entr{'y' if done == 1 else 'ies'}"
    if requeue:
        note = f" ({kept} without fields of their own kept)" if kept else ""
        message = f"{sc.dead_letter}: requeued {done} {noun} to {sc.stream}{note}"
    else:
        message = f"{sc.dead_letter}: purged {done} {noun}"
    _report(sc, as_json, message, {"requeued" if requeue else "purged": done, "kept": kept, "missing": missing})
    return missing


def _report(sc: StreamConfig, as_json: bool, message: str, data: dict[str, Any]) -> None:
    if as_json:
        click.echo(json.dumps({"stream": sc.stream, "dead_letter": sc.dead_letter, **data}, indent=2))
    else:
        _echo(message)

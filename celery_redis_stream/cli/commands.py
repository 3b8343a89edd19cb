"""`celery redis-stream ...`: status, inspect, reset and dead-letters, registered as a celery.commands entry point."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import click

from ..client.connection import mapping
from ..redact import redact
from ..rows import Collected, StreamRow
from ..status import collect
from .common import Unavailable, cell, client_for, config_of, console, redis_errors, rows, seconds, table
from .dead_letters import dead_letters
from .reset import reset
from .terminal import safe

if TYPE_CHECKING:
    from celery import Celery
    from rich.console import Console
    from rich.table import Table

__all__ = ["redis_stream"]

# The commands: status and inspect here, reset (reset.py) and dead-letters
# (dead_letters.py); what they share is in common.py (which says why rich is
# imported only where a table is drawn).


@click.group(name="redis-stream")
@click.pass_context
def redis_stream(ctx: click.Context) -> None:
    """Inspect and steer the Redis streams this app maps to tasks."""


# -- status -------------------------------------------------------------------------------------


def _lag(s: StreamRow) -> str:
    """``ahead`` when the position lies after the stream's last id, the exact lag, ``>=N`` for a lower bound, ``?``."""
    if s.get("ahead"):
        return "ahead"
    if s.get("lag") is not None:
        return str(s["lag"])
    return f">={s['lag_at_least']}" if s.get("lag_at_least") is not None else "?"


def _render_status(data: Collected, console: Console) -> None:
    from rich.text import Text

    counts = ("length", "lag", "time lag", "pending", "dead letters")
    on = sorted({str(s["server"]) for s in data["streams"] if s.get("server")})
    title = f"streams at {data['url']}" + (f" ({', '.join(on)})" if on else "")
    streams = table(title, "stream", "mode", *counts, "lease holder", right=counts)
    positions = table("positions", "stream", "last id", "group / tracker key", "position")
    consumers = table("consumers", "stream", "group", "consumer", "pending", "idle", right=("pending", "idle"))
    for s in data["streams"]:
        name = cell(s["stream"] if s.get("exists", True) else f"{s['stream']} (missing)")
        # An error before the row was complete (a dead-letter key of the wrong type comes last): the error alone.
        if s.get("error") and "dead_letter_length" not in s:
            streams.add_row(name, s["mode"], *[""] * 5, cell(f"error: {s['error']}", style="red"))
            continue
        flagged = s["stream"] in data["over_max_lag"] or s.get("ahead")
        lag = Text(_lag(s), style="bold red" if flagged else "")
        age = seconds(s.get("lag_seconds"))
        if s["mode"] == "group":
            streams.add_row(
                name, "group", str(s["length"]), lag, age, str(s["pending"]), str(s["dead_letter_length"]), ""
            )  # fmt: skip
            where = s["group"] if s["group_exists"] else f"{s['group']} (missing)"
            positions.add_row(name, cell(s["last_id"] or "-"), cell(where), cell(s["last_delivered_id"] or "-"))
            for c in s["consumers"]:
                idle = f"{c['idle_ms'] / 1000:.1f}s"
                consumers.add_row(cell(s["stream"]), cell(s["group"]), cell(c["name"]), str(c["pending"]), idle)
        else:
            holder = cell(s["lease_holder"] or "-")
            streams.add_row(name, "tracker", str(s["length"]), lag, age, "", str(s["dead_letter_length"]), holder)
            positions.add_row(
                name, cell(s["last_id"] or "-"), cell(s["tracker_key"]), cell(s["position"] or "(not set)")
            )
        if s.get("error"):
            streams.add_row("", "", "", "", "", "", "", cell(f"error: {s['error']}", style="red"))
    console.print(streams)
    console.print(positions)
    if consumers.row_count:
        console.print(consumers)
    _render_retention(data, console)
    ahead = [s["stream"] for s in data["streams"] if s.get("ahead")]
    if ahead:
        console.print(
            Text(f"AHEAD: {', '.join(ahead)}: the position is after the stream's last entry id; entries added until "
                 "ids pass it are not dispatched (`reset STREAM --to $` moves it back to the end)", style="bold red")
        )  # fmt: skip
    _render_traffic(data, console)
    if data["max_lag"] is not None:
        if data["ok"]:
            console.print(f"OK: every lag is at most {data['max_lag']}")
        else:
            console.print(f"LAG: over {data['max_lag']}, unknown or ahead on {', '.join(data['over_max_lag'])}")


def _render_retention(data: Collected, console: Console) -> None:
    """Streams under stream_retention_ms: the retention, what the bridge trimmed (all workers) and when."""
    from rich.text import Text

    retained = table("retention", "stream", "retention", "trimmed", "last trim", "kept from", right=("trimmed",))
    for s in data["streams"]:
        retention_ms = s.get("retention_ms")
        if retention_ms is None:
            continue
        last = s.get("retention_last_trim_ms")
        when = datetime.fromtimestamp(last / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if last else "-"
        retention = f"{retention_ms / 1000:g}s"
        retained.add_row(Text(s["stream"]), retention, str(s["retention_trimmed"]), when, s["retention_minid"] or "-")
    if retained.row_count:
        console.print(retained)


def _render_traffic(data: Collected, console: Console) -> None:
    """Streams under a rate limit or deduplication: the limit, whether readers wait for it, the deduplicated count."""
    from rich.text import Text

    shown = table("traffic control", "stream", "rate limit", "rate limited", "dedupe key", "deduplicated",
                  right=("deduplicated",))  # fmt: skip
    for s in data["streams"]:
        if s.get("rate_limit") is None and s.get("dedupe_key") is None:
            continue
        shown.add_row(
            Text(s["stream"]), s.get("rate_limit") or "-", "yes" if s.get("rate_limited") else "no",
            Text(s.get("dedupe_key") or "-"), str(s.get("deduplicated", 0)),
        )  # fmt: skip
    if shown.row_count:
        console.print(shown)


@redis_stream.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--max-lag", type=click.IntRange(min=0), default=None,
              help="Exit 1 when any stream's lag is above N, cannot be read, or its position is ahead of the stream "
                   "(a health or autoscaling probe).")  # fmt: skip
@click.pass_context
def status(ctx: click.Context, as_json: bool, max_lag: int | None) -> None:
    """Length, last id, position, lag, pending, consumers, lease, dead letters and server of every mapped stream.

    A group or tracker after the stream's last entry id is flagged `ahead`.
    Exits 1 when --max-lag is given and a lag is above it or cannot be read,
    or a position is ahead; 2 when the app maps no stream (no -A).
    """
    config = config_of(ctx)
    with redis_errors(config):
        data = collect(client_for(config), config, max_lag=max_lag)
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        _render_status(data, console())
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

    Exits 69, as celery inspect, when the broker cannot be reached or no worker replied.
    """
    config_of(ctx)  # a stream must be mapped, as for every redis-stream command
    nodes = [d.strip() for d in destination.split(",") if d.strip()] if destination else None
    workers: dict[str, object] = {}
    for reply in _broadcast(ctx.obj.app, timeout, nodes):
        workers.update(mapping(reply))
    if not workers:
        raise Unavailable(f"no worker replied within {timeout:g}s (is a worker of this app running?)")
    if as_json:
        click.echo(redact(json.dumps(workers, indent=2, sort_keys=True)))  # JSON escapes control characters
    else:
        console().print(_readers_table(workers))


def _broadcast(app: Celery, timeout: float, nodes: list[str] | None) -> list[object]:
    """The ``redis_stream`` remote command's replies; a broker that cannot be reached is one line, exit 69.

    One connection attempt first: kombu's publish retries a refused
    connection for seconds and then raises with a long traceback.
    """
    from kombu.exceptions import OperationalError
    from kombu.utils.url import maybe_sanitize_url

    conn = app.connection_for_write()
    try:
        with conn:
            conn.ensure_connection(max_retries=0)
            # With named workers, return as soon as each of them answered.
            limit = len(nodes) if nodes else None
            replies = app.control.broadcast(
                "redis_stream", reply=True, timeout=timeout, destination=nodes, limit=limit, connection=conn
            )
    except (OperationalError, OSError, *conn.connection_errors, *conn.channel_errors) as exc:  # AMQP: ACCESS_REFUSED
        url = app.conf.broker_url
        where = maybe_sanitize_url(url) if isinstance(url, str) else conn.as_uri()  # as_uri() always shows ":**@"
        raise Unavailable(f"cannot reach the broker at {safe(where)}: {safe(redact(str(exc)))}") from exc
    return list(replies or ())


def _readers_table(workers: Mapping[str, object]) -> Table:
    out = table(
        "Readers", "worker", "stream", "mode", "server", "dispatched", "dead-lettered", "time lag", "last id",
        "reading", "paused", "last error", right=("dispatched", "dead-lettered", "time lag"),
    )  # fmt: skip
    for node, reply in sorted(workers.items()):
        info = mapping(reply)
        for s in rows(info.get("streams")):
            out.add_row(
                cell(node), cell(s["stream"]), cell(s["mode"]), cell(s.get("server") or "?"), str(s["dispatched"]),
                str(s["dead_lettered"]),
                seconds(s.get("lag_seconds")), cell(s["last_id"] or "-"), "yes" if s["reading"] else "no",
                "yes" if s["paused"] else "rate limited" if s.get("rate_limited") else "no",
                cell(s["last_error"] or ""),
            )  # fmt: skip
        if not info.get("enabled", True):
            out.add_row(cell(node), "-", "-", "-", "-", "-", "-", "-", "no", "no", "redis-stream is off in this worker")
    return out


redis_stream.add_command(reset)
redis_stream.add_command(dead_letters)

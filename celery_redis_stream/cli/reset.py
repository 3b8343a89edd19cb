"""`celery redis-stream reset STREAM --to ID|0|$|TIME`: move a consumer group or a tracker."""

from __future__ import annotations

import click
from redis.exceptions import ResponseError

from ..client.connection import Client, is_missing_key, text
from ..client.streams import as_entry_id, ensure_group, last_id
from ..config import StreamConfig
from ..position.lag import id_key
from ..status import parse_target
from .common import Refused, client_for, config_of, confirm, echo, mapped, redis_errors, rows
from .terminal import safe

__all__ = ["reset"]


def _to(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return parse_target(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command()
@click.argument("stream")
@click.option("--to", "target", required=True, callback=_to, metavar="ID|0|$|TIME",
              help="Entry id, 0 (re-read everything), $ (skip to the end) or an ISO-8601 time (UTC unless it "
                   "has an offset; becomes <ms>-0).")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed where stdin is not a terminal).")
@click.option("--force", is_flag=True,
              help="Move even to an id after the stream's last entry, and (tracker mode) while a worker holds the "
                   "lease.")  # fmt: skip
@click.pass_context
def reset(ctx: click.Context, stream: str, target: str, yes: bool, force: bool) -> None:
    """Move the consumer group (XGROUP SETID) or the tracker of STREAM.

    Entries after the new position are read next; a group is created at it if
    missing. An id after the stream's last entry id is refused (exit 2) unless
    --force: nothing would be read until new ids pass it. Asks first; where
    stdin is not a terminal, exits 1 without --yes.
    """
    config = config_of(ctx)
    sc = mapped(config, stream)
    with redis_errors(config):
        client = client_for(config)
        if not force:
            _refuse_ahead(client, sc, target)
        if sc.mode == "group":
            _reset_group(client, sc, target, yes)
        else:
            _reset_tracker(client, sc, target, yes, force)


def _refuse_ahead(client: Client, sc: StreamConfig, target: str) -> None:
    """Exit 2 when ``target`` lies after the stream's last id: the group or tracker would skip what comes next.

    The last id is XINFO STREAM's last-generated-id (0-0 for a stream that does
    not exist yet): every entry added later gets a larger id only while the
    clocks do not lag, and an id in the future (99999999999999-0, a mistyped
    time) leaves the stream undispatched, with status showing lag 0.
    """
    if target in ("0", "$"):
        return
    last = last_id(client, sc.stream)
    if id_key(target) > id_key(last):
        raise Refused(
            f"--to {target} is after the last entry id of stream {sc.stream!r} ({last}): entries added until ids pass "
            "it would never be dispatched. Nothing was changed; pass --force to move there anyway"
        )


def _group_position(client: Client, sc: StreamConfig) -> str | None:
    try:
        groups = client.xinfo_groups(sc.stream)
    except ResponseError as exc:
        if is_missing_key(exc):
            return None
        raise
    found = next((g for g in rows(groups) if text(g.get("name")) == sc.group), None)
    return text(found.get("last-delivered-id")) if found is not None else None


def _reset_group(client: Client, sc: StreamConfig, target: str, yes: bool) -> None:
    current = _group_position(client, sc) or "(missing)"
    confirm(f"Move group {sc.group!r} of stream {sc.stream!r} from {current} to {target}?", yes)
    if ensure_group(client, sc, target):
        echo(f"{sc.stream}: created group {sc.group} at {_group_position(client, sc)}")
        return
    client.xgroup_setid(sc.stream, sc.group, target)
    echo(f"{sc.stream}: group {sc.group} moved from {current} to {_group_position(client, sc)}")


def _reset_tracker(client: Client, sc: StreamConfig, target: str, yes: bool, force: bool) -> None:
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
    confirm(f"Move tracker {sc.tracker_key} of stream {sc.stream!r} from {current} to {position}?", yes)
    client.set(sc.tracker_key, position)
    echo(f"{sc.stream}: tracker {sc.tracker_key} moved from {current} to {position}")

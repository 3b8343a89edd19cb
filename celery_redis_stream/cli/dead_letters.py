"""`celery redis-stream dead-letters STREAM`: list, requeue or purge the dead letters of a mapped stream."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from .. import deadletters
from ..client.connection import Client, number
from ..config import StreamConfig
from ..deadletters import DeadEntry
from ..position.lag import id_key
from .common import client_for, config_of, confirm, console, echo, mapped, redis_errors, shown, table

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["dead_letters"]

#: Above this many entries, requeue and purge show a progress bar.
PROGRESS_MIN = deadletters.BATCH

Pages = Iterable[list[DeadEntry]]
#: Exact JSON for raw bytes: the text when they are UTF-8, else ``{"base64": ...}``.
Exact = str | dict[str, str] | None


@dataclass(frozen=True)
class Choice:
    """Which dead letters a command acts on: by id, by reason, at most ``limit`` (None: all)."""

    limit: int | None
    reason: str | None
    ids: list[str]

    def describe(self) -> str:
        parts = ([f"reason {self.reason}"] if self.reason else []) + ([f"{len(self.ids)} id(s)"] if self.ids else [])
        return f" ({', '.join(parts)})" if parts else ""


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


@click.command("dead-letters")
@click.argument("stream")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="At most N entries, oldest first (default: 20 when listing, all with --requeue/--purge).",
)
@click.option("--reason", type=click.Choice(deadletters.REASONS), default=None,
              help="Only dead letters with this dlq_reason.")  # fmt: skip
@click.option("--id", "ids", multiple=True, callback=_ids, metavar="ID",
              help="Only the dead letter with this id (in the dead-letter stream); repeatable.")  # fmt: skip
@click.option("--requeue", is_flag=True,
              help="Append the entries' own fields to STREAM, then delete them here (asks first).")  # fmt: skip
@click.option("--purge", is_flag=True, help="Delete the entries (asks for confirmation).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (needed where stdin is not a terminal).")
@click.option("--json", "as_json", is_flag=True, help='Print JSON (bytes exact: a string, or {"base64": ...}).')
@click.pass_context
def dead_letters(
    ctx: click.Context, stream: str, limit: int | None, reason: str | None, ids: list[str], requeue: bool,
    purge: bool, yes: bool, as_json: bool,
) -> None:  # fmt: skip
    """List, requeue or purge the dead-letter stream of STREAM (reason, source id, error, fields).

    --reason and --id choose which; exit code 1 when an --id was not found.
    --requeue and --purge ask first; where stdin is not a terminal they change
    nothing and exit 1 without --yes.
    """
    if requeue and purge:
        raise click.UsageError("--requeue and --purge exclude each other")
    config = config_of(ctx)
    sc = mapped(config, stream)
    with redis_errors(config):
        client = client_for(config)
        length = number(client.xlen(sc.dead_letter))
        if requeue or purge:
            missing = _move(client, sc, length, Choice(limit, reason, ids), requeue, yes, as_json)
        else:
            missing = _list(client, sc, length, Choice(limit or 20, reason, ids), as_json)
    if missing:
        echo(f"{sc.dead_letter}: not found: {', '.join(missing)}", err=True)
        ctx.exit(1)


# -- choosing -----------------------------------------------------------------------------------


def _counted(chunks: Pages, progress: Callable[[int], None]) -> Iterator[list[DeadEntry]]:
    for chunk in chunks:
        yield chunk
        progress(len(chunk))


def _selection(
    client: Client, sc: StreamConfig, length: int, choice: Choice, progress: Callable[[int], None] = lambda n: None
) -> tuple[Pages, list[str]]:
    """The dead letters chosen (by id, by reason, or the oldest), at most ``limit``, in batches; the ids not found."""
    limit, reason = choice.limit, choice.reason
    if choice.ids:
        found, missing = deadletters.fetch(client, sc, choice.ids)
        if reason is not None:
            found = [e for e in found if e.meta("dlq_reason") == reason.encode()]
        found = found[:limit] if limit else found
        batch = deadletters.BATCH
        return _counted((found[i : i + batch] for i in range(0, len(found), batch)), progress), missing
    if reason is not None:  # progress counts what the scan read
        return deadletters.matching(client, sc, reason, limit=limit, scan=length, progress=progress), []
    return _counted(deadletters.batches(client, sc, min(length, limit) if limit else length), progress), []


# -- listing ------------------------------------------------------------------------------------


def _show(value: bytes | None, limit: int = 200) -> str:
    if value is None:
        return ""
    out = shown(value)  # bytes that are not UTF-8 as \xff escapes
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _exact(value: bytes | None) -> Exact:
    """JSON for raw bytes: the string when they are UTF-8, else ``{"base64": ...}``: nothing is lost or replaced."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _dead_json(e: DeadEntry) -> dict[str, Exact | list[list[Exact]]]:
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


def _render_dead(sc: StreamConfig, total: int, entries: list[DeadEntry], out: Console, chosen: str = "") -> None:
    from rich.text import Text

    title = f"{sc.dead_letter}: {total} dead letter(s), showing {len(entries)}{chosen}"
    listing = table(title, "id", "source id", "reason", "error", "fields")
    for e in entries:
        own = e.original
        fields = " ".join(f"{_show(own[i], 60)}={_show(own[i + 1], 60)}" for i in range(0, len(own) - 1, 2))
        listing.add_row(
            e.id, Text(_show(e.meta("dlq_source_id"))), Text(_show(e.meta("dlq_reason"))),
            Text(_show(e.meta("dlq_error"))), Text(fields),
        )  # fmt: skip
    out.print(listing)


def _list(client: Client, sc: StreamConfig, length: int, choice: Choice, as_json: bool) -> list[str]:
    """List the chosen dead letters; returns the ids asked for that were not found."""
    chunks, missing = _selection(client, sc, length, choice)
    entries = [e for chunk in chunks for e in chunk]
    if as_json:
        data = {"stream": sc.stream, "dead_letter": sc.dead_letter, "length": length}
        click.echo(json.dumps({**data, "entries": [_dead_json(e) for e in entries], "missing": missing}, indent=2))
    else:
        _render_dead(sc, length, entries, console(), choice.describe())
    return missing


# -- requeue and purge --------------------------------------------------------------------------


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


def _move(
    client: Client, sc: StreamConfig, length: int, choice: Choice, requeue: bool, yes: bool, as_json: bool
) -> list[str]:
    """Requeue or purge the chosen dead letters; returns the ids asked for that were not found."""
    limit, reason, ids = choice.limit, choice.reason, choice.ids
    total = len(ids) if ids else length if reason is not None else min(length, limit or length)
    if total == 0 or length == 0:
        _report(sc, as_json, f"{sc.dead_letter}: no dead letters", {"missing": ids})
        return ids
    what = f"the dead letters{choice.describe()} among {length}" if reason or ids else f"{total} dead letter(s)"
    if requeue:
        confirm(f"Requeue {what} of {sc.dead_letter} to {sc.stream}? They are read and dispatched again.", yes)
    else:
        confirm(f"Delete {what} from {sc.dead_letter}? There is no undo.", yes)
    done = kept = 0
    with _progress(f"requeue to {sc.stream}" if requeue else f"purge {sc.dead_letter}", total) as advance:
        chunks, missing = _selection(client, sc, length, choice, progress=advance)
        for chunk in chunks:
            if requeue:
                moved, skipped = deadletters.requeue_entries(client, sc, chunk)
                done, kept = done + moved, kept + skipped
            else:
                done += deadletters.purge_entries(client, sc, chunk)
    noun = f"entr{'y' if done == 1 else 'ies'}"
    if requeue:
        note = f" ({kept} without fields of their own, or with too many to requeue, kept)" if kept else ""
        message = f"{sc.dead_letter}: requeued {done} {noun} to {sc.stream}{note}"
    else:
        message = f"{sc.dead_letter}: purged {done} {noun}"
    _report(sc, as_json, message, {"requeued" if requeue else "purged": done, "kept": kept, "missing": missing})
    return missing


def _report(sc: StreamConfig, as_json: bool, message: str, data: Mapping[str, object]) -> None:
    if as_json:
        click.echo(json.dumps({"stream": sc.stream, "dead_letter": sc.dead_letter, **data}, indent=2))
    else:
        echo(message)

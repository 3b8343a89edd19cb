"""Lag of a stream position: exact where Redis can say cheaply, a lower bound otherwise; and its age in seconds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..client.connection import Client, command, items, mapping, number, text
from ..rows import LagFields, StreamInfo

__all__ = [
    "LAG_SCAN_LIMIT", "Lag", "count_after", "entry_age", "id_key", "lag_fields", "lag_of", "oldest_waiting",
    "pending_min", "server_ms", "text",
]  # fmt: skip

#: How many entries a lag count reads at most, on each side of the position, when Redis cannot say.
LAG_SCAN_LIMIT = 10000
PAGE = 1000

ID_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable ``(ms, seq)``; ``"0"`` and ``"5"`` are ``5-0``."""
    match = ID_RE.match(entry_id)
    if match is None:
        raise ValueError(f"not a stream entry id: {entry_id!r}")
    return int(match.group(1)), int(match.group(2) or 0)


@dataclass(frozen=True)
class Lag:
    """Entries after a position: ``count`` is exact when ``exact``, else a lower bound (the truth is larger)."""

    count: int
    exact: bool

    def fields(self) -> dict[str, int | bool | None]:
        """The JSON fields: ``lag`` only when exact (null otherwise), ``lag_at_least`` always a true lower bound."""
        return {"lag": self.count if self.exact else None, "lag_exact": self.exact, "lag_at_least": self.count}


def _count(client: Client, stream: str, start: str, end: str, limit: int) -> tuple[int, bool]:
    """Entries in an XRANGE interval (``(id`` excludes ``id``), reading at most ``limit + 1``: ``(count, complete)``."""
    count, cursor = 0, start
    for _ in range(limit // PAGE + 2):
        want = min(PAGE, limit + 1 - count)
        if want <= 0:
            break
        page = items(command(client, "XRANGE", stream, cursor, end, "COUNT", want))
        count += len(page)
        if not page or len(page) < want:
            break
        cursor = "(" + text(items(page[-1])[0])
    if count > limit:
        return limit, False
    return count, True


def count_after(
    client: Client, stream: str, position: str, info: StreamInfo, *, limit: int = LAG_SCAN_LIMIT
) -> tuple[int, bool]:
    """Entries of ``stream`` after ``position``: ``(count, exact)``, from one bounded paged XRANGE.

    Answers from XINFO STREAM when the position is at or past the last entry
    or before the first one; ``exact`` is False when counting stopped at ``limit``.
    """
    trivial = _trivial(position, info)
    if trivial is not None:
        return trivial, True
    return _count(client, stream, "(" + position, "+", limit)


def _trivial(position: str, info: StreamInfo) -> int | None:
    """The lag that XINFO STREAM alone gives: past the last entry, before or at the first one."""
    length = int(info.get("length") or 0)
    last = info.get("last_entry_id") or info.get("last_id")
    first = info.get("first_id")
    if length == 0 or last is None or id_key(position) >= id_key(last):
        return 0
    if first is None or id_key(position) < id_key(first):
        return length
    if id_key(position) == id_key(first):
        return length - 1
    return None


def lag_of(
    client: Client,
    stream: str,
    position: str,
    info: StreamInfo,
    *,
    group: Mapping[str, object] | None = None,
    limit: int = LAG_SCAN_LIMIT,
) -> Lag:
    """How many entries of ``stream`` come after ``position`` (a group's last-delivered id or a tracker).

    In order, cheapest first:

    1. XINFO STREAM: nothing after the last entry; the whole stream before the first.
    2. XINFO GROUPS ``lag`` (Redis 7+), which Redis gives while no entry after
       the group's position was deleted.
    3. A group's ``entries-read`` is the ordinal of its position among all
       entries ever added, so at most ``entries-read`` entries are still at or
       before it: ``length - entries-read <= lag <= entries-added - entries-read``,
       one less on the right when the newest deleted id lies after the position
       (that deletion is one of the ``entries-added - length`` removed
       entries). Both ends meet after a single XDEL, where Redis says nil.
    4. Counting entries after the position and entries at or before it (the
       lag is then the length minus those), each up to ``limit``, the side
       that looks shorter first (by entries-read, else by the ids' times).
    5. Otherwise a lower bound: the larger of ``limit`` and step 3's left end.
    """
    trivial = _trivial(position, info)
    if trivial is not None:
        return Lag(trivial, True)
    floor, ordinal = 0, None
    if group is not None:
        if group.get("lag") is not None:
            return Lag(number(group["lag"]), True)
        added, entries_read = info.get("entries_added"), group.get("entries_read")
        if added is not None and entries_read is not None:
            length, read = int(info.get("length") or 0), number(entries_read)
            deleted = info.get("max_deleted_id")
            after = 1 if deleted and id_key(deleted) > id_key(position) else 0
            low, high = max(0, length - read), int(added) - read - after
            if low == high:
                return Lag(low, True)
            floor, ordinal = low, (read, int(added) - read)
    # Count the side that is likely shorter first: by entries-read when known, else by the ids' times.
    first, last = info.get("first_id") or "0-0", info.get("last_entry_id") or info.get("last_id") or "0-0"
    near = ordinal or (id_key(position)[0] - id_key(first)[0], id_key(last)[0] - id_key(position)[0])
    if near[0] < near[1]:
        before, complete = _count(client, stream, "-", position, limit)
        if complete:
            return Lag(int(info.get("length") or 0) - before, True)
    count, complete = _count(client, stream, "(" + position, "+", limit)
    if complete:
        return Lag(count, True)
    if near[0] >= near[1]:
        before, complete = _count(client, stream, "-", position, limit)
        if complete:
            return Lag(int(info.get("length") or 0) - before, True)
    return Lag(max(count, floor), False)


def oldest_waiting(client: Client, stream: str, position: str, pending_min: str | None = None) -> str | None:
    """The id of the oldest entry not yet dispatched: the first after ``position``, or an older pending one."""
    page = items(command(client, "XRANGE", stream, "(" + position, "+", "COUNT", 1))
    first = text(items(page[0])[0]) if page else None
    candidates = [i for i in (first, pending_min) if i is not None]
    return min(candidates, key=id_key) if candidates else None


def pending_min(client: Client, stream: str, group: str) -> str | None:
    """The smallest id in the group's pending list (XPENDING summary), or None."""
    reply = command(client, "XPENDING", stream, group)
    if isinstance(reply, dict):  # a client with redis-py's own XPENDING parsing
        reply = [reply.get("pending"), reply.get("min")]
    summary = items(reply)
    if len(summary) < 2 or not number(summary[0]) or summary[1] is None:
        return None
    return text(summary[1])


def server_ms(client: Client) -> int:
    """The Redis server's clock (TIME) in ms: entry ids come from that clock, not ours."""
    reply: object = client.time()
    if isinstance(reply, dict):  # a cluster client may answer per node
        reply = next(iter(mapping(reply).values()))
    seconds, micros = items(reply)
    return number(seconds) * 1000 + number(micros) // 1000


def entry_age(entry_id: str | None, now_ms: int) -> float:
    """Seconds since ``entry_id`` was added (its millisecond part); 0 when nothing waits or the id is ahead."""
    if entry_id is None:
        return 0.0
    return round(max(0, now_ms - id_key(entry_id)[0]) / 1000, 3)


def lag_fields(
    client: Client, stream: str, position: str, info: StreamInfo, *, limit: int, now_ms: int,
    group: Mapping[str, object] | None = None, pending_from: str | None = None,
) -> LagFields:  # fmt: skip
    """lag, lag_exact, lag_at_least and lag_seconds of ``position`` (see lag_of), for a status row."""
    if not info.get("exists"):
        return {"lag": 0, "lag_exact": True, "lag_at_least": 0, "lag_seconds": 0.0}
    lag = lag_of(client, stream, position, info, group=group, limit=limit)
    oldest = oldest_waiting(client, stream, position, pending_from)
    return {
        "lag": lag.count if lag.exact else None,
        "lag_exact": lag.exact,
        "lag_at_least": lag.count,
        "lag_seconds": entry_age(oldest, now_ms),
    }

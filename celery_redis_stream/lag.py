"""Lag of a stream position: exact where Redis can say cheaply, a lower bound otherwise; and its age in seconds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "LAG_SCAN_LIMIT", "Lag", "count_after", "entry_age", "id_key", "lag_of", "oldest_waiting", "pending_min",
    "server_ms", "text",
]  # fmt: skip

#: How many entries a lag count reads at most, on each side of the position, when Redis cannot say.
LAG_SCAN_LIMIT = 10000
PAGE = 1000

ID_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def text(value: Any) -> str:
    """Bytes from Redis as text; undecodable bytes are replaced, never fatal."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


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

    def fields(self) -> dict[str, Any]:
        """The JSON fields: ``lag`` only when exact (null otherwise), ``lag_at_least`` always a true lower bound."""
        return {"lag": self.count if self.exact else None, "lag_exact": self.exact, "lag_at_least": self.count}


def _count(client: Any, stream: str, start: str, end: str, limit: int) -> tuple[int, bool]:
    """Entries in an XRANGE interval (``(id`` excludes ``id``), reading at most ``limit + 1``: ``(count, complete)``."""
    count, cursor = 0, start
    for _ in range(limit // PAGE + 2):
        want = min(PAGE, limit + 1 - count)
        if want <= 0:
            break
        page = client.execute_command("XRANGE", stream, cursor, end, "COUNT", want)
        count += len(page or ())
        if not page or len(page) < want:
            break
        cursor = "(" + text(page[-1][0])
    if count > limit:
        return limit, False
    return count, True


def count_after(
    client: Any, stream: str, position: str, info: dict[str, Any], *, limit: int = LAG_SCAN_LIMIT
) -> tuple[int, bool]:
    """Entries of ``stream`` after ``position``: ``(count, exact)``, from one bounded paged XRANGE.

    Answers from XINFO STREAM when the position is at or past the last entry
    or before the first one; ``exact`` is False when counting stopped at ``limit``.
    """
    trivial = _trivial(position, info)
    if trivial is not None:
        return trivial, True
    return _count(client, stream, "(" + position, "+", limit)


def _trivial(position: str, info: dict[str, Any]) -> int | None:
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
    client: Any,
    stream: str,
    position: str,
    info: dict[str, Any],
    *,
    group: dict[str, Any] | None = None,
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
            return Lag(int(group["lag"]), True)
        added, read = info.get("entries_added"), group.get("entries_read")
        if added is not None and read is not None:
            length, read = int(info["length"]), int(read)
            deleted = info.get("max_deleted_id")
            after = 1 if deleted and id_key(deleted) > id_key(position) else 0
            low, high = max(0, length - read), int(added) - read - after
            if low == high:
                return Lag(low, True)
            floor, ordinal = low, (read, int(added) - read)
    # Count the side that is likely shorter first: by entries-read when known, else by the ids' times.
    first, last = info["first_id"], info.get("last_entry_id") or info["last_id"]
    near = ordinal or (id_key(position)[0] - id_key(first)[0], id_key(last)[0] - id_key(position)[0])
    if near[0] < near[1]:
        before, complete = _count(client, stream, "-", position, limit)
        if complete:
            return Lag(int(info["length"]) - before, True)
    count, complete = _count(client, stream, "(" + position, "+", limit)
    if complete:
        return Lag(count, True)
    if near[0] >= near[1]:
        before, complete = _count(client, stream, "-", position, limit)
        if complete:
            return Lag(int(info["length"]) - before, True)
    return Lag(max(count, floor), False)


def oldest_waiting(client: Any, stream: str, position: str, pending_min: str | None = None) -> str | None:
    """The id of the oldest entry not yet dispatched: the first after ``position``, or an older pending one."""
    page = client.execute_command("XRANGE", stream, "(" + position, "+", "COUNT", 1)
    first = text(page[0][0]) if page else None
    candidates = [i for i in (first, pending_min) if i is not None]
    return min(candidates, key=id_key) if candidates else None


def pending_min(client: Any, stream: str, group: str) -> str | None:
    """The smallest id in the group's pending list (XPENDING summary), or None."""
    reply = client.execute_command("XPENDING", stream, group)
    if isinstance(reply, dict):  # a client with redis-py's own XPENDING parsing
        reply = [reply.get("pending"), reply.get("min")]
    if not reply or not int(reply[0] or 0) or reply[1] is None:
        return None
    return text(reply[1])


def server_ms(client: Any) -> int:
    """The Redis server's clock (TIME) in ms: entry ids come from that clock, not ours."""
    reply = client.time()
    if isinstance(reply, dict):  # a cluster client may answer per node
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def entry_age(entry_id: str | None, now_ms: int) -> float:
    """Seconds since ``entry_id`` was added (its millisecond part); 0 when nothing waits or the id is ahead."""
    if entry_id is None:
        return 0.0
    return round(max(0, now_ms - id_key(entry_id)[0]) / 1000, 3)

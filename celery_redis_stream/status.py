"""What an operator sees of each mapped stream: length, position, lag, pending, lease, dead letters."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from redis.exceptions import ResponseError

from .config import BridgeConfig, StreamConfig
from .reader import as_entry_id
from .redact import redact
from .retention import retention_status

__all__ = ["LAG_SCAN_LIMIT", "collect", "count_after", "id_key", "parse_target", "stream_status"]

#: How many entries a lag count reads at most when Redis does not report the lag itself.
LAG_SCAN_LIMIT = 10000
PAGE = 1000

ID_RE = re.compile(r"^(\d+)(?:-(\d+))?$")
# user:password@ inside any URL in free text; kombu's maybe_sanitize_url only handles a whole URL.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


def parse_target(value: str) -> str:
    """``--to`` of ``reset``: ``"0"``, ``"$"``, an entry id, or an ISO-8601 time as ``<ms>-0``.

    A time without an offset is UTC. Raises ValueError with the reason.
    """
    value = value.strip()
    if value in ("0", "$"):
        return value
    match = ID_RE.match(value)
    if match is not None:
        return f"{int(match.group(1))}-{int(match.group(2) or 0)}"
    try:
        # Python 3.10's fromisoformat does not take the "Z" suffix.
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        raise ValueError(
            f"expected '0', '$', an entry id like 1700000000000-0, or an ISO-8601 time like "
            f"2026-01-31T12:00:00Z, got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ms = (when - EPOCH) // timedelta(milliseconds=1)
    if ms < 0:
        raise ValueError(f"time {value!r} is before 1970")
    return f"{ms}-0"


def count_after(
    client: Any, stream: str, position: str, info: dict[str, Any], *, limit: int = LAG_SCAN_LIMIT
) -> tuple[int, bool]:
    """Entries of ``stream`` after ``position``: ``(count, exact)``.

    Answers from XINFO STREAM when the position is at or past the last entry
    or before the first one; otherwise counts with paged XRANGE, reading at
    most ``limit + 1`` entries (``exact`` is False when it stopped there).
    """
    length = int(info.get("length") or 0)
    last = info.get("last_id")
    first = info.get("first_id")
    if length == 0 or last is None or id_key(position) >= id_key(last):
        return 0, True
    if first is None or id_key(position) < id_key(first):
        return length, True
    count, cursor = 0, "(" + position
    for _ in range(limit // PAGE + 2):
        want = min(PAGE, limit + 1 - count)
        if want <= 0:
            break
        page = client.execute_command("XRANGE", stream, cursor, "+", "COUNT", want)
        count += len(page or ())
        if not page or len(page) < want:
            break
        cursor = "(" + text(page[-1][0])
    if count > limit:
        return limit, False
    return count, True


def _stream_info(client: Any, stream: str) -> dict[str, Any]:
    try:
        raw = client.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return {"exists": False, "length": 0, "last_id": None, "first_id": None}
        raise
    first = raw.get("first-entry")
    last_id = text(raw.get("last-generated-id") or "0-0")
    return {
        "exists": True,
        "length": int(raw.get("length") or 0),
        "last_id": last_id,
        "first_id": text(first[0]) if first else None,
    }


def _start_position(sc: StreamConfig, info: dict[str, Any]) -> str:
    """Where a reader that has no position yet will start (``stream_start``)."""
    return as_entry_id(sc.start, lambda: info["last_id"] or "0-0")


def _group(client: Any, sc: StreamConfig, info: dict[str, Any], limit: int) -> dict[str, Any]:
    out: dict[str, Any] = {"group": sc.group, "group_exists": False, "last_delivered_id": None, "pending": 0}
    out["consumers"] = []
    groups = client.xinfo_groups(sc.stream) if info["exists"] else []
    found = next((g for g in groups if text(g.get("name")) == sc.group), None)
    if found is None:
        # The first worker creates the group at stream_start; report the lag it will see.
        out["lag"], out["lag_exact"] = count_after(client, sc.stream, _start_position(sc, info), info, limit=limit)
        return out
    delivered = text(found.get("last-delivered-id") or "0-0")
    out.update(group_exists=True, last_delivered_id=delivered, pending=int(found.get("pending") or 0))
    lag = found.get("lag")
    if lag is not None:
        out["lag"], out["lag_exact"] = int(lag), True
    else:
        # Redis 6.2 has no lag; Redis 7 reports nil after deletions or XGROUP SETID.
        out["lag"], out["lag_exact"] = count_after(client, sc.stream, delivered, info, limit=limit)
    for consumer in client.xinfo_consumers(sc.stream, sc.group):
        out["consumers"].append(
            {
                "name": text(consumer.get("name")),
                "pending": int(consumer.get("pending") or 0),
                "idle_ms": int(consumer.get("idle") or 0),
            }
        )
    return out


def _tracker(client: Any, sc: StreamConfig, info: dict[str, Any], limit: int) -> dict[str, Any]:
    stored = client.get(sc.tracker_key)
    holder = client.get(sc.lease_key)
    position = text(stored) if stored is not None else None
    out: dict[str, Any] = {
        "tracker_key": sc.tracker_key,
        "position": position,
        "lease_key": sc.lease_key,
        "lease_holder": text(holder) if holder is not None else None,
    }
    try:
        start = position if position is not None else _start_position(sc, info)
        out["lag"], out["lag_exact"] = count_after(client, sc.stream, start, info, limit=limit)
    except ValueError:
        out["lag"], out["lag_exact"] = None, False
        out["error"] = f"tracker key {sc.tracker_key} holds {position!r}, not an entry id"
    return out


def stream_status(client: Any, sc: StreamConfig, *, limit: int = LAG_SCAN_LIMIT) -> dict[str, Any]:
    """The state of one mapped stream as plain JSON types; a Redis error is reported, not raised."""
    out: dict[str, Any] = {"stream": sc.stream, "mode": sc.mode, "task": sc.task}
    try:
        info = _stream_info(client, sc.stream)
        out.update(exists=info["exists"], length=info["length"], last_id=info["last_id"])
        out.update(_group(client, sc, info, limit) if sc.mode == "group" else _tracker(client, sc, info, limit))
        out["dead_letter"] = sc.dead_letter
        out["dead_letter_length"] = int(client.xlen(sc.dead_letter))
        out.update(retention_status(client, sc))
    except ResponseError as exc:  # e.g. WRONGTYPE: show it on this stream, keep the others
        out["error"] = redact(str(exc))
    return out


def collect(client: Any, config: BridgeConfig, *, max_lag: int | None = None) -> dict[str, Any]:
    """Status of every mapped stream; ``ok`` is False when a lag exceeds ``max_lag`` or is unknown."""
    limit = LAG_SCAN_LIMIT if max_lag is None else max(LAG_SCAN_LIMIT, max_lag + 1)
    streams = [stream_status(client, sc, limit=limit) for sc in config.streams]
    over = []
    if max_lag is not None:
        for s in streams:
            if s.get("error") or s.get("lag") is None or s["lag"] > max_lag:
                over.append(s["stream"])
    return {"url": config.safe_url, "max_lag": max_lag, "ok": not over, "over_max_lag": over, "streams": streams}

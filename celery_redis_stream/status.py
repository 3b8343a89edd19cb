"""What an operator sees of each mapped stream: length, position, lag, pending, lease, dead letters."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone
from typing import Any

from redis.exceptions import ResponseError

from .config import BridgeConfig, StreamConfig
from .lag import (
    ID_RE,
    LAG_SCAN_LIMIT,
    Lag,
    count_after,
    entry_age,
    id_key,
    lag_of,
    oldest_waiting,
    pending_min,
    server_ms,
    text,
)
from .reader import as_entry_id, connect
from .redact import redact
from .retention import retention_status

__all__ = [
    "LAG_SCAN_LIMIT", "collect", "count_after", "id_key", "parse_target", "stream_status", "text", "time_lags",
    "worker_time_lags",
]  # fmt: skip

# user:password@ inside any URL in free text; kombu's maybe_sanitize_url only handles a whole URL.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


def _stream_info(client: Any, stream: str) -> dict[str, Any]:
    try:
        raw = client.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return {"exists": False, "length": 0, "last_id": None, "first_id": None}
        raise
    first, last = raw.get("first-entry"), raw.get("last-entry")
    last_id = text(raw.get("last-generated-id") or "0-0")
    added, deleted = raw.get("entries-added"), raw.get("max-deleted-entry-id")  # Redis 7+
    return {
        "exists": True,
        "length": int(raw.get("length") or 0),
        "last_id": last_id,
        "first_id": text(first[0]) if first else None,
        "last_entry_id": text(last[0]) if last else None,
        "entries_added": int(added) if added is not None else None,
        "max_deleted_id": text(deleted) if deleted is not None else None,
    }


def _start_position(sc: StreamConfig, info: dict[str, Any]) -> str:
    """Where a reader that has no position yet will start (``stream_start``)."""
    return as_entry_id(sc.start, lambda: info["last_id"] or "0-0")


def _lag(
    client: Any, sc: StreamConfig, position: str, info: dict[str, Any], limit: int, now_ms: int,
    group: dict[str, Any] | None = None, pending_from: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """lag, lag_exact, lag_at_least and lag_seconds of ``position`` (see lag.lag_of)."""
    if not info["exists"]:
        return {**Lag(0, True).fields(), "lag_seconds": 0.0}
    lag = lag_of(client, sc.stream, position, info, group=group, limit=limit)
    oldest = oldest_waiting(client, sc.stream, position, pending_from)
    return {**lag.fields(), "lag_seconds": entry_age(oldest, now_ms)}


def _group(client: Any, sc: StreamConfig, info: dict[str, Any], limit: int, now_ms: int) -> dict[str, Any]:
    out: dict[str, Any] = {"group": sc.group, "group_exists": False, "last_delivered_id": None, "pending": 0}
    out["consumers"] = []
    groups = client.xinfo_groups(sc.stream) if info["exists"] else []
    found = next((g for g in groups if text(g.get("name")) == sc.group), None)
    if found is None:
        # The first worker creates the group at stream_start; report the lag it will see.
        out.update(_lag(client, sc, _start_position(sc, info), info, limit, now_ms))
        return out
    delivered = text(found.get("last-delivered-id") or "0-0")
    out.update(group_exists=True, last_delivered_id=delivered, pending=int(found.get("pending") or 0))
    # Redis 6.2 has no lag; Redis 7 reports nil after deletions or XGROUP SETID.
    meta = {"lag": found.get("lag"), "entries_read": found.get("entries-read")}
    oldest_pending = pending_min(client, sc.stream, sc.group) if out["pending"] else None
    out.update(_lag(client, sc, delivered, info, limit, now_ms, group=meta, pending_from=oldest_pending))
    for consumer in client.xinfo_consumers(sc.stream, sc.group):
        out["consumers"].append(
            {
                "name": text(consumer.get("name")),
                "pending": int(consumer.get("pending") or 0),
                "idle_ms": int(consumer.get("idle") or 0),
            }
        )
    return out


def _tracker(client: Any, sc: StreamConfig, info: dict[str, Any], limit: int, now_ms: int) -> dict[str, Any]:
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
        id_key(start)
    except ValueError:
        out.update(lag=None, lag_exact=False, lag_at_least=None, lag_seconds=None)
        out["error"] = f"tracker key {sc.tracker_key} holds {position!r}, not an entry id"
        return out
    out.update(_lag(client, sc, start, info, limit, now_ms))
    return out


def stream_status(client: Any, sc: StreamConfig, *, limit: int = LAG_SCAN_LIMIT) -> dict[str, Any]:
    """The state of one mapped stream as plain JSON types; a Redis error is reported, not raised."""
    out: dict[str, Any] = {"stream": sc.stream, "mode": sc.mode, "task": sc.task}
    try:
        info = _stream_info(client, sc.stream)
        now_ms = server_ms(client)
        out.update(exists=info["exists"], length=info["length"], last_id=info["last_id"])
        position = (_group if sc.mode == "group" else _tracker)(client, sc, info, limit, now_ms)
        out.update(position)
        out["dead_letter"] = sc.dead_letter
        out["dead_letter_length"] = int(client.xlen(sc.dead_letter))
        out.update(retention_status(client, sc))
    except ResponseError as exc:  # e.g. WRONGTYPE: show it on this stream, keep the others
        out["error"] = redact(str(exc))
    return out


def collect(client: Any, config: BridgeConfig, *, max_lag: int | None = None) -> dict[str, Any]:
    """Status of every mapped stream; ``ok`` is False when a lag exceeds ``max_lag`` or is unknown.

    A lower bound above ``max_lag`` is over it too: the count reads ``max_lag + 1``
    entries before it gives up, so a lag that is only bounded is always over.
    """
    limit = LAG_SCAN_LIMIT if max_lag is None else max(LAG_SCAN_LIMIT, max_lag + 1)
    streams = [stream_status(client, sc, limit=limit) for sc in config.streams]
    over = []
    if max_lag is not None:
        for s in streams:
            least = s.get("lag_at_least")
            if s.get("error") or least is None or least > max_lag or s.get("lag") is None:
                over.append(s["stream"])
    return {"url": config.safe_url, "max_lag": max_lag, "ok": not over, "over_max_lag": over, "streams": streams}


def time_lags(client: Any, configs: list[StreamConfig]) -> dict[str, float | None]:
    """Per stream, the age in seconds of its oldest entry not yet dispatched (None when Redis could not say).

    The cheap half of ``stream_status`` (no lag count), for ``inspect redis_stream``.
    """
    out: dict[str, float | None] = {}
    now_ms = server_ms(client)
    for sc in configs:
        try:
            if sc.mode == "group":
                found = next(
                    (g for g in client.xinfo_groups(sc.stream) if text(g.get("name")) == sc.group), None
                )  # fmt: skip
                if found is None:
                    out[sc.stream] = None
                    continue
                oldest_pending = pending_min(client, sc.stream, sc.group) if int(found.get("pending") or 0) else None
                position = text(found.get("last-delivered-id") or "0-0")
            else:
                stored, oldest_pending = client.get(sc.tracker_key), None
                if stored is None:
                    out[sc.stream] = None
                    continue
                position = text(stored)
            out[sc.stream] = entry_age(oldest_waiting(client, sc.stream, position, oldest_pending), now_ms)
        except (ResponseError, ValueError):  # no such key, wrong type, a tracker that is not an id
            out[sc.stream] = None
    return out


def worker_time_lags(
    config: BridgeConfig, configs: list[StreamConfig], timeout: float = 0.5
) -> dict[str, float | None]:
    """``time_lags`` on a short-lived client of its own, for a remote-control reply that must come within ~1 s.

    The readers' clients are busy in blocking reads; a failure gives None for every stream, never an error.
    """
    client: Any = None
    try:
        client = connect(
            config, socket_timeout=timeout, socket_connect_timeout=timeout, client_name="celery-redis-stream-inspect"
        )
        return time_lags(client, configs)
    except Exception:  # Redis down or slow: the reply still goes out, without time lags
        return dict.fromkeys((sc.stream for sc in configs), None)
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

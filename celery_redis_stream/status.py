"""What an operator sees of each mapped stream: length, position, lag, pending, lease, dead letters (typed rows)."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

from redis.exceptions import ResponseError

from . import keys
from .client.capabilities import in_use, probe
from .client.connection import Client, connect, is_missing_key, items, mapping, number, optional_text, servers, text
from .config import BridgeConfig, StreamConfig
from .position.lag import ID_RE, LAG_SCAN_LIMIT, count_after, entry_age, id_key, oldest_waiting, server_ms
from .position.rule import position_of
from .read.limit import bucket_state
from .redact import redact
from .rows import Collected, StreamInfo, StreamRow
from .upkeep.retention import retention_status

__all__ = [
    "LAG_SCAN_LIMIT", "Collected", "StreamRow", "collect", "count_after", "id_key", "parse_target", "stream_status",
    "text", "time_lags", "worker_extras",
]  # fmt: skip

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
        ms, seq = int(match.group(1)), int(match.group(2) or 0)
        if max(ms, seq) >= 2**64:  # Redis refuses it as a group's id, and a tracker holding it stops every read
            raise ValueError(f"entry id {value!r} is out of range: each part is at most {2**64 - 1}")
        return f"{ms}-{seq}"
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


def _stream_info(client: Client, stream: str) -> StreamInfo:
    try:
        raw = mapping(client.xinfo_stream(stream))
    except Exception as exc:
        if is_missing_key(exc):
            return {"exists": False, "length": 0, "last_id": None, "first_id": None}
        raise
    first, last = items(raw.get("first-entry")), items(raw.get("last-entry"))
    added, deleted = raw.get("entries-added"), raw.get("max-deleted-entry-id")  # Redis 7+
    return {
        "exists": True,
        "length": number(raw.get("length")),
        "last_id": text(raw.get("last-generated-id") or "0-0"),
        "first_id": text(first[0]) if first else None,
        "last_entry_id": text(last[0]) if last else None,
        "entries_added": number(added) if added is not None else None,
        "max_deleted_id": optional_text(deleted),
    }


def stream_status(
    client: Client, sc: StreamConfig, *, limit: int = LAG_SCAN_LIMIT, available: frozenset[str] | None = None
) -> StreamRow:
    """The state of one mapped stream as plain JSON types; a Redis error is reported, not raised.

    ``available``: the server's capabilities (client/capabilities.py), probed here when not given.
    """
    position = position_of(sc)
    out: StreamRow = {"stream": sc.stream, "mode": position.mode, "task": sc.task}
    try:
        info = _stream_info(client, sc.stream)
        now_ms = server_ms(client)
        out["exists"], out["length"] = bool(info.get("exists")), info.get("length", 0)
        out["last_id"] = info.get("last_id")
        out.update(position.status(client, info, limit=limit, now_ms=now_ms))
        out["ahead"] = is_ahead(out, info)
        out["dead_letter"] = sc.dead_letter
        out["dead_letter_length"] = number(client.xlen(sc.dead_letter))
        retention = retention_status(client, sc)
        out["retention_ms"], out["retention_trimmed"] = retention["retention_ms"], retention["retention_trimmed"]
        out["retention_last_run_ms"] = retention["retention_last_run_ms"]
        out["retention_last_trim_ms"] = retention["retention_last_trim_ms"]
        out["retention_minid"] = retention["retention_minid"]
        out["capabilities"] = in_use(
            probe(client) if available is None else available, retention=sc.retention_ms is not None
        )
        _traffic(client, sc, out, now_ms)
    except ResponseError as exc:  # e.g. WRONGTYPE: show it on this stream, keep the others
        out["error"] = redact(str(exc))
        out.setdefault("ahead", False)
    return out


def is_ahead(row: StreamRow, info: StreamInfo) -> bool:
    """The group's or tracker's position lies after the stream's last id (XINFO STREAM last-generated-id).

    Nothing after it exists, so the lag counts 0, yet every entry added until
    ids pass it is skipped: `reset --to 99999999999999-0` or a mistyped time does that.
    """
    where = row.get("last_delivered_id") if row.get("mode") == "group" else row.get("position")
    last = info.get("last_id")
    if not info.get("exists") or where is None or last is None:
        return False
    try:
        return id_key(where) > id_key(last)
    except ValueError:  # a tracker that is not an id is reported as an error already
        return False


def _traffic(client: Client, sc: StreamConfig, out: StreamRow, now_ms: int) -> None:
    """The rate limit and whether readers wait for it now; the dedupe key and its deduplicated count (all workers)."""
    out["rate_limit"] = None if sc.rate_limit is None else str(sc.rate_limit)
    # Refused a token just now, with entries waiting: an idle reader blocking on an empty stream holds a
    # token, and another refused meanwhile is not held back by the limit.
    waiting = (out.get("lag_at_least") or 0) > 0 or (out.get("pending") or 0) > 0
    out["rate_limited"] = sc.rate_limit is not None and waiting and bucket_state(client, sc.stream, now_ms)
    out["dedupe_key"] = None if sc.dedupe is None else sc.dedupe.template
    counted = client.hget(keys.dedupe_count(sc.stream, sc.position_name), "deduplicated") if sc.dedupe else None
    out["deduplicated"] = number(counted)


def _over(row: StreamRow, max_lag: int) -> bool:
    least = row.get("lag_at_least")
    unknown = least is None or row.get("lag") is None
    return bool(row.get("error")) or bool(row.get("ahead")) or unknown or (least is not None and least > max_lag)


def collect(client: Client, config: BridgeConfig, *, max_lag: int | None = None) -> Collected:
    """Status of every mapped stream, with the server it lives on (INFO server); ``ok`` is False when a lag
    exceeds ``max_lag`` or is unknown, or a position is ahead of its stream.

    A lower bound above ``max_lag`` is over it too: the count reads ``max_lag + 1``
    entries before it gives up, so a lag that is only bounded is always over.
    """
    limit = LAG_SCAN_LIMIT if max_lag is None else max(LAG_SCAN_LIMIT, max_lag + 1)
    available = probe(client)
    on = servers(client, [sc.stream for sc in config.streams])
    streams = [stream_status(client, sc, limit=limit, available=available) for sc in config.streams]
    for row in streams:
        row["server"] = on.get(row["stream"])
    over = [] if max_lag is None else [s["stream"] for s in streams if _over(s, max_lag)]
    return {"url": config.safe_url, "max_lag": max_lag, "ok": not over, "over_max_lag": over, "streams": streams}


def time_lags(client: Client, configs: list[StreamConfig]) -> dict[str, float | None]:
    """Per stream, the age in seconds of its oldest entry not yet dispatched (None when Redis could not say).

    The cheap half of ``stream_status`` (no lag count), for ``inspect redis_stream``.
    """
    out: dict[str, float | None] = {}
    now_ms = server_ms(client)
    for sc in configs:
        try:
            waiting = position_of(sc).waiting(client)
            if waiting is None:
                out[sc.stream] = None
                continue
            position, oldest_pending = waiting
            out[sc.stream] = entry_age(oldest_waiting(client, sc.stream, position, oldest_pending), now_ms)
        except (ResponseError, ValueError):  # no such key, wrong type, a tracker that is not an id
            out[sc.stream] = None
    return out


def worker_extras(
    config: BridgeConfig, configs: list[StreamConfig], timeout: float = 0.5
) -> dict[str, dict[str, object]]:
    """Per stream ``lag_seconds`` (``time_lags``) and ``server`` (INFO server), on a short-lived client of its own,
    for a remote-control reply that must come within ~1 s.

    The readers' clients are busy in blocking reads; a failure gives None for every value, never an error.
    """
    names = [sc.stream for sc in configs]
    client: Client | None = None
    try:
        client = connect(
            config, socket_timeout=timeout, socket_connect_timeout=timeout, client_name="celery-redis-stream-inspect"
        )
        ages, on = time_lags(client, configs), servers(client, names)
        return {name: {"lag_seconds": ages.get(name), "server": on.get(name)} for name in names}
    except Exception:  # Redis down or slow: the reply still goes out, without time lags
        return {name: {"lag_seconds": None, "server": None} for name in names}
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

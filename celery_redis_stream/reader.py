"""The Redis side: clients, group creation, own-pending and new reads, claiming, tracker reads."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.exceptions import ResponseError

from .config import BridgeConfig, StreamConfig
from .entry import RawEntry, parse_entries, parse_read_reply

__all__ = [
    "connect",
    "ensure_group",
    "read_group",
    "autoclaim",
    "delivery_counts",
    "read_tracked",
    "start_position",
    "is_nogroup",
]

RAW_COMMANDS = ("XREAD", "XREADGROUP", "XAUTOCLAIM", "XRANGE", "XPENDING")


def _raw(response: Any, **options: Any) -> Any:
    return response


def connect(config: BridgeConfig, **overrides: Any) -> Any:
    """A client for the streams Redis whose socket timeout exceeds the read block time.

    Stream replies are kept raw: redis-py would fold them into dicts and so
    hide duplicate field names, which must be dead-lettered instead.
    """
    options: dict[str, Any] = {
        "socket_timeout": config.block_ms / 1000 + 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "client_name": "celery-redis-stream",
    }
    options.update(overrides)
    client = redis.Redis.from_url(config.url, **options)
    for command in RAW_COMMANDS:
        client.set_response_callback(command, _raw)
    return client


def is_nogroup(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, ResponseError) and (text.startswith("NOGROUP") or "no longer exists" in text)


def ensure_group(client: Any, sc: StreamConfig, start: str | None = None) -> bool:
    """Create the consumer group of ``sc`` (and the stream) unless it exists; True if created.

    An existing group is left as it is (BUSYGROUP is success): creating is
    never destructive.
    """
    try:
        client.xgroup_create(sc.stream, sc.group, id=start or sc.start, mkstream=True)
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


def read_group(
    client: Any,
    group: str,
    consumer: str,
    positions: Mapping[str, str],
    *,
    count: int,
    block_ms: int | None,
) -> dict[str, list[RawEntry]]:
    """XREADGROUP: ``">"`` reads new entries, an id re-reads this consumer's own pending ones."""
    args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *positions.keys(), *positions.values()]
    return parse_read_reply(client.execute_command(*args))


def autoclaim(
    client: Any, sc: StreamConfig, consumer: str, *, min_idle_ms: int, start: str, count: int
) -> tuple[str, list[RawEntry], list[str]]:
    """XAUTOCLAIM one page: entries idle on other consumers move to ``consumer``.

    Returns the next cursor (``"0-0"`` when the scan is complete), the claimed
    entries and the ids of pending entries whose data was trimmed away.
    """
    reply = client.execute_command(
        "XAUTOCLAIM", sc.stream, sc.group, consumer, min_idle_ms, start, "COUNT", count
    )
    cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    entries = parse_entries(sc.stream, reply[1])
    deleted = [i.decode() if isinstance(i, bytes) else str(i) for i in (reply[2] if len(reply) > 2 else ())]
    # Redis 6.2 reports trimmed entries as nil data instead of a third element.
    deleted += [e.id for e in entries if e.pairs is None]
    return cursor, [e for e in entries if e.pairs is not None], deleted


def delivery_counts(client: Any, sc: StreamConfig, consumer: str, ids: Iterable[str]) -> dict[str, int]:
    """Delivery counts of this consumer's pending ``ids`` (one XPENDING range)."""
    ids = list(ids)
    if not ids:
        return {}
    reply = client.execute_command(
        "XPENDING", sc.stream, sc.group, ids[0], ids[-1], len(ids) + 16, consumer
    )
    counts = {}
    for item in reply or ():
        entry_id = item[0].decode() if isinstance(item[0], bytes) else str(item[0])
        counts[entry_id] = int(item[3])
    return counts


def read_tracked(
    client: Any, positions: Mapping[str, str], *, count: int, block_ms: int | None
) -> dict[str, list[RawEntry]]:
    """XREAD after each tracked stream's position."""
    args: list[Any] = ["XREAD", "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    args += ["STREAMS", *positions.keys(), *positions.values()]
    return parse_read_reply(client.execute_command(*args))


def last_id(client: Any, stream: str) -> str:
    """The stream's last generated id, or ``"0-0"`` when it does not exist yet."""
    try:
        info = client.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return "0-0"
        raise
    value = info.get("last-generated-id") or info.get(b"last-generated-id") or "0-0"
    return value.decode() if isinstance(value, bytes) else str(value)


def start_position(client: Any, sc: StreamConfig) -> str:
    """Where a tracker starts when its key does not exist yet.

    ``"$"`` is pinned to the current last id and stored at once, so entries
    added while the worker is down later are not skipped after a restart.
    """
    stored = client.get(sc.tracker_key)
    if stored is not None:
        return stored.decode() if isinstance(stored, bytes) else str(stored)
    start = last_id(client, sc.stream) if sc.start == "$" else ("0-0" if sc.start == "0" else sc.start)
    if client.set(sc.tracker_key, start, nx=True):
        return start
    stored = client.get(sc.tracker_key)
    return stored.decode() if isinstance(stored, bytes) else str(stored)

"""The Redis side of reading: group creation, own-pending and new reads, claiming, tracker reads and starts."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..config import StreamConfig
from ..entry import RawEntry, parse_entries, parse_read_reply
from .cluster import read_slots
from .connection import (
    Client,
    command,
    connect,
    is_busy_group,
    is_cluster,
    is_missing_key,
    items,
    mapping,
    optional_text,
    text,
)  # fmt: skip

__all__ = [
    "as_entry_id",
    "autoclaim",
    "connect",
    "ensure_group",
    "last_id",
    "read_group",
    "read_tracked",
    "start_position",
]


def ensure_group(client: Client, sc: StreamConfig, start: str | None = None) -> bool:
    """Create the consumer group of ``sc`` (and the stream) unless it exists; True if created.

    An existing group is left as it is (BUSYGROUP is success): creating is
    never destructive.
    """
    try:
        client.xgroup_create(sc.stream, sc.group, id=start or sc.start, mkstream=True)
    except Exception as exc:
        if is_busy_group(exc):
            return False
        raise
    return True


def _read(client: Client, head: list[str | int], positions: Mapping[str, str], block_ms: int | None) -> object:
    if is_cluster(client):  # streams may span hash slots
        return read_slots(client, head, positions, block_ms)
    if block_ms is not None:
        head = [*head, "BLOCK", block_ms]
    return command(client, *head, "STREAMS", *positions.keys(), *positions.values())


def read_group(
    client: Client,
    group: str,
    consumer: str,
    positions: Mapping[str, str],
    *,
    count: int,
    block_ms: int | None,
) -> dict[str, list[RawEntry]]:
    """XREADGROUP: ``">"`` reads new entries, an id re-reads this consumer's own pending ones."""
    head: list[str | int] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    return parse_read_reply(_read(client, head, positions, block_ms))


def autoclaim(
    client: Client, sc: StreamConfig, consumer: str, *, min_idle_ms: int, start: str, count: int
) -> tuple[str, list[RawEntry], list[str]]:
    """XAUTOCLAIM one page: entries idle on other consumers move to ``consumer``.

    Returns the next cursor (``"0-0"`` when the scan is complete), the claimed
    entries and the ids of pending entries whose data was trimmed away.
    """
    reply = items(command(client, "XAUTOCLAIM", sc.stream, sc.group, consumer, min_idle_ms, start, "COUNT", count))
    entries = parse_entries(sc.stream, items(reply[1]))
    deleted = [text(i) for i in (items(reply[2]) if len(reply) > 2 else ())]
    # Redis 6.2 reports trimmed entries as nil data instead of a third element.
    deleted += [e.id for e in entries if e.pairs is None]
    return text(reply[0]), [e for e in entries if e.pairs is not None], deleted


def read_tracked(
    client: Client, positions: Mapping[str, str], *, count: int, block_ms: int | None
) -> dict[str, list[RawEntry]]:
    """XREAD after each tracked stream's position."""
    return parse_read_reply(_read(client, ["XREAD", "COUNT", count], positions, block_ms))


def last_id(client: Client, stream: str) -> str:
    """The stream's last generated id, or ``"0-0"`` when it does not exist yet."""
    try:
        info = mapping(client.xinfo_stream(stream))
    except Exception as exc:
        if is_missing_key(exc):
            return "0-0"
        raise
    return text(info.get("last-generated-id") or "0-0")


def as_entry_id(position: str, stream_last_id: Callable[[], str]) -> str:
    """A start or target position as a concrete id: ``"$"`` is the stream's last id now, ``"0"`` the very start."""
    if position == "$":
        return stream_last_id()
    return "0-0" if position == "0" else position


def start_position(client: Client, sc: StreamConfig) -> str:
    """Where a tracker starts when its key does not exist yet.

    ``"$"`` is pinned to the current last id and stored at once, so entries
    added while the worker is down later are not skipped after a restart.
    """
    stored = optional_text(client.get(sc.tracker_key))
    if stored is not None:
        return stored
    start = as_entry_id(sc.start, lambda: last_id(client, sc.stream))
    if client.set(sc.tracker_key, start, nx=True):
        return start
    return text(client.get(sc.tracker_key))

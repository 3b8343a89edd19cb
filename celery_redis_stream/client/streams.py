"""The Redis side of reading: group creation, own-pending and new reads, claiming, tracker reads and starts."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping

import redis
from redis.connection import Connection
from redis.exceptions import ResponseError

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
    "PackedRead",
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


def _bulk(arg: str | int) -> bytes:
    data = str(arg).encode() if isinstance(arg, int) else arg.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class PackedRead:
    """A reader's blocking read with its ``STREAMS`` part packed once: 10,000 names are not encoded every second.

    Sent on a connection held for the read (one Redis, or a Sentinel's
    master; a cluster reads per slot), so another thread can interrupt a
    long wait with CLIENT UNBLOCK (:meth:`wake`): the read then returns as
    if it timed out, having read nothing.
    """

    def __init__(self) -> None:
        self.key: tuple[str, ...] = ()
        self.tail = b""
        self.count = 0
        self._blocked: tuple[redis.Redis, int] | None = None
        self._lock = threading.Lock()
        #: False once Redis refused CLIENT ID (an ACL without it): reads are then never made long.
        self.wakeable = True

    def _pack(self, positions: Mapping[str, str]) -> None:
        key = (*positions.keys(), *positions.values())
        if key != self.key:
            self.key, self.tail, self.count = key, b"".join(map(_bulk, key)), len(key)

    def send(
        self, client: redis.Redis, head: list[str | int], positions: Mapping[str, str], *, wakeable: bool
    ) -> object:
        """``head`` (the command up to BLOCK n) then ``STREAMS`` and the positions; its raw reply."""
        self._pack(positions)
        args = [*head, "STREAMS"]
        packed = [b"*%d\r\n" % (len(args) + self.count) + b"".join(map(_bulk, args)), self.tail]
        pool = client.connection_pool
        try:
            conn = pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            conn = pool.get_connection("XREADGROUP")
        try:
            if wakeable and self.wakeable:
                self._note_id(client, conn)
            conn.send_packed_command(packed)  # type: ignore[no-untyped-call]
            return conn.read_response()
        finally:
            with self._lock:
                self._blocked = None
            pool.release(conn)

    def _note_id(self, client: redis.Redis, conn: Connection) -> None:
        """The connection's id now (a reconnection changes it): who wants the read back unblocks this id."""
        conn.send_command("CLIENT", "ID")  # type: ignore[no-untyped-call]
        try:
            client_id = int(conn.read_response())
        except ResponseError:  # an ACL without CLIENT ID: no long waits from now on
            self.wakeable = False
            return
        with self._lock:
            self._blocked = (client, client_id)

    def wake(self) -> None:
        """From another thread: end a wakeable read now (CLIENT UNBLOCK; best effort, e.g. an ACL may refuse it)."""
        with self._lock:
            blocked, self._blocked = self._blocked, None
        if blocked is not None:
            client, client_id = blocked
            with contextlib.suppress(Exception):
                client.client_unblock(client_id)


def _read(
    client: Client, head: list[str | int], positions: Mapping[str, str], block_ms: int | None,
    packed: PackedRead | None = None, wakeable: bool = False,
) -> object:  # fmt: skip
    if is_cluster(client):  # streams may span hash slots
        return read_slots(client, head, positions, block_ms)
    if block_ms is not None:
        head = [*head, "BLOCK", block_ms]
    if packed is not None and isinstance(client, redis.Redis):
        return packed.send(client, head, positions, wakeable=wakeable)
    return command(client, *head, "STREAMS", *positions.keys(), *positions.values())


def read_group(
    client: Client,
    group: str,
    consumer: str,
    positions: Mapping[str, str],
    *,
    count: int,
    block_ms: int | None,
    packed: PackedRead | None = None,
    wakeable: bool = False,
) -> dict[str, list[RawEntry]]:
    """XREADGROUP: ``">"`` reads new entries, an id re-reads this consumer's own pending ones.

    ``packed`` keeps the packed ``STREAMS`` part between calls; ``wakeable``
    lets ``packed.wake()`` end the wait from another thread.
    """
    head: list[str | int] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
    return parse_read_reply(_read(client, head, positions, block_ms, packed, wakeable))


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

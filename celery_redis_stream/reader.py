"""The Redis side: clients, group creation, own-pending and new reads, claiming, tracker reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import redis
from redis.exceptions import ResponseError

from .config import BridgeConfig, StreamConfig
from .entry import RawEntry, parse_entries, parse_read_reply
from .resp import parser_options
from .slots import is_cluster, read_slots

__all__ = [
    "as_entry_id",
    "autoclaim",
    "connect",
    "ensure_group",
    "read_group",
    "read_tracked",
    "start_position",
]

RAW_COMMANDS = ("XREAD", "XREADGROUP", "XAUTOCLAIM", "XRANGE", "XPENDING")


def _raw(response: Any, **options: Any) -> Any:
    return response


def connect(config: BridgeConfig, **overrides: Any) -> Any:
    """A client for the streams Redis whose socket timeout exceeds the read block time.

    Stream replies are kept raw: redis-py would fold them into dicts and so
    hide duplicate field names, which must be dead-lettered instead. RESP2
    unless the transport options say otherwise: its replies carry the same
    data, and redis-py's pure-Python parser reads them about 15% faster; on
    a plain client, resp.StreamReplyParser reads them faster still.
    """
    options: dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": config.block_ms / 1000 + 10,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "client_name": "celery-redis-stream",
    }
    options.update(config.transport_options)
    options.update(overrides)
    if config.cluster:
        client = _cluster(config.url, options)
    elif config.sentinel:
        client = _sentinel(config.url, options)
    else:
        client = redis.Redis.from_url(config.url, **{**parser_options(), **options})
    return _raw_callbacks(client)


def _cluster(url: str, options: dict[str, Any]) -> Any:
    """``redis+cluster://[user:pw@]host:port[,host:port...]``: redis-py's cluster client."""
    from redis.cluster import ClusterNode, RedisCluster

    scheme, _, rest = url.partition("+cluster://")
    netloc = urlparse(f"{scheme}://{rest}")
    seeds = netloc.netloc.rpartition("@")[2].split(",")
    nodes = [ClusterNode(h.rpartition(":")[0] or h, int(h.rpartition(":")[2] or 6379)) for h in seeds if h]  # type: ignore[no-untyped-call]
    options.pop("health_check_interval", None)
    if netloc.username:
        options.setdefault("username", unquote(netloc.username))
    if netloc.password:
        options.setdefault("password", unquote(netloc.password))
    if scheme == "rediss":
        options.setdefault("ssl", True)
    for key, values in parse_qs(netloc.query).items():
        options.setdefault(key, values[-1])
    client = RedisCluster(startup_nodes=nodes, **options)
    # Each node's own client parses replies before the cluster client does, and
    # its XREAD parser folds fields into a dict (losing values of duplicate
    # names): keep the node clients raw too, including nodes found later.
    manager: Any = client.nodes_manager
    create_node = manager.create_redis_node

    def create_raw_node(*args: Any, **kwargs: Any) -> Any:
        return _raw_callbacks(create_node(*args, **kwargs))

    manager.create_redis_node = create_raw_node
    for node in [*manager.nodes_cache.values(), *manager.startup_nodes.values()]:
        if node.redis_connection is not None:
            _raw_callbacks(node.redis_connection)
    return client


def _raw_callbacks(client: Any) -> Any:
    for command in RAW_COMMANDS:
        client.set_response_callback(command, _raw)
    return client


def _sentinel(url: str, options: dict[str, Any]) -> Any:
    """``sentinel://[:pw@]host:port[/db][;sentinel://host:port...]`` (kombu's form) with a ``master_name``."""
    from redis.sentinel import Sentinel

    parts = [urlparse(part.strip()) for part in url.split(";") if part.strip()]
    first = parts[0]
    query = {k: v[-1] for k, v in parse_qs(first.query).items()}
    master = options.pop("master_name", None) or query.pop("master_name", None)
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    db = int((first.path or "/0").strip("/") or 0)
    if first.password:
        options.setdefault("password", unquote(first.password))
    if first.username:
        options.setdefault("username", unquote(first.username))
    options.pop("health_check_interval", None)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [(p.hostname or "localhost", p.port or 26379) for p in parts],
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=options.get("socket_timeout"),
        socket_connect_timeout=options.get("socket_connect_timeout"),
    )
    return sentinel.master_for(master, db=db, **options)  # type: ignore[no-untyped-call]


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
    if is_cluster(client):  # streams may span hash slots
        return parse_read_reply(read_slots(client, args, positions, block_ms))
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
    reply = client.execute_command("XAUTOCLAIM", sc.stream, sc.group, consumer, min_idle_ms, start, "COUNT", count)
    cursor = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    entries = parse_entries(sc.stream, reply[1])
    deleted = [i.decode() if isinstance(i, bytes) else str(i) for i in (reply[2] if len(reply) > 2 else ())]
    # Redis 6.2 reports trimmed entries as nil data instead of a third element.
    deleted += [e.id for e in entries if e.pairs is None]
    return cursor, [e for e in entries if e.pairs is not None], deleted


def read_tracked(
    client: Any, positions: Mapping[str, str], *, count: int, block_ms: int | None
) -> dict[str, list[RawEntry]]:
    """XREAD after each tracked stream's position."""
    args: list[Any] = ["XREAD", "COUNT", count]
    if is_cluster(client):  # streams may span hash slots
        return parse_read_reply(read_slots(client, args, positions, block_ms))
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


def as_entry_id(position: str, stream_last_id: Callable[[], str]) -> str:
    """A start or target position as a concrete id: ``"$"`` is the stream's last id now, ``"0"`` the very start."""
    if position == "$":
        return stream_last_id()
    return "0-0" if position == "0" else position


def start_position(client: Any, sc: StreamConfig) -> str:
    """Where a tracker starts when its key does not exist yet.

    ``"$"`` is pinned to the current last id and stored at once, so entries
    added while the worker is down later are not skipped after a restart.
    """
    stored = client.get(sc.tracker_key)
    if stored is not None:
        return stored.decode() if isinstance(stored, bytes) else str(stored)
    start = as_entry_id(sc.start, lambda: last_id(client, sc.stream))
    if client.set(sc.tracker_key, start, nx=True):
        return start
    stored = client.get(sc.tracker_key)
    return stored.decode() if isinstance(stored, bytes) else str(stored)

"""The Redis seam: clients that keep stream replies raw, decoding replies, and the one table that sorts Redis errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeGuard, Union
from urllib.parse import parse_qs, unquote, urlparse

import redis
from redis.exceptions import AuthenticationError, NoPermissionError, NoScriptError, ResponseError

from ..redact import redact

try:
    from .parser import parser_options
except ImportError:  # a redis-py without the parser internals parser.py builds on: its own parser

    def parser_options() -> dict[str, object]:
        return {}


if TYPE_CHECKING:
    from redis.cluster import RedisCluster

    from ..config import BridgeConfig

__all__ = [
    "MAX_COMMAND_ARGS",
    "PIPELINE_CHUNK",
    "RAW_COMMANDS",
    "Client",
    "ErrorKind",
    "ScriptCall",
    "classify",
    "command",
    "connect",
    "describe",
    "escaped",
    "is_busy_group",
    "is_denied",
    "is_missing_key",
    "is_unblocked",
    "items",
    "mapping",
    "number",
    "optional_text",
    "run_scripts",
    "server_name",
    "servers",
    "text",
]  # fmt: skip

#: What readers, status and upkeep are handed: a client of one Redis (or a Sentinel master), or of a cluster.
Client = Union[redis.Redis, "RedisCluster"]

#: Commands sent per pipeline (one round trip) when upkeep or a stop touches many streams: a few
#: milliseconds of Redis time each, so reads of other clients (and our own) wait no longer than that.
PIPELINE_CHUNK = 500

#: The most arguments a script hands one command: Lua's unpack() in Redis gives up near 8,000 values, so
#: longer commands are split (LPUSH, XACK) or, for one huge dead letter, written before the script.
MAX_COMMAND_ARGS = 7000

RAW_COMMANDS = ("XREAD", "XREADGROUP", "XAUTOCLAIM", "XRANGE", "XPENDING")

#: How a Redis error is handled: ``fatal`` stops the reader (retrying cannot help: permissions, a key of the
#: wrong type), ``busy group`` and ``no such key`` are answers rather than failures, ``retry`` is the rest
#: (lost connections, timeouts, a server loading or failing over), retried with capped backoff.
ErrorKind = Literal["fatal", "busy group", "no such key", "retry"]

# One table, first match wins: (exception class, reply prefixes or None for any, kind). Redis answers
# through ResponseError with the error code as the first word; "no such key" is an ERR's text.
ERRORS: tuple[tuple[type[BaseException], tuple[str, ...] | None, ErrorKind], ...] = (
    (NoPermissionError, None, "fatal"),
    (AuthenticationError, None, "fatal"),
    (ResponseError, ("NOPERM", "WRONGTYPE", "NOAUTH", "WRONGPASS"), "fatal"),
    (ResponseError, ("BUSYGROUP",), "busy group"),
)


def classify(exc: BaseException) -> ErrorKind:
    """What kind of Redis error ``exc`` is (see ERRORS)."""
    for cls, prefixes, kind in ERRORS:
        if isinstance(exc, cls) and (prefixes is None or str(exc).startswith(prefixes)):
            return kind
    if isinstance(exc, ResponseError) and "no such key" in str(exc).lower():
        return "no such key"
    return "retry"


def is_cluster(client: object) -> TypeGuard[RedisCluster]:
    """A redis-py cluster client: one read cannot span hash slots, nor a pipeline run a script."""
    return hasattr(client, "nodes_manager")


def is_busy_group(exc: BaseException) -> bool:
    """XGROUP CREATE's BUSYGROUP: the group exists already, which is success."""
    return classify(exc) == "busy group"


def is_denied(exc: BaseException) -> bool:
    """The Redis user may not run the command (an ACL NOPERM), as opposed to a server that is away."""
    return isinstance(exc, NoPermissionError) or (isinstance(exc, ResponseError) and str(exc).startswith("NOPERM"))


def is_missing_key(exc: BaseException) -> bool:
    """XINFO and XGROUP on a key that does not exist."""
    return classify(exc) == "no such key"


def is_unblocked(exc: BaseException) -> bool:
    """A blocking read ended because its stream key went away (deleted, or moved to another node in a reshard)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("UNBLOCKED the stream key no longer exists")


def describe(exc: BaseException) -> str:
    """An error for logs and stats: its type and text, passwords redacted, at most 500 characters."""
    return redact(f"{type(exc).__name__}: {exc}")[:500]


def text(value: object) -> str:
    """A reply value as text: bytes are decoded as UTF-8, undecodable bytes replaced, never fatal."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def escaped(value: object) -> str | None:
    """A reply value to show an operator: bytes that are not UTF-8 as ``\\xff`` escapes (not U+FFFD); nil as None."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return None if value is None else str(value)


def optional_text(value: object) -> str | None:
    """:func:`text`, with a nil reply kept as None."""
    return None if value is None else text(value)


def _raw(response: object, **options: object) -> object:
    return response


def connect(config: BridgeConfig, **overrides: object) -> Client:
    """A client for the streams Redis whose socket timeout exceeds the read block time.

    Stream replies are kept raw: redis-py would fold them into dicts and so
    hide duplicate field names, which must be dead-lettered instead. RESP2
    unless the transport options say otherwise: its replies carry the same
    data, and redis-py's pure-Python parser reads them about 15% faster; on
    a plain client, resp.StreamReplyParser reads them faster still.
    """
    options: dict[str, object] = {
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
        return _cluster(config.url, options)
    if config.sentinel:
        return _raw_callbacks(_sentinel(config.url, options))
    return _raw_callbacks(redis.Redis.from_url(config.url, **{**parser_options(), **options}))


def _cluster(url: str, options: dict[str, object]) -> RedisCluster:
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
    client = RedisCluster(startup_nodes=nodes, **options)  # type: ignore[arg-type]
    # Each node's own client parses replies before the cluster client does, and
    # its XREAD parser folds fields into a dict (losing values of duplicate
    # names): keep the node clients raw too, including nodes found later.
    _raw_callbacks(client)
    manager = client.nodes_manager
    create_node = manager.create_redis_node

    def create_raw_node(*args: object, **kwargs: object) -> redis.Redis:
        return _raw_callbacks(create_node(*args, **kwargs))  # type: ignore[no-untyped-call]

    manager.create_redis_node = create_raw_node  # type: ignore[method-assign]
    for node in [*manager.nodes_cache.values(), *manager.startup_nodes.values()]:
        if node.redis_connection is not None:
            _raw_callbacks(node.redis_connection)
    return client


def _raw_callbacks(client: redis.Redis | RedisCluster) -> redis.Redis:
    for command in RAW_COMMANDS:
        client.set_response_callback(command, _raw)
    return client  # type: ignore[return-value]  # a cluster client is returned by _cluster itself


def _sentinel(url: str, options: dict[str, object]) -> redis.Redis:
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
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
        [(p.hostname or "localhost", p.port or 26379) for p in parts],
        sentinel_kwargs=sentinel_kwargs,  # type: ignore[arg-type,unused-ignore]
        socket_timeout=options.get("socket_timeout"),
        socket_connect_timeout=options.get("socket_connect_timeout"),
    )
    master_client: redis.Redis = sentinel.master_for(master, db=db, **options)  # type: ignore[no-untyped-call,arg-type,unused-ignore]
    return master_client


def command(client: Client, *args: str | int | float | bytes) -> object:
    """One raw command; its reply as an ``object`` for the helpers below to take apart."""
    reply: object = client.execute_command(*args)  # type: ignore[no-untyped-call]  # RedisCluster's is untyped
    return reply


def items(reply: object) -> list[object]:
    """A multi-bulk reply as a list; nil (and anything that is not a list) as an empty one."""
    return list(reply) if isinstance(reply, (list, tuple)) else []


def mapping(reply: object) -> dict[str, object]:
    """A reply redis-py parsed into a dict (XINFO, HGETALL), with text keys; nil as an empty one."""
    if not isinstance(reply, dict):
        return {}
    return {text(k): v for k, v in reply.items()}


def number(value: object, default: int = 0) -> int:
    """An integer reply (or bulk string holding one); nil as ``default``."""
    if value is None:
        return default
    if isinstance(value, (int, str, bytes, bytearray, float)):
        return int(value)
    raise TypeError(f"not an integer reply: {value!r}")


#: A script call: its keys and its arguments.
ScriptCall = tuple[Sequence[str], Sequence[str | int]]


def _evalsha_all(client: Client, sha: str, calls: Sequence[ScriptCall]) -> list[object]:
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(sha, len(keys), *keys, *args)
    replies: list[object] = pipe.execute(raise_on_error=False)
    return replies


def run_scripts(client: Client, source: str, calls: Sequence[ScriptCall]) -> list[object]:
    """EVALSHA of one script for many keys, pipelined: one round trip per PIPELINE_CHUNK calls.

    Each call stays its own atomic script (on a cluster the pipeline sends
    each to its key's node). A Redis refusal of one call (an ACL without
    EVALSHA, a missing group) comes back in place of its reply, as a
    ResponseError, for the caller to log; lost connections raise. Calls
    answered NOSCRIPT (a restarted server, a failover, a node that never ran
    the script) are sent again once after SCRIPT LOAD.
    """
    script = client.register_script(source)
    out: list[object] = []
    for start in range(0, len(calls), PIPELINE_CHUNK):
        part = calls[start : start + PIPELINE_CHUNK]
        replies = _evalsha_all(client, script.sha, part)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            client.script_load(source)
            again = _evalsha_all(client, script.sha, [part[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        out += replies
    return out


def server_name(info: Mapping[str, object]) -> str:
    """``"redis 7.0.15"``, ``"valkey 9.1.2"``: the server's name and version from its ``INFO server`` fields.

    Valkey reports ``redis_version:7.2.4`` for compatibility and its own version
    in ``valkey_version`` (with ``server_name:valkey``), so the name is read from
    those fields, never guessed from the version string.
    """
    name = optional_text(info.get("server_name"))
    if name:
        version = info.get(f"{name.lower()}_version") or info.get("redis_version")
        return f"{name.lower()} {text(version) if version is not None else '?'}"
    if info.get("valkey_version") is not None:
        return f"valkey {text(info['valkey_version'])}"
    version = info.get("redis_version")
    return f"redis {text(version) if version is not None else '?'}"


def servers(client: Client, streams: Iterable[str]) -> dict[str, str | None]:
    """Per stream, the server it lives on (:func:`server_name`): INFO server once, or per node of a cluster.

    None where the server does not say (an ACL without INFO, a renamed INFO); a lost connection raises.
    """
    names = list(streams)
    if not is_cluster(client):
        name = _server_of(lambda: client.info("server"))
        return dict.fromkeys(names, name)
    cluster = client
    by_node: dict[str, str | None] = {}
    out: dict[str, str | None] = {}
    for stream in names:
        node = cluster.get_node_from_key(stream)  # type: ignore[no-untyped-call]
        if node.name not in by_node:
            by_node[node.name] = _server_of(partial(cluster.info, "server", target_nodes=node))
        out[stream] = by_node[node.name]
    return out


def _server_of(info: Callable[[], object]) -> str | None:
    try:
        reply = info()
    except ResponseError:  # NOPERM, or INFO renamed away: the server stays unnamed, the status goes on
        return None
    return server_name(mapping(reply)) if isinstance(reply, dict) else None

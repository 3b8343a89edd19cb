"""Capabilities: which newer stream commands the server takes, probed with COMMAND DOCS, never from a version string.

Valkey reports ``redis_version:7.2.4`` whatever its own version, and a
server built from a branch can take a command before its release: the
commands' own documentation is the one answer that holds.

Probed (the names are what ``status --json`` and ``inspect redis_stream``
show in ``capabilities``):

- ``xtrim_acked``: ``XTRIM ... ACKED`` (Redis 8.2). In use by retention: the
  server itself keeps whatever a consumer group has not acknowledged, on top
  of the bound the retention script computes.
- ``xreadgroup_claim``: ``XREADGROUP ... CLAIM min-idle-time`` (Redis 8.4),
  and ``xackdel``: ``XACKDEL`` (Redis 8.2, Valkey 9.2). Probed, not used:
  benchmarks/stream_commands.py found the read with CLAIM no cheaper than the
  bridge's read (its XAUTOCLAIM runs once per 30 s), CLAIM leaves deleted
  entries pending where XAUTOCLAIM clears them, and XACKDEL costs five times
  XACK plus the later trim (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from redis.exceptions import RedisClusterException, ResponseError

from .connection import Client, command, text

__all__ = ["XACKDEL", "XREADGROUP_CLAIM", "XTRIM_ACKED", "in_use", "probe"]

XTRIM_ACKED = "xtrim_acked"
XREADGROUP_CLAIM = "xreadgroup_claim"
XACKDEL = "xackdel"

# capability -> (command, the argument token that shows it; None: the command itself)
_PROBES: dict[str, tuple[str, str | None]] = {
    XTRIM_ACKED: ("xtrim", "ACKED"),
    XREADGROUP_CLAIM: ("xreadgroup", "CLAIM"),
    XACKDEL: ("xackdel", None),
}


def _tokens(doc: object) -> Iterator[str]:
    """Every argument ``token`` in one command's COMMAND DOCS reply, parsed (dicts) or raw (flat lists)."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if text(key) == "token" and isinstance(value, (bytes, str)):
                yield text(value).upper()
            else:
                yield from _tokens(value)
    elif isinstance(doc, (list, tuple)):
        for i, value in enumerate(doc):
            if isinstance(value, (bytes, str)) and text(value) == "token" and i + 1 < len(doc):
                following = doc[i + 1]
                if isinstance(following, (bytes, str)):
                    yield text(following).upper()
            else:
                yield from _tokens(value)


def _by_command(reply: object) -> dict[str, object]:
    if isinstance(reply, dict):
        return {text(name).lower(): doc for name, doc in reply.items()}
    flat = list(reply) if isinstance(reply, (list, tuple)) else []
    return {text(name).lower(): doc for name, doc in zip(flat[0::2], flat[1::2], strict=False)}


def probe(client: Client) -> frozenset[str]:
    """The capabilities of the server behind ``client``, from one ``COMMAND DOCS``; empty when it cannot say.

    Callers keep the answer for as long as they keep the client. Without an
    answer (Redis before 7.0, an ACL without COMMAND) nothing newer is used:
    the old commands give the same guarantees.
    """
    names = sorted({name for name, _ in _PROBES.values()})
    try:
        docs = _by_command(command(client, "COMMAND DOCS", *names))
    except (ResponseError, RedisClusterException):  # an old server, an ACL without COMMAND: nothing newer
        # A lost connection propagates: an empty answer would be kept as the server's for good.
        return frozenset()
    found = set()
    for capability, (name, token) in _PROBES.items():
        if name in docs and (token is None or token in set(_tokens(docs[name]))):
            found.add(capability)
    return frozenset(found)


def in_use(available: frozenset[str], *, retention: bool) -> list[str]:
    """The capabilities a stream uses on a server that has ``available``: XTRIM ACKED when it has a retention."""
    return [XTRIM_ACKED] if retention and XTRIM_ACKED in available else []

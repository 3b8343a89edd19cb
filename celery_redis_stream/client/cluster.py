"""Reading streams of many Redis Cluster hash slots from one thread, through one shared cluster client.

One XREAD/XREADGROUP may only name keys of one hash slot, so one blocking
read cannot wait on streams spread over many slots. A reader of such streams
instead, each round:

1. sends one non-blocking read per slot, pipelined per master (one round trip
   per master, whatever the number of slots), straight to the node the slot
   map names; a slot that answers MOVED/ASK/TRYAGAIN/CLUSTERDOWN, or a master
   that cannot be reached, is read again through the cluster client, which
   follows the redirection and refreshes its slot map;
2. when every slot was empty, waits with one blocking read on the slot that
   last had entries, for a time that starts at ``IDLE_WAIT_MIN_MS`` and
   doubles while nothing arrives, up to ``IDLE_WAIT_MAX_MS`` (never above
   ``stream_block_ms``); anything read brings it back to the minimum.

A blocking read whose stream moves to another node in a reshard ends with
``UNBLOCKED the stream key no longer exists``: a normal part of resharding,
read as an empty wait; the next poll follows the slot to its new node (and a
stream that was really deleted shows itself there).

The trade: an entry on the slot being waited on is read at once; one on any
other slot waits at most the current idle wait (``IDLE_WAIT_MAX_MS`` on a
reader that has been idle for a while), and an idle reader costs one
pipelined poll per idle wait instead of one command per ``stream_block_ms``.
Streams of a single slot (a common hash tag) keep the plain blocking read.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import cast

from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from .connection import is_unblocked

Items = list[tuple[object, object]]  # a read reply's (stream, entries) pairs

__all__ = ["IDLE_WAIT_MAX_MS", "IDLE_WAIT_MIN_MS", "read_slots"]

IDLE_WAIT_MIN_MS = 10
IDLE_WAIT_MAX_MS = 200

# Answers after which the cluster client, not the node, must be asked.
REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class _Idle(threading.local):
    """Per reader thread and per read command: the current idle wait and the slot last seen busy."""

    def __init__(self) -> None:
        self.wait: dict[tuple[EncodableT, ...], int] = {}
        self.hot: dict[tuple[EncodableT, ...], int] = {}


_idle = _Idle()


def _command(head: Sequence[EncodableT], positions: Mapping[str, str]) -> list[EncodableT]:
    return [*head, "STREAMS", *positions.keys(), *positions.values()]


def _execute(target: object, command: Sequence[EncodableT]) -> object:
    """``target.execute_command(*command)`` on a cluster client or a node's pipeline (untyped in redis-py)."""
    return target.execute_command(*command)  # type: ignore[attr-defined]


def _items(reply: object) -> Items:
    if not reply:
        return []
    return list(reply.items()) if isinstance(reply, dict) else list(cast("Items", reply))


def _poll(
    client: RedisCluster, head: Sequence[EncodableT], by_slot: Mapping[int, Mapping[str, str]]
) -> tuple[Items, int | None]:
    """One non-blocking read per slot, pipelined per master; the entries read and a slot that had some."""
    manager = client.nodes_manager
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    for slot in by_slot:
        node = manager.get_node_from_slot(slot)
        by_node.setdefault(node.name, (node, []))[1].append(slot)
    items: Items = []
    busy: int | None = None
    for node, slots in by_node.values():
        commands = [_command(head, by_slot[slot]) for slot in slots]
        try:
            pipe = client.get_redis_connection(node).pipeline(transaction=False)
            for command in commands:
                _execute(pipe, command)
            replies = pipe.execute(raise_on_error=False)
        except UNREACHABLE:
            # The master is gone or moved (failover): the cluster client finds
            # the new one, or raises and the reader backs off.
            replies = [_execute(client, command) for command in commands]
        for slot, command, reply in zip(slots, commands, replies, strict=True):
            if isinstance(reply, REDIRECTS):
                reply = _execute(client, command)
            elif isinstance(reply, Exception):
                raise reply
            found = _items(reply)
            if any(entries for _, entries in found):
                busy = slot
            items.extend(found)
    return items, busy


def _wait(client: RedisCluster, command: Sequence[EncodableT]) -> Items:
    """A blocking read; empty when a reshard moved its stream away while it waited."""
    try:
        return _items(_execute(client, command))
    except ResponseError as exc:
        if is_unblocked(exc):
            return []
        raise


def read_slots(
    client: RedisCluster, head: Sequence[EncodableT], positions: Mapping[str, str], block_ms: int | None
) -> Items:
    """``head + [BLOCK] + STREAMS ...`` over streams of any number of slots; the reply's (key, entries) pairs.

    ``head`` is the read command without BLOCK and STREAMS
    (``["XREADGROUP", "GROUP", g, c, "COUNT", n]`` or ``["XREAD", "COUNT", n]``).
    """
    by_slot: dict[int, dict[str, str]] = {}
    for stream, position in positions.items():
        by_slot.setdefault(key_slot(stream.encode()), {})[stream] = position
    block: list[EncodableT] = [] if block_ms is None else ["BLOCK", block_ms]
    if len(by_slot) <= 1:
        return _wait(client, _command([*head, *block], positions))
    key = tuple(head)
    items, busy = _poll(client, head, by_slot)
    if busy is not None:
        _idle.hot[key] = busy
    if block_ms is None or any(entries for _, entries in items):
        _idle.wait[key] = IDLE_WAIT_MIN_MS
        return items
    wait = max(1, min(_idle.wait.get(key, IDLE_WAIT_MIN_MS), block_ms))
    hot = _idle.hot.get(key)
    slot = hot if hot in by_slot else next(iter(by_slot))
    found = _wait(client, _command([*head, "BLOCK", wait], by_slot[slot]))
    if any(entries for _, entries in found):
        _idle.wait[key] = IDLE_WAIT_MIN_MS
    else:
        _idle.wait[key] = min(wait * 2, IDLE_WAIT_MAX_MS)
    return found

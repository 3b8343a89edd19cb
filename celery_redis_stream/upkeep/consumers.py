"""Consumer hygiene: removing consumers that hold nothing, never one whose pending entries were not claimed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import ResponseError

from ..client.connection import Client, ScriptCall, items, number, run_scripts, text
from ..config import StreamConfig

__all__ = [
    "REAP_BATCH", "REAP_CONSUMERS", "Removed", "reap_consumers", "reap_many", "remove_own_consumer", "remove_own_many",
]  # fmt: skip

# KEYS: stream. ARGV: group, own consumer, min idle ms, mode ("others" | "own"),
# at most this many deletions (a short script even after years of rollouts).
# "others": deletes every consumer except ARGV[2] that has nothing pending and
# has been idle at least ARGV[3] ms. "own": deletes ARGV[2] if it has nothing
# pending. Returns a flat list: name, idle ms, name, idle ms...
#
# XGROUP DELCONSUMER drops the consumer's pending list with it: an entry
# pending there would never be delivered again (it is before the group's
# last-delivered-id). The check and the delete run in one script, so no read
# can hand the consumer an entry between them; a consumer with pending entries
# is left until XAUTOCLAIM moved them to a live consumer.
REAP_CONSUMERS = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {} end
local min_idle = tonumber(ARGV[3])
local most = tonumber(ARGV[5])
local removed = {}
for _, c in ipairs(consumers) do
  if #removed >= 2 * most then break end
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  local mine = info['name'] == ARGV[2]
  local wanted
  if ARGV[4] == 'own' then wanted = mine else wanted = (not mine) and info['idle'] >= min_idle end
  if wanted and info['pending'] == 0 then
    if redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name']) == 0 then
      removed[#removed + 1] = info['name']
      removed[#removed + 1] = info['idle']
    end
  end
end
return removed
"""


@dataclass(frozen=True, slots=True)
class Removed:
    """A consumer deleted from a group, and how long it had been idle."""

    name: str
    idle_ms: int


#: Deletions per script call; reap_consumers' caller calls again while a call removes this many.
REAP_BATCH = 200


def _parse(reply: object) -> list[Removed]:
    flat = items(reply)
    return [Removed(text(flat[i]), number(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _run(client: Client, sc: StreamConfig, own: str, min_idle_ms: int, mode: str) -> list[Removed]:
    script = client.register_script(REAP_CONSUMERS)
    return _parse(script(keys=[sc.stream], args=[sc.group, own, min_idle_ms, mode, REAP_BATCH]))


def _run_many(
    client: Client, streams: Sequence[StreamConfig], own: str, min_idle_ms: int, mode: str
) -> list[list[Removed] | ResponseError]:
    calls: list[ScriptCall] = [([sc.stream], [sc.group, own, min_idle_ms, mode, REAP_BATCH]) for sc in streams]
    return [
        reply if isinstance(reply, ResponseError) else _parse(reply)
        for reply in run_scripts(client, REAP_CONSUMERS, calls)
    ]


def reap_consumers(client: Client, sc: StreamConfig, own: str, *, min_idle_ms: int) -> list[Removed]:
    """Delete the consumers of ``sc``'s group, other than ``own``, idle ``min_idle_ms`` or more with nothing pending.

    XINFO CONSUMERS and XGROUP DELCONSUMER in one script: a consumer that has
    pending entries is never deleted (they would be lost with it). At most
    REAP_BATCH per call.
    """
    return _run(client, sc, own, min_idle_ms, "others")


def remove_own_consumer(client: Client, sc: StreamConfig, own: str) -> bool:
    """Delete ``own`` from ``sc``'s group if nothing is pending on it (a warm stop); True if it was deleted."""
    return bool(_run(client, sc, own, 0, "own"))


def reap_many(
    client: Client, streams: Sequence[StreamConfig], own: str, *, min_idle_ms: int
) -> list[list[Removed] | ResponseError]:
    """reap_consumers on many streams, pipelined (each call still one atomic script); a refusal in its place."""
    return _run_many(client, streams, own, min_idle_ms, "others")


def remove_own_many(client: Client, streams: Sequence[StreamConfig], own: str) -> list[bool | ResponseError]:
    """remove_own_consumer on many streams, pipelined: a warm stop of a worker reading thousands."""
    return [r if isinstance(r, ResponseError) else bool(r) for r in _run_many(client, streams, own, 0, "own")]

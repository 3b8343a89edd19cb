"""Consumer hygiene: removing consumers that hold nothing, never one whose pending entries were not claimed."""

from __future__ import annotations

from dataclasses import dataclass

from ..client.connection import Client, items, number, text
from ..config import StreamConfig

__all__ = ["REAP_BATCH", "REAP_CONSUMERS", "Removed", "reap_consumers", "remove_own_consumer"]

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


def _run(client: Client, sc: StreamConfig, own: str, min_idle_ms: int, mode: str) -> list[Removed]:
    script = client.register_script(REAP_CONSUMERS)
    reply = items(script(keys=[sc.stream], args=[sc.group, own, min_idle_ms, mode, REAP_BATCH]))
    return [Removed(text(reply[i]), number(reply[i + 1])) for i in range(0, len(reply) - 1, 2)]


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

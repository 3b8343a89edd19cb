"""The tracker lease: one worker at a time reads a tracked stream, and only its holder moves the tracker."""

from __future__ import annotations

from ..client.connection import Client
from ..config import StreamConfig

__all__ = ["ACQUIRE_LEASE", "ADVANCE_TRACKER", "RELEASE_LEASE", "Lease"]

# KEYS: tracker, lease. ARGV: owner, entry id, lease ms, the dead-letter stream, then the batch's dead
# letters, each as its number of values and the values (field, value, ...).
# Fenced by the lease so a worker that was paused past its lease cannot
# overwrite the new owner's position (nor add dead letters the new owner adds
# again), and never moves the tracker backwards: a batch behind the tracker was
# committed before, its dead letters with it.
# The dead-letter stream is an argument, not a key, as in the exactly-once step: the documented
# least-privilege user may XADD to it (an ACL selector) but run no script that names it as a key, and on
# a cluster (where it shares the stream's slot) a key that does not exist yet beside two that do would
# make the script TRYAGAIN in the middle of a reshard.
ADVANCE_TRACKER = """
if redis.call('get', KEYS[2]) ~= ARGV[1] then return 0 end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-?(%d*)$')
  if not ms then return nil end
  if seq == '' then seq = '0' end
  return ms, seq
end
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local cur = redis.call('get', KEYS[1])
if cur then
  local cms, cseq = split(cur)
  local nms, nseq = split(ARGV[2])
  if cms and nms and (less(nms, cms) or (nms == cms and not less(cseq, nseq))) then
    redis.call('pexpire', KEYS[2], ARGV[3])
    return 1
  end
end
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('XADD', ARGV[4], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
redis.call('set', KEYS[1], ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[3])
return 1
"""

# KEYS: lease. ARGV: owner, lease ms. Takes a free lease or renews our own.
ACQUIRE_LEASE = """
local cur = redis.call('get', KEYS[1])
if not cur then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE_LEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class Lease:
    """The expiring lease that lets one worker at a time read a tracked stream."""

    def __init__(self, client: Client, owner: str, ttl_ms: int) -> None:
        self.owner = owner
        self.ttl_ms = ttl_ms
        self._acquire = client.register_script(ACQUIRE_LEASE)
        self._release = client.register_script(RELEASE_LEASE)
        self.advance = client.register_script(ADVANCE_TRACKER)

    def acquire(self, sc: StreamConfig) -> bool:
        """Take the lease of ``sc`` if it is free, or renew it if it is ours."""
        return bool(self._acquire(keys=[sc.lease_key], args=[self.owner, self.ttl_ms]))

    def release(self, sc: StreamConfig) -> None:
        self._release(keys=[sc.lease_key], args=[self.owner])

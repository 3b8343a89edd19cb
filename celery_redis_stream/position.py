"""The one place that moves a position forward (XACK / tracker SET), and the tracker lease."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import StreamConfig
from .entry import RawEntry
from .exceptions import StreamError

__all__ = ["DeadLetter", "Lease", "LeaseLost", "commit"]

# KEYS: tracker, lease. ARGV: owner, entry id, lease ms.
# Fenced by the lease so a worker that was paused past its lease cannot
# overwrite the new owner's position, and never moves the tracker backwards.
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


class LeaseLost(StreamError):
    """Another worker holds the tracker lease now; this worker must stop reading the stream."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry that cannot become a task, and why."""

    raw: RawEntry
    reason: str
    error: str

    def pairs(self) -> list[bytes | str]:
        """The original field/value pairs, as they were (a dict would merge duplicate names), then dlq_*."""
        return [
            *(self.raw.pairs or ()),
            "dlq_source_stream", self.raw.stream,
            "dlq_source_id", self.raw.id,
            "dlq_reason", self.reason,
            "dlq_error", self.error[:1000],
        ]  # fmt: skip


class Lease:
    """The expiring lease that lets one worker at a time read a tracked stream."""

    def __init__(self, client: Any, owner: str, ttl_ms: int) -> None:
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


def commit(
    client: Any,
    sc: StreamConfig,
    ids: Sequence[str],
    dead: Sequence[DeadLetter],
    *,
    lease: Lease | None = None,
    forget: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Record dead letters, then move the position of ``sc`` past ``ids``.

    THE DELIVERY RULE: this runs only after every task of the batch was
    accepted by the broker. Moving first (as celery beat does for schedules)
    would be at-most-once: a crash between the move and the publish would
    lose the entry. Moving after makes a crash re-dispatch at most this batch,
    with the same task ids. Dead letters are written before the move so a
    bad entry is never acknowledged without leaving a trace. ``forget``
    (hash key -> fields: the batch's in-flight record and the failure counts
    of its entries, see deliveries.py) is deleted with the move, in the same
    pipeline.
    """
    if not ids:
        return
    pipe = client.pipeline(transaction=False)
    for letter in dead:
        pipe.execute_command("XADD", sc.dead_letter, "*", *letter.pairs())
    if sc.mode == "group":
        pipe.xack(sc.stream, sc.group, *ids)
        for key, fields in (forget or {}).items():
            pipe.hdel(key, *fields)
        pipe.execute()
        return
    assert lease is not None, "tracker mode commits under a lease"
    advance = {"keys": [sc.tracker_key, sc.lease_key], "args": [lease.owner, ids[-1], lease.ttl_ms]}
    if hasattr(client, "nodes_manager"):
        # redis-py's cluster pipeline refuses scripts: dead letters first, then the fenced move.
        if dead:
            pipe.execute()
        advanced = lease.advance(**advance, client=client)
        if advanced and forget:
            pipe = client.pipeline(transaction=False)
            for key, fields in forget.items():
                pipe.hdel(key, *fields)
            pipe.execute()
    else:
        lease.advance(**advance, client=pipe)
        for key, fields in (forget or {}).items():
            pipe.hdel(key, *fields)
        advanced = pipe.execute()[-1 - len(forget or {})]
    if not advanced:
        raise LeaseLost(f"lost the lease on {sc.stream!r}; another worker reads it now")

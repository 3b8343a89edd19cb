"""Retention: trimming the entries every consumer group (and the tracker) has passed, in one atomic script."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

from redis.exceptions import ResponseError

from .. import keys
from ..client.connection import Client, ScriptCall, items, mapping, run_scripts, text
from ..config import StreamConfig
from ..position.rule import position_of

__all__ = [
    "TRIM_PASSED", "RetentionRow", "Trim", "retention_key", "retention_status", "trim_many", "trim_passed",
]  # fmt: skip

# KEYS: stream, state hash, [tracker]. ARGV: retention ms, interval ms, own
# group ("" in tracker mode), "1" to add ACKED (Redis 8.2: the server keeps
# whatever a group has not acknowledged, on top of the bound computed here;
# refused, the same trim runs without it).
# Returns {status, entries trimmed, minid}.
#
# Everything runs in one script, so no group can advance, appear or receive
# entries between the check and the trim. The safe MINID is the smallest of
# now - retention (by the id's millisecond part: producers may set ids
# themselves), each group's last-delivered-id (an entry never delivered to the
# group is after it) and oldest pending id (XGROUP SETID can move the first
# back behind the second), and the tracker's position. MINID keeps the entry equal to it, so the bound
# entry itself survives: one entry kept too many rather than arithmetic on
# 64-bit ids in Lua. entries-read and lag (nil after XDEL or SETID) are not
# used. A group whose last-delivered-id is 0-0 holds everything. With our own
# group or the tracker missing nothing is trimmed: the reader will recreate
# it from "0" and must find the entries still there.
TRIM_PASSED = """
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-?(%d*)$')
  if not ms then return nil end
  if seq == '' then seq = '0' end
  return (string.gsub(ms, '^0+(%d)', '%1')), (string.gsub(seq, '^0+(%d)', '%1'))
end
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function before(a, b)
  local ams, aseq = split(a)
  local bms, bseq = split(b)
  if ams ~= bms then return less(ams, bms) end
  return less(aseq, bseq)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[2])
if interval > 0 then
  local due = tonumber(redis.call('HGET', KEYS[2], 'next_ms') or '0')
  -- A due time further away than one interval comes from another clock (a failover): not a reason to wait.
  if now < due and due - now <= interval then return {'skipped', 0, ''} end
  redis.call('HSET', KEYS[2], 'next_ms', string.format('%.0f', now + interval))
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'no stream', 0, ''} end
local bound = string.format('%.0f', math.max(now - tonumber(ARGV[1]), 0)) .. '-0'
local own = ARGV[3] == ''
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == ARGV[3] then own = true end
  local limit = info['last-delivered-id']
  if before(limit, bound) then bound = limit end
  if info['pending'] > 0 then
    limit = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if before(limit, bound) then bound = limit end
  end
end
if not own then return {'no group', 0, ''} end
if #KEYS > 2 then
  local position = redis.call('GET', KEYS[3])
  if not position or not split(position) then return {'no tracker', 0, ''} end
  if before(position, bound) then bound = position end
end
local ok, trimmed = false, 0
if ARGV[4] == '1' then ok, trimmed = pcall(redis.call, 'XTRIM', KEYS[1], 'MINID', '~', bound, 'ACKED') end
if not ok then trimmed = redis.call('XTRIM', KEYS[1], 'MINID', '~', bound) end
local stamp = string.format('%.0f', now)
redis.call('HSET', KEYS[2], 'last_run_ms', stamp, 'last_minid', bound)
if trimmed > 0 then
  redis.call('HINCRBY', KEYS[2], 'trimmed', trimmed)
  redis.call('HSET', KEYS[2], 'last_trim_ms', stamp)
end
return {'ran', trimmed, bound}
"""


class RetentionRow(TypedDict):
    """The retention fields of a status row."""

    retention_ms: int | None
    retention_trimmed: int
    retention_last_run_ms: int | None
    retention_last_trim_ms: int | None
    retention_minid: str | None


@dataclass(frozen=True, slots=True)
class Trim:
    """What one run of the retention script did: ``status`` is ``ran``, ``skipped`` or why it held back."""

    status: str
    trimmed: int
    minid: str


def retention_key(sc: StreamConfig) -> str:
    """The hash holding the stream's retention state and its trimmed total, beside the tracker (same slot)."""
    return keys.retention(sc.tracker_key)


def _call(sc: StreamConfig, *, retention_ms: int, interval_ms: int, acked: bool) -> ScriptCall:
    extra, group = position_of(sc).retention()
    return [sc.stream, retention_key(sc), *extra], [retention_ms, interval_ms, group, "1" if acked else "0"]


def _parse(reply: object) -> Trim:
    status, trimmed, minid = items(reply)
    return Trim(text(status), int(text(trimmed)), text(minid))


def trim_passed(client: Client, sc: StreamConfig, *, retention_ms: int, interval_ms: int, acked: bool = False) -> Trim:
    """XTRIM MINID ~ the entries of ``sc`` older than ``retention_ms`` that every group and the tracker passed.

    One script (TRIM_PASSED) reads XINFO GROUPS, each group's oldest pending
    id, the tracker and the time, and trims; ``interval_ms`` > 0 lets at most
    one caller per interval through, fleet-wide.
    """
    script = client.register_script(TRIM_PASSED)
    keys_, args = _call(sc, retention_ms=retention_ms, interval_ms=interval_ms, acked=acked)
    return _parse(script(keys=list(keys_), args=list(args)))


def trim_many(
    client: Client, calls: Sequence[tuple[StreamConfig, int, int]], *, acked: bool
) -> list[Trim | ResponseError]:
    """trim_passed on many streams, pipelined: ``calls`` are (stream, retention ms, interval ms)."""
    scripts = [_call(sc, retention_ms=r, interval_ms=i, acked=acked) for sc, r, i in calls]
    return [
        reply if isinstance(reply, ResponseError) else _parse(reply)
        for reply in run_scripts(client, TRIM_PASSED, scripts)
    ]


def retention_status(client: Client, sc: StreamConfig) -> RetentionRow:
    """The retention of ``sc`` and what the bridge trimmed from it (all workers, from the state hash)."""
    state = {k: text(v) for k, v in mapping(client.hgetall(retention_key(sc))).items()}
    return {
        "retention_ms": sc.retention_ms,
        "retention_trimmed": int(state.get("trimmed", 0)),
        "retention_last_run_ms": int(state["last_run_ms"]) if "last_run_ms" in state else None,
        "retention_last_trim_ms": int(state["last_trim_ms"]) if "last_trim_ms" in state else None,
        "retention_minid": state.get("last_minid"),
    }

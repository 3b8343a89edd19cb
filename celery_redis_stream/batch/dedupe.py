"""Business-key deduplication: an entry whose key was dispatched within ``ttl_ms`` is passed over, not dispatched.

Before a batch is published, its entries' business keys are claimed in one
script (CLAIM): ``SET record <entry id> NX PX ttl`` per key, in stream order.
A key that nobody holds, or that this very entry holds already (it is being
dispatched again after a crash or a broker outage), lets the entry through;
a key held by another entry means the business event was dispatched (or is
being dispatched) already: the entry is passed over, its position moves on.

Claiming *before* publishing is what makes this exact where the batch itself
is: the claim names the entry, so an entry re-read after any failure finds
its own claim and is dispatched, while every other copy finds a claim that is
not its own. Where the batch's messages and position move in one atomic step
(atomic.py) nothing is ever dispatched twice; elsewhere the batch is at least
once, and a crash between publish and position move re-dispatches the entry
that held the key (one more copy), never a second entry of the same key.
An entry that holds a key and is then dead-lettered lets go of it (RELEASE,
before the position moves), so a later copy is dispatched.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from redis.commands.core import Script

from .. import keys
from ..client.connection import Client
from ..config import StreamConfig
from ..deadletters import DeadLetter
from ..entry import BODY_DECODERS, DEDUPE_KEY, DedupeRule, RawEntry, decode_as
from ..exceptions import EntryError

__all__ = ["CLAIM", "RELEASE", "Dedupe", "Sorted", "business_key", "record_key"]

# KEYS: one record per entry, in stream order. ARGV[1] ttl ms, then the entries' ids.
# Returns 1 (dispatch: the key was free, or already this entry's) or 0 (passed over) per entry.
# Two entries of one batch with one key: the first takes it, the second finds it taken.
CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 1]
  local held = redis.call('set', key, id, 'NX', 'PX', ARGV[1], 'GET')
  if (not held) or held == id then out[i] = 1 else out[i] = 0 end
end
return out
"""

# KEYS: records; ARGV: the entry id each must still name. Deletes only a claim this entry holds.
RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[i] then n = n + redis.call('del', key) end
end
return n
"""


def business_key(sc: StreamConfig, rule: DedupeRule, raw: RawEntry) -> str:
    """The template over the decoded fields: the JSON object a body decoder reads, else the entry's own fields.

    Raises EntryError: ``dedupe_key`` for a missing field, or the decoder's own reason (``decode``) for an
    entry it cannot read (the dispatcher would dead-letter it for that reason too).
    """
    if sc.decode_kind in BODY_DECODERS:
        body = decode_as(sc.decode, raw, max_bytes=sys.maxsize).body
        if isinstance(body, Mapping):
            return rule.key_in(body)
    return rule.key(raw.pairs or ())


def record_key(sc: StreamConfig, rule: DedupeRule, raw: RawEntry) -> str:
    """The record of an entry's business key, for this stream and group (or tracker); raises EntryError."""
    return keys.dedupe_record(sc.stream, sc.position_name, business_key(sc, rule, raw))


class Sorted:
    """A batch's live entries after the claim: to dispatch, dead letters (``dedupe_key``), ids passed over."""

    __slots__ = ("dead", "live", "skipped")

    def __init__(self, live: list[RawEntry], dead: list[DeadLetter], skipped: list[str]) -> None:
        self.live, self.dead, self.skipped = live, dead, skipped


class Dedupe:
    """One reader thread's claims and releases (two scripts, registered on first use)."""

    def __init__(self) -> None:
        self._claim: Script | None = None
        self._release: Script | None = None

    def claim(self, client: Client, sc: StreamConfig, rule: DedupeRule, entries: Sequence[RawEntry]) -> Sorted:
        """Claim the business keys of ``entries`` (EVALSHA of CLAIM, one round trip in the stream's slot)."""
        keyed: list[tuple[RawEntry, str]] = []
        dead: list[DeadLetter] = []
        for entry in entries:
            try:
                keyed.append((entry, record_key(sc, rule, entry)))
            except EntryError as exc:
                dead.append(DeadLetter(entry, exc.reason, exc.error))
        if not keyed:
            return Sorted([], dead, [])
        if self._claim is None:
            self._claim = client.register_script(CLAIM)
        reply = self._claim(
            keys=[key for _, key in keyed], args=[rule.ttl_ms, *(e.id for e, _ in keyed)], client=client
        )
        live: list[RawEntry] = []
        skipped: list[str] = []
        for (entry, _), free in zip(keyed, reply, strict=True):
            if int(free):
                live.append(entry)
            else:
                skipped.append(entry.id)
        return Sorted(live, dead, skipped)

    def release(self, client: Client, sc: StreamConfig, rule: DedupeRule, dead: Sequence[DeadLetter]) -> None:
        """Let go of the keys that dead-lettered entries hold (EVALSHA of RELEASE), before the position moves."""
        held: list[tuple[str, str]] = []
        for letter in dead:
            if letter.reason == DEDUPE_KEY:
                continue
            try:
                held.append((record_key(sc, rule, letter.raw), letter.raw.id))
            except EntryError:
                continue
        if not held:
            return
        if self._release is None:
            self._release = client.register_script(RELEASE)
        self._release(keys=[key for key, _ in held], args=[entry_id for _, entry_id in held], client=client)

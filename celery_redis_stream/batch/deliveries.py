"""Failed deliveries: the in-flight record of a batch and the crash-safe failure count of each entry.

Before a batch is dispatched the reader writes an in-flight record (the
batch's ids and a token unique to this process run) into a hash in the
stream's slot; the commit that moves the position deletes it in the same
pipeline. A record found later with another token was left by a process
that died (or hung) holding that batch: its ids get one failure each, by a
script that first checks the record is still the one read, so two workers
never count the same crash twice. Errors the live process handles (broker,
Redis, lease) never count: the record carries this run's token.

Entries with a failure count are suspects: each goes alone into its own
batch, so the entry that kills the worker is isolated and its neighbours get
through. A suspect that reached ``max_deliveries`` failures is dead-lettered
without being converted again.

Redis's own delivery count (XPENDING) is no measure: every re-read of the
pending list after a broker error and every XAUTOCLAIM increments it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence

from celery.utils.log import get_logger
from redis.commands.core import Script

from .. import keys
from ..client.connection import Client, command, items, mapping, number, optional_text, text
from ..config import StreamConfig
from ..deadletters import MAX_DELIVERIES, DeadLetter
from ..entry import RawEntry
from ..position.rule import position_of

__all__ = ["Deliveries", "failures_key", "inflight_key"]

logger = get_logger(__name__)

# A live worker that survived an outage removes its own stale record within
# one backoff (at most 10 s) of the outage's end, and no publish attempt
# holds a record longer than its 10 s timeout: a record of another consumer
# is counted only once it stayed unchanged for longer than this.
FOREIGN_GRACE_SECONDS = 30.0

# KEYS: in-flight hash, failures hash. ARGV: field, the record as read, its seen mark's field, ids...
COUNT_CRASH = """
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
for i = 4, #ARGV do redis.call('hincrby', KEYS[2], ARGV[i], 1) end
redis.call('hdel', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

# KEYS: in-flight hash, failures hash. ARGV: field, the record as read, its
# seen mark's field, grace ms, ids... The first worker to see a record marks
# it with the server's time; any worker that sees it unchanged once the
# grace time has passed counts it. In Redis, not in memory: the workers that
# claim a poison entry keep dying, and a count must not need one of them to live that long.
SWEEP = """
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mark = redis.call('hget', KEYS[1], ARGV[3])
local at = nil
if mark then
  local sep = string.find(mark, ' ', 1, true)
  if sep and string.sub(mark, sep + 1) == ARGV[2] then at = tonumber(string.sub(mark, 1, sep - 1)) end
end
if not at then
  redis.call('hset', KEYS[1], ARGV[3], now .. ' ' .. ARGV[2])
  return 0
end
if now - at < tonumber(ARGV[4]) then return 0 end
for i = 5, #ARGV do redis.call('hincrby', KEYS[2], ARGV[i], 1) end
redis.call('hdel', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

SEEN = "seen\x00"


def _group(sc: StreamConfig) -> str | None:
    return sc.group if position_of(sc).shared else None


def inflight_key(sc: StreamConfig) -> str:
    """Hash consumer -> in-flight record: ``stream_deliveries:{orders}:celery:inflight``, or the tracker's."""
    return keys.inflight(sc.stream, _group(sc), sc.tracker_key)


def failures_key(sc: StreamConfig) -> str:
    """Hash entry id -> failed deliveries: ``stream_deliveries:{orders}:celery:failures``, or the tracker's."""
    return keys.failures(sc.stream, _group(sc), sc.tracker_key)


def _texts(reply: object) -> dict[str, str]:
    return {k: text(v) for k, v in mapping(reply).items()}


def _ids(record: str) -> list[str]:
    """The entry ids of a record ``"<token> <ms> id,id,..."``."""
    parts = record.split(" ", 2)
    return [i for i in parts[2].split(",") if i] if len(parts) == 3 else []


class Deliveries:
    """One reading loop's bookkeeping of failed deliveries, for all its streams."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.token = uuid.uuid4().hex
        self.failures: dict[str, dict[str, int]] = {}
        self.foreign: dict[tuple[str, str], str] = {}  # (stream, consumer) -> a record of another consumer
        self.dirty: set[str] = set()
        self._scripts: dict[str, Script] = {}

    def _run(self, client: Client, script: str, sc: StreamConfig, args: list[str | int]) -> bool:
        if script not in self._scripts:
            self._scripts[script] = client.register_script(script)
        return bool(self._scripts[script](keys=[inflight_key(sc), failures_key(sc)], args=args, client=client))

    def _count(
        self, client: Client, sc: StreamConfig, field: str, record: str, *, whose: str, grace: float | None = None
    ) -> bool:
        """Count the crash that ``record`` proves, once (whoever counts it first); after ``grace`` s if given."""
        ids = _ids(record)
        if grace is None:
            counted = self._run(client, COUNT_CRASH, sc, [field, record, SEEN + field, *ids])
        else:
            counted = self._run(client, SWEEP, sc, [field, record, SEEN + field, int(grace * 1000), *ids])
        if counted:
            known = self.failures.setdefault(sc.stream, {})
            for entry_id in ids:
                known[entry_id] = known.get(entry_id, 0) + 1
            logger.warning(
                "redis-stream: %s died holding %d entr%s of stream=%s (%s): one failed delivery counted for each",
                whose, len(ids), "y" if len(ids) == 1 else "ies", sc.stream, ",".join(ids[:10]),
            )  # fmt: skip
        return counted

    def recover(self, client: Client, sc: StreamConfig) -> None:
        """At start (or on taking a lease): count the batch a previous run of this consumer died holding."""
        self.tidy(client, sc)
        shared = position_of(sc).shared
        record = optional_text(client.hget(inflight_key(sc), self.consumer))
        if record is not None and not record.startswith(self.token + " "):
            whose = f"a previous run of consumer {self.consumer}"
            if self._count(client, sc, self.consumer, record, whose=whose) and shared:
                # Another worker may have claimed and acknowledged some of them while this one was down.
                self._drop_settled(client, sc, _ids(record))
        if not shared:
            # Only the lease holder reads a tracked stream: all its counts are ours to know.
            stored = mapping(client.hgetall(failures_key(sc)))
            self.failures[sc.stream] = {k: number(v) for k, v in stored.items()}

    def load(self, client: Client, sc: StreamConfig, ids: Sequence[str]) -> None:
        """Failure counts of re-read entries (own pending, claimed); new entries never have any."""
        if not ids:
            return
        values = items(client.hmget(failures_key(sc), list(ids)))
        known = self.failures.setdefault(sc.stream, {})
        for entry_id, value in zip(ids, values, strict=True):
            if value is not None:
                known[entry_id] = number(value)

    def sweep(self, client: Client, sc: StreamConfig, *, grace: float) -> None:
        """Records of other consumers: count those left by a dead or hung one.

        A live consumer replaces its record with every batch and deletes it
        with every commit and after every error it handled (within one
        backoff of an outage's end): a record that stayed unchanged for
        ``grace`` seconds (server time, marked in Redis by the first worker
        that saw it) was left by a process that died or hangs. Its entries
        are suspects from the first sight on.
        """
        records = _texts(client.hgetall(inflight_key(sc)))
        self.foreign = {k: v for k, v in self.foreign.items() if k[0] != sc.stream}
        for field, record in records.items():
            if field.startswith(SEEN):
                if field[len(SEEN) :] not in records:  # the record went: so does its mark
                    client.hdel(inflight_key(sc), field)
                continue
            if field == self.consumer:
                continue
            if self._count(client, sc, field, record, whose=f"consumer {field}", grace=grace):
                if position_of(sc).shared:
                    self._drop_settled(client, sc, _ids(record))
            else:
                self.foreign[(sc.stream, field)] = record

    def _drop_settled(self, client: Client, sc: StreamConfig, ids: list[str]) -> None:
        """Forget the counts of ids no longer pending (another consumer claimed and acknowledged them)."""
        if not ids:
            return
        reply = command(client, "XPENDING", sc.stream, sc.group, ids[0], ids[-1], len(ids) + 16)
        pending = {text(items(row)[0]) for row in items(reply)}
        settled = [i for i in ids if i not in pending]
        if settled:
            client.hdel(failures_key(sc), *settled)
            known = self.failures.get(sc.stream, {})
            for entry_id in settled:
                known.pop(entry_id, None)

    def suspects(self, sc: StreamConfig) -> set[str]:
        """Entries with a counted failure, or in a dead consumer's record not yet counted."""
        out = set(self.failures.get(sc.stream, ()))
        for (stream, _), record in self.foreign.items():
            if stream == sc.stream:
                out.update(_ids(record))
        return out

    def delivery_count(self, sc: StreamConfig, entry_id: str) -> int:
        """What StreamEntry.delivery_count says: 1 + the failed deliveries counted for the entry."""
        return 1 + self.failures.get(sc.stream, {}).get(entry_id, 0)

    def split(self, sc: StreamConfig, entries: Sequence[RawEntry]) -> list[list[RawEntry]]:
        """The batches to dispatch, in stream order: each suspect alone, the others together."""
        suspects = self.suspects(sc)
        if suspects.isdisjoint(e.id for e in entries):
            return [list(entries)]
        parts: list[list[RawEntry]] = []
        run: list[RawEntry] = []
        for entry in entries:
            if entry.id in suspects:
                if run:
                    parts.append(run)
                    run = []
                parts.append([entry])
            else:
                run.append(entry)
        if run:
            parts.append(run)
        return parts

    def given_up(self, sc: StreamConfig, entries: Sequence[RawEntry]) -> list[DeadLetter]:
        """Entries that reached max_deliveries failures: dead-lettered, never converted again."""
        limit = sc.max_deliveries
        known = self.failures.get(sc.stream)
        if limit is None or not known:
            return []
        return [
            DeadLetter(
                e,
                MAX_DELIVERIES,
                f"the worker died {known[e.id]} times while holding this entry before dispatching it "
                f"(stream_max_deliveries={limit}); not converted again",
            )
            for e in entries
            if known.get(e.id, 0) >= limit
        ]

    def begin(self, client: Client, sc: StreamConfig, ids: Sequence[str]) -> None:
        """Write the in-flight record of a batch about to be dispatched (one HSET).

        With ``max_deliveries`` None nothing would ever be given up: no record, no cost.
        """
        if sc.max_deliveries is None:
            return
        record = f"{self.token} {int(time.time() * 1000)} {','.join(ids)}"
        client.hset(inflight_key(sc), self.consumer, record)
        self.dirty.add(sc.stream)

    def done(self, sc: StreamConfig, ids: Sequence[str]) -> dict[str, list[str]]:
        """Hash fields the commit of ``ids`` deletes: our record, and the counts of committed suspects."""
        known = self.failures.get(sc.stream, {})
        out = {inflight_key(sc): [self.consumer, SEEN + self.consumer]} if sc.stream in self.dirty else {}
        counted = [i for i in ids if i in known]
        if counted:
            out[failures_key(sc)] = counted
        return out

    def committed(self, sc: StreamConfig, ids: Sequence[str]) -> None:
        self.dirty.discard(sc.stream)
        known = self.failures.get(sc.stream)
        if known:
            for entry_id in ids:
                known.pop(entry_id, None)

    def abandon(self, client: Client, streams: Sequence[StreamConfig]) -> None:
        """After an error this process handled: its records do not stand for a crash (best effort)."""
        for sc in streams:
            with contextlib.suppress(Exception):  # Redis may be down; tidy() retries on the next round
                self.tidy(client, sc)

    def tidy(self, client: Client, sc: StreamConfig) -> None:
        """Remove our own record left by an error that could not reach Redis to remove it."""
        if sc.stream in self.dirty:
            client.hdel(inflight_key(sc), self.consumer, SEEN + self.consumer)
            self.dirty.discard(sc.stream)

    def tidy_all(self, client: Client, streams: Mapping[str, StreamConfig]) -> None:
        for stream in list(self.dirty):
            if stream in streams:
                self.tidy(client, streams[stream])

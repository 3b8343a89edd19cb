"""GroupReader: group mode's rounds: own pending entries first, then new ones; claims what dead consumers left."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from celery.utils.log import get_logger
from redis.crc import key_slot
from redis.exceptions import ResponseError

from ..batch.deliveries import FOREIGN_GRACE_SECONDS, inflight_key
from ..client.connection import PIPELINE_CHUNK, Client, ScriptCall, is_cluster, items, number, run_scripts
from ..client.streams import autoclaim, ensure_group, read_group
from ..config import StreamConfig
from ..entry import RawEntry
from ..exceptions import BrokerUnavailable, LeaseLost
from ..signals import send_reader_ready
from ..upkeep.cadence import LOG_REMOVALS, Spread
from .base import StreamReader, Wiring

__all__ = ["GroupReader"]

logger = get_logger(__name__)

#: The longest a read waits once the streams are quiet (doubling from stream_block_ms, one quiet read at a
#: time). A blocking read returns as soon as any stream has an entry, so waiting longer adds no latency;
#: what it saves is the read's cost, which grows with the number of streams (about 1.5 us each on Redis,
#: every read). A stop interrupts such a wait (CLIENT UNBLOCK), and a paused stream or upkeep due sooner
#: shortens it.
QUIET_BLOCK_MAX_MS = 5000


# KEYS: stream, in-flight hash, stream, in-flight hash... ARGV: the group.
# Returns, for the streams that need upkeep only, flat: their index (1-based),
# the group's pending count (-1: no such stream or group), its consumers, and
# whether the in-flight hash holds records. A quiet stream (nothing pending,
# no other consumer, no record) costs one XPENDING summary, one XINFO
# CONSUMERS and one HGETALL of an empty hash here, and is not in the reply:
# its upkeep is done. Only commands the reader's ACL allows anyway
# (docs/security.md): a script's commands are checked like any other.
SURVEY = """
local out = {}
for i = 1, #KEYS, 2 do
  local pending, consumers = -1, 0
  local ok, summary = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1])
  if ok then
    pending = summary[1]
    local listed, all = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[i], ARGV[1])
    if listed then consumers = #all end
  end
  local records = #redis.call('HGETALL', KEYS[i + 1])
  if pending ~= 0 or consumers > 1 or records > 0 then
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = (i + 1) / 2, pending, consumers, records
  end
end
return out
"""


@dataclass(frozen=True, slots=True)
class Survey:
    """What SURVEY says of a stream that needs upkeep: who to sweep, claim from, reap."""

    pending: int  # entries pending in our group, on any consumer (-1: the stream or the group is missing)
    consumers: int
    records: bool  # the in-flight hash exists


#: What a stream gets when Redis refuses the survey (an ACL): every kind of upkeep, as without one.
UNSURVEYED = Survey(pending=1, consumers=2, records=True)


def survey(
    client: Client, streams: Sequence[StreamConfig], group: str
) -> tuple[dict[str, Survey], ResponseError | None]:
    """The streams among ``streams`` that need upkeep, by one SURVEY script per hash slot, pipelined.

    A stream whose group has nothing pending needs no XAUTOCLAIM, one whose
    group has no consumer but us needs no reaping, one without in-flight
    records no sweep: on quiet streams this is all an upkeep round costs. On
    one Redis all streams of the chunk go in one script; on a cluster, where
    a script's keys must share a slot, one per slot. Refused (an ACL
    without one of its commands), its streams get UNSURVEYED, and the refusal
    is returned for the caller to log.
    """
    by_slot: dict[int, list[StreamConfig]] = {}
    for sc in streams:
        by_slot.setdefault(key_slot(sc.stream.encode()) if is_cluster(client) else 0, []).append(sc)
    parts = list(by_slot.values())
    calls: list[ScriptCall] = [([k for sc in part for k in (sc.stream, inflight_key(sc))], [group]) for part in parts]
    out: dict[str, Survey] = {}
    refusal: ResponseError | None = None
    for part, reply in zip(parts, run_scripts(client, SURVEY, calls), strict=True):
        if isinstance(reply, ResponseError):
            refusal = reply
            out.update((sc.stream, UNSURVEYED) for sc in part)
            continue
        flat = [number(x) for x in items(reply)]
        for i in range(0, len(flat) - 3, 4):
            out[part[flat[i] - 1].stream] = Survey(flat[i + 1], flat[i + 2], bool(flat[i + 3]))
    return out, refusal


class GroupReader(StreamReader):
    """Group mode: own pending entries first, then new ones; claims what dead consumers left."""

    def __init__(self, wiring: Wiring, *, batch_size: int, group: str) -> None:
        super().__init__(wiring, batch_size=batch_size, label=f"group={group}")
        self.group = group
        self.consumer = wiring.consumer
        self.unready: set[str] = set()
        self.created: set[str] = set()
        self.pending: dict[str, str] = {}
        claim_ms = wiring.config.claim_idle_ms
        self.claim_every = min(max(claim_ms / 2000, self.block_ms / 1000), 30.0)
        self.rounds = Spread(self.claim_every)
        self.claims_logged = 0
        self.grace = max(FOREIGN_GRACE_SECONDS, claim_ms / 1000)
        self.quiet_reads = 0

    def adopted(self, sc: StreamConfig) -> None:
        self.unready.add(sc.stream)

    def setup(self, client: Client) -> None:
        ready: list[str] = []
        for stream in sorted(self.unready):
            sc = self.streams[stream]
            # A group missing at start follows stream_start; one that vanishes
            # while we run (Redis restarted empty, key deleted) comes back from
            # "0": "$" would silently skip what was written in between.
            again = stream in self.created
            if ensure_group(client, sc, "0" if again else None) and again:
                logger.warning("redis-stream: group %s on stream %s was missing; recreated from 0", sc.group, sc.stream)
            self.created.add(stream)
            self.deliveries.recover(client, sc)
            self.wiring.stats[stream].reading = True
            self.pending[stream] = "0"
            self.unready.discard(stream)
            ready.append(stream)
        send_reader_ready(self.wiring.sender, ready, mode="group", consumer=self.consumer)

    def round(self, client: Client) -> None:
        self.deliveries.tidy_all(client, self.streams)
        if self.unready:
            self.setup(client)
        if self.pending:
            self.recover_own_pending(client)
            return
        self.upkeep_turn(client)
        positions = self.unpaused(dict.fromkeys(self.streams, ">"))
        if not positions:
            self.idle()
            return
        count = self.allowance(client)
        if not count:
            return
        block_ms = self.block(paused=len(positions) < len(self.streams))
        reply = read_group(
            client, self.group, self.consumer, positions, count=count, block_ms=block_ms,
            packed=self.packed, wakeable=block_ms > self.block_ms,
        )  # fmt: skip
        self.used(client, count, sum(map(len, reply.values())))
        self.quiet_reads = 0 if any(reply.values()) else self.quiet_reads + 1
        for stream, entries in reply.items():
            if entries:
                self.batches.handle(client, self.streams[stream], entries)

    def block(self, *, paused: bool) -> int:
        """This read's BLOCK: stream_block_ms, doubled per quiet read before it up to QUIET_BLOCK_MAX_MS.

        Never longer than until the next upkeep turn, nor while a stream is
        paused (its queue's length is checked once a read), nor when the
        stop event is set.
        """
        if not self.quiet_reads or paused or self.stopping or not self.packed.wakeable:
            return self.block_ms
        longest = max(self.block_ms, QUIET_BLOCK_MAX_MS)
        quiet = min(self.block_ms << min(self.quiet_reads, 12), longest)
        upkeep = int(self.rounds.until_next(time.monotonic()) * 1000)
        return max(self.block_ms, min(quiet, upkeep))

    def recover_own_pending(self, client: Client) -> None:
        count = self.allowance(client)
        if not count:
            return
        reply = read_group(client, self.group, self.consumer, self.pending, count=count, block_ms=None)
        self.used(client, count, sum(map(len, reply.values())))
        for stream in list(self.pending):
            entries = reply.get(stream) or []
            if not entries:
                del self.pending[stream]
                continue
            sc = self.streams[stream]
            self.pending[stream] = entries[-1].id
            live = [e for e in entries if e.pairs is not None]
            trimmed = [e.id for e in entries if e.pairs is None]
            self.deliveries.load(client, sc, [e.id for e in live])
            self.batches.handle(client, sc, live, trimmed=trimmed)

    def upkeep_turn(self, client: Client) -> None:
        """This turn's share of the upkeep round (Spread): sweep, claim, reap, trim, a chunk of streams at a time."""
        turn = self.rounds.take(self.streams, time.monotonic())
        self.claims_logged = 0
        for start in range(0, len(turn), PIPELINE_CHUNK):
            if self.stopping:
                return
            chunk = [self.streams[s] for s in turn[start : start + PIPELINE_CHUNK]]
            crowded = self.claim(client, chunk)
            # After the claim: a consumer whose entries were just claimed may go now.
            self.upkeep.reap(client, chunk, self.consumer, self.wiring.stats, crowded=crowded)
            self.upkeep.trim(client, chunk, self.wiring.stats)
        if self.claims_logged > LOG_REMOVALS:
            logger.info(
                "redis-stream: claimed idle entries of %d more streams of group=%s",
                self.claims_logged - LOG_REMOVALS, self.group,
            )  # fmt: skip

    def claim(self, client: Client, chunk: Sequence[StreamConfig]) -> set[str]:
        """Sweep in-flight records and XAUTOCLAIM where anything is pending; the streams with other consumers."""
        crowded: set[str] = set()
        surveyed, refusal = survey(client, chunk, self.group)
        if refusal is not None:
            self.upkeep.refused("survey the streams' upkeep in one script", chunk[0], refusal)
        foreign = {stream for stream, _ in self.deliveries.foreign}
        for sc in chunk:
            seen = surveyed.get(sc.stream)
            if (seen is not None and seen.records) or sc.stream in foreign:
                self.deliveries.sweep(client, sc, grace=self.grace)
            if seen is None:
                continue
            if seen.consumers > 1:
                crowded.add(sc.stream)
            if seen.pending != 0:  # -1: missing; XAUTOCLAIM says NOGROUP and the reader recreates it
                self.autoclaim_all(client, sc)
        return crowded

    def autoclaim_all(self, client: Client, sc: StreamConfig) -> None:
        cursor = "0-0"
        while not self.stopping:
            count = self.allowance(client)
            if not count:
                break
            cursor, entries, trimmed = autoclaim(
                client, sc, self.consumer, min_idle_ms=self.wiring.config.claim_idle_ms, start=cursor,
                count=count,
            )  # fmt: skip
            self.used(client, count, len(entries))
            if entries or trimmed:
                self._claimed(client, sc, entries, trimmed)
            if cursor in ("0-0", "0"):
                break

    def _claimed(self, client: Client, sc: StreamConfig, entries: list[RawEntry], trimmed: list[str]) -> None:
        self.claims_logged += 1
        (logger.info if self.claims_logged <= LOG_REMOVALS else logger.debug)(
            "redis-stream: claimed %d idle entr%s of stream=%s group=%s",
            len(entries), "y" if len(entries) == 1 else "ies", sc.stream, sc.group,
        )  # fmt: skip
        self.deliveries.load(client, sc, [e.id for e in entries])
        self.batches.handle(client, sc, entries, trimmed=trimmed)

    def on_error(self, exc: BaseException) -> None:
        super().on_error(exc)
        self.quiet_reads = 0
        if isinstance(exc, (BrokerUnavailable, LeaseLost)):
            # Whatever was read but not acknowledged sits in our own pending
            # list: re-reading it from "0" resumes exactly where it failed.
            self.pending = dict.fromkeys(self.streams, "0")
        else:
            # Redis failed: the group may be gone (restart, deleted key).
            self.unready = set(self.streams)

    def close(self, client: Client | None, *, warm: bool) -> None:
        if warm and client is not None:
            # A warm stop, after the last commit: a consumer with nothing
            # pending would only pile up in the group under the next name.
            self.upkeep.leave(client, self.streams.values(), self.consumer, self.wiring.stats)
        super().close(client, warm=warm)

"""GroupReader: group mode's rounds: own pending entries first, then new ones; claims what dead consumers left."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from celery.utils.log import get_logger
from redis.exceptions import ResponseError

from .config import StreamConfig
from .connection import PIPELINE_CHUNK, Client, mapping, number, text
from .deliveries import FOREIGN_GRACE_SECONDS, inflight_key
from .dispatch import BrokerUnavailable
from .entry import RawEntry
from .lease import LeaseLost
from .reader import autoclaim, ensure_group, read_group
from .readers import StreamReader, Wiring
from .signals import send_reader_ready
from .upkeep import LOG_REMOVALS, Spread

__all__ = ["GroupReader"]

logger = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Survey:
    """What one pipeline says of a stream before its upkeep: who to sweep, claim from, reap."""

    records: dict[str, str]  # the in-flight hash
    pending: int  # entries pending in our group, on any consumer (-1: the stream or the group is missing)
    consumers: int


def survey(client: Client, streams: Sequence[StreamConfig], group: str) -> list[Survey]:
    """XINFO GROUPS and HGETALL of the in-flight hash of each stream, in one pipeline.

    A stream whose group has nothing pending needs no XAUTOCLAIM, and one
    whose group has no consumer but us needs no reaping: on quiet streams
    this is all the upkeep round costs.
    """
    pipe = client.pipeline(transaction=False)
    for sc in streams:
        pipe.xinfo_groups(sc.stream)
        pipe.hgetall(inflight_key(sc))
    replies = pipe.execute(raise_on_error=False)
    out: list[Survey] = []
    for i in range(len(streams)):
        groups, records = replies[2 * i], replies[2 * i + 1]
        if isinstance(records, ResponseError):
            raise records
        ours = {} if isinstance(groups, ResponseError) else next(
            (g for g in map(mapping, groups) if text(g.get("name", b"")) == group), {}
        )  # fmt: skip
        out.append(Survey(
            {text(k): text(v) for k, v in mapping(records).items()},
            number(ours.get("pending"), -1) if ours else -1,
            number(ours.get("consumers")),
        ))  # fmt: skip
    return out


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
        reply = read_group(client, self.group, self.consumer, positions, count=self.batch_size, block_ms=self.block_ms)
        for stream, entries in reply.items():
            if entries:
                self.batches.handle(client, self.streams[stream], entries)

    def recover_own_pending(self, client: Client) -> None:
        reply = read_group(client, self.group, self.consumer, self.pending, count=self.batch_size, block_ms=None)
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
        for sc, seen in zip(chunk, survey(client, chunk, self.group), strict=True):
            if seen.records or self.deliveries.foreign:
                self.deliveries.sweep(client, sc, grace=self.grace, records=seen.records)
            if seen.consumers > 1:
                crowded.add(sc.stream)
            if seen.pending != 0:  # -1: missing; XAUTOCLAIM says NOGROUP and the reader recreates it
                self.autoclaim_all(client, sc)
        return crowded

    def autoclaim_all(self, client: Client, sc: StreamConfig) -> None:
        cursor = "0-0"
        while not self.stopping:
            cursor, entries, trimmed = autoclaim(
                client, sc, self.consumer, min_idle_ms=self.wiring.config.claim_idle_ms, start=cursor,
                count=self.batch_size,
            )  # fmt: skip
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

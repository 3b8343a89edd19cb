"""GroupReader: group mode's rounds: own pending entries first, then new ones; claims what dead consumers left."""

from __future__ import annotations

import time

from celery.utils.log import get_logger

from ..batch.deliveries import FOREIGN_GRACE_SECONDS
from ..client.connection import Client
from ..client.streams import autoclaim, ensure_group, read_group
from ..config import StreamConfig
from ..entry import RawEntry
from ..exceptions import BrokerUnavailable, LeaseLost
from ..signals import send_reader_ready
from .base import StreamReader, Wiring

__all__ = ["GroupReader"]

logger = get_logger(__name__)


class GroupReader(StreamReader):
    """Group mode: own pending entries first, then new ones; claims what dead consumers left."""

    def __init__(self, wiring: Wiring, *, batch_size: int, group: str) -> None:
        super().__init__(wiring, batch_size=batch_size, label=f"group={group}")
        self.group = group
        self.consumer = wiring.consumer
        self.unready: set[str] = set()
        self.created: set[str] = set()
        self.pending: dict[str, str] = {}
        self.next_claim = 0.0
        claim_ms = wiring.config.claim_idle_ms
        self.claim_every = min(max(claim_ms / 2000, self.block_ms / 1000), 30.0)
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
        if time.monotonic() >= self.next_claim:
            self.claim(client)
            self.next_claim = time.monotonic() + self.claim_every
            # After the claim: a consumer whose entries were just claimed may go now.
            self.upkeep.reap(client, self.streams.values(), self.consumer, self.wiring.stats)
            self.upkeep.trim(client, self.streams.values(), self.wiring.stats)
        positions = self.unpaused(dict.fromkeys(self.streams, ">"))
        if not positions:
            self.idle()
            return
        count = self.allowance(client)
        if not count:
            return
        reply = read_group(client, self.group, self.consumer, positions, count=count, block_ms=self.block_ms)
        self.used(client, count, sum(map(len, reply.values())))
        for stream, entries in reply.items():
            if entries:
                self.batches.handle(client, self.streams[stream], entries)

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

    def claim(self, client: Client) -> None:
        for sc in self.streams.values():
            self.deliveries.sweep(client, sc, grace=self.grace)
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
        logger.info(
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

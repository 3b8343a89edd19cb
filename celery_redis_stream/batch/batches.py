"""The batch path of a reader: prepare (suspects apart, dead letters) -> publish -> commit, then the record of it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from celery.utils.log import get_logger

from .. import keys
from ..client.connection import Client
from ..config import StreamConfig
from ..deadletters import DeadLetter
from ..entry import RawEntry
from ..position.lease import Lease
from ..position.rule import commit, position_of
from ..publish.dispatch import Dispatcher
from ..publish.exactly_once import ExactlyOnce, Step
from ..stats import StreamStats
from .dedupe import Dedupe
from .deliveries import Deliveries
from .pacing import Pacer

__all__ = ["Batches", "Prepared"]

logger = get_logger(__name__)

#: HDEL arguments per command inside the atomic step (Lua's unpack() limit, see atomic.MAX_COMMAND_ARGS).
HDEL_CHUNK = 1000


@dataclass(frozen=True)
class Prepared:
    """One batch ready to publish: all its ids, the entries to convert, those given up before conversion.

    ``skipped``: the ids passed over by deduplication (their business key was dispatched already).
    """

    ids: list[str]
    live: list[RawEntry]
    dead: list[DeadLetter]
    skipped: tuple[str, ...] = ()


class Batches:
    """Dispatches the batches of one reader, then moves their positions (in one step where exactly_once.py can)."""

    def __init__(
        self, dispatcher: Dispatcher, exactly: ExactlyOnce, deliveries: Deliveries, pacer: Pacer,
        stats: Mapping[str, StreamStats],
    ) -> None:  # fmt: skip
        self.dispatcher = dispatcher
        self.exactly = exactly
        self.deliveries = deliveries
        self.pacer = pacer
        self.stats = stats
        self.dedupe = Dedupe()

    def handle(
        self, client: Client, sc: StreamConfig, entries: Sequence[RawEntry], *,
        trimmed: Sequence[str] = (), lease: Lease | None = None, after: str | None = None,
    ) -> None:  # fmt: skip
        """One batch of one stream; entries a dead worker held go alone (the one that kills a worker is isolated)."""
        parts = self.deliveries.split(sc, entries)
        for i, part in enumerate(parts):
            read_after = after if i == 0 else parts[i - 1][-1].id
            self._one(client, sc, part, trimmed=trimmed if i == 0 else (), lease=lease, after=read_after)

    def prepare(self, sc: StreamConfig, entries: Sequence[RawEntry]) -> Prepared:
        """Split off the entries that reached max_deliveries: dead letters, never converted again."""
        dead = self.deliveries.given_up(sc, entries)
        given_up = {d.raw.id for d in dead}
        live = [e for e in entries if e.id not in given_up] if given_up else list(entries)
        return Prepared([e.id for e in entries], live, dead)

    def claim(self, client: Client, sc: StreamConfig, batch: Prepared) -> Prepared:
        """With ``dedupe``: claim the live entries' business keys; those another entry holds are passed over."""
        if sc.dedupe is None or not batch.live:
            return batch
        claimed = self.dedupe.claim(client, sc, sc.dedupe, batch.live)
        return Prepared(batch.ids, claimed.live, [*batch.dead, *claimed.dead], tuple(claimed.skipped))

    def publish(self, client: Client, sc: StreamConfig, batch: Prepared, step: Step | None) -> list[DeadLetter]:
        """Send the live entries (under an in-flight record); returns every dead letter of the batch."""
        if not batch.live:
            return batch.dead
        self.deliveries.begin(client, sc, [e.id for e in batch.live])
        counts = {e.id: self.deliveries.delivery_count(sc, e.id) for e in batch.live}
        return [*batch.dead, *self.dispatcher.send(sc, batch.live, counts, step=step)]

    def commit(
        self, client: Client, sc: StreamConfig, ids: Sequence[str], trimmed: Sequence[str], dead: Sequence[DeadLetter],
        step: Step | None, lease: Lease | None, *, skipped: int = 0,
    ) -> None:  # fmt: skip
        """Move the position past the batch, with its dead letters and delivery records: atomically if ``step`` can.

        With ``dedupe``, dead-lettered entries first let go of the business keys they claimed, and the
        deduplicated count (``skipped``) moves with the position where the step is atomic.
        """
        if sc.dedupe is not None and dead:
            self.dedupe.release(client, sc, sc.dedupe, dead)
        forget = self.deliveries.done(sc, [*ids, *trimmed])
        counted = keys.dedupe_count(sc.stream, sc.position_name) if skipped else None
        if step is not None:
            for key, fields in forget.items():
                for i in range(0, len(fields), HDEL_CHUNK):
                    step.add("HDEL", key, *fields[i : i + HDEL_CHUNK])
            if counted is not None:
                step.add("HINCRBY", counted, "deduplicated", skipped)
        if step is None or not step.commit(dead, passed_over=skipped):
            commit(client, sc, position_of(sc).acked(ids, trimmed), dead, lease=lease, forget=forget)
            if counted is not None:
                client.hincrby(counted, "deduplicated", skipped)  # after the move: a crash may undercount, never over

    def _one(
        self, client: Client, sc: StreamConfig, entries: Sequence[RawEntry], *,
        trimmed: Sequence[str], lease: Lease | None, after: str | None,
    ) -> None:  # fmt: skip
        stats = self.stats[sc.stream]
        started = time.monotonic()
        batch = self.prepare(sc, entries)
        try:
            batch = self.claim(client, sc, batch)
            step = (
                self.exactly.step(client, sc, batch.ids, trimmed, stats=stats, lease=lease, after=after)
                if batch.ids
                else None
            )
            dead = self.publish(client, sc, batch, step)
            self.commit(client, sc, batch.ids, trimmed, dead, step, lease, skipped=len(batch.skipped))
        except Exception:
            self.deliveries.abandon(client, [sc])
            raise
        self.deliveries.committed(sc, batch.ids)
        elapsed = time.monotonic() - started
        self._record(sc, stats, batch.ids, trimmed, dead, skipped=len(batch.skipped))
        self.pacer.pace(elapsed, len(entries))

    def _record(
        self, sc: StreamConfig, stats: StreamStats, ids: Sequence[str], trimmed: Sequence[str],
        dead: Sequence[DeadLetter], *, skipped: int = 0,
    ) -> None:  # fmt: skip
        for letter in dead:
            logger.error(
                "redis-stream: dead-lettered stream=%s id=%s reason=%s to=%s: %s",
                sc.stream, letter.raw.id, letter.reason, sc.dead_letter, letter.error,
            )  # fmt: skip
        if trimmed:
            logger.warning(
                "redis-stream: %d pending entr%s of stream=%s were trimmed before dispatch and cannot be "
                "sent: %s",
                len(trimmed), "y" if len(trimmed) == 1 else "ies", sc.stream, ",".join(trimmed[:10]),
            )  # fmt: skip
        if skipped:
            logger.debug("redis-stream: stream=%s deduplicated=%d (business key dispatched before)", sc.stream, skipped)
            stats.deduplicated += skipped
        stats.dispatched += len(ids) - len(dead) - skipped
        stats.dead_lettered += len(dead)
        if dead:
            # Copied, not mutated: inspect and metrics iterate it from other threads.
            by_reason = dict(stats.dead_lettered_by_reason)
            for letter in dead:
                by_reason[letter.reason] = by_reason.get(letter.reason, 0) + 1
            stats.dead_lettered_by_reason = by_reason
        stats.trimmed += len(trimmed)
        if ids:
            stats.last_id = ids[-1]

    def forget(self) -> None:
        """After an error: the servers are compared again before the next atomic step."""
        self.exactly.forget()

    def abandon(self, client: Client, streams: Sequence[StreamConfig]) -> None:
        self.deliveries.abandon(client, streams)

    def close(self) -> None:
        self.dispatcher.close()

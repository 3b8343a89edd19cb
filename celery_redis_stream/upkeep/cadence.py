"""Upkeep of the reading loops: removing idle consumers and trimming under retention, a few times a minute at most."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from celery.utils.log import get_logger
from redis.exceptions import ResponseError

from ..client.capabilities import XTRIM_ACKED, in_use, probe
from ..client.connection import Client
from ..config import StreamConfig
from ..position.rule import position_of
from ..redact import redact
from ..stats import StreamStats
from .consumers import REAP_BATCH, Removed, reap_consumers, remove_own_consumer
from .retention import trim_passed

__all__ = ["Upkeep", "cadence"]

logger = get_logger(__name__)

#: The longest and the shortest pause between two rounds of one kind of upkeep
#: on a stream, in seconds: a few times a minute at most, whatever the settings.
MAX_INTERVAL = 30.0
MIN_INTERVAL = 5.0
#: One retention round calls the script again while it trims (each call frees at
#: most 100 radix nodes, ``XTRIM ~``'s own limit), up to this many calls or seconds,
#: so that a busy stream is kept up with while Redis serves others in between;
#: removing consumers likewise, REAP_BATCH a call.
TRIM_CALLS = 100
TRIM_SECONDS = 1.0
#: Removed consumers named one by one at INFO per round; the rest are counted in one line.
LOG_REMOVALS = 20


def cadence(ms: int, block_ms: int) -> float:
    """Seconds between rounds for a threshold of ``ms``: half of it, at least a read, within the bounds above."""
    return min(max(ms / 2000, block_ms / 1000, MIN_INTERVAL), MAX_INTERVAL)


class Upkeep:
    """What one loop does besides reading, on its own client, between reads.

    A Redis refusal here (an ACL without XGROUP DELCONSUMER, XTRIM or EVAL)
    is logged and tried again next round: it never stops the reading. Lost
    connections propagate, as they would from the next read anyway.
    """

    def __init__(self, *, block_ms: int, reap_idle_ms: int) -> None:
        self.block_ms = block_ms
        self.reap_idle_ms = reap_idle_ms
        self.reap_every = cadence(reap_idle_ms, block_ms)
        self.next_reap: dict[str, float] = {}
        self.next_trim: dict[str, float] = {}
        self.capabilities: frozenset[str] | None = None  # of the server, probed at the first trim
        self.warned: set[tuple[str, str]] = set()

    def _refused(self, what: str, sc: StreamConfig, exc: ResponseError) -> None:
        loud = (what, sc.stream) not in self.warned
        self.warned.add((what, sc.stream))
        (logger.warning if loud else logger.debug)(
            "redis-stream: cannot %s on stream=%s, reading goes on: %s", what, sc.stream, redact(str(exc))
        )

    def reap(self, client: Client, streams: Iterable[StreamConfig], own: str, stats: Mapping[str, StreamStats]) -> None:
        """Group mode: delete other consumers idle past stream_reap_idle_ms with nothing pending."""
        now = time.monotonic()
        for sc in streams:
            if now < self.next_reap.get(sc.stream, 0.0):
                continue
            self.next_reap[sc.stream] = now + self.reap_every
            removed: list[Removed] = []
            try:
                for _ in range(TRIM_CALLS):
                    batch = reap_consumers(client, sc, own, min_idle_ms=self.reap_idle_ms)
                    removed += batch
                    if len(batch) < REAP_BATCH or time.monotonic() - now > TRIM_SECONDS:
                        break
            except ResponseError as exc:
                self._refused("remove idle consumers", sc, exc)
            finally:
                self._removed(sc, removed, stats)

    def _removed(self, sc: StreamConfig, removed: list[Removed], stats: Mapping[str, StreamStats]) -> None:
        # After years of rollouts the first round may remove thousands: name the first ones.
        for i, consumer in enumerate(removed):
            (logger.info if i < LOG_REMOVALS else logger.debug)(
                "redis-stream: removed consumer %s from group=%s stream=%s: idle %.0fs, nothing pending",
                consumer.name, sc.group, sc.stream, consumer.idle_ms / 1000,
            )  # fmt: skip
        if len(removed) > LOG_REMOVALS:
            logger.info(
                "redis-stream: removed %d more idle consumers with nothing pending from group=%s stream=%s",
                len(removed) - LOG_REMOVALS, sc.group, sc.stream,
            )  # fmt: skip
        stats[sc.stream].consumers_removed += len(removed)

    def leave(
        self, client: Client, streams: Iterable[StreamConfig], own: str, stats: Mapping[str, StreamStats]
    ) -> None:
        """Warm stop, after the last commit: delete our own consumer where nothing is pending on it."""
        for sc in streams:
            try:
                if not remove_own_consumer(client, sc, own):
                    continue
            except Exception as exc:  # stopping: a failure only leaves the consumer for the reaper
                logger.debug("redis-stream: consumer %s stays in group=%s: %s", own, sc.group, type(exc).__name__)
                continue
            logger.info(
                "redis-stream: removed own consumer %s from group=%s stream=%s: stopped with nothing pending",
                own, sc.group, sc.stream,
            )  # fmt: skip
            stats[sc.stream].consumers_removed += 1

    def trim(self, client: Client, streams: Iterable[StreamConfig], stats: Mapping[str, StreamStats]) -> None:
        """Trim what every group (and the tracker) passed, older than the stream's retention."""
        now = time.monotonic()
        for sc in streams:
            if sc.retention_ms is None or now < self.next_trim.get(sc.stream, 0.0):
                continue
            every = cadence(sc.retention_ms, self.block_ms)
            self.next_trim[sc.stream] = now + every
            try:
                if self.capabilities is None:
                    self.capabilities = probe(client)
                    logger.debug("redis-stream: server capabilities: %s", ",".join(sorted(self.capabilities)) or "-")
                acked = XTRIM_ACKED in self.capabilities
                stats[sc.stream].capabilities = in_use(self.capabilities, retention=True)
                # About the same interval on the server: a fleet of readers of one stream
                # trims it about once per interval (a little less, so clock skew between
                # this worker and Redis does not make a lone reader skip every other round).
                done = trim_passed(
                    client, sc, retention_ms=sc.retention_ms, interval_ms=int(every * 900), acked=acked
                )
                trimmed, calls = done.trimmed, 1
                while done.trimmed and calls < TRIM_CALLS and time.monotonic() - now < TRIM_SECONDS:
                    done = trim_passed(client, sc, retention_ms=sc.retention_ms, interval_ms=0, acked=acked)
                    trimmed, calls = trimmed + done.trimmed, calls + 1
            except ResponseError as exc:
                self._refused("trim under retention", sc, exc)
                continue
            if trimmed:
                logger.info(
                    "redis-stream: trimmed %d entr%s of stream=%s before %s (retention %dms, passed by every group%s)",
                    trimmed, "y" if trimmed == 1 else "ies", sc.stream, done.minid, sc.retention_ms,
                    "" if position_of(sc).shared else " and the tracker",
                )  # fmt: skip
                stats[sc.stream].retention_trimmed += trimmed

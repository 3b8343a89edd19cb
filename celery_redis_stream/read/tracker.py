"""TrackerReader: tracker mode's rounds: XREAD after a stored position, one worker per stream under a lease."""

from __future__ import annotations

import contextlib
import time

from celery.utils.log import get_logger

from ..batch.deliveries import FOREIGN_GRACE_SECONDS
from ..client.connection import Client
from ..client.streams import read_tracked, start_position
from ..config import StreamConfig
from ..entry import RawEntry
from ..exceptions import LeaseLost
from ..position.lease import Lease
from ..signals import send_reader_ready
from .base import StreamReader, Wiring

__all__ = ["TrackerReader"]

logger = get_logger(__name__)


class TrackerReader(StreamReader):
    """Tracker mode: XREAD after a stored position, one worker per stream under a lease."""

    def __init__(self, wiring: Wiring, *, batch_size: int) -> None:
        super().__init__(wiring, batch_size=batch_size, label="tracker")
        self.lease: Lease | None = None
        self.owned: dict[str, str] = {}
        self.next_sweep = 0.0

    @property
    def lease_ms(self) -> int:
        return max(self.wiring.config.claim_idle_ms, 3 * self.block_ms)

    def round(self, client: Client) -> None:
        if self.lease is None:
            self.lease = Lease(client, self.wiring.consumer, self.lease_ms)
        self.deliveries.tidy_all(client, self.streams)
        sweep = time.monotonic() >= self.next_sweep
        if sweep:
            self.next_sweep = time.monotonic() + self.lease_ms / 2000
        ready = [stream for stream, sc in self.streams.items() if self._hold(client, self.lease, sc, sweep=sweep)]
        if ready:
            send_reader_ready(self.wiring.sender, ready, mode="tracker", consumer=self.wiring.consumer)
        # Only the lease holder trims a tracked stream.
        self.upkeep.trim(client, [self.streams[s] for s in self.owned], self.wiring.stats)
        positions = self.unpaused(self.owned)
        if not positions:
            self.idle()
            return
        count = self.allowance(client)
        if not count:
            return
        reply = read_tracked(client, positions, count=count, block_ms=self.block_ms)
        self.used(client, count, sum(map(len, reply.values())))
        for stream, entries in reply.items():
            if entries and stream in self.owned:
                self._handle(client, self.lease, self.streams[stream], entries, after=positions[stream])

    def _hold(self, client: Client, lease: Lease, sc: StreamConfig, *, sweep: bool) -> bool:
        """Take or renew the lease of ``sc``; True when this worker just started reading it."""
        stream, stats = sc.stream, self.wiring.stats[sc.stream]
        if not lease.acquire(sc):
            if stream in self.owned or stats.reading:
                self.owned.pop(stream, None)
                stats.reading = False
                logger.warning("redis-stream: lease on stream=%s taken by another worker; standing by", stream)
            return False
        if stream not in self.owned or sweep:
            # The previous holder's record: counted at once if it was ours, after a grace time if not.
            if stream not in self.owned:
                self.deliveries.recover(client, sc)
            self.deliveries.sweep(client, sc, grace=max(FOREIGN_GRACE_SECONDS, self.lease_ms / 1000))
        started = stream not in self.owned
        if started:
            self.owned[stream] = start_position(client, sc)
            logger.info(
                "redis-stream: reading tracked stream=%s from %s (lease %s)", stream, self.owned[stream], sc.lease_key
            )
        stats.reading = True
        return started

    def _handle(self, client: Client, lease: Lease, sc: StreamConfig, entries: list[RawEntry], *, after: str) -> None:
        try:
            self.batches.handle(client, sc, entries, lease=lease, after=after)
        except LeaseLost:
            self.owned.pop(sc.stream, None)
            self.wiring.stats[sc.stream].reading = False
            raise
        self.owned[sc.stream] = entries[-1].id

    def on_error(self, exc: BaseException) -> None:
        super().on_error(exc)
        # Reload positions from the tracker keys: they hold what was committed.
        self.owned.clear()

    def close(self, client: Client | None, *, warm: bool) -> None:
        if self.lease is not None and client is not None:
            for stream in list(self.owned):
                with contextlib.suppress(Exception):  # an unreleased lease expires by itself
                    self.lease.release(self.streams[stream])
            self.owned.clear()
        super().close(client, warm=warm)

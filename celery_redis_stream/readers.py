"""The readers: one round of reading per ``step(client)``, for group mode, tracker mode and pattern discovery.

A reader is handed what it works with (a Wiring: the app, the settings, its
consumer name, the stop event, the stats, the sender of reader_ready) and
knows nothing of the thread that runs it (loops.py) or of the service that
made it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from celery import Celery
from celery.utils.log import get_logger

from .atomic import ExactlyOnce
from .backpressure import Backpressure
from .batch import Batches
from .config import BridgeConfig, StreamConfig
from .connection import Client, text
from .deliveries import FOREIGN_GRACE_SECONDS, Deliveries
from .dispatch import BrokerUnavailable, Dispatcher
from .entry import RawEntry
from .exceptions import StreamConfigError
from .lease import Lease, LeaseLost
from .pacing import Pacer
from .reader import autoclaim, ensure_group, read_group, read_tracked, start_position
from .signals import send_reader_ready
from .stats import StreamStats
from .upkeep import Upkeep

__all__ = ["Discovery", "GroupReader", "Reader", "StreamReader", "TrackerReader", "Wiring"]

logger = get_logger(__name__)


@dataclass(frozen=True)
class Wiring:
    """What a stream reader is handed: its collaborators, never its owner."""

    app: Celery
    config: BridgeConfig
    consumer: str
    stop_event: threading.Event
    stats: Mapping[str, StreamStats]
    sender: object  # the sender of reader_ready (the worker's Service), passed through untouched


class Reader:
    """What loops.ReaderThread runs: a name, one round per step, what to forget after an error, a last close."""

    label: str = "reader"

    def step(self, client: Client) -> None:
        """One round: at most one blocking read and the batches it returned."""
        raise NotImplementedError

    def stats(self) -> list[StreamStats]:
        """The stats of the streams this reader reads (their last_error is set on failures)."""
        return []

    def on_error(self, exc: BaseException) -> None:
        """Forget what is not known to be true any more after an error."""

    def close(self, client: Client | None, *, warm: bool) -> None:
        """The thread is ending: ``warm`` after a stop with the last round done (and no failure pending)."""


class StreamReader(Reader):
    """A reader of mapped streams: streams join from other threads, and batches go through Batches."""

    def __init__(self, wiring: Wiring, *, batch_size: int, label: str) -> None:
        self.wiring = wiring
        self.label = label
        self.batch_size = batch_size
        self.block_ms = wiring.config.block_ms
        self.streams: dict[str, StreamConfig] = {}
        self.backpressure = Backpressure(wiring.app)
        dispatcher = Dispatcher(wiring.app, max_entry_bytes=wiring.config.max_entry_bytes)
        self.deliveries = Deliveries(wiring.consumer)
        self.batches = Batches(
            dispatcher,
            ExactlyOnce(wiring.config, dispatcher.fast_path, wiring.consumer),
            self.deliveries,
            Pacer(wiring.stop_event.wait),
            wiring.stats,
        )
        self.upkeep = Upkeep(block_ms=wiring.config.block_ms, reap_idle_ms=wiring.config.reap_idle_ms)
        self.incoming: list[StreamConfig] = []
        self._incoming_lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self.wiring.stop_event.is_set()

    def add(self, sc: StreamConfig) -> None:
        """Read ``sc`` too, from the next round on (called from other threads)."""
        with self._incoming_lock:
            self.incoming.append(sc)

    def adopt_incoming(self) -> None:
        with self._incoming_lock:
            incoming, self.incoming = self.incoming, []
        for sc in incoming:
            self.streams[sc.stream] = sc
            self.backpressure.watch(sc)
            self.adopted(sc)

    def adopted(self, sc: StreamConfig) -> None:
        """A stream joined this reader."""

    def stats(self) -> list[StreamStats]:
        # list(): metrics read this from another thread while a stream may join.
        return [self.wiring.stats[s] for s in list(self.streams)]

    def step(self, client: Client) -> None:
        self.adopt_incoming()
        self.round(client)

    def round(self, client: Client) -> None:
        raise NotImplementedError

    def unpaused(self, positions: Mapping[str, str]) -> dict[str, str]:
        """The positions of the streams whose target queue has room (backpressure)."""
        return {
            s: p for s, p in positions.items() if not self.backpressure.paused(self.streams[s], self.wiring.stats[s])
        }

    def idle(self) -> None:
        """Every stream is paused: wait one read's time instead of reading."""
        self.wiring.stop_event.wait(self.block_ms / 1000)

    def on_error(self, exc: BaseException) -> None:
        self.batches.forget()

    def close(self, client: Client | None, *, warm: bool) -> None:
        self.backpressure.close()
        self.batches.close()


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

    def claim(self, client: Client) -> None:
        for sc in self.streams.values():
            self.deliveries.sweep(client, sc, grace=self.grace)
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
        reply = read_tracked(client, positions, count=self.batch_size, block_ms=self.block_ms)
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


class Discovery(Reader):
    """Finds the streams that a pattern in stream_tasks (``orders:*``) matches, every discovery interval.

    ``known(name)`` says a stream is read already (or is a dead-letter stream),
    ``check(sc)`` raises StreamConfigError for one that cannot be read, and
    ``found(sc)`` starts reading one.
    """

    label = "discovery"

    def __init__(
        self, patterns: Sequence[StreamConfig], *, config: BridgeConfig, stop_event: threading.Event,
        known: Callable[[str], bool], check: Callable[[StreamConfig], None], found: Callable[[StreamConfig], None],
    ) -> None:  # fmt: skip
        self.patterns = list(patterns)
        self.config = config
        self.stop_event = stop_event
        self.known, self.check, self.found = known, check, found
        self.first_scan = True
        self.refused: set[str] = set()

    def step(self, client: Client) -> None:
        for pattern in self.patterns:
            for key in client.scan_iter(match=pattern.stream, _type="STREAM", count=1000):
                name = text(key)
                if name in self.refused or self.known(name):
                    continue
                self._consider(pattern, name)
        self.first_scan = False
        self.stop_event.wait(self.config.discovery_interval)

    def _consider(self, pattern: StreamConfig, name: str) -> None:
        sc = pattern.for_stream(name, cluster=self.config.cluster)
        if not self.first_scan:
            # Created after the worker started: all of it is new.
            sc = replace(sc, start="0")
        try:
            self.check(sc)
        except StreamConfigError as exc:
            self.refused.add(name)
            logger.error("redis-stream: not reading stream=%s matching %s: %s", name, pattern.stream, exc)
            return
        logger.info("redis-stream: found stream=%s matching %s", name, pattern.stream)
        self.found(sc)

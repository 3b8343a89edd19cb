"""Readers: one round of reading per ``step(client)``; what stream readers share, and pattern discovery.

A reader is handed what it works with (a Wiring: the app, the settings, its
consumer name, the stop event, the stats, the sender of reader_ready) and
knows nothing of the thread that runs it (thread.py) or of the service that
made it. The two stream readers are read/group.py and read/tracker.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from celery import Celery
from celery.utils.log import get_logger

from ..batch.batches import Batches
from ..batch.deliveries import Deliveries
from ..batch.pacing import Pacer
from ..client.connection import Client, text
from ..client.streams import PackedRead
from ..config import BridgeConfig, StreamConfig
from ..exceptions import StreamConfigError
from ..publish.dispatch import Dispatcher
from ..publish.exactly_once import ExactlyOnce
from ..stats import StreamStats
from ..upkeep.cadence import Upkeep
from .backpressure import Backpressure
from .limit import Limiter

__all__ = ["Discovery", "Reader", "StreamReader", "Wiring"]

logger = get_logger(__name__)

#: Streams named one by one at INFO per discovery scan of a pattern; a scan that finds more logs their total.
LOG_FOUND = 20


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

    def wake(self) -> None:
        """From another thread (a stop): end a long blocking read now, if one is under way."""

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
        self.packed = PackedRead()
        # A stream with a fleet-wide rate limit has a reader of its own (Service.add): its bucket is the reader's.
        self.limiter: Limiter | None = None
        self.drained = False

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
            if sc.rate_limit is not None:
                stats = self.wiring.stats[sc.stream]
                self.limiter = Limiter(sc.stream, sc.rate_limit, stats, self.wiring.stop_event.wait)
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
        if not self.backpressure.queues:  # no stream has a max_queue_length: 10,000 calls saved per read
            return dict(positions)
        return {
            s: p for s, p in positions.items() if not self.backpressure.paused(self.streams[s], self.wiring.stats[s])
        }

    def allowance(self, client: Client) -> int:
        """How many entries the next read may return: the batch size, or what the rate limit grants (0: it waited).

        A reader that last found the stream drained asks for one token only: it
        is about to block on an empty stream, and tokens it held while blocking
        would keep the other workers waiting for nothing.
        """
        if self.limiter is None:
            return self.batch_size
        return self.limiter.take(client, 1 if self.drained else self.batch_size)

    def used(self, client: Client, granted: int, read: int) -> None:
        """``read`` of the ``granted`` entries came back: the rest of the tokens go back to the bucket."""
        if self.limiter is not None:
            self.drained = read < granted
            self.limiter.give_back(client, granted - read)

    def idle(self) -> None:
        """Every stream is paused: wait one read's time instead of reading."""
        self.wiring.stop_event.wait(self.block_ms / 1000)

    def on_error(self, exc: BaseException) -> None:
        self.batches.forget()

    def wake(self) -> None:
        self.packed.wake()

    def close(self, client: Client | None, *, warm: bool) -> None:
        self.backpressure.close()
        self.batches.close()


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
            self.scan(client, pattern)
        self.first_scan = False
        self.stop_event.wait(self.config.discovery_interval)

    def scan(self, client: Client, pattern: StreamConfig) -> None:
        """One SCAN of ``pattern``: the first LOG_FOUND streams found named at INFO, the rest at DEBUG, one total."""
        found = 0
        for key in client.scan_iter(match=pattern.stream, _type="STREAM", count=1000):
            try:
                name = key.decode() if isinstance(key, bytes) else text(key)
            except UnicodeDecodeError:
                # Decoded with replacement it would name another key, which MKSTREAM would create.
                self._refuse_undecodable(pattern, key)
                continue
            if name in self.refused or self.known(name):
                continue
            found += self._consider(pattern, name, found)
        if found > LOG_FOUND:
            logger.info("redis-stream: found %d streams matching %s", found, pattern.stream)

    def _refuse_undecodable(self, pattern: StreamConfig, key: bytes) -> None:
        shown = repr(key)
        if shown not in self.refused:
            self.refused.add(shown)
            logger.error(
                "redis-stream: not reading stream %s matching %s: its name is not UTF-8", shown, pattern.stream
            )

    def _consider(self, pattern: StreamConfig, name: str, found: int) -> int:
        """Check and start reading ``name``; 1 if it is read from now on (``found`` before it this scan)."""
        sc = pattern.for_stream(name, cluster=self.config.cluster)
        if not self.first_scan:
            # Created after the worker started: all of it is new.
            sc = replace(sc, start="0")
        try:
            self.check(sc)
        except StreamConfigError as exc:
            self.refused.add(name)
            logger.error("redis-stream: not reading stream=%s matching %s: %s", name, pattern.stream, exc)
            return 0
        # Thousands of streams (one per tenant) would be thousands of lines: the first ones, then a total.
        (logger.info if found < LOG_FOUND else logger.debug)(
            "redis-stream: found stream=%s matching %s", name, pattern.stream
        )
        self.found(sc)
        return 1

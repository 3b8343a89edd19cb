"""Service: all stream readers of one worker; start() returns at once, stop() is prompt; runs without a worker."""

from __future__ import annotations

import contextlib
import fnmatch
import threading
import time
from dataclasses import asdict
from typing import TypedDict

from celery import Celery
from celery.utils.log import get_logger

from . import keys
from .client.connection import Client, connect
from .config import BridgeConfig, StreamConfig, check_slots
from .metrics import MetricsServer
from .position.rule import position_of
from .publish.exactly_once import assess
from .read.base import Discovery, StreamReader, Wiring
from .read.group import GroupReader
from .read.tracker import TrackerReader
from .stats import StreamStats
from .thread import ReaderThread

__all__ = ["Service", "StreamStats"]

logger = get_logger(__name__)


class ServiceInfo(TypedDict):
    """What `inspect redis_stream` reports of a worker, before the bootstep adds lags and liveness."""

    url: str
    consumer: str
    streams: list[dict[str, object]]


class Service:
    """All readers of one worker: start() returns at once; stop() and terminate() are one idempotent, prompt shutdown.

    Streams are read by as few threads as possible: one per group (and batch
    size) and one for the tracked streams. On a single Redis each is one
    blocking read for all its streams; on a cluster, where one read cannot
    span hash slots, each polls its slots per master (client/cluster.py), and all
    readers of the worker share one cluster client.
    """

    def __init__(self, app: Celery, config: BridgeConfig, *, consumer: str) -> None:
        self.app = app
        self.config = config
        self.consumer = config.consumer or consumer
        # Set when a shutdown begins (halt) or at stop: the readers read no new batch.
        self.stop_event = threading.Event()
        # Set at stop: the readers, halted, leave their groups and leases, close their clients and end.
        self.closing = threading.Event()
        self.stats: dict[str, StreamStats] = {}
        self.configs: dict[str, StreamConfig] = {}
        self.wiring = Wiring(app, config, self.consumer, self.stop_event, self.stats, sender=self)
        self._readers: dict[tuple[str, str | None, int, str | None], tuple[StreamReader, ReaderThread]] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._shared_client: Client | None = None
        patterns = [sc for sc in config.streams if sc.is_pattern]
        for sc in config.streams:
            if not sc.is_pattern:
                self.add(sc)
        self.discovery: ReaderThread | None = None
        if patterns:
            found = Discovery(
                patterns, config=config, stop_event=self.stop_event, known=self.known, check=self.check, found=self.add
            )
            self.discovery = self._thread(found)
        templates = {sc.dead_letter_template for sc in config.streams}
        self._dead_letter_patterns = [keys.dead_letter_pattern(t) for t in templates]
        # Built here, not in start(): a missing prometheus_client is a configuration error before the pool starts.
        self.metrics = (
            MetricsServer(self, port=config.metrics_port, addr=config.metrics_addr)
            if config.metrics_port is not None
            else None
        )

    @property
    def loops(self) -> list[ReaderThread]:
        """The reader threads: one per group (and batch size), one for the tracked streams, one for discovery."""
        with self._lock:
            loops = [thread for _, thread in self._readers.values()]
        return [*loops, self.discovery] if self.discovery is not None else loops

    def _thread(self, reader: StreamReader | Discovery) -> ReaderThread:
        return ReaderThread(
            reader, connect=self.connect, release=self.release, stop_event=self.stop_event, closing=self.closing
        )

    def _reader(self, sc: StreamConfig) -> StreamReader:
        if sc.mode == "group":
            return GroupReader(self.wiring, batch_size=sc.batch_size, group=sc.group)
        return TrackerReader(self.wiring, batch_size=sc.batch_size)

    def connect(self) -> Client:
        """A reader's Redis client: its own on a single Redis, the worker's one shared client on a cluster.

        A cluster client holds a connection pool per node, the slot map and
        the command table; one per reader made 100 untagged streams cost 100
        clients. It is thread-safe, and the readers' blocking reads each take
        a connection of their own from the node's pool.
        """
        if not self.config.cluster:
            return connect(self.config)
        with self._lock:
            if self._shared_client is None:
                self._shared_client = connect(self.config)
            return self._shared_client

    def release(self, client: Client) -> None:
        """A reader is done with ``client``; the shared cluster client is closed by :meth:`stop`."""
        if client is not self._shared_client:
            client.close()

    def add(self, sc: StreamConfig) -> None:
        """Read ``sc``: join the loop that reads its group (or trackers), or start one."""
        position = position_of(sc)
        self.configs[sc.stream] = sc
        self.stats[sc.stream] = StreamStats(
            stream=sc.stream,
            mode=position.mode,
            task=sc.task,
            group=position.name if position.shared else None,
            tracker=None if position.shared else position.name,
            rate_limit=None if sc.rate_limit is None else str(sc.rate_limit),
        )
        # One reader per group and batch size; all tracked streams of one batch size share one. A stream
        # with a rate limit has its own: its reads are sized by its bucket, and its waits hold up no other.
        limited = sc.stream if sc.rate_limit is not None else None
        key = (position.mode, position.name if position.shared else None, sc.batch_size, limited)
        with self._lock:
            if key not in self._readers:
                reader = self._reader(sc)
                self._readers[key] = (reader, self._thread(reader))
                if self._started and not self.stop_event.is_set():
                    self._readers[key][1].start()
            self._readers[key][0].add(sc)

    def check(self, sc: StreamConfig) -> None:
        """Refuse a discovered stream whose keys cannot live in its cluster slot."""
        if self.config.cluster:
            check_slots(sc)

    def known(self, name: str) -> bool:
        """A stream that is read already, or a dead-letter stream: discovery leaves it alone."""
        return name in self.stats or self.is_dead_letter(name)

    def is_dead_letter(self, name: str) -> bool:
        for pattern in self._dead_letter_patterns:
            match = pattern.match(name)
            if match and (match.group(1) in self.stats or any(
                fnmatch.fnmatchcase(match.group(1), sc.stream) for sc in self.config.streams if sc.is_pattern
            )):  # fmt: skip
                return True
        return False

    def start(self) -> None:
        """Log what is read and with which guarantee, start the readers and the metrics endpoint; returns at once."""
        self._announce()
        with self._lock:
            self._started = True
        for loop in self.loops:
            loop.start()
        if self.metrics is not None:
            self.metrics.start()

    def _announce(self) -> None:
        guarantees = assess(self.app, self.config)
        for stream, guarantee in guarantees.items():
            if stream in self.stats:
                guarantee.show(self.stats[stream])
        described = ", ".join(
            f"{sc.stream}->{sc.task} ({position_of(sc).mode} {position_of(sc).name}; "
            f"{guarantees[sc.stream].kind}: {guarantees[sc.stream].reason})"
            for sc in self.config.streams
        )
        logger.info("redis-stream: reading %s from %s as consumer %s", described, self.config.safe_url, self.consumer)

    def halt(self) -> None:
        """A shutdown began: read no new batch from now on; the batch in flight is finished (dispatched and
        committed) or left pending. Idempotent.

        Called from the worker's signal handler (bootstep.ShutdownWatch), so it
        only sets an event: no lock, no logging, no network. The readers keep
        their clients, consumers and leases until :meth:`stop`.
        """
        # is_set() takes no lock: a second signal while the first is handled, or while stop() sets the
        # event, must not wait on the event's lock from inside the handler.
        if not self.stop_event.is_set():
            self.stop_event.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in flight, then stop; waits at most about one read. Idempotent."""
        with self._lock:
            first, self._stopped = not self._stopped, True
        metrics, self.metrics = self.metrics, None
        if metrics is not None:
            metrics.stop()
        self.stop_event.set()
        with self._lock:
            readers = [reader for reader, _ in self._readers.values()]
        for reader in readers:
            reader.wake()
        self.closing.set()
        if timeout is None:
            timeout = self.config.block_ms / 1000 + 5
        deadline = time.monotonic() + timeout
        for loop in self.loops:
            if loop.is_alive() and loop is not threading.current_thread():
                loop.join(max(0.0, deadline - time.monotonic()))
        if not self.alive:
            with self._lock:
                shared, self._shared_client = self._shared_client, None
            if shared is not None:
                with contextlib.suppress(Exception):  # a broken connection may fail to close; it is dropped anyway
                    shared.close()
        if first:
            logger.info("redis-stream: stopped")

    def terminate(self) -> None:
        """A cold shutdown (Celery's ``terminate``) is the same prompt stop: the batch in flight is finished."""
        self.stop()

    @property
    def alive(self) -> bool:
        return any(loop.is_alive() for loop in self.loops)

    def info(self) -> ServiceInfo:
        return {
            "url": self.config.safe_url,
            "consumer": self.consumer,
            "streams": [asdict(stats) for stats in list(self.stats.values())],
        }

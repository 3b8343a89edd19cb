"""The reading loops: one thread and one blocking read each, for group mode, tracker mode and discovery."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from .atomic import ExactlyOnce
from .backpressure import QueueGauge, target_queue
from .config import StreamConfig
from .deliveries import FOREIGN_GRACE_SECONDS, Deliveries
from .dispatch import BrokerUnavailable, Dispatcher
from .entry import RawEntry
from .exceptions import StreamConfigError
from .position import Lease, LeaseLost, commit
from .reader import (
    autoclaim,
    ensure_group,
    read_group,
    read_tracked,
    start_position,
)
from .redact import redact
from .signals import send_reader_ready
from .upkeep import Upkeep

if TYPE_CHECKING:
    from .service import Service

__all__ = ["Discovery", "GroupLoop", "StreamStats", "TrackerLoop"]

logger = get_logger(__name__)

BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0


@dataclass
class StreamStats:
    """What one stream's reader has done; shown by ``celery inspect redis_stream``."""

    stream: str
    mode: str
    task: str
    group: str | None
    tracker: str | None
    dispatched: int = 0
    dead_lettered: int = 0
    trimmed: int = 0
    last_id: str | None = None
    reading: bool = False
    paused: bool = False
    last_error: str | None = None
    consumers_removed: int = 0
    retention_trimmed: int = 0
    dead_lettered_by_reason: dict[str, int] = field(default_factory=dict)
    broker_retries: int = 0
    guarantee: str | None = None  # "exactly-once" or "at-least-once", for the last batch (atomic.py)
    guarantee_reason: str | None = None


def _fatal(exc: BaseException) -> bool:
    if isinstance(exc, (NoPermissionError, AuthenticationError)):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and text.startswith(("NOPERM", "WRONGTYPE", "NOAUTH", "WRONGPASS"))


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")[:500]


class _Loop(threading.Thread):
    """One thread, one Redis client, one blocking read for all its streams."""

    def __init__(self, service: Service, streams: Sequence[StreamConfig], batch_size: int, name: str) -> None:
        super().__init__(name=f"redis-stream {name}", daemon=True)
        self.label = name
        self.service = service
        self.streams = {sc.stream: sc for sc in streams}
        self.batch_size = batch_size
        self.client: Any = None
        self.dispatcher = Dispatcher(service.app, max_entry_bytes=service.config.max_entry_bytes)
        self.exactly = ExactlyOnce(service.config, self.dispatcher.fast_path, service.consumer)
        self.gauge = QueueGauge(service.app)
        self.queues = {sc.stream: target_queue(service.app, sc) for sc in streams if sc.max_queue_length is not None}
        self.quiet_until: dict[str, float] = {}
        self.loud_pause: dict[str, bool] = {}
        self.failures = 0
        self.upkeep = Upkeep(block_ms=service.config.block_ms, reap_idle_ms=service.config.reap_idle_ms)
        self.deliveries = Deliveries(service.consumer)
        self._incoming: list[StreamConfig] = []
        self._incoming_lock = threading.Lock()

    def add(self, sc: StreamConfig) -> None:
        """Read ``sc`` too, from the next round on (called from other threads)."""
        with self._incoming_lock:
            self._incoming.append(sc)

    def adopt_incoming(self) -> None:
        with self._incoming_lock:
            incoming, self._incoming = self._incoming, []
        for sc in incoming:
            self.streams[sc.stream] = sc
            if sc.max_queue_length is not None:
                self.queues[sc.stream] = target_queue(self.service.app, sc)
            self.adopted(sc)

    def adopted(self, sc: StreamConfig) -> None:
        """A stream joined this loop."""

    @property
    def block_ms(self) -> int:
        return self.service.config.block_ms

    @property
    def stopping(self) -> bool:
        return self.service.stop_event.is_set()

    def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    if self.client is None:
                        self.client = self.service.connect()
                    self.adopt_incoming()
                    self.step()
                    if self.failures:
                        logger.info("redis-stream: %s recovered after %d failed attempt(s)", self.label, self.failures)
                        self.failures = 0
                        for stats in self._stats():
                            stats.last_error = None
                except Exception as exc:
                    if _fatal(exc):
                        self._give_up(exc)
                        return
                    self._retry_later(exc)
        finally:
            self.cleanup()

    def _stats(self) -> list[StreamStats]:
        return [self.service.stats[s] for s in self.streams]

    def _give_up(self, exc: BaseException) -> None:
        error = _describe(exc)
        for stats in self._stats():
            stats.last_error, stats.reading = error, False
        logger.error(
            "redis-stream: %s stopped reading %s: %s (not retried: fix the Redis permissions or the key, "
            "then restart the worker)",
            self.label, ",".join(self.streams), error,
        )  # fmt: skip

    def _retry_later(self, exc: BaseException) -> None:
        self.failures += 1
        error = _describe(exc)
        for stats in self._stats():
            stats.last_error = error
        delay = min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(self.failures - 1, 10)) * random.uniform(0.5, 1.0)
        log = logger.warning if self.failures == 1 else logger.debug
        if isinstance(exc, BrokerUnavailable):
            for stats in self._stats():
                stats.broker_retries += 1
            log("redis-stream: %s: broker unavailable, position kept, retrying: %s", self.label, error)
        elif isinstance(exc, LeaseLost):
            log("redis-stream: %s: %s", self.label, error)
        else:
            log("redis-stream: %s: %s; retrying in %.1fs", self.label, error, delay, exc_info=self.failures == 1)
        self.exactly.forget()
        self.on_error(exc)
        self.service.stop_event.wait(delay)

    def step(self) -> None:
        """One round: at most one blocking read and the batches it returned."""
        raise NotImplementedError

    def on_error(self, exc: BaseException) -> None:
        """Forget what is not known to be true any more after an error."""

    def paused(self, sc: StreamConfig) -> bool:
        """Backpressure: leave the backlog in the stream while the target queue is full."""
        if sc.max_queue_length is None:
            return False
        stats = self.service.stats[sc.stream]
        queue = self.queues[sc.stream]
        try:
            size = self.gauge.size(queue)
        except Exception as exc:
            self.gauge.close()
            raise BrokerUnavailable(f"cannot read the length of queue {queue!r}: {_describe(exc)}") from exc
        paused = size > sc.max_queue_length
        if paused != stats.paused:
            stats.paused = paused
            # A queue hovering at its limit flips every read: log a pause and
            # its resume at INFO, further ones within a minute at DEBUG.
            now = time.monotonic()
            if paused:
                loud = now >= self.quiet_until.get(sc.stream, 0.0)
                if loud:
                    self.quiet_until[sc.stream] = now + 60.0
                self.loud_pause[sc.stream] = loud
            else:
                loud = self.loud_pause.get(sc.stream, True)
            (logger.info if loud else logger.debug)(
                "redis-stream: %s stream=%s queue=%s length=%d limit=%d",
                "pausing" if paused else "resuming", sc.stream, queue, size, sc.max_queue_length,
            )  # fmt: skip
        return paused

    def cleanup(self) -> None:
        self.gauge.close()
        self.dispatcher.close()
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail; it is discarded anyway
                self.service.release(client)

    def handle(
        self,
        sc: StreamConfig,
        entries: Sequence[RawEntry],
        *,
        trimmed: Sequence[str] = (),
        lease: Lease | None = None,
        after: str | None = None,
    ) -> None:
        """Dispatch a batch of one stream, then move its position past it (in one step where atomic.py can)."""
        parts = self.deliveries.split(sc, entries)
        if len(parts) > 1:
            # Entries a dead worker held go alone: the one that kills the
            # worker is isolated and its neighbours get through.
            for i, part in enumerate(parts):
                read_after = after if i == 0 else parts[i - 1][-1].id
                self.handle(sc, part, trimmed=trimmed if i == 0 else (), lease=lease, after=read_after)
            return
        stats = self.service.stats[sc.stream]
        started = time.monotonic()
        dead = self.deliveries.given_up(sc, entries)
        given_up = {d.raw.id for d in dead}
        live = [e for e in entries if e.id not in given_up] if given_up else entries
        ids = [e.id for e in entries]
        try:
            step = (
                self.exactly.step(self.client, sc, ids, trimmed, stats=stats, lease=lease, after=after) if ids else None
            )
            if live:
                self.deliveries.begin(self.client, sc, [e.id for e in live])
                counts = {e.id: self.deliveries.delivery_count(sc, e.id) for e in live}
                dead = [*dead, *self.dispatcher.send(sc, live, counts, step=step)]
            forget = self.deliveries.done(sc, [*ids, *trimmed])
            if step is not None:
                for key, fields in forget.items():
                    for i in range(0, len(fields), 1000):
                        step.add("HDEL", key, *fields[i : i + 1000])
            if step is None or not step.commit(dead):
                ack = [*ids, *trimmed] if sc.mode == "group" else ids
                commit(self.client, sc, ack, dead, lease=lease, forget=forget)
        except Exception:
            self.deliveries.abandon(self.client, [sc])
            raise
        self.deliveries.committed(sc, ids)
        elapsed = time.monotonic() - started
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
        stats.dispatched += len(entries) - len(dead)
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
        self.dispatcher.pace(elapsed, self.service.stop_event.wait, len(entries))


class GroupLoop(_Loop):
    """Group mode: own pending entries first, then new ones; claims what dead consumers left."""

    def __init__(self, service: Service, streams: Sequence[StreamConfig], batch_size: int, group: str) -> None:
        super().__init__(service, streams, batch_size, name=f"group={group}")
        self.group = group
        self.consumer = service.consumer
        self.unready: set[str] = set(self.streams)
        self.created: set[str] = set()
        self.pending: dict[str, str] = {}
        self.next_claim = 0.0
        claim_ms = service.config.claim_idle_ms
        self.claim_every = min(max(claim_ms / 2000, self.block_ms / 1000), 30.0)
        self.grace = max(FOREIGN_GRACE_SECONDS, claim_ms / 1000)

    def adopted(self, sc: StreamConfig) -> None:
        self.unready.add(sc.stream)

    def setup(self) -> None:
        ready: list[str] = []
        for stream in sorted(self.unready):
            sc = self.streams[stream]
            # A group missing at start follows stream_start; one that vanishes
            # while we run (Redis restarted empty, key deleted) comes back from
            # "0": "$" would silently skip what was written in between.
            again = stream in self.created
            if ensure_group(self.client, sc, "0" if again else None) and again:
                logger.warning("redis-stream: group %s on stream %s was missing; recreated from 0", sc.group, sc.stream)
            self.created.add(stream)
            self.deliveries.recover(self.client, sc)
            self.service.stats[stream].reading = True
            self.pending[stream] = "0"
            self.unready.discard(stream)
            ready.append(stream)
        send_reader_ready(self.service, ready, mode="group", consumer=self.consumer)

    def step(self) -> None:
        self.deliveries.tidy_all(self.client, self.streams)
        if self.unready:
            self.setup()
        if self.pending:
            self.recover_own_pending()
            return
        if time.monotonic() >= self.next_claim:
            self.claim()
            self.next_claim = time.monotonic() + self.claim_every
            # After the claim: a consumer whose entries were just claimed may go now.
            self.upkeep.reap(self.client, self.streams.values(), self.consumer, self.service.stats)
            self.upkeep.trim(self.client, self.streams.values(), self.service.stats)
        positions = {s: ">" for s in self.streams if not self.paused(self.streams[s])}
        if not positions:
            self.service.stop_event.wait(self.block_ms / 1000)
            return
        reply = read_group(
            self.client, self.group, self.consumer, positions, count=self.batch_size, block_ms=self.block_ms
        )
        for stream, entries in reply.items():
            if entries:
                self.handle(self.streams[stream], entries)

    def recover_own_pending(self) -> None:
        reply = read_group(self.client, self.group, self.consumer, self.pending, count=self.batch_size, block_ms=None)
        for stream in list(self.pending):
            entries = reply.get(stream) or []
            if not entries:
                del self.pending[stream]
                continue
            sc = self.streams[stream]
            self.pending[stream] = entries[-1].id
            live = [e for e in entries if e.pairs is not None]
            trimmed = [e.id for e in entries if e.pairs is None]
            self.deliveries.load(self.client, sc, [e.id for e in live])
            self.handle(sc, live, trimmed=trimmed)

    def claim(self) -> None:
        min_idle = self.service.config.claim_idle_ms
        for sc in self.streams.values():
            self.deliveries.sweep(self.client, sc, grace=self.grace)
            cursor = "0-0"
            while not self.stopping:
                cursor, entries, trimmed = autoclaim(
                    self.client, sc, self.consumer, min_idle_ms=min_idle, start=cursor, count=self.batch_size
                )
                if entries or trimmed:
                    logger.info(
                        "redis-stream: claimed %d idle entr%s of stream=%s group=%s",
                        len(entries), "y" if len(entries) == 1 else "ies", sc.stream, sc.group,
                    )  # fmt: skip
                    self.deliveries.load(self.client, sc, [e.id for e in entries])
                    self.handle(sc, entries, trimmed=trimmed)
                if cursor in ("0-0", "0"):
                    break

    def on_error(self, exc: BaseException) -> None:
        if isinstance(exc, (BrokerUnavailable, LeaseLost)):
            # Whatever was read but not acknowledged sits in our own pending
            # list: re-reading it from "0" resumes exactly where it failed.
            self.pending = {s: "0" for s in self.streams}
        else:
            # Redis failed: the group may be gone (restart, deleted key).
            self.unready = set(self.streams)

    def cleanup(self) -> None:
        if self.stopping and self.client is not None and not self.failures:
            # A warm stop, after the last commit: a consumer with nothing
            # pending would only pile up in the group under the next name.
            self.upkeep.leave(self.client, self.streams.values(), self.consumer, self.service.stats)
        super().cleanup()


class TrackerLoop(_Loop):
    """Tracker mode: XREAD after a stored position, one worker per stream under a lease."""

    def __init__(self, service: Service, streams: Sequence[StreamConfig], batch_size: int) -> None:
        super().__init__(service, streams, batch_size, name="tracker")
        self.lease: Lease | None = None
        self.owned: dict[str, str] = {}
        self.next_sweep = 0.0

    @property
    def lease_ms(self) -> int:
        return max(self.service.config.claim_idle_ms, 3 * self.block_ms)

    def step(self) -> None:
        if self.lease is None:
            self.lease = Lease(self.client, self.service.consumer, self.lease_ms)
        lease = self.lease
        self.deliveries.tidy_all(self.client, self.streams)
        sweep = time.monotonic() >= self.next_sweep
        if sweep:
            self.next_sweep = time.monotonic() + self.lease_ms / 2000
        ready: list[str] = []
        for stream, sc in self.streams.items():
            stats = self.service.stats[stream]
            if lease.acquire(sc):
                if stream not in self.owned or sweep:
                    # The previous holder's record: counted at once if it was ours, after a grace time if not.
                    if stream not in self.owned:
                        self.deliveries.recover(self.client, sc)
                    self.deliveries.sweep(self.client, sc, grace=max(FOREIGN_GRACE_SECONDS, self.lease_ms / 1000))
                if stream not in self.owned:
                    self.owned[stream] = start_position(self.client, sc)
                    logger.info(
                        "redis-stream: reading tracked stream=%s from %s (lease %s)",
                        stream, self.owned[stream], sc.lease_key,
                    )  # fmt: skip
                    ready.append(stream)
                stats.reading = True
            elif stream in self.owned or stats.reading:
                self.owned.pop(stream, None)
                stats.reading = False
                logger.warning("redis-stream: lease on stream=%s taken by another worker; standing by", stream)
        if ready:
            send_reader_ready(self.service, ready, mode="tracker", consumer=self.service.consumer)
        # Only the lease holder trims a tracked stream.
        self.upkeep.trim(self.client, [self.streams[s] for s in self.owned], self.service.stats)
        positions = {s: p for s, p in self.owned.items() if not self.paused(self.streams[s])}
        if not positions:
            self.service.stop_event.wait(self.block_ms / 1000)
            return
        reply = read_tracked(self.client, positions, count=self.batch_size, block_ms=self.block_ms)
        for stream, entries in reply.items():
            if not entries or stream not in self.owned:
                continue
            try:
                self.handle(self.streams[stream], entries, lease=lease, after=positions[stream])
            except LeaseLost:
                self.owned.pop(stream, None)
                self.service.stats[stream].reading = False
                raise
            self.owned[stream] = entries[-1].id

    def on_error(self, exc: BaseException) -> None:
        # Reload positions from the tracker keys: they hold what was committed.
        self.owned.clear()

    def cleanup(self) -> None:
        if self.lease is not None and self.client is not None:
            for stream in list(self.owned):
                with contextlib.suppress(Exception):  # an unreleased lease expires by itself
                    self.lease.release(self.streams[stream])
            self.owned.clear()
        super().cleanup()


class Discovery(_Loop):
    """Finds the streams that a pattern in stream_tasks (``orders:*``) matches, every discovery interval."""

    def __init__(self, service: Service, patterns: Sequence[StreamConfig]) -> None:
        super().__init__(service, [], 0, name="discovery")
        self.patterns = list(patterns)
        self.first_scan = True
        self.refused: set[str] = set()

    def _stats(self) -> list[StreamStats]:
        return []

    def step(self) -> None:
        for pattern in self.patterns:
            for key in self.client.scan_iter(match=pattern.stream, _type="STREAM", count=1000):
                name = key.decode() if isinstance(key, bytes) else str(key)
                if name in self.service.stats or name in self.refused or self.service.is_dead_letter(name):
                    continue
                sc = pattern.for_stream(name, cluster=self.service.config.cluster)
                if not self.first_scan:
                    # Created after the worker started: all of it is new.
                    sc = replace(sc, start="0")
                try:
                    self.service.check(sc)
                except StreamConfigError as exc:
                    self.refused.add(name)
                    logger.error("redis-stream: not reading stream=%s matching %s: %s", name, pattern.stream, exc)
                    continue
                logger.info("redis-stream: found stream=%s matching %s", name, pattern.stream)
                self.service.add(sc)
        self.first_scan = False
        self.service.stop_event.wait(self.service.config.discovery_interval)

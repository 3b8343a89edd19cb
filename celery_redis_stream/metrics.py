"""Prometheus metrics of one worker's readers (the optional ``prometheus`` extra)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from celery.utils.log import get_logger

from .client.capabilities import probe
from .client.connection import Client, connect
from .config import BridgeConfig, StreamConfig
from .exceptions import StreamConfigError
from .position.rule import position_of
from .rows import StreamRow
from .stats import StreamStats
from .status import stream_status

if TYPE_CHECKING:  # the optional prometheus extra: imported when a scrape comes in
    from http.server import HTTPServer

    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["MetricsServer"]

logger = get_logger(__name__)

# A scrape counts lag by reading at most this many entries per stream (on each
# side of the position) when Redis metadata cannot give it (see lag.lag_of).
LAG_LIMIT = 10_000

#: The values of the ``state`` label of redis_stream_reader_state.
STATES = ("reading", "standing_by", "stopped")


class _Thread(Protocol):
    @property
    def streams(self) -> list[str]: ...

    def is_alive(self) -> bool: ...


class Readers(Protocol):
    """What the metrics read of a worker's Service: its settings, stats, stop event and reader threads."""

    @property
    def config(self) -> BridgeConfig: ...

    @property
    def configs(self) -> Mapping[str, StreamConfig]: ...

    @property
    def stats(self) -> Mapping[str, StreamStats]: ...

    @property
    def stop_event(self) -> threading.Event: ...

    @property
    def loops(self) -> Sequence[_Thread]: ...


def _labels(sc: StreamConfig) -> list[str]:
    # `group` names the position the lag is measured from: the consumer group, or
    # the tracker key in tracker mode, so `by (stream, group)` never merges two.
    position = position_of(sc)
    return [sc.stream, position.mode, position.name]


def reader_states(service: Readers) -> dict[str, str]:
    """Per stream: ``reading``; ``standing_by`` (another worker holds the tracker lease, or the reader is
    starting or retrying); ``stopped`` (its reader thread ended: a fatal error, or the worker is stopping)."""
    alive: dict[str, bool] = {}
    for loop in service.loops:
        for stream in list(loop.streams):
            alive[stream] = loop.is_alive()
    stopping = service.stop_event.is_set()
    out = {}
    for stream, stats in list(service.stats.items()):
        if stopping or not alive.get(stream, True):
            out[stream] = "stopped"
        else:
            out[stream] = "reading" if stats.reading else "standing_by"
    return out


class _Families:
    """The metric families of one scrape, labelled by stream, mode and group (the position)."""

    LABELS = ("stream", "mode", "group")

    def __init__(self) -> None:
        from prometheus_client.core import GaugeMetricFamily

        self.dispatched = self._counter(
            "redis_stream_dispatched", "Stream entries this worker dispatched as Celery tasks."
        )
        self.dead = self._counter(
            "redis_stream_dead_lettered", "Stream entries this worker moved to the dead-letter stream."
        )
        self.by_reason = self._counter(
            "redis_stream_dead_lettered_by_reason", "Dead-lettered entries by dlq_reason.", extra=("reason",)
        )
        self.trimmed = self._counter(
            "redis_stream_trimmed",
            "Pending entries found deleted from the stream (XDEL, MAXLEN) before this worker dispatched them.",
        )
        self.retention_trimmed = self._counter(
            "redis_stream_retention_trimmed", "Stream entries this worker trimmed under retention."
        )
        self.removed = self._counter(
            "redis_stream_consumers_removed", "Idle empty consumers this worker removed from the group."
        )
        self.retries = self._counter(
            "redis_stream_broker_retries", "Rounds of this stream's reader retried because the broker was unavailable."
        )
        self.paused = self._gauge("redis_stream_paused", "1 while backpressure pauses the stream.")
        self.rate_waits = self._counter(
            "redis_stream_rate_limit_waits", "Times this worker's reader waited for the stream's fleet-wide rate limit."
        )
        self.rate_limited = self._gauge("redis_stream_rate_limited", "1 while the reader waits for the rate limit.")
        self.deduplicated = self._counter(
            "redis_stream_deduplicated",
            "Stream entries this worker passed over because their business key was dispatched already (dedupe).",
        )
        self.state = self._gauge(
            "redis_stream_reader_state", "1 for the reader's state: reading, standing_by or stopped.", extra=("state",)
        )
        self.lag = self._gauge(
            "redis_stream_lag", "Entries not yet dispatched by the group or tracker; absent when not exact."
        )
        self.lag_at_least = self._gauge(
            "redis_stream_lag_at_least", "A lower bound of the lag: equal to redis_stream_lag when that is exact."
        )
        self.lag_seconds = self._gauge(
            "redis_stream_lag_seconds", "Age in seconds of the oldest entry not yet dispatched."
        )
        self.pending = self._gauge("redis_stream_pending", "Entries read by the group but not yet acknowledged.")
        self.dead_length = self._gauge("redis_stream_dead_letter_length", "Entries in the dead-letter stream.")
        self.up = GaugeMetricFamily("redis_stream_redis_up", "1 when the last scrape could read the streams Redis.")

    def _counter(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily

        return CounterMetricFamily(name, doc, labels=[*self.LABELS, *extra])

    def _gauge(self, name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(name, doc, labels=[*self.LABELS, *extra])

    def counters(self, sc: StreamConfig, stats: StreamStats, state: str | None) -> None:
        """The reader's own counts of ``sc``: no Redis call."""
        values = _labels(sc)
        self.dispatched.add_metric(values, stats.dispatched)
        self.dead.add_metric(values, stats.dead_lettered)
        for reason, count in sorted(dict(stats.dead_lettered_by_reason).items()):
            self.by_reason.add_metric([*values, reason], count)
        self.trimmed.add_metric(values, stats.trimmed)
        self.retries.add_metric(values, stats.broker_retries)
        self.paused.add_metric(values, 1 if stats.paused else 0)
        self.rate_waits.add_metric(values, stats.rate_limit_waits)
        self.rate_limited.add_metric(values, 1 if stats.rate_limited else 0)
        self.deduplicated.add_metric(values, stats.deduplicated)
        self.retention_trimmed.add_metric(values, stats.retention_trimmed)
        self.removed.add_metric(values, stats.consumers_removed)
        for name in STATES:
            self.state.add_metric([*values, name], 1 if state == name else 0)

    def status(self, sc: StreamConfig, row: StreamRow) -> None:
        """What Redis said of ``sc`` at this scrape (status.stream_status)."""
        values = _labels(sc)
        lag, least, seconds = row.get("lag"), row.get("lag_at_least"), row.get("lag_seconds")
        if lag is not None:
            self.lag.add_metric(values, lag)
        if least is not None:
            self.lag_at_least.add_metric(values, least)
        if seconds is not None:
            self.lag_seconds.add_metric(values, seconds)
        if position_of(sc).shared:
            self.pending.add_metric(values, row.get("pending", 0))
        if "dead_letter_length" in row:
            self.dead_length.add_metric(values, row["dead_letter_length"])

    def all(self) -> tuple[Metric, ...]:
        return (
            self.dispatched, self.dead, self.by_reason, self.trimmed, self.retention_trimmed, self.removed,
            self.retries, self.paused, self.rate_waits, self.rate_limited, self.deduplicated, self.state, self.lag,
            self.lag_at_least, self.lag_seconds, self.pending, self.dead_length, self.up,
        )  # fmt: skip


class BridgeCollector:
    """Counters from the readers' own stats; lag, pending and dead-letter length read from Redis at scrape time."""

    def __init__(self, service: Readers) -> None:
        self.service = service
        self._client: Client | None = None
        self._available: frozenset[str] = frozenset()  # the server's capabilities, probed once per client

    def describe(self) -> list[Metric]:
        return []  # no Redis calls when the collector is registered

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        states = reader_states(self.service)
        for sc in list(self.service.configs.values()):
            families.counters(sc, self.service.stats[sc.stream], states.get(sc.stream))
        try:
            if self._client is None:
                self._client = connect(self.service.config, socket_timeout=5)
                self._available = probe(self._client)
            for sc in list(self.service.configs.values()):
                families.status(sc, stream_status(self._client, sc, limit=LAG_LIMIT, available=self._available))
            families.up.add_metric([], 1)
        except Exception as exc:  # a scrape must answer even when Redis is down
            families.up.add_metric([], 0)
            logger.debug("redis-stream: metrics scrape could not read Redis: %s", type(exc).__name__)
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        yield from families.all()


class MetricsServer:
    """An HTTP endpoint for Prometheus in the worker's main process."""

    def __init__(self, service: Readers, *, port: int, addr: str) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise StreamConfigError(
                "celery-redis-stream: setting stream_metrics_port needs prometheus_client: "
                "pip install 'celery-redis-stream[prometheus]'"
            ) from exc
        self.port = port
        self.addr = addr
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(BridgeCollector(service))
        prometheus_client.ProcessCollector(registry=self.registry)
        self._server: HTTPServer | None = None

    def start(self) -> None:
        import prometheus_client

        result = prometheus_client.start_http_server(self.port, addr=self.addr, registry=self.registry)
        self._server = result[0] if isinstance(result, tuple) else None
        logger.info("redis-stream: metrics on http://%s:%s/metrics", self.addr, self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

"""Prometheus metrics of one worker's readers (the optional ``prometheus`` extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from celery.utils.log import get_logger

from .exceptions import StreamConfigError
from .status import stream_status

__all__ = ["MetricsServer"]

logger = get_logger(__name__)

# A scrape counts lag by reading at most this many entries per stream (on each
# side of the position) when Redis metadata cannot give it (see lag.lag_of).
LAG_LIMIT = 10_000

#: The values of the ``state`` label of redis_stream_reader_state.
STATES = ("reading", "standing_by", "stopped")


def _labels(sc: Any) -> list[str]:
    # `group` names the position the lag is measured from: the consumer group, or
    # the tracker key in tracker mode, so `by (stream, group)` never merges two.
    return [sc.stream, sc.mode, sc.group if sc.mode == "group" else sc.tracker_key]


def reader_states(service: Any) -> dict[str, str]:
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


class BridgeCollector:
    """Counters from the readers' own stats; lag, pending and dead-letter length read from Redis at scrape time."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._client: Any = None

    def describe(self) -> list[Any]:
        return []  # no Redis calls when the collector is registered

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["stream", "mode", "group"]

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return CounterMetricFamily(name, doc, labels=[*labels, *extra])

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return GaugeMetricFamily(name, doc, labels=[*labels, *extra])

        dispatched = counter("redis_stream_dispatched", "Stream entries this worker dispatched as Celery tasks.")
        dead = counter("redis_stream_dead_lettered", "Stream entries this worker moved to the dead-letter stream.")
        by_reason = counter(
            "redis_stream_dead_lettered_by_reason", "Dead-lettered entries by dlq_reason.", extra=("reason",)
        )
        trimmed = counter(
            "redis_stream_trimmed",
            "Pending entries found deleted from the stream (XDEL, MAXLEN) before this worker dispatched them.",
        )
        retention_trimmed = counter(
            "redis_stream_retention_trimmed", "Stream entries this worker trimmed under retention."
        )
        removed = counter("redis_stream_consumers_removed", "Idle empty consumers this worker removed from the group.")
        retries = counter(
            "redis_stream_broker_retries", "Rounds of this stream's reader retried because the broker was unavailable."
        )
        paused = gauge("redis_stream_paused", "1 while backpressure pauses the stream.")
        state = gauge(
            "redis_stream_reader_state", "1 for the reader's state: reading, standing_by or stopped.", extra=("state",)
        )
        lag = gauge("redis_stream_lag", "Entries not yet dispatched by the group or tracker; absent when not exact.")
        lag_at_least = gauge(
            "redis_stream_lag_at_least", "A lower bound of the lag: equal to redis_stream_lag when that is exact."
        )
        lag_seconds = gauge("redis_stream_lag_seconds", "Age in seconds of the oldest entry not yet dispatched.")
        pending = gauge("redis_stream_pending", "Entries read by the group but not yet acknowledged.")
        dead_length = gauge("redis_stream_dead_letter_length", "Entries in the dead-letter stream.")
        up = GaugeMetricFamily("redis_stream_redis_up", "1 when the last scrape could read the streams Redis.")
        states = reader_states(self.service)
        for sc in list(self.service.configs.values()):
            stats = self.service.stats[sc.stream]
            values = _labels(sc)
            dispatched.add_metric(values, stats.dispatched)
            dead.add_metric(values, stats.dead_lettered)
            for reason, count in sorted(dict(stats.dead_lettered_by_reason).items()):
                by_reason.add_metric([*values, reason], count)
            trimmed.add_metric(values, stats.trimmed)
            retries.add_metric(values, stats.broker_retries)
            paused.add_metric(values, 1 if stats.paused else 0)
            retention_trimmed.add_metric(values, stats.retention_trimmed)
            removed.add_metric(values, stats.consumers_removed)
            for name in STATES:
                state.add_metric([*values, name], 1 if states.get(sc.stream) == name else 0)
        try:
            if self._client is None:
                from .reader import connect

                self._client = connect(self.service.config, socket_timeout=5)
            for sc in list(self.service.configs.values()):
                status = stream_status(self._client, sc, limit=LAG_LIMIT)
                values = _labels(sc)
                if status.get("lag") is not None:
                    lag.add_metric(values, status["lag"])
                if status.get("lag_at_least") is not None:
                    lag_at_least.add_metric(values, status["lag_at_least"])
                if status.get("lag_seconds") is not None:
                    lag_seconds.add_metric(values, status["lag_seconds"])
                if sc.mode == "group":
                    pending.add_metric(values, status.get("pending", 0))
                if "dead_letter_length" in status:
                    dead_length.add_metric(values, status["dead_letter_length"])
            up.add_metric([], 1)
        except Exception as exc:  # a scrape must answer even when Redis is down
            up.add_metric([], 0)
            logger.debug("redis-stream: metrics scrape could not read Redis: %s", type(exc).__name__)
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        yield from (dispatched, dead, by_reason, trimmed, retention_trimmed, removed, retries, paused, state)
        yield from (lag, lag_at_least, lag_seconds, pending, dead_length, up)


class MetricsServer:
    """An HTTP endpoint for Prometheus in the worker's main process."""

    def __init__(self, service: Any, *, port: int, addr: str) -> None:
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
        self._server: Any = None

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

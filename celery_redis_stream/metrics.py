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

# A scrape counts lag by reading at most this many entries per stream when
# Redis does not report it (Redis 6.2, or nil after deletions).
LAG_LIMIT = 10_000


class BridgeCollector:
    """Counters from the readers' own stats; lag, pending and dead-letter length read from Redis at scrape time."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self._client: Any = None

    def describe(self) -> list[Any]:
        return []  # no Redis calls when the collector is registered

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["stream", "mode"]
        dispatched = CounterMetricFamily(
            "redis_stream_dispatched", "Stream entries this worker dispatched as Celery tasks.", labels=labels
        )
        dead = CounterMetricFamily(
            "redis_stream_dead_lettered", "Stream entries this worker moved to the dead-letter stream.", labels=labels
        )
        trimmed = CounterMetricFamily(
            "redis_stream_retention_trimmed", "Stream entries this worker trimmed under retention.", labels=labels
        )
        removed = CounterMetricFamily(
            "redis_stream_consumers_removed", "Idle empty consumers this worker removed from the group.", labels=labels
        )
        paused = GaugeMetricFamily("redis_stream_paused", "1 while backpressure pauses the stream.", labels=labels)
        lag = GaugeMetricFamily(
            "redis_stream_lag", "Entries not yet dispatched by the group or tracker.", labels=labels
        )
        pending = GaugeMetricFamily(
            "redis_stream_pending", "Entries read by the group but not yet acknowledged.", labels=labels
        )
        dead_length = GaugeMetricFamily(
            "redis_stream_dead_letter_length", "Entries in the dead-letter stream.", labels=labels
        )
        up = GaugeMetricFamily("redis_stream_redis_up", "1 when the last scrape could read the streams Redis.")
        for sc in list(self.service.configs.values()):
            stats = self.service.stats[sc.stream]
            values = [sc.stream, sc.mode]
            dispatched.add_metric(values, stats.dispatched)
            dead.add_metric(values, stats.dead_lettered)
            paused.add_metric(values, 1 if stats.paused else 0)
            trimmed.add_metric(values, stats.retention_trimmed)
            removed.add_metric(values, stats.consumers_removed)
        try:
            if self._client is None:
                from .reader import connect

                self._client = connect(self.service.config, socket_timeout=5)
            for sc in list(self.service.configs.values()):
                status = stream_status(self._client, sc, limit=LAG_LIMIT)
                values = [sc.stream, sc.mode]
                if status.get("lag") is not None:
                    lag.add_metric(values, status["lag"])
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
        yield from (dispatched, dead, trimmed, removed, paused, lag, pending, dead_length, up)


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

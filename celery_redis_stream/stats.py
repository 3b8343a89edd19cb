"""StreamStats: what one stream's reader has done, shown by ``celery inspect redis_stream`` and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StreamStats"]


@dataclass
class StreamStats:
    """What one stream's reader has done; shown by ``celery inspect redis_stream``.

    Written by the stream's reader thread only; read from others (inspect,
    metrics), so containers are replaced, never mutated.
    """

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
    guarantee: str | None = None  # "exactly-once" or "at-least-once", for the last batch (publish/exactly_once.py)
    guarantee_reason: str | None = None
    capabilities: list[str] = field(default_factory=list)  # newer stream commands in use (client/capabilities.py)
    rate_limit: str | None = None  # the fleet-wide limit as configured ("20/s"), read/limit.py
    rate_limited: bool = False  # the reader waits for the bucket now
    rate_limit_waits: int = 0
    deduplicated: int = 0  # entries not dispatched: their business key was (batch/dedupe.py)

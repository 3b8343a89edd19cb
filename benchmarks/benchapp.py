"""The Celery app the benchmark runs as real `celery worker` processes; settings come from BENCH_* variables."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

import celery_redis_stream

app = Celery("benchapp", broker=os.environ.get("BENCH_BROKER_URL", "memory://"))
app.conf.update(
    stream_url=os.environ.get("BENCH_STREAM_URL"),
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
)
app.conf.update(json.loads(os.environ.get("BENCH_CONF", "{}")))

_results: redis.Redis | None = None


def results() -> redis.Redis:
    global _results
    if _results is None:
        _results = redis.Redis.from_url(os.environ["BENCH_RESULTS_URL"])
    return _results


@app.task(name="bench.noop")
def noop(*args: Any, **kwargs: Any) -> None:
    """What the bridge dispatches in the throughput runs (nobody consumes it there)."""


def raw_pairs(entry: celery_redis_stream.StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    """The converter of the ``decode: "raw"`` throughput run: the byte pairs as text, as a bytes converter would."""
    return [{name.decode(): value.decode() for name, value in entry.raw_fields}], {}


@app.task(name="bench.latency")
def latency(fields: dict[str, str]) -> None:
    """Records how long after the XADD (the entry's `t` field) this task started."""
    started = time.time()
    results().rpush("latency", repr(started - float(fields["t"])))


@app.task(name="bench.count")
def count(*args: Any, **kwargs: Any) -> None:
    """The worker's own work in the execution-rate runs."""
    results().incr("executed")


celery_redis_stream.install(app)

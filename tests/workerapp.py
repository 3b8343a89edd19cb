"""The Celery app that the end-to-end tests run as real `celery worker` processes.

Settings come from the environment (CRS_*), so each test chooses its own
Redis servers and stream mapping.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Reject

import celery_redis_stream

app = Celery("workerapp", broker=os.environ.get("CRS_BROKER_URL", "memory://"))
app.conf.update(
    stream_url=os.environ.get("CRS_STREAM_URL"),
    worker_hijack_root_logger=True,
    broker_connection_retry_on_startup=True,
    task_acks_late=False,
)
app.conf.update(json.loads(os.environ.get("CRS_CONF", "{}")))

_ledger: redis.Redis | None = None


def ledger() -> redis.Redis:
    global _ledger
    if _ledger is None:
        _ledger = redis.Redis.from_url(os.environ["CRS_LEDGER_URL"])
    return _ledger


def _record(request: Any, args: Any, kwargs: Any) -> None:
    ledger().rpush(
        "executed",
        json.dumps(
            {
                "task_id": request.id,
                "stream": request.redis_stream,
                "stream_id": request.redis_stream_id,
                "args": args,
                "kwargs": kwargs,
                "pid": os.getpid(),
                "hostname": request.hostname,
            }
        ),
    )


@app.task(bind=True, name="tests.record", shared=False)
def record(self: Any, *args: Any, **kwargs: Any) -> None:
    _record(self.request, args, kwargs)


@app.task(bind=True, name="tests.record_correlation", shared=False)
def record_correlation(self: Any, *args: Any, **kwargs: Any) -> None:
    """Records as tests.record does, with the FastStream correlation id the task can read."""
    _record(self.request, args, {**kwargs, "_correlation_id": self.request.get("faststream_correlation_id")})


def hex_pairs(entry: celery_redis_stream.StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    """A converter for ``decode: "raw"``: the entry's byte pairs as hex, to show they arrive untouched."""
    return [[[name.hex(), value.hex()] for name, value in entry.raw_fields]], {"fields_is_none": entry.fields is None}


@app.task(bind=True, name="tests.slow", shared=False)
def slow(self: Any, *args: Any, **kwargs: Any) -> None:
    time.sleep(float(os.environ.get("CRS_SLOW_SECONDS", "0.01")))
    _record(self.request, args, kwargs)


def to_order(entry: celery_redis_stream.StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    """A converter: the order id as an int argument, the rest as kwargs."""
    fields = dict(entry.fields)
    return [int(fields.pop("order_id"))], {**fields, "delivery": entry.delivery_count}


def broken_converter(entry: celery_redis_stream.StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    if entry.fields.get("bad"):
        raise ValueError("bad entry")
    return [entry.fields], {}


def poison_converter(entry: celery_redis_stream.StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    """Ends the process, as a segfault or an OOM kill would, for an entry with a ``poison`` field."""
    if entry.fields.get("poison"):
        read = {"id": entry.id, "delivery": entry.delivery_count, "pid": os.getpid()}
        ledger().rpush("poison_reads", json.dumps(read))
        os._exit(17)
    return [entry.fields], {}


@app.task(bind=True, name="tests.fail", shared=False)
def fail(self: Any, fields: dict[str, str]) -> None:
    _record(self.request, [fields], {})
    raise ValueError(f"boom {fields.get('n')}")


@app.task(bind=True, name="tests.flaky", shared=False, max_retries=2)
def flaky(self: Any, fields: dict[str, str]) -> None:
    """Fails its first ``fail_times`` runs, retrying (at most twice) each time."""
    _record(self.request, [fields], {"retries": self.request.retries})
    if self.request.retries < int(fields.get("fail_times", "0")):
        raise self.retry(exc=RuntimeError(f"flaky {fields.get('n')}"), countdown=0)


@app.task(bind=True, name="tests.die", shared=False)
def die(self: Any, fields: dict[str, str]) -> None:
    """Ends the pool child that runs it, as an OOM kill would."""
    _record(self.request, [fields], {})
    os._exit(9)


@app.task(bind=True, name="tests.reject", shared=False)
def reject(self: Any, fields: dict[str, str]) -> None:
    _record(self.request, [fields], {})
    raise Reject(f"refused {fields.get('n')}", requeue=False)


celery_redis_stream.install(app)

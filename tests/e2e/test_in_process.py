"""The step inside an in-process worker (pytest-celery's classic fixtures and start_worker)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celery_redis_stream
from celery_redis_stream.config import load_config
from celery_redis_stream.service import Service

from ..support import RedisServer, produce_many, server_fixture, wait_for

server = server_fixture(scope="module")


@pytest.fixture
def celery_config(server: RedisServer) -> dict[str, Any]:
    # celery_app (pytest-celery's classic fixture) builds the app from this
    return {
        "broker_url": server.url_db(1),
        "result_backend": server.url_db(3),
        "stream_url": server.url_db(0),
        "stream_start": "0",
        "stream_block_ms": 100,
    }


@pytest.fixture(autouse=True)
def clean(server: RedisServer) -> None:
    for db in (0, 1, 3):
        server.client(db).flushdb()


def test_the_step_runs_in_an_in_process_worker_and_results_are_stored(celery_app: Celery, server: RedisServer) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    @celery_app.task(name="t.handle", bind=True, shared=False)
    def handle(self: Any, fields: dict[str, str]) -> str:
        seen.append((self.request.redis_stream, self.request.redis_stream_id, fields))
        return fields["n"]

    celery_app.conf.stream_tasks = {"orders": "t.handle"}
    celery_redis_stream.install(celery_app)
    celery_redis_stream.install(celery_app)  # idempotent
    assert sum(1 for s in celery_app.steps["worker"] if s is celery_redis_stream.RedisStreamStep) == 1
    ids = produce_many(server.client(), "orders", 5)
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:
        wait_for(lambda: len(seen) == 5, 30, "5 tasks run")
        # the counters move right after the batch is acknowledged, which may be after the tasks ran
        wait_for(lambda: worker.redis_stream.info()["streams"][0]["dispatched"] == 5, 10, "dispatched count")
        info = worker.redis_stream.info()
    assert [s[1] for s in seen] == ids
    assert all(s[0] == "orders" for s in seen)
    (stats,) = info["streams"]
    assert stats["dispatched"] == 5 and stats["last_id"] == ids[-1] and stats["mode"] == "group"
    # the task id is derived from the entry, so the result can be looked up by it
    from celery_redis_stream.publish.dispatch import task_id_for

    sc = load_config(celery_app).streams[0]
    assert celery_app.AsyncResult(task_id_for(sc, ids[0])).get(timeout=10) == "0"


def test_a_service_stops_within_about_one_read_block(celery_app: Celery, server: RedisServer) -> None:
    @celery_app.task(name="t.noop", shared=False)
    def noop(fields: dict[str, str]) -> None: ...

    celery_app.conf.stream_tasks = {"a": "t.noop", "b": {"task": "t.noop", "mode": "tracker"}}
    celery_app.conf.stream_block_ms = 1000
    service = Service(celery_app, load_config(celery_app), consumer="t@h")
    service.start()
    wait_for(lambda: all(s.reading for s in service.stats.values()), 10, "readers started")
    started = time.monotonic()
    service.stop()
    stopped_in = time.monotonic() - started
    assert not service.alive
    assert stopped_in < 5  # generous: catches a reader that ignores the stop event
    service.stop()  # idempotent
    assert server.client().get("stream_tracker:{b}:lease") is None


def test_produce_appends_and_trims(server: RedisServer) -> None:
    client = server.client()
    entry_id = celery_redis_stream.produce(client, "p", {"a": "1", b"b": b"\xff"})
    assert client.xrange("p") == [(entry_id.encode(), {b"a": b"1", b"b": b"\xff"})]
    for i in range(50):
        celery_redis_stream.produce(client, "p", {"i": i}, maxlen=10, approximate=False)
    assert client.xlen("p") == 10
    with pytest.raises(celery_redis_stream.StreamError, match="at least one field"):
        celery_redis_stream.produce(client, "p", {})

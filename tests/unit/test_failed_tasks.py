"""failed_tasks.py: a task failed for good dead-letters its entry, byte for byte; retries, eager runs, others not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery, Task, signals
from celery.exceptions import Reject

from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import load_config
from celery_redis_stream.failed_tasks import connect_receivers, dead_letter_task

from ..support import free_port, make_app
from .conftest import UnitDB

TASKS = {
    "orders": {"task": "shop.handle", "dead_letter_failed_tasks": True},
    "events:*": {"task": "shop.handle", "dead_letter_failed_tasks": True},
    "audit": "shop.handle",
}


@pytest.fixture
def app(unit_db: UnitDB) -> Iterator[Celery]:
    app = make_app("failed", stream_url=unit_db.url, stream_tasks=TASKS)
    connect_receivers(app)
    yield app
    uid = f"celery-redis-stream-failed-{id(app)}"
    signals.task_failure.disconnect(dispatch_uid=uid)
    signals.task_postrun.disconnect(dispatch_uid=uid)


def _fail(task: Task, stream: str, entry_id: str, exception: BaseException, **request: object) -> None:
    task.push_request(id="task-1", redis_stream=stream, redis_stream_id=entry_id, **request)
    try:
        signals.task_failure.send(sender=task, task_id="task-1", exception=exception)
    finally:
        task.pop_request()


def _reject(task: Task, reject: Reject) -> None:
    task.push_request(id="task-2", redis_stream="orders", redis_stream_id="1-0")
    try:
        signals.task_postrun.send(sender=task, task_id="task-2", state="REJECTED", retval=reject)
    finally:
        task.pop_request()


def _letters(client: redis.Redis, dead: str = "orders:dead") -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(dead)]


def test_a_failed_task_dead_letters_its_entry_with_the_task_id_and_a_masked_error(app: Celery, unit_db: UnitDB) -> None:
    unit_db.client.execute_command("XADD", "orders", "1-0", "order_id", "42", "blob", b"\xff\x00")
    _fail(app.tasks["shop.handle"], "orders", "1-0", ValueError("cannot reach redis://:s3cret@db/0"))
    (letter,) = _letters(unit_db.client)
    assert (letter[b"order_id"], letter[b"blob"]) == (b"42", b"\xff\x00")
    meta = (letter[b"dlq_reason"], letter[b"dlq_source_id"], letter[b"dlq_task_id"])
    assert meta == (b"task_failed", b"1-0", b"task-1")
    assert letter[b"dlq_error"] == b"ValueError: cannot reach redis://:**@db/0"


def test_a_stream_a_pattern_maps_dead_letters_to_its_own_dead_letter_stream(app: Celery, unit_db: UnitDB) -> None:
    unit_db.client.xadd("events:eu", {"n": 1}, id="1-0")
    _fail(app.tasks["shop.handle"], "events:eu", "1-0", KeyError("n"))
    assert [f[b"dlq_source_stream"] for f in _letters(unit_db.client, "events:eu:dead")] == [b"events:eu"]


def test_reject_without_requeue_dead_letters_and_with_requeue_does_not(app: Celery, unit_db: UnitDB) -> None:
    unit_db.client.xadd("orders", {"n": 1}, id="1-0")
    task = app.tasks["shop.handle"]
    _fail(task, "orders", "1-0", Reject("bad", requeue=False))  # left to task_postrun: counted once
    _reject(task, Reject("back in the queue", requeue=True))
    _reject(task, Reject("bad input", requeue=False))
    assert [f[b"dlq_error"] for f in _letters(unit_db.client)] == [b"Reject: bad input"]


def test_no_dead_letter_for_eager_runs_unmapped_or_opted_out_streams_or_another_apps_task(
    app: Celery, unit_db: UnitDB
) -> None:
    unit_db.client.xadd("orders", {"n": 1}, id="1-0")
    unit_db.client.xadd("audit", {"n": 1}, id="1-0")
    task = app.tasks["shop.handle"]
    _fail(task, "orders", "1-0", ValueError("x"), is_eager=True)
    _fail(task, "audit", "1-0", ValueError("x"))  # dead_letter_failed_tasks is off for audit
    _fail(task, "payments", "1-0", ValueError("x"))  # not mapped
    other = make_app("other", stream_url=unit_db.url, stream_tasks=TASKS)
    _fail(other.tasks["shop.handle"], "orders", "1-0", ValueError("x"))
    assert unit_db.client.keys("*:dead") == []


def test_a_redis_that_cannot_be_reached_is_logged_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app("down", stream_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0", stream_tasks=TASKS)
    connect_receivers(app)
    try:
        with caplog.at_level("ERROR"):
            _fail(app.tasks["shop.handle"], "orders", "1-0", ValueError("x"))
    finally:
        signals.task_failure.disconnect(dispatch_uid=f"celery-redis-stream-failed-{id(app)}")
        signals.task_postrun.disconnect(dispatch_uid=f"celery-redis-stream-failed-{id(app)}")
    (record,) = [r for r in caplog.records if "could not dead-letter the failed task task-1" in r.getMessage()]
    assert "s3cret" not in record.getMessage() and "stream=orders id=1-0" in record.getMessage()


def test_an_entry_trimmed_before_its_task_failed_is_dead_lettered_without_fields_saying_why(unit_db: UnitDB) -> None:
    config = load_config(make_app(stream_url=unit_db.url, stream_tasks=TASKS), check_registered=False)
    client = connect(config)
    try:
        dead_letter_task(client, config.streams[0], "7-0", "task-3", "ValueError: x")
    finally:
        client.close()
    (letter,) = _letters(unit_db.client)
    assert set(letter) == {b"dlq_source_stream", b"dlq_source_id", b"dlq_reason", b"dlq_error", b"dlq_task_id"}
    assert letter[b"dlq_error"].startswith(b"ValueError: x (the entry is no longer in the stream")

"""Opt-in pytest plugin for integration tests: a private redis-server and an in-process worker with the step.

Enable it with ``pytest_plugins = ["celery_redis_stream.pytest_plugin"]`` in a
``conftest.py`` (or ``-p celery_redis_stream.pytest_plugin``), and define a
``redis_stream_app`` fixture returning your Celery app. Fixtures:

- ``redis_stream_server``: a ``redis-server`` on a free 127.0.0.1 port in a
  temporary directory, stopped afterwards (the test fails, saying why, when
  the binary is missing);
- ``redis_stream_worker``: the app pointed at that server (streams on db 0,
  broker on db 1), started in-process with the step (``start_worker``);
  ``redis_stream_worker.add(stream, fields)`` XADDs an entry and waits until
  its task has run.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

import pytest
import redis
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker
from celery.worker import WorkController

from . import install
from .client.connection import text
from .config import load_config
from .producer import FieldValue, produce
from .publish.dispatch import task_id_for
from .testing.preview import DeadLettered, DeadLetterPreview, stream_config
from .testing.processes import RedisServer, wait_for

__all__ = ["RedisStreamServer", "StreamWorker", "TaskRun"]

T = TypeVar("T")

START_TIMEOUT = 20.0


def _wait(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    return wait_for(predicate, timeout, what, interval=0.02)


class RedisStreamServer(RedisServer):
    """A private ``redis-server`` on a free loopback port, without persistence, started at once, stopped by pid.

    ``FileNotFoundError`` when the binary is missing.
    """

    def __init__(self) -> None:
        super().__init__()
        self.start(START_TIMEOUT)

    def url(self, db: int = 0) -> str:
        return self.url_db(db)

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        return super().client(db, **{"socket_timeout": 10, **kwargs})

    def stop(self, sig: int = signal.SIGTERM, *, remove: bool = True) -> None:
        super().stop(sig, remove=remove)


@dataclasses.dataclass(frozen=True, slots=True)
class TaskRun:
    """An entry's task after it ran in the worker: its state (``SUCCESS``, ``FAILURE``...) and return value."""

    entry_id: str
    task_id: str
    state: str
    result: object


class StreamWorker:
    """An in-process worker reading the app's streams from the private server."""

    def __init__(self, app: Celery, server: RedisStreamServer, controller: WorkController) -> None:
        self.app = app
        self.server = server
        self.controller = controller
        self.client: redis.Redis = server.client(0)
        self._runs: dict[str, TaskRun] = {}
        self._lock = threading.Lock()

    def _task_postrun(
        self, task_id: str | None = None, state: str | None = None, retval: object = None, **_: object
    ) -> None:
        if task_id is not None:
            with self._lock:
                self._runs[task_id] = TaskRun("", task_id, state or "", retval)

    def add(self, stream: str, fields: Mapping[str | bytes, FieldValue], *, timeout: float = 30.0) -> TaskRun:
        """XADD ``fields`` to ``stream`` and wait until the worker has run the entry's task.

        Raises :class:`DeadLettered` when the entry went to the dead-letter
        stream instead, and ``TimeoutError`` after ``timeout`` seconds.
        """
        _, sc = stream_config(self.app, stream)
        entry_id = produce(self.client, stream, fields)
        task_id = task_id_for(sc, entry_id)

        def done() -> TaskRun | None:
            with self._lock:
                run = self._runs.get(task_id)
            if run is not None:
                return dataclasses.replace(run, entry_id=entry_id)
            for _, dead in self.client.xrange(sc.dead_letter) or ():
                fields = dead or {}
                if fields.get(b"dlq_source_id") == entry_id.encode():
                    letter = DeadLetterPreview(text(fields.get(b"dlq_reason")), text(fields.get(b"dlq_error")))
                    raise DeadLettered(stream, entry_id, letter)
            return None

        return _wait(done, timeout, f"the task of entry {entry_id} of stream {stream!r}")


@contextmanager
def _settings(app: Celery, **values: object) -> Iterator[None]:
    # With config_from_object(..., namespace="CELERY") some Celery versions
    # (5.3) read CELERY_BROKER_URL before broker_url: set both spellings.
    conf = app.conf
    namespace = (getattr(app, "namespace", None) or "").upper()
    changes = {**values, **({f"{namespace}_{k.upper()}": v for k, v in values.items()} if namespace else {})}
    saved = {key: conf.get(key) for key in changes}
    conf.update(changes)
    try:
        yield
    finally:
        conf.update(saved)


def _check_private(app: Celery, server: RedisStreamServer) -> None:
    """Never let a test's worker reach a Redis other than its own server."""
    broker = app.conf.broker_url
    streams = load_config(app).url
    if broker != server.url(1) or streams != server.url(0):
        pytest.fail(
            f"redis_stream_worker could not point the app at its private server (broker {broker!r}, "
            f"streams {streams!r}, expected {server.url(1)!r} and {server.url(0)!r}); not starting a worker"
        )


@pytest.fixture
def redis_stream_app() -> Celery:
    """Override this fixture: return the Celery app whose stream mapping the test runs."""
    pytest.fail("define a redis_stream_app fixture that returns your Celery app (celery_redis_stream.pytest_plugin)")


@pytest.fixture
def redis_stream_server() -> Iterator[RedisStreamServer]:
    """A private redis-server for one test."""
    try:
        server = RedisStreamServer()
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_stream_worker(redis_stream_app: Celery, redis_stream_server: RedisStreamServer) -> Iterator[StreamWorker]:
    """``redis_stream_app`` as a started in-process worker on the private server, reading its streams."""
    app = redis_stream_app
    server = redis_stream_server
    install(app)
    app.loader.import_default_modules()  # as `celery worker` does first: autodiscover_tasks, imports
    app.close()  # a broker pool made before the test still points at the old broker
    with _settings(
        app,
        broker_url=server.url(1),
        stream_url=server.url(0),
        stream_start="0",  # a fresh server: nothing produced before the test is old
        stream_block_ms=100,
        broker_connection_retry_on_startup=True,
    ):
        _check_private(app, server)
        # the worker consumes the default queue and every queue a mapped stream sends to
        queues = [app.conf.task_default_queue, *(sc.queue for sc in load_config(app).streams if sc.queue)]
        with start_worker(
            app, pool="solo", perform_ping_check=False, shutdown_timeout=10, queues=sorted(set(queues))
        ) as controller:
            worker = StreamWorker(app, server, controller)
            signals.task_postrun.connect(worker._task_postrun, weak=False)
            try:
                service = _wait(lambda: controller.redis_stream, START_TIMEOUT, "the redis-stream step")
                _wait(
                    lambda: service.stats and all(s.reading for s in service.stats.values()),
                    START_TIMEOUT,
                    "the stream readers",
                )
                yield worker
            finally:
                signals.task_postrun.disconnect(worker._task_postrun)
    app.close()

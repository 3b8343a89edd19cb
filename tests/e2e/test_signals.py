"""celery_redis_stream.signals.reader_ready: sent once a reader is set up, only when someone listens."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celery_redis_stream
from celery_redis_stream.config import load_config
from celery_redis_stream.service import Service
from celery_redis_stream.signals import reader_ready

from ..support import RedisServer, Worker, produce_many, server_fixture, wait_for, worker_env

server = server_fixture(scope="module")


@pytest.fixture(autouse=True)
def clean(server: RedisServer) -> None:
    for db in (0, 1, 2, 3):
        server.client(db).flushdb()


@pytest.fixture
def celery_config(server: RedisServer) -> dict[str, Any]:
    # No stream_start: a new group starts at "$", so only what is produced after it exists is read.
    return {
        "broker_url": server.url_db(1),
        "result_backend": server.url_db(3),
        "stream_url": server.url_db(0),
        "stream_block_ms": 100,
    }


class Receiver:
    """Records each reader_ready it gets; ``check`` runs inside the receiver, in the reader thread."""

    def __init__(self, check: Any = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.checked: list[Any] = []
        self.check = check
        self.got = threading.Event()

    def __call__(self, signal: Any, sender: Any, **kwargs: Any) -> None:
        if self.check is not None:
            try:
                self.checked.append(self.check(kwargs))
            except Exception as exc:  # shown in the test's assertion, not only in the reader's log
                self.checked.append(exc)
        self.calls.append({"sender": sender, **kwargs})
        self.got.set()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    reader_ready.connect(got)
    try:
        yield got
    finally:
        reader_ready.disconnect(got)


def bare_app(server: RedisServer, tasks: dict[str, Any]) -> Celery:
    app = Celery("signals", broker=server.url_db(1), set_as_current=False)
    app.conf.update(stream_url=server.url_db(0), stream_tasks=tasks, stream_block_ms=100, stream_start="0")
    return app


def test_reader_ready_comes_once_the_group_exists_and_what_is_produced_after_it_is_read(
    celery_app: Celery, server: RedisServer, receiver: Receiver
) -> None:
    seen: list[str] = []

    @celery_app.task(name="t.handle", bind=True, shared=False)
    def handle(self: Any, fields: dict[str, str]) -> None:
        seen.append(self.request.redis_stream_id)

    celery_app.conf.stream_tasks = {"orders": "t.handle"}
    celery_redis_stream.install(celery_app)
    receiver.check = lambda kw: [g["name"] for g in server.client().xinfo_groups("orders")]
    with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10) as worker:
        assert receiver.got.wait(30), "no reader_ready within 30 s"
        ids = produce_many(server.client(), "orders", 3)
        wait_for(lambda: len(seen) == 3, 30, "3 tasks run")
        service = worker.redis_stream
    assert seen == ids
    # the group existed when the signal came: with stream_start "$", nothing produced after it is skipped
    assert receiver.checked == [[b"celery"]]
    assert receiver.calls == [{"sender": service, "streams": ("orders",), "mode": "group", "consumer": worker.hostname}]


def test_reader_ready_in_tracker_mode_comes_with_the_lease_held_and_the_position_known(
    server: RedisServer, receiver: Receiver
) -> None:
    app = bare_app(server, {"b": {"task": "t", "registered": False, "mode": "tracker"}})
    config = load_config(app)
    sc = config.streams[0]
    receiver.check = lambda kw: server.client().get(sc.lease_key)
    service = Service(app, config, consumer="t@h")
    service.start()
    try:
        assert receiver.got.wait(30), "no reader_ready within 30 s"
        assert service.stats["b"].reading
    finally:
        service.stop()
    assert receiver.checked == [b"t@h"]
    assert receiver.calls == [{"sender": service, "streams": ("b",), "mode": "tracker", "consumer": "t@h"}]


def test_a_reader_set_up_again_after_redis_lost_its_group_sends_reader_ready_again(
    server: RedisServer, receiver: Receiver
) -> None:
    app = bare_app(server, {"a": {"task": "t", "registered": False}})
    service = Service(app, load_config(app), consumer="t@h")
    service.start()
    try:
        assert receiver.got.wait(30), "no reader_ready within 30 s"
        server.client().delete("a")  # the group goes with the key: the next read fails, the reader sets up again
        wait_for(lambda: len(receiver.calls) == 2, 30, "a second reader_ready")
    finally:
        service.stop()
    assert [c["streams"] for c in receiver.calls] == [("a",), ("a",)]


def test_nothing_is_sent_when_nobody_listens(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not reader_ready.receivers
    sent: list[Any] = []
    monkeypatch.setattr(reader_ready, "send", lambda *a, **kw: sent.append((a, kw)))
    app = bare_app(server, {"a": {"task": "t", "registered": False}, "b": {"task": "t", "registered": False,
                                                                        "mode": "tracker"}})  # fmt: skip
    for stream in ("a", "b"):
        produce_many(server.client(), stream, 2)
    service = Service(app, load_config(app), consumer="t@h")
    service.start()
    try:
        wait_for(lambda: all(s.dispatched == 2 for s in service.stats.values()), 30, "both streams read")
    finally:
        service.stop()
    assert sent == []


def test_a_receiver_that_raises_is_logged_and_the_reader_goes_on(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver broke")

    reader_ready.connect(broken)
    app = bare_app(server, {"a": {"task": "t", "registered": False}})
    produce_many(server.client(), "a", 3)
    service = Service(app, load_config(app), consumer="t@h")
    try:
        with caplog.at_level("ERROR"):
            service.start()
            wait_for(lambda: service.stats["a"].dispatched == 3, 30, "3 entries dispatched")
    finally:
        service.stop()
        reader_ready.disconnect(broken)
    assert service.stats["a"].last_error is None
    assert any("receiver broke" in r.getMessage() for r in caplog.records)


def test_a_real_worker_sends_reader_ready_and_never_imports_rich(redis_server: RedisServer) -> None:
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2), {"events": "tests.record"},
        stream_block_ms=200,
    )  # fmt: skip
    worker = Worker(env, app="tests.readyapp")
    try:
        worker.start(wait="reader_ready streams=events")
    finally:
        worker.stop()
    line = next(x for x in worker.output().splitlines() if "reader_ready streams=events" in x)
    assert "mode=group consumer=w1@" in line
    # `celery worker` loads every celery.commands plugin, so the CLI module is imported: without rich
    assert "rich_modules=0" in line

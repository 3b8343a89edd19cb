"""Dispatcher in-process: a Celery app object publishing to one redis-server (no worker)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_redis_stream.config import StreamConfig, load_config
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.publish.dispatch import (
    Dispatcher,
    message_headers,
    prepare,
    send_options,
    task_id_for,
    task_ids_for,
)

from ...support import RedisServer, free_port, make_app, queued_messages

ORDERS = {"orders": "shop.handle"}


def stream_of(app: Celery, name: str = "orders") -> StreamConfig:
    return next(sc for sc in load_config(app).streams if sc.stream == name)


@pytest.fixture
def broker(unit_redis: RedisServer) -> Iterator[redis.Redis]:
    client = unit_redis.client(4)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def app(unit_redis: RedisServer, broker: redis.Redis) -> Iterator[Celery]:
    app = make_app("dispatch", broker=unit_redis.url_db(4), stream_url=unit_redis.url_db(5), stream_tasks=ORDERS)
    yield app
    app.close()


def raw(entry_id: str, *pairs: bytes, stream: str = "orders") -> RawEntry:
    return RawEntry(stream, entry_id, tuple(pairs))


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "send_task"])
def test_a_batch_becomes_one_message_per_entry_with_the_bridge_headers(
    app: Celery, broker: redis.Redis, fast: bool
) -> None:
    app.conf.stream_fast_path = fast
    sc = stream_of(app)
    dispatcher = Dispatcher(app, max_entry_bytes=1000)
    try:
        dead = dispatcher.send(sc, [raw("1-0", b"order_id", b"42"), raw("2-0", b"order_id", b"43")])
    finally:
        dispatcher.close()
    assert dead == []
    headers = queued_messages(broker)
    assert [h["redis_stream_id"] for h in headers] == ["1-0", "2-0"]
    assert [h["id"] for h in headers] == [task_id_for(sc, "1-0"), task_id_for(sc, "2-0")]
    assert {h["task"] for h in headers} == {"shop.handle"} and {h["redis_stream"] for h in headers} == {"orders"}
    body = json.loads(broker.lindex("celery", -1) or b"{}")
    assert body["properties"]["correlation_id"] == task_id_for(sc, "1-0")


def test_bad_entries_come_back_as_dead_letters_and_the_rest_is_published(app: Celery, broker: redis.Redis) -> None:
    sc = stream_of(app)
    entries = [
        raw("1-0", b"ok", b"1"),
        raw("2-0", b"bad", b"\xff"),
        raw("3-0", b"a", b"1", b"a", b"2"),
        raw("4-0", b"big", b"x" * 2000),
        raw("5-0", b"ok", b"5"),
    ]
    dispatcher = Dispatcher(app, max_entry_bytes=1000)
    try:
        dead = dispatcher.send(sc, entries)
    finally:
        dispatcher.close()
    assert [(d.raw.id, d.reason) for d in dead] == [
        ("2-0", "not_utf8"),
        ("3-0", "duplicate_field"),
        ("4-0", "too_large"),
    ]
    assert [h["redis_stream_id"] for h in queued_messages(broker)] == ["1-0", "5-0"]


def test_a_batch_of_only_bad_entries_never_opens_a_broker_connection() -> None:
    app = make_app("dead", broker=f"redis://127.0.0.1:{free_port()}/0", stream_tasks=ORDERS)
    dispatcher = Dispatcher(app, max_entry_bytes=10)
    dead = dispatcher.send(stream_of(app), [raw("1-0", b"big", b"x" * 100)])
    assert [d.reason for d in dead] == ["too_large"] and dispatcher._producer is None


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "send_task"])
def test_a_dead_broker_port_raises_broker_unavailable_and_nothing_is_dead_lettered(fast: bool) -> None:
    # kombu's own connection retries (about 6 s) would only delay the same error
    app = make_app("nobroker", broker=f"redis://127.0.0.1:{free_port()}/0", stream_tasks=ORDERS,
                   broker_transport_options={"max_retries": 0})  # fmt: skip
    app.conf.stream_fast_path = fast
    dispatcher = Dispatcher(app, max_entry_bytes=1000)
    try:
        with pytest.raises(BrokerUnavailable):
            dispatcher.send(stream_of(app), [raw("1-0", b"ok", b"1")])
        assert dispatcher._producer is None  # dropped: the next batch opens a new connection
    finally:
        dispatcher.close()


def test_task_ids_are_stable_per_position_and_differ_between_groups_and_trackers() -> None:
    app = make_app("ids", stream_tasks={
        "orders": "shop.handle",
        "audit": {"task": "shop.handle", "mode": "tracker"},
    })  # fmt: skip
    config = load_config(app)
    orders = next(sc for sc in config.streams if sc.stream == "orders")
    audit = next(sc for sc in config.streams if sc.stream == "audit")
    assert task_id_for(orders, "1-0") == task_id_for(orders, "1-0")
    assert uuid.UUID(task_id_for(orders, "1-0")).version == 5
    assert task_id_for(orders, "1-0") != task_id_for(orders, "1-1")
    assert task_id_for(orders, "1-0") != task_id_for(audit, "1-0")
    ids = [f"{n}-{s}" for n in range(5) for s in range(3)]
    assert task_ids_for(orders, ids) == [task_id_for(orders, i) for i in ids]
    assert task_ids_for(audit, ids) == [task_id_for(audit, i) for i in ids]


def test_prepare_gives_the_call_and_the_trace_headers_apart() -> None:
    app = make_app("prep", stream_tasks={"orders": {"task": "shop.handle", "call": "kwargs"}})
    sc = stream_of(app)
    entry = raw("1-0", b"order_id", b"42", b"traceparent", b"00-abc-def-01")
    args, kwargs, trace = prepare(sc, entry, max_entry_bytes=1000)
    assert (args, kwargs, trace) == ([], {"order_id": "42"}, {"traceparent": "00-abc-def-01"})


def test_send_options_take_the_headers_apart_and_leave_retries_to_the_reader() -> None:
    app = make_app("opts", stream_tasks={
        "orders": {"task": "shop.handle", "options": {"priority": 3, "headers": {"tenant": "t1"}}},
    })  # fmt: skip
    sc = stream_of(app)
    options, extra = send_options(sc)
    assert options == {"priority": 3, "retry": False} and extra == {"tenant": "t1"}
    headers = message_headers(sc, "1-0", extra, {"traceparent": "tp"})
    assert headers == {"tenant": "t1", "redis_stream": "orders", "redis_stream_id": "1-0", "traceparent": "tp"}

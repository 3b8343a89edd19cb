"""FastPath in-process on the unit Redis as broker: messages as send_task writes them, in order, built per batch."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_redis_stream.config import StreamConfig, load_config
from celery_redis_stream.publish.redis_fast import FastPath
from celery_redis_stream.publish.template import TEMPLATE_MAX_AGE, Call

from ...support import RedisServer, make_app

BROKER_DB = 6


@pytest.fixture
def broker(unit_redis: RedisServer) -> Iterator[redis.Redis]:
    client = unit_redis.client(BROKER_DB)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def app(unit_redis: RedisServer, broker: redis.Redis) -> Iterator[Celery]:
    app = make_app("fast", broker=unit_redis.url_db(BROKER_DB), stream_tasks={"orders": "shop.handle"})
    yield app
    app.close()


def stream(app: Celery) -> StreamConfig:
    return load_config(app).streams[0]


def calls(*ids: str) -> list[Call]:
    return [(i, f"task-{i}", [{"order_id": i}], {}) for i in ids]


def messages(broker: redis.Redis, queue: str = "celery") -> list[dict[str, object]]:
    """The queue's messages in the order a worker takes them (kombu LPUSHes and BRPOPs)."""
    out = []
    for raw in reversed(broker.lrange(queue, 0, -1)):
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        out.append(message)
    return out


def test_a_built_batch_is_pushed_in_entry_order_with_its_task_ids_and_arguments(
    app: Celery, broker: redis.Redis
) -> None:
    fast = FastPath(app)
    with app.producer_or_acquire() as producer:
        built = fast.build(producer, stream(app), calls("1-0", "2-0", "3-0"), extra_headers={}, options={})
        assert built is not None and built.failed == [] and fast.reason is None
        fast.push(producer, built)
    got = messages(broker)
    assert [m["headers"]["id"] for m in got] == ["task-1-0", "task-2-0", "task-3-0"]  # type: ignore[index]
    assert [m["headers"]["redis_stream_id"] for m in got] == ["1-0", "2-0", "3-0"]  # type: ignore[index]
    assert [m["body"][0] for m in got] == [[{"order_id": "1-0"}], [{"order_id": "2-0"}], [{"order_id": "3-0"}]]  # type: ignore[index]
    assert {m["headers"]["task"] for m in got} == {"shop.handle"}  # type: ignore[index]


def test_the_message_is_the_one_send_task_writes_but_for_the_delivery_tag(app: Celery, broker: redis.Redis) -> None:
    fast = FastPath(app)
    sc = stream(app)
    with app.producer_or_acquire() as producer:
        built = fast.build(producer, sc, calls("7-0"), extra_headers={}, options={})
        assert built is not None
        fast.push(producer, built)
    app.send_task(
        "shop.handle",
        args=[{"order_id": "7-0"}],
        kwargs={},
        task_id="task-7-0",
        headers={"redis_stream": "orders", "redis_stream_id": "7-0"},
    )
    ours, celerys = messages(broker)
    for message in (ours, celerys):
        message["properties"].pop("delivery_tag")  # type: ignore[attr-defined]
    assert ours == celerys


def test_an_entry_that_cannot_be_encoded_fails_alone(app: Celery, broker: redis.Redis) -> None:
    fast = FastPath(app)
    bad: Call = ("2-0", "task-2-0", [{"blob": object()}], {})
    with app.producer_or_acquire() as producer:
        built = fast.build(producer, stream(app), [*calls("1-0"), bad, *calls("3-0")], extra_headers={}, options={})
        assert built is not None
        fast.push(producer, built)
    assert [entry_id for entry_id, _ in built.failed] == ["2-0"]
    assert [m["headers"]["redis_stream_id"] for m in messages(broker)] == ["1-0", "3-0"]  # type: ignore[index]


def test_a_template_is_reused_briefly_but_never_across_a_change_of_options(app: Celery) -> None:
    fast = FastPath(app)
    sc = stream(app)
    with app.producer_or_acquire() as producer:
        first = fast._recent_template(producer, sc, {}, {})
        assert fast._recent_template(producer, sc, {}, {}) is first
        assert fast._recent_template(producer, sc, {}, {"priority": 5}) is not first
        with_expiry = fast._recent_template(producer, sc, {}, {"expires": 60})
        assert fast._recent_template(producer, sc, {}, {"expires": 60}) is not with_expiry  # a time: never kept
    assert TEMPLATE_MAX_AGE <= 1.0


def test_a_broker_that_is_not_kombus_redis_transport_takes_the_standard_path() -> None:
    app = make_app("fast-memory", broker="memory://", stream_tasks={"orders": "shop.handle"})
    fast = FastPath(app)
    with app.producer_or_acquire() as producer:
        assert fast.build(producer, stream(app), calls("1-0"), extra_headers={}, options={}) is None
    assert "not kombu's Redis transport" in str(fast.reason)


def test_a_priority_goes_to_kombus_priority_list(app: Celery, broker: redis.Redis) -> None:
    fast = FastPath(app)
    with app.producer_or_acquire() as producer:
        built = fast.build(producer, stream(app), calls("1-0"), extra_headers={}, options={"priority": 9})
        assert built is not None
        fast.push(producer, built)
    app.send_task("shop.handle", args=[{}], priority=9)
    lists = sorted(k for k in broker.keys("*") if broker.type(k) == b"list")
    assert len(lists) == 1 and broker.llen(lists[0]) == 2, lists  # the same list send_task chose

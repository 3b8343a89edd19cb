"""The RabbitMQ fast path in-process: each message is the one send_task publishes on the same channel.

A stand-in py-amqp channel keeps what is published (kombu's own ``prepare_message`` builds send_task's
messages on it), so the two paths are compared byte for byte without a broker;
tests/e2e/test_amqp_fastpath.py compares what they leave in a real RabbitMQ queue.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from amqp import Message
from celery import Celery, signals
from kombu import Connection, Producer
from kombu.transport.pyamqp import Channel as PyAmqpChannel

from celery_redis_stream.config import StreamConfig, load_config
from celery_redis_stream.publish.amqp_fast import AmqpFastPath
from celery_redis_stream.publish.template import Call

from ...support import make_app

URL = "amqp://guest:guest@127.0.0.1:9//"  # never connected: the channel below stands in for it


class Client:
    frame_max = 131072

    def __init__(self) -> None:
        self.client = Connection(URL)

    def __bool__(self) -> bool:
        return True


class Channel:
    """Keeps every basic_publish; declares are accepted and counted."""

    channel_id = 1
    prepare_message = PyAmqpChannel.prepare_message

    def __init__(self) -> None:
        self.connection = Client()
        self.published: list[tuple[Message, str, str, bool]] = []
        self.declared = 0

    def basic_publish(
        self, message: Message, exchange: str = "", routing_key: str = "", mandatory: bool = False, **kwargs: object
    ) -> None:
        self.published.append((message, exchange, routing_key, mandatory))

    def exchange_declare(self, *args: object, **kwargs: object) -> None:
        self.declared += 1

    def queue_declare(self, *args: object, **kwargs: object) -> None:
        self.declared += 1

    def queue_bind(self, *args: object, **kwargs: object) -> None:
        return None

    def prepare_queue_arguments(self, arguments: dict[str, object] | None, **kwargs: object) -> dict[str, object]:
        return arguments or {}


@pytest.fixture
def app() -> Iterator[Celery]:
    app = make_app("amqp-fast", broker=URL, stream_tasks={"orders": "shop.handle"})
    now = app.now()
    app.now = lambda: now  # type: ignore[method-assign]  # `expires` is computed from it at each send
    yield app
    app.close()


def stream(app: Celery) -> StreamConfig:
    return load_config(app).streams[0]


CALLS: list[Call] = [
    ("1-0", "2b1f6a56-0000-5000-8000-000000000001", [{"order_id": "1", "note": "é\n"}], {}),
    ("2-0", "2b1f6a56-0000-5000-8000-000000000002", [{"order_id": "2"}], {}),
    ("3-0", "2b1f6a56-0000-5000-8000-000000000003", [], {"order_id": "3", "n": "x" * 500}),
]


def wire(message: Message) -> tuple[bytes, bytes]:
    """What py-amqp writes of a message: its encoded properties and its body (a str body in its content encoding)."""
    body = message.body
    if isinstance(body, str):
        body = body.encode(message.properties.get("content_encoding") or "utf-8")
    return message._serialize_properties(), body


@pytest.mark.parametrize("options", [{}, {"priority": 7, "expires": 3600}, {"time_limit": 30}], ids=str)
def test_every_message_is_the_one_send_task_publishes(app: Celery, options: dict[str, object]) -> None:
    channel = Channel()
    producer = Producer(channel, auto_declare=False)
    fast = AmqpFastPath(app)
    assert fast.publish(producer, stream(app), CALLS, queue=None, extra_headers={}, options=options) == []
    assert fast.reason is None
    ours = list(channel.published)
    channel.published.clear()
    for entry_id, task_id, args, kwargs in CALLS:
        app.send_task(
            "shop.handle", args=args, kwargs=kwargs, task_id=task_id, producer=producer,
            headers={"redis_stream": "orders", "redis_stream_id": entry_id}, **options,
        )  # fmt: skip
    celerys = channel.published
    assert len(ours) == len(celerys) == 3
    for (mine, *route), (theirs, *their_route) in zip(ours, celerys, strict=True):
        assert route[:2] == their_route[:2] and route[2] is True  # exchange, routing key; always mandatory
        assert wire(mine) == wire(theirs)


def test_an_entry_that_cannot_be_encoded_fails_alone(app: Celery) -> None:
    channel = Channel()
    producer = Producer(channel, auto_declare=False)
    bad: Call = ("2-0", "t2", [{"blob": object()}], {})
    failed = AmqpFastPath(app).publish(
        producer, stream(app), [CALLS[0], bad, CALLS[2]], queue=None, extra_headers={}, options={}
    )
    assert [entry_id for entry_id, _ in failed or []] == ["2-0"]
    published = [m.properties["application_headers"]["redis_stream_id"] for m, *_ in channel.published]
    assert published == ["1-0", "3-0"]


def test_a_publish_signal_receiver_sends_the_batch_through_send_task(app: Celery) -> None:
    def receiver(**kwargs: object) -> None:
        return None

    signals.after_task_publish.connect(receiver, weak=False)
    try:
        channel = Channel()
        fast = AmqpFastPath(app)
        result = fast.publish(
            Producer(channel, auto_declare=False), stream(app), CALLS, queue=None, extra_headers={}, options={}
        )
    finally:
        signals.after_task_publish.disconnect(receiver)
    assert result is None and channel.published == []
    assert "after_task_publish" in str(fast.reason)


def test_a_serializer_other_than_json_sends_the_batch_through_send_task(app: Celery) -> None:
    app.conf.task_serializer = "pickle"
    app.conf.accept_content = ["json", "pickle"]
    fast = AmqpFastPath(app)
    channel = Channel()
    result = fast.publish(
        Producer(channel, auto_declare=False), stream(app), CALLS, queue=None, extra_headers={}, options={}
    )
    assert result is None and "serializer" in str(fast.reason)

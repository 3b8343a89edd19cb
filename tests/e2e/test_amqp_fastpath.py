"""The RabbitMQ fast path puts in the queue what send_task puts there, and settles like it.

Each test sends the same entries through the bridge's dispatcher twice, with
``stream_fast_path`` on and off, to queues of its own on the machine's
RabbitMQ, reads the messages back (``basic_get``) and compares them: body
bytes, properties, headers in order, exchange and routing key. Queues and
exchanges are deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from amqp import Message
from celery import Celery, signals
from kombu import Connection

from celery_redis_stream.config import StreamConfig, load_config
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.publish import amqp_frames as amqpframes
from celery_redis_stream.publish.amqp_confirms import Confirms
from celery_redis_stream.publish.dispatch import Dispatcher, task_id_for

from .conftest import AMQP_URL

pytestmark = pytest.mark.rabbitmq

TIME_HEADERS = {"expires", "eta"}  # computed from "now" at each send: compared to the minute
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ENTRIES = [
    RawEntry("orders", "1700000000000-7", (b"id", b"42", b"note", 'it\'s "é"\n\\x'.encode(), b"empty", b"")),
    RawEntry("orders", "1700000000000-8", (b"id", b"43", b"traceparent", TRACEPARENT.encode())),
    RawEntry("orders", "1700000000001-0", (b"id", b"44", b"list", b"[1, 2]")),
    RawEntry("orders", "1700000000002-0", ()),
]


def record(*args: Any, **kwargs: Any) -> None:
    """The task the in-process apps map their streams to; never run here."""


def to_pair(entry: Any) -> tuple[list[Any], dict[str, Any]]:
    return [entry.id, len(entry.fields)], {"fields": entry.fields, "n": 1.5, "flag": True}


def unserializable(entry: Any) -> tuple[list[Any], dict[str, Any]]:
    return ([object()] if "bad" in entry.fields else [entry.fields]), {}


class Names:
    """Unique queue and exchange names for one test; everything declared under them is deleted at the end."""

    def __init__(self) -> None:
        self.prefix = f"crs-fast-{uuid.uuid4().hex[:8]}"
        self.used: set[str] = set()

    def __call__(self, suffix: str) -> str:
        name = f"{self.prefix}-{suffix}"
        self.used.add(name)
        return name


@pytest.fixture
def names(amqp: Connection) -> Iterator[Names]:
    names = Names()
    try:
        yield names
    finally:
        channel = amqp.channel()
        for name in sorted(names.used):
            for delete in ("queue_delete", "exchange_delete"):
                try:
                    getattr(channel, delete)(name)
                except amqp.channel_errors:
                    channel = amqp.channel()
        channel.close()


@pytest.fixture(autouse=True)
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each batch's encoded properties were spliced (True) or left to py-amqp (False)."""
    built: list[bool] = []
    build = amqpframes.build

    def recorded(*args: Any, **kwargs: Any) -> amqpframes.Header | None:
        header = build(*args, **kwargs)
        built.append(header is not None)
        return header

    monkeypatch.setattr(amqpframes, "build", recorded)
    return built


def make_app(names: Names, spec: dict[str, Any], **conf: Any) -> Celery:
    app = Celery("amqp-fastpath", broker=AMQP_URL, set_as_current=False)
    app.task(name="tests.record", shared=False)(record)
    app.conf.update(
        stream_url="redis://127.0.0.1:1/0",  # never connected to: the dispatcher alone is tested
        stream_tasks={"orders": spec},
        task_default_queue=names("default"),
        broker_transport_options={"confirm_publish": True},
        **conf,
    )
    return app


def take_all(amqp: Connection, queue: str) -> list[Message]:
    out = []
    channel = amqp.channel()
    try:
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            out.append(message)
    finally:
        channel.close()
    return out


def send_both_ways(
    app: Celery,
    amqp: Connection,
    sc: StreamConfig,
    entries: list[RawEntry],
    queue: str,
) -> tuple[list[Message], list[Message]]:
    """The messages ``entries`` become with the fast path, and with send_task (each path its own dispatcher)."""
    out = []
    for fast in (True, False):
        dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
        try:
            assert dispatcher.send(dataclasses.replace(sc, fast_path=fast), entries) == []
            assert dispatcher.amqp_fast_path.reason is None
        finally:
            dispatcher.close()
        out.append(take_all(amqp, queue))
    return out[0], out[1]


def assert_same(fast: Message, std: Message) -> None:
    assert fast.body == std.body  # the bytes
    assert fast.delivery_info["exchange"] == std.delivery_info["exchange"]
    assert fast.delivery_info["routing_key"] == std.delivery_info["routing_key"]
    fast_props, std_props = dict(fast.properties), dict(std.properties)
    fast_headers, std_headers = fast_props.pop("application_headers"), std_props.pop("application_headers")
    assert fast_props == std_props
    assert list(fast_headers) == list(std_headers)  # the same order on the wire
    for name in std_headers:
        if name in TIME_HEADERS and std_headers[name] is not None:
            assert fast_headers[name][:16] == std_headers[name][:16], name  # same minute
        else:
            assert fast_headers[name] == std_headers[name], name
            assert type(fast_headers[name]) is type(std_headers[name]), name


SPECS = {
    "fields": {"task": "tests.record", "queue": "q"},
    "kwargs": {"task": "tests.record", "call": "kwargs", "queue": "q"},
    "entry-priority-headers": {
        "task": "tests.record",
        "call": "entry",
        "queue": "q",
        "options": {"priority": 7, "headers": {"tenant": "acme", "n": 3}},
    },
    "expires-timelimit": {"task": "tests.record", "queue": "q", "options": {"expires": 60, "time_limit": 30}},
    "converter-tracker": {
        "task": "tests.record",
        "converter": "tests.e2e.test_amqp_fastpath:to_pair",
        "mode": "tracker",
        "queue": "q",
    },
    "unregistered-default-queue": {"task": "other.unregistered", "registered": False},
    "argsrepr-option": {"task": "tests.record", "queue": "q", "options": {"argsrepr": "(hidden)"}},
}


@pytest.mark.parametrize("name", list(SPECS))
def test_fast_path_messages_equal_send_task_messages(
    amqp: Connection,
    names: Names,
    name: str,
    spliced: list[bool],
) -> None:
    spec = dict(SPECS[name])
    if "queue" in spec:
        spec["queue"] = names("q")
    app = make_app(names, spec)
    sc = load_config(app).streams[0]
    queue = sc.queue or names("default")
    fast, std = send_both_ways(app, amqp, sc, ENTRIES, queue)
    assert len(fast) == len(std) == len(ENTRIES)
    assert spliced == [True]  # the batch's properties were spliced, not encoded whole
    for f, s in zip(fast, std, strict=True):
        assert_same(f, s)
    headers = [m.properties["application_headers"] for m in fast]
    assert [h["redis_stream_id"] for h in headers] == [e.id for e in ENTRIES]
    assert [h["id"] for h in headers] == [task_id_for(sc, e.id) for e in ENTRIES]
    assert [m.properties["correlation_id"] for m in fast] == [task_id_for(sc, e.id) for e in ENTRIES]
    assert headers[1]["traceparent"] == TRACEPARENT  # stream_trace_fields: a header, not an argument
    assert "traceparent" not in headers[0]
    if name == "entry-priority-headers":
        assert fast[0].properties["priority"] == 7 and headers[0]["tenant"] == "acme"
    if name == "argsrepr-option":
        assert {h["argsrepr"] for h in headers} == {"(hidden)"}


def test_prebuilt_properties_are_py_amqps_bytes(
    amqp: Connection,
    names: Names,
    spliced: list[bool],
) -> None:
    """Entry ids, reprs, header values of other lengths, non-ASCII text, a body of several frames: all exact."""
    app = make_app(names, {"task": "tests.record", "queue": names("q"), "options": {"headers": {"t": "ü" * 300}}})
    sc = load_config(app).streams[0]
    entries = [RawEntry("orders", f"{10**i}-{i}", (b"k" * i, "é€😀".encode() * i)) for i in range(8)]
    entries.insert(2, RawEntry("orders", "5-5", (b"big", b"x" * 300_000)))  # a body over frame_max: several frames
    fast, std = send_both_ways(app, amqp, sc, entries, sc.queue or "")
    assert spliced == [True]
    for f, s in zip(fast, std, strict=True):
        assert_same(f, s)
    headers = {"id": "x", "redis_stream_id": "y", "argsrepr": "a", "kwargsrepr": "k", "other": 1}
    kinds = {("headers", "id"): amqpframes.TASK_ID, ("headers", "redis_stream_id"): amqpframes.ENTRY_ID}
    kinds |= {("headers", "argsrepr"): amqpframes.ARGSREPR, ("headers", "kwargsrepr"): amqpframes.KWARGSREPR}
    kinds[("properties", "correlation_id")] = amqpframes.TASK_ID
    properties = {"priority": 0, "delivery_mode": 2, "correlation_id": "x", "content_type": "application/json"}
    header = amqpframes.build(headers, properties, kinds, ("x", "y", "a", "k"))
    assert header is not None
    values = ("t" * 36, "1-" + "9" * 200, "é" * 1000, "{}")
    whole = Message(
        b"",
        application_headers={
            **headers,
            "id": values[0],
            "redis_stream_id": values[1],
            "argsrepr": values[2],
            "kwargsrepr": values[3],
        },
        **{**properties, "correlation_id": values[0]},
    )
    assert header.fill(*values) == whole._serialize_properties()


def test_fast_path_steps_aside_for_a_publish_signal_receiver(amqp: Connection, names: Names) -> None:
    app = make_app(names, {"task": "tests.record", "queue": names("q")})
    sc = load_config(app).streams[0]
    seen: list[str] = []

    def receiver(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        seen.append(headers["redis_stream_id"])

    signals.before_task_publish.connect(receiver, weak=False)
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    try:
        assert dispatcher.send(sc, ENTRIES[:2]) == []
        assert dispatcher.amqp_fast_path.reason == "a before_task_publish receiver is connected"
    finally:
        dispatcher.close()
        signals.before_task_publish.disconnect(receiver)
    assert seen == [e.id for e in ENTRIES[:2]]
    assert len(take_all(amqp, sc.queue or "")) == 2


def test_stream_fast_path_off_always_publishes_through_send_task(
    amqp: Connection,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_app(names, {"task": "tests.record", "queue": names("q")}, stream_fast_path=False)
    sc = load_config(app).streams[0]
    assert not sc.fast_path
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    monkeypatch.setattr(dispatcher.amqp_fast_path, "publish", lambda *a, **k: pytest.fail("fast path used"))
    try:
        assert dispatcher.send(sc, ENTRIES) == []
    finally:
        dispatcher.close()
    assert len(take_all(amqp, sc.queue or "")) == len(ENTRIES)


def test_an_entry_whose_arguments_do_not_serialize_is_dead_lettered_as_by_send_task(
    amqp: Connection,
    names: Names,
) -> None:
    converter = "tests.e2e.test_amqp_fastpath:unserializable"
    app = make_app(names, {"task": "tests.record", "queue": names("q"), "converter": converter})
    sc = load_config(app).streams[0]
    entries = [RawEntry("orders", "1-1", (b"ok", b"1")), RawEntry("orders", "1-2", (b"bad", b"1"))]
    dead = []
    for fast in (True, False):
        dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
        try:
            dead.append(
                [
                    (d.raw.id, d.reason, d.error)
                    for d in dispatcher.send(dataclasses.replace(sc, fast_path=fast), entries)
                ]
            )
        finally:
            dispatcher.close()
    assert dead[0] == dead[1] and [d[:2] for d in dead[0]] == [("1-2", "publish_error")]
    assert [m.properties["application_headers"]["redis_stream_id"] for m in take_all(amqp, sc.queue or "")] == [
        "1-1",
        "1-1",
    ]


def test_returned_messages_are_not_dispatched(amqp: Connection, names: Names) -> None:
    """No queue bound to the route: RabbitMQ returns the mandatory messages; the batch is retried, not lost."""
    exchange = names("x")
    with amqp.channel() as channel:
        channel.exchange_declare(exchange, "direct", durable=False, auto_delete=False)
    options = {"exchange": exchange, "routing_key": "nowhere"}
    app = make_app(names, {"task": "tests.record", "options": options})
    sc = load_config(app).streams[0]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    try:
        with pytest.raises(BrokerUnavailable, match=r"returned 4 of 4 messages as unroutable.*NO_ROUTE"):
            dispatcher.send(sc, ENTRIES)
        assert dispatcher.amqp_fast_path.reason is None  # the fast path sent them
        assert dispatcher._confirmed == set()  # nothing counts as in RabbitMQ's hands
    finally:
        dispatcher.close()


def test_nacked_messages_are_not_dispatched_and_the_retry_sends_only_those(
    amqp: Connection,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = names("full")
    arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}  # RabbitMQ nacks what the queue cannot hold
    app = make_app(names, {"task": "tests.record", "queue": queue}, task_queues={queue: {"queue_arguments": arguments}})
    sc = load_config(app).streams[0]
    sent: list[str] = []
    write = Confirms.write

    def counted(self: Confirms, frames: Any, keys: Any, timeout: Any = None) -> None:
        sent.extend(keys)
        write(self, frames, keys, timeout)

    monkeypatch.setattr(Confirms, "write", counted)
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    try:
        with pytest.raises(BrokerUnavailable, match="nacked 3 of 4"):
            dispatcher.send(sc, ENTRIES)
        assert dispatcher.amqp_fast_path.reason is None  # the fast path sent them
        assert dispatcher._confirmed == {task_id_for(sc, ENTRIES[0].id)}
        assert [stream_id(m) for m in take_all(amqp, queue)] == [ENTRIES[0].id]
        assert sent == [e.id for e in ENTRIES]
        sent.clear()
        with pytest.raises(BrokerUnavailable, match="nacked 2 of 3"):
            dispatcher.send(sc, ENTRIES)  # the retry: what RabbitMQ holds is not sent again
        assert sent == [e.id for e in ENTRIES[1:]]
        assert [stream_id(m) for m in take_all(amqp, queue)] == [ENTRIES[1].id]
    finally:
        dispatcher.close()


def stream_id(message: Message) -> str:
    return str(message.properties["application_headers"]["redis_stream_id"])


@pytest.mark.parametrize("unchecked", ["properties", "frames"])
def test_what_cannot_be_checked_is_left_to_py_amqp_and_stays_the_same(
    amqp: Connection,
    names: Names,
    monkeypatch: pytest.MonkeyPatch,
    unchecked: str,
) -> None:
    """A spliced header or frames that disagree with py-amqp's: each message is encoded, or published, by py-amqp."""
    if unchecked == "properties":
        monkeypatch.setattr(amqpframes, "build", lambda *args, **kwargs: None)
    else:
        monkeypatch.setattr(amqpframes, "publisher", lambda *args, **kwargs: None)
    app = make_app(names, {"task": "tests.record", "queue": names("q")})
    sc = load_config(app).streams[0]
    fast, std = send_both_ways(app, amqp, sc, ENTRIES, sc.queue or "")
    assert len(fast) == len(ENTRIES)
    for f, s in zip(fast, std, strict=True):
        assert_same(f, s)

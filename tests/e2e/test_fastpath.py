"""The Redis-broker fast path writes the messages send_task writes, and a real worker runs them the same."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from celery import Celery, signals
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_redis_stream.config import StreamConfig, load_config
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.publish.dispatch import Dispatcher, task_id_for
from celery_redis_stream.publish.template import argument_repr

from ..support import RedisServer, Worker, executed, produce_many, server_fixture, wait_for, worker_env

# Differ by design between two sends of one entry: kombu's per-message tag,
# and times computed from "now" (checked separately to be close).
UNIQUE_PROPERTIES = {"delivery_tag"}
TIME_HEADERS = {"expires", "eta"}


def decoded(raw: bytes) -> dict[str, Any]:
    message = json.loads(raw)
    assert message["properties"]["body_encoding"] == "base64"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return dict(message)


def make_app(server: RedisServer, streams: dict[str, Any], **conf: Any) -> Celery:
    app = Celery("fastpath", broker=server.url_db(1), set_as_current=False)
    app.task(name="tests.record", shared=False)(record)
    app.conf.update(stream_url=server.url, stream_tasks=streams, stream_fast_path=True, **conf)
    return app


def record(*args: Any, **kwargs: Any) -> None:
    """The task the in-process apps map their streams to; never run here."""


def only_message(server: RedisServer) -> tuple[bytes, dict[str, Any]]:
    """The one task message in the broker db, and the list it is in; the list is emptied."""
    client = server.client(1)
    lists = [k for k in client.keys("*") if client.type(k) == b"list"]
    assert len(lists) == 1, lists
    messages = client.lrange(lists[0], 0, -1)
    assert len(messages) == 1
    client.delete(lists[0])
    return lists[0], decoded(messages[0])


def send_both_ways(app: Celery, server: RedisServer, sc: StreamConfig, raw: RawEntry) -> list[Any]:
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    try:
        out = []
        for fast in (True, False):
            assert dispatcher.send(dataclasses.replace(sc, fast_path=fast), [raw]) == []
            out.append(only_message(server))
        return out
    finally:
        dispatcher.close()


def to_pair(entry: Any) -> tuple[list[Any], dict[str, Any]]:
    return [entry.id, len(entry.fields)], {"fields": entry.fields, "n": 1.5, "flag": True}


server = server_fixture(scope="module")


ENTRY = RawEntry("orders", "1700000000000-7", (b"id", b"42", b"note", 'it\'s "é"\n\\x'.encode(), b"empty", b""))


@pytest.mark.parametrize(
    "spec",
    [
        {"task": "tests.record"},
        {"task": "tests.record", "call": "kwargs", "queue": "orders-q"},
        {"task": "tests.record", "call": "entry", "options": {"priority": 7, "headers": {"tenant": "acme"}}},
        {"task": "tests.record", "options": {"expires": 60, "priority": 2, "time_limit": 30}},
        {"task": "tests.record", "converter": "tests.e2e.test_fastpath:to_pair", "mode": "tracker"},
        {"task": "other.unregistered", "registered": False, "queue": "elsewhere"},
    ],
    ids=["fields", "kwargs-queue", "entry-priority-headers", "expires-timelimit", "converter-tracker", "unregistered"],
)
def test_fast_path_message_equals_send_task_message_field_by_field(server: RedisServer, spec: dict[str, Any]) -> None:
    app = make_app(server, {"orders": spec})
    sc = load_config(app).streams[0]
    (fast_key, fast), (std_key, std) = send_both_ways(app, server, sc, ENTRY)

    assert fast_key == std_key  # same list, including kombu's priority sub-queue name
    assert fast["properties"].keys() == std["properties"].keys()
    for name in set(std["properties"]) - UNIQUE_PROPERTIES:
        assert fast["properties"][name] == std["properties"][name], name
    assert fast["properties"]["delivery_tag"] != std["properties"]["delivery_tag"]
    assert fast["headers"].keys() == std["headers"].keys()
    for name in set(std["headers"]) - TIME_HEADERS:
        assert fast["headers"][name] == std["headers"][name], name
    for name in TIME_HEADERS:
        assert (fast["headers"][name] is None) == (std["headers"][name] is None), name
        if std["headers"][name] is not None:
            assert fast["headers"][name][:16] == std["headers"][name][:16]  # same minute
    assert {k: v for k, v in fast.items() if k not in ("headers", "properties")} == {
        k: v for k, v in std.items() if k not in ("headers", "properties")
    }
    # and it is the deterministic task id, not one made up by the fast path
    assert fast["headers"]["id"] == task_id_for(sc, ENTRY.id)
    assert fast["headers"]["redis_stream_id"] == ENTRY.id


def test_fast_path_defers_to_send_task_when_a_publish_signal_receiver_is_connected(server: RedisServer) -> None:
    app = make_app(server, {"orders": "tests.record"})
    sc = load_config(app).streams[0]
    seen: list[str] = []

    def receiver(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
        seen.append(headers["redis_stream_id"])

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
        assert dispatcher.send(sc, [ENTRY]) == []
        dispatcher.close()
    finally:
        signals.before_task_publish.disconnect(receiver)
    assert seen == [ENTRY.id]
    _, message = only_message(server)
    assert message["headers"]["redis_stream_id"] == ENTRY.id


def test_fast_path_defers_to_send_task_for_a_non_json_serializer(server: RedisServer) -> None:
    app = make_app(server, {"orders": "tests.record"}, task_serializer="pickle", accept_content=["json", "pickle"])
    sc = load_config(app).streams[0]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    assert dispatcher.send(sc, [ENTRY]) == []
    dispatcher.close()
    raw = server.client(1).lrange("celery", 0, -1)
    assert len(raw) == 1
    server.client(1).delete("celery")
    assert json.loads(raw[0])["content-type"] == "application/x-python-serialize"


def test_fast_path_dead_letters_an_entry_whose_arguments_do_not_serialize(server: RedisServer) -> None:
    app = make_app(server, {"orders": {"task": "tests.record", "converter": "tests.e2e.test_fastpath:unserializable"}})
    sc = load_config(app).streams[0]
    good = RawEntry("orders", "1-1", (b"ok", b"1"))
    bad = RawEntry("orders", "1-2", (b"bad", b"1"))
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    dead = dispatcher.send(sc, [good, bad])
    dispatcher.close()
    assert [(d.raw.id, d.reason) for d in dead] == [("1-2", "publish_error")]
    _, message = only_message(server)
    assert message["headers"]["redis_stream_id"] == "1-1"


def unserializable(entry: Any) -> tuple[list[Any], dict[str, Any]]:
    return ([object()] if "bad" in entry.fields else [entry.fields]), {}


text = st.text(st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.dictionaries(text, text, max_size=6),
        st.lists(st.one_of(text, st.dictionaries(text, text, max_size=4)), max_size=4),
    )
)
def test_argument_repr_is_celery_saferepr(value: Any) -> None:
    assert argument_repr(value, 1024, 3) == saferepr(value, 1024, maxlevels=3)
    assert argument_repr(value, 30, 3) == saferepr(value, 30, maxlevels=3)


def test_worker_executes_fast_path_messages_like_send_task_messages(
    redis_server: RedisServer, workers: list[Any]
) -> None:
    tasks = {
        "f": {"task": "tests.record"},
        "k": {"task": "tests.record", "call": "kwargs"},
        "e": {"task": "tests.record", "call": "entry", "options": {"priority": 3}},
    }
    streams = redis_server.client(0)
    ledger = redis_server.client(2)
    ids = {name: produce_many(streams, name, 3, note="it's é") for name in tasks}
    for fast, name in ((True, "fast"), (False, "std")):
        env = worker_env(
            redis_server.url, redis_server.url_db(1), redis_server.url_db(2), tasks,
            stream_start="0", stream_fast_path=fast, stream_group=f"g-{name}",
        )  # fmt: skip
        worker = Worker(env, name)
        workers.append(worker)
        worker.start()
        wait_for(lambda: len(executed(ledger)) == 9, 60, f"9 tasks executed ({name})")
        assert worker.stop() == 0
        assert "fast path not used" not in worker.output()
        runs = sorted(executed(ledger), key=lambda r: (r["stream"], r["stream_id"]))
        ledger.delete("executed")
        expected = []
        for stream in sorted(tasks):
            sc = load_config(_config_app(tasks, f"g-{name}")).streams[sorted(tasks).index(stream)]
            for i, entry_id in enumerate(ids[stream]):
                fields = {"n": str(i), "note": "it's é"}
                args, kwargs = {"f": ([fields], {}), "k": ([], fields), "e": ([stream, entry_id, fields], {})}[stream]
                expected.append((task_id_for(sc, entry_id), stream, entry_id, args, kwargs))
        assert [(r["task_id"], r["stream"], r["stream_id"], r["args"], r["kwargs"]) for r in runs] == expected


def _config_app(tasks: dict[str, Any], group: str) -> Celery:
    app = Celery("ids", set_as_current=False)
    streams = {s: {**spec, "registered": False} for s, spec in sorted(tasks.items())}
    app.conf.update(stream_tasks=streams, stream_group=group)
    return app


def test_fast_path_is_on_by_default_and_can_be_turned_off(server: RedisServer) -> None:
    app = Celery("fastpath-default", broker=server.url_db(1), set_as_current=False)
    app.task(name="tests.record", shared=False)(record)
    app.conf.update(stream_url=server.url, stream_tasks={"orders": "tests.record"})
    (sc,) = load_config(app).streams
    assert sc.fast_path is True
    app.conf.stream_fast_path = False
    (sc,) = load_config(app).streams
    assert sc.fast_path is False


BATCH = [
    ENTRY,
    RawEntry("orders", "1700000000000-8", (b"pct", b"100%s %d %%", b"uni", "ü ☃ \U0001f600 \x01".encode())),
    RawEntry("orders", "1700000000001-0", ()),
]


@pytest.mark.parametrize(
    "spec",
    [
        {"task": "tests.record"},
        {"task": "tests.record", "call": "kwargs", "queue": "orders-q"},
        {"task": "tests.record", "call": "entry", "options": {"priority": 7, "headers": {"tenant": "50%s off"}}},
        {"task": "tests.record", "converter": "tests.e2e.test_fastpath:to_pair", "mode": "tracker"},
    ],
    ids=["fields", "kwargs-queue", "entry-priority-percent-header", "converter-tracker"],
)
def test_fast_path_batch_is_byte_identical_to_send_task(
    server: RedisServer, spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole stored text of every message of a batch, not only its decoded fields, but the delivery tag."""
    from celery_redis_stream.publish import redis_fast as fastpath

    built: list[bool] = []

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        envelope = build(*args, **kwargs)
        built.append(envelope is not None)
        return envelope

    build = fastpath.build_envelope
    monkeypatch.setattr(fastpath, "build_envelope", recording_build)
    app = make_app(server, {"orders": spec})
    sc = load_config(app).streams[0]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    client = server.client(1)
    sent = []
    try:
        for fast in (True, False):
            assert dispatcher.send(dataclasses.replace(sc, fast_path=fast), BATCH) == []
            (key,) = [k for k in client.keys("*") if client.type(k) == b"list"]
            sent.append(client.lrange(key, 0, -1))
            client.delete(key)
    finally:
        dispatcher.close()
    fast, std = sent
    assert built == [True], "the per-batch envelope made these messages"
    assert len(fast) == len(std) == len(BATCH)
    for mine, theirs in zip(fast, std, strict=True):
        tags = [json.loads(m)["properties"]["delivery_tag"].encode() for m in (mine, theirs)]
        assert mine.count(tags[0]) == 1
        assert mine.replace(tags[0], tags[1]) == theirs


def test_delivery_tags_drawn_per_batch_are_uuid4_strings() -> None:
    import uuid

    from celery_redis_stream.publish.redis_envelope import uuid4_strings

    tags = uuid4_strings(1000)
    assert len(set(tags)) == 1000
    for tag in tags:
        parsed = uuid.UUID(tag)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, tag)
    assert uuid4_strings(0) == []


def test_empty_arguments_are_shown_as_saferepr_shows_them() -> None:
    # Below 2 characters Celery 5.3 shows "(, ..." and 5.5+ "()" (or ", ..." at 0): whatever this Celery shows.
    for value in ((), [], {}):
        for size in (0, 1, 2, 1024):
            assert argument_repr(value, size, 3) == saferepr(value, size, maxlevels=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.from_regex(r"\A[0-9]{1,13}-[0-9]{1,5}\Z"), text), max_size=20), text)
def test_batch_task_ids_are_the_uuid5_task_ids(entry_ids: list[str], stream: str) -> None:
    from celery_redis_stream.publish.dispatch import task_ids_for

    sc = StreamConfig(stream=stream or "s", task="t", mode="group", group="g", start="$", tracker_key="k",
                      batch_size=10, dead_letter="d")  # fmt: skip
    assert task_ids_for(sc, entry_ids) == [task_id_for(sc, i) for i in entry_ids]


@pytest.mark.parametrize(("options", "builds"), [({}, 1), ({"expires": 60}, 3)], ids=["static", "expires"])
def test_a_batch_template_is_reused_unless_it_holds_a_time(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], builds: int
) -> None:
    from celery_redis_stream.publish.redis_fast import FastPath

    made: list[str] = []
    template = FastPath.template

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        made.append("template")
        return template(self, *args, **kwargs)

    monkeypatch.setattr(FastPath, "template", counting)
    app = make_app(server, {"orders": {"task": "tests.record", "options": options}})
    sc = load_config(app).streams[0]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    try:
        for i in range(3):
            assert dispatcher.send(sc, [RawEntry("orders", f"1-{i}", (b"n", str(i).encode()))]) == []
        assert len(made) == builds
        dispatcher.close()  # a new producer: a new template
        assert dispatcher.send(sc, [RawEntry("orders", "2-0", (b"n", b"x"))]) == []
        assert len(made) == builds + 1
    finally:
        dispatcher.close()
    messages = [decoded(m) for m in reversed(server.client(1).lrange("celery", 0, -1))]  # consumed from the right
    server.client(1).delete("celery")
    assert [m["headers"]["redis_stream_id"] for m in messages] == ["1-0", "1-1", "1-2", "2-0"]
    assert len({m["headers"]["id"] for m in messages}) == 4
    assert len({m["properties"]["delivery_tag"] for m in messages}) == 4

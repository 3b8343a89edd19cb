"""The testing kit in-process: preview() and run() say what a worker does with an entry, without a worker or Redis.

tests/e2e/test_testing_kit.py holds the same entries against a real worker and compares.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

import celery_redis_stream
from celery_redis_stream.config import load_config
from celery_redis_stream.publish.dispatch import task_id_for
from celery_redis_stream.testing import DeadLettered, preview, run

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# The worker's mapping (tests/workerapp.py runs it) and the entries each stream gets.
TASKS: dict[str, Any] = {
    "f": {"task": "tests.record"},
    "k": {"task": "tests.record", "call": "kwargs"},
    "e": {"task": "tests.record", "call": "entry", "mode": "tracker"},
    "c": {"task": "tests.record", "converter": "tests.workerapp:to_order"},
    "bad": {"task": "tests.record", "converter": "tests.workerapp:broken_converter"},
    "o": {
        "task": "tests.record",
        "queue": "oq",
        "options": {"priority": 7, "expires": 600, "headers": {"tenant": "acme"}},
    },
}
ENTRIES: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("f", [(b"n", b"0"), (b"note", "it's é".encode())]),
    ("f", [(b"n", b"1"), (b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"v=1")]),
    ("f", [(b"n", b"\xff")]),  # not UTF-8
    ("f", [(b"n", b"1"), (b"n", b"2")]),  # a duplicate field name
    ("k", [(b"n", b"2"), (b"traceparent", TRACEPARENT.encode())]),
    ("e", [(b"n", b"3")]),
    ("c", [(b"order_id", b"42"), (b"carrier", b"ups")]),
    ("c", [(b"carrier", b"ups")]),  # the converter raises KeyError
    ("bad", [(b"bad", b"1")]),
    ("bad", [(b"ok", b"1")]),
    ("o", [(b"n", b"4"), (b"traceparent", TRACEPARENT.encode())]),
]


def record(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    request = self.request
    return {
        "args": list(args),
        "kwargs": kwargs,
        "id": request.id,
        "stream": request.redis_stream,
        "stream_id": request.redis_stream_id,
        "traceparent": getattr(request, "traceparent", None),
        "headers": request.headers,
    }


def kit_app(**conf: Any) -> Celery:
    """The worker's configuration, as a test of the user's own would have it: no broker, no Redis."""
    app = Celery("kit", broker="redis://127.0.0.1:9/0", set_as_current=False)
    app.task(name="tests.record", bind=True, shared=False)(record)
    app.conf.update(stream_tasks=TASKS, **conf)
    return app


def test_preview_of_each_call_shape_and_converter() -> None:
    app = kit_app()
    fields = {"n": "1", "note": "x"}
    sc = {s.stream: s for s in load_config(app).streams}
    f = preview(app, "f", fields, entry_id="7-1")
    assert (f.task, f.args, f.kwargs, f.dead_letter) == ("tests.record", [fields], {}, None)
    assert f.task_id == task_id_for(sc["f"], "7-1") == f.headers["id"]
    assert f.headers["redis_stream"] == "f" and f.headers["redis_stream_id"] == "7-1"
    assert f.queue == "celery" and f.options == {}
    k = preview(app, "k", fields)
    assert (k.args, k.kwargs) == ([], fields)
    e = preview(app, "e", fields, entry_id="9-0")
    assert (e.args, e.kwargs) == (["e", "9-0", fields], {})
    assert e.task_id == task_id_for(sc["e"], "9-0") != task_id_for(sc["f"], "9-0")  # tracker, not group
    c = preview(app, "c", {"order_id": "42", "carrier": "ups"})
    assert (c.args, c.kwargs) == ([42], {"carrier": "ups", "delivery": 1})


def test_preview_of_per_stream_options() -> None:
    shown = preview(kit_app(), "o", {"n": "1"})
    assert shown.queue == "oq"
    assert shown.options == {"priority": 7, "expires": 600}
    assert shown.headers["tenant"] == "acme"
    assert shown.headers["expires"] is not None  # send_task made the expiry time from the option


def test_preview_moves_trace_fields_to_the_headers() -> None:
    shown = preview(kit_app(), "k", {"n": "1", "traceparent": TRACEPARENT, "tracestate": "v=1"})
    assert shown.kwargs == {"n": "1"}
    assert (shown.headers["traceparent"], shown.headers["tracestate"]) == (TRACEPARENT, "v=1")
    untraced = preview(kit_app(stream_trace_fields=[]), "k", {"n": "1", "traceparent": TRACEPARENT})
    assert untraced.kwargs == {"n": "1", "traceparent": TRACEPARENT}
    assert "traceparent" not in untraced.headers


@pytest.mark.parametrize(
    ("stream", "fields", "reason", "error"),
    [
        ("f", [(b"n", b"\xff")], "not_utf8", "can't decode byte 0xff"),
        ("f", [(b"n", b"1"), (b"n", b"2")], "duplicate_field", "field 'n' appears more than once"),
        ("f", {"n": "x" * 100}, "too_large", "stream_max_entry_bytes is 50"),
        ("bad", {"bad": "1"}, "converter_error", "ValueError: bad entry"),
        ("u", {"n": "1"}, "publish_error", "is not JSON serializable"),
    ],
)
def test_preview_of_an_entry_that_is_dead_lettered(stream: str, fields: Any, reason: str, error: str) -> None:
    app = kit_app(stream_max_entry_bytes=50)
    unencodable = {"task": "tests.record", "converter": "tests.unit.testing.test_preview:unencodable"}
    app.conf.stream_tasks = {**TASKS, "u": unencodable}
    shown = preview(app, stream, fields)
    assert shown.dead_letter is not None
    assert shown.dead_letter.reason == reason
    assert error in shown.dead_letter.error
    assert (shown.args, shown.kwargs, shown.headers, shown.queue) == ([], {}, {}, None)
    with pytest.raises(DeadLettered, match=reason):
        run(app, stream, fields)


def unencodable(entry: Any) -> tuple[list[Any], dict[str, Any]]:
    return [object()], {}


def test_preview_checks_the_configuration_as_a_worker_does() -> None:
    with pytest.raises(celery_redis_stream.StreamError, match="not mapped by stream_tasks"):
        preview(kit_app(), "nope", {"a": "1"})
    app = kit_app()
    app.conf.stream_tasks = {"f": "not.registered"}
    with pytest.raises(ImproperlyConfigured, match="not registered"):
        preview(app, "f", {"a": "1"})


def test_preview_of_a_stream_a_pattern_maps() -> None:
    app = kit_app()
    app.conf.stream_tasks = {"orders:*": {"task": "tests.record", "call": "kwargs"}}
    shown = preview(app, "orders:eu", {"a": "1"})
    assert (shown.kwargs, shown.headers["redis_stream"]) == ({"a": "1"}, "orders:eu")


def test_run_gives_the_task_the_arguments_and_request_of_a_worker() -> None:
    app = kit_app()
    result = run(app, "f", {"n": "1", "traceparent": TRACEPARENT}, entry_id="5-2")
    assert result.successful()
    seen = result.get()
    assert seen["args"] == [{"n": "1"}] and seen["kwargs"] == {}
    assert (seen["stream"], seen["stream_id"], seen["traceparent"]) == ("f", "5-2", TRACEPARENT)
    assert seen["id"] == preview(app, "f", {"n": "1"}, entry_id="5-2").task_id == result.id
    assert seen["headers"] == {"redis_stream": "f", "redis_stream_id": "5-2", "traceparent": TRACEPARENT}
    # the arguments went through the task serializer, as they do to a worker
    converted = run(app, "c", {"order_id": "7"}).get()
    assert converted["args"] == [7] and converted["kwargs"] == {"delivery": 1}
    # and the request patch is gone afterwards
    assert "push" not in vars(app.tasks["tests.record"].request_stack)


def test_run_propagates_a_task_exception_as_task_eager_propagates_says() -> None:
    app = kit_app(task_eager_propagates=True)

    @app.task(name="t.fail", shared=False)
    def fail(fields: dict[str, str]) -> None:
        raise RuntimeError(fields["n"])

    app.conf.stream_tasks = {"f": "t.fail"}
    with pytest.raises(RuntimeError, match="boom"):
        run(app, "f", {"n": "boom"})
    app.conf.task_eager_propagates = False
    assert run(app, "f", {"n": "boom"}).failed()

"""Trace context: traceparent/tracestate entry fields become task message headers, and the task continues the trace."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from celery import Celery
from opentelemetry.sdk.trace import TracerProvider

import celery_redis_stream
from celery_redis_stream.config import load_config
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.exceptions import StreamConfigError
from celery_redis_stream.publish.dispatch import Dispatcher

from ..support import RedisServer, Worker, executed, wait_for, worker_env

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACESTATE = "vendor=abc"


def config_app(**conf: Any) -> Celery:
    app = Celery("trace", set_as_current=False)
    app.conf.update(stream_tasks={"s": {"task": "t", "registered": False}}, **conf)
    return app


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("traceparent", "tracestate")),
        ([], ()),
        (["traceparent", "x-trace"], ("traceparent", "x-trace")),
        (("b3",), ("b3",)),
    ],
)
def test_trace_fields_setting_is_read_into_every_stream(value: Any, expected: tuple[str, ...]) -> None:
    app = config_app() if value is None else config_app(stream_trace_fields=value)
    assert load_config(app).streams[0].trace_fields == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("traceparent", "expected a list of entry field names"),
        ([""], "expected a non-empty string"),
        ([1], "expected a non-empty string"),
        (["a", "a"], "names a field twice"),
        (["redis_stream_id"], "would replace a Celery or bridge message header"),
        (["id"], "would replace a Celery or bridge message header"),
    ],
)
def test_trace_fields_setting_refuses_bad_values(value: Any, problem: str) -> None:
    with pytest.raises(StreamConfigError, match="stream_trace_fields") as info:
        load_config(config_app(stream_trace_fields=value))
    assert problem in str(info.value)


def only_message(server: RedisServer) -> dict[str, Any]:
    client = server.client(1)
    raw = client.lrange("celery", 0, -1)
    assert len(raw) == 1
    client.delete("celery")
    return dict(json.loads(raw[0]))


@pytest.mark.parametrize("call", ["fields", "kwargs", "entry"])
def test_both_publishing_paths_put_trace_fields_in_the_headers_and_not_in_the_arguments(
    redis_server: RedisServer, call: str
) -> None:
    app = Celery("trace", broker=redis_server.url_db(1), set_as_current=False)
    app.conf.update(stream_url=redis_server.url, stream_tasks={"s": {"task": "t", "registered": False, "call": call}})
    sc = load_config(app).streams[0]
    raw = RawEntry("s", "5-1", (b"traceparent", TRACEPARENT.encode(), b"a", b"1", b"tracestate", TRACESTATE.encode()))
    messages = []
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    try:
        for fast in (True, False):
            assert dispatcher.send(dataclasses.replace(sc, fast_path=fast), [raw]) == []
            messages.append(only_message(redis_server))
    finally:
        dispatcher.close()
    fast, std = messages
    for message in messages:
        assert message["headers"]["traceparent"] == TRACEPARENT
        assert message["headers"]["tracestate"] == TRACESTATE
        assert "traceparent" not in message["headers"]["argsrepr"] + message["headers"]["kwargsrepr"]
    # the same headers, in the same order (the fast path is byte-for-byte send_task's)
    assert list(fast["headers"]) == list(std["headers"])
    assert {k: v for k, v in fast["headers"].items() if k != "origin"} == {
        k: v for k, v in std["headers"].items() if k != "origin"
    }
    assert fast["body"] == std["body"]


def test_a_converter_sees_the_fields_without_the_trace_fields(redis_server: RedisServer) -> None:
    from celery_redis_stream.publish.dispatch import prepare

    app = config_app()
    app.conf.stream_tasks = {"s": {"task": "t", "registered": False, "converter": "tests.e2e.test_tracing:keys"}}
    sc = load_config(app).streams[0]
    raw = RawEntry("s", "5-1", (b"traceparent", TRACEPARENT.encode(), b"a", b"1"))
    assert prepare(sc, raw, max_entry_bytes=1 << 20) == ([["a"]], {}, {"traceparent": TRACEPARENT})
    # and with the setting emptied, the fields stay arguments
    app.conf.stream_trace_fields = []
    sc = load_config(app).streams[0]
    assert prepare(sc, raw, max_entry_bytes=1 << 20) == ([["traceparent", "a"]], {}, {})


def keys(entry: celery_redis_stream.StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    return [list(entry.fields)], {}


def test_produce_adds_the_active_span_context_and_nothing_without_one(redis_server: RedisServer) -> None:
    client = redis_server.client()
    tracer = TracerProvider().get_tracer("test")
    plain = celery_redis_stream.produce(client, "p", {"a": "1"})
    with tracer.start_as_current_span("producer") as span:
        traced = celery_redis_stream.produce(client, "p", {"a": "2"})
        kept = celery_redis_stream.produce(client, "p", {"a": "3", "traceparent": TRACEPARENT})
    entries = dict(client.xrange("p"))
    assert entries[plain.encode()] == {b"a": b"1"}
    ctx = span.get_span_context()
    assert entries[traced.encode()][b"traceparent"].decode().startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert entries[kept.encode()][b"traceparent"].decode() == TRACEPARENT  # the caller's own value is kept


TASKS = {
    "f": {"task": "tests.record"},
    "k": {"task": "tests.record", "call": "kwargs"},
}


@pytest.mark.parametrize(
    ("fast_path", "bridge_traced"),
    [(True, False), (False, False), (True, True)],
    ids=["fast-path", "send-task-path", "traced-bridge"],
)
def test_task_span_continues_the_producer_trace_in_a_real_worker(
    redis_server: RedisServer, workers: list[Worker], fast_path: bool, bridge_traced: bool
) -> None:
    """The producer's span -> (the bridge's publish span, when it is instrumented) -> the task's run span.

    An uninstrumented bridge publishes on the path the setting chooses; an
    instrumented one has publish signal receivers, so its fast path steps
    aside and send_task publishes inside the entry's trace context.
    """
    streams, ledger = redis_server.client(0), redis_server.client(2)
    tracer = TracerProvider().get_tracer("producer")
    produced: dict[str, Any] = {}
    for stream in TASKS:
        for i in range(2):
            with tracer.start_as_current_span(f"produce {stream}") as span:
                entry_id = celery_redis_stream.produce(streams, stream, {"n": str(i), "note": "x"})
            produced[stream, entry_id] = span.get_span_context()
    env = worker_env(
        redis_server.url, redis_server.url_db(1), redis_server.url_db(2), TASKS,
        stream_start="0", stream_fast_path=fast_path,
    )  # fmt: skip
    if bridge_traced:
        worker = Worker(env, "both", app="tests.otelapp")
        workers.append(worker)
        worker.start()
    else:
        # the bridge runs no tasks (it consumes an unused queue); an instrumented worker runs them
        bridge = Worker(env, "bridge", queues="unused")
        runner = Worker(env, "runner", app="tests.otelapp", extra=["--without-redis-stream"])
        workers.extend([bridge, runner])
        runner.start(wait="ready")
        bridge.start()
    wait_for(lambda: len(executed(ledger)) == 4, 60, "4 tasks executed")
    runs = executed(ledger)
    # the trace fields are headers now, never arguments
    for run in runs:
        fields = run["args"][0] if run["stream"] == "f" else run["kwargs"]
        assert fields == {"n": fields["n"], "note": "x"}, run
    spans = wait_for(lambda: _spans(ledger, "run/tests.record", 4), 30, "4 task spans exported")
    all_spans = {s["span_id"]: s for s in _spans(ledger, None, 0)}
    by_task = {s["attributes"].get("messaging.message.id"): s for s in spans}
    for run in runs:
        producer = produced[run["stream"], run["stream_id"]]
        span = by_task[run["task_id"]]
        assert span["trace_id"] == f"{producer.trace_id:032x}", (run, span)
        parent = all_spans.get(span["parent_id"])
        if bridge_traced:
            # the bridge's own publish span sits between the producer and the task
            assert parent is not None and parent["name"] == "apply_async/tests.record", span
            assert parent["parent_id"] == f"{producer.span_id:016x}"
            assert parent["trace_id"] == span["trace_id"]
        else:
            assert span["parent_id"] == f"{producer.span_id:016x}"
    bridge_output = workers[0].output()
    if fast_path and not bridge_traced:
        assert "fast path not used" not in bridge_output  # the fast path wrote these messages
    assert ("fast path not used (a before_task_publish receiver" in bridge_output) == (fast_path and bridge_traced)


def _spans(ledger: Any, name: str | None, count: int) -> list[dict[str, Any]]:
    spans = [json.loads(x) for x in ledger.lrange("spans", 0, -1)]
    spans = [s for s in spans if name is None or s["name"] == name]
    return spans if len(spans) >= count else []


NO_OTEL = """
import dataclasses, json, sys
sys.modules["opentelemetry"] = None  # as if it were not installed: every import of it fails
import redis
from celery import Celery
import celery_redis_stream
from celery_redis_stream.config import load_config
from celery_redis_stream.publish.dispatch import Dispatcher
from celery_redis_stream.entry import RawEntry

url, broker = sys.argv[1], sys.argv[2]
client = redis.Redis.from_url(url)
entry_id = celery_redis_stream.produce(client, "s", {"a": "1"})
assert client.xrange("s")[0][1] == {b"a": b"1"}, client.xrange("s")
app = Celery("no-otel", broker=broker, set_as_current=False)
app.conf.update(stream_url=url, stream_tasks={"s": {"task": "t", "registered": False}})
sc = load_config(app).streams[0]
dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
raw = RawEntry("s", entry_id, (b"a", b"1", b"traceparent", sys.argv[3].encode()))
for fast in (True, False):
    assert dispatcher.send(dataclasses.replace(sc, fast_path=fast), [raw]) == []
dispatcher.close()
messages = redis.Redis.from_url(broker).lrange("celery", 0, -1)
print(json.dumps([json.loads(m)["headers"].get("traceparent") for m in messages]))
"""


def test_without_opentelemetry_produce_and_both_publishing_paths_still_carry_the_trace_fields(
    redis_server: RedisServer,
) -> None:
    import subprocess
    import sys

    from ..support import ROOT

    result = subprocess.run(
        [sys.executable, "-c", NO_OTEL, redis_server.url, redis_server.url_db(1), TRACEPARENT],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [TRACEPARENT, TRACEPARENT]

"""Decoders with real producers and real `celery worker` processes, on every publishing path.

FastStream 0.5.48 (JSON envelope) and the newest 0.7 (binary format) publish
dicts, pydantic models and strings with a correlation id from processes of
their own (tests/producers.py); a redis-py producer writes one JSON document in
one field; raw binary entries with repeated names go to a converter. Each
setup is one publishing path: the Redis fast path with the exactly-once step
(broker on the streams' server), the fast path to a broker on another server,
``send_task`` (``stream_fast_path`` off), and RabbitMQ's fast path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from celery_redis_stream.publish.exactly_once import EXACTLY_ONCE

from ..producers import publish_faststream, publish_ioredis
from ..support import FAST, RedisServer, Worker, executed, wait_for, worker_env
from .conftest import AMQP_URL

ORDER = {"order_id": 42, "items": ["a", "b"], "note": "é"}
FASTSTREAM_MESSAGES = [
    {"kind": "dict", "value": ORDER, "correlation_id": "corr-dict"},
    {"kind": "model", "value": {"order_id": 7, "amount": 9.5}, "correlation_id": "corr-model"},
    {"kind": "str", "value": "plain text ✓", "correlation_id": "corr-str"},
]
FASTSTREAM_BODIES = {"corr-dict": ORDER, "corr-model": {"order_id": 7, "amount": 9.5}, "corr-str": "plain text ✓"}
BINARY = [b"blob", b"\x00\xff\xfe", b"blob", b"\x89BIN\r\n\x1a\n", b"\xc3", b"", b"name", b"text"]

STREAMS: dict[str, dict[str, Any]] = {
    "fs05": {"task": "tests.record_correlation", "decode": "faststream"},
    "fs07": {"task": "tests.record_correlation", "decode": "faststream"},
    "js": {"task": "tests.record", "decode": "json:payload"},
    "jskw": {"task": "tests.record", "decode": "json:payload", "call": "kwargs"},
    "jsent": {"task": "tests.record", "decode": "json:payload", "call": "entry"},
    "bin": {"task": "tests.record", "decode": "raw", "converter": "tests.workerapp:hex_pairs"},
}
TASKS = 3 + 3 + 1 + 1 + 1 + 1


class Setup:
    """One publishing path: where the broker is and what the worker is told."""

    def __init__(self, server: RedisServer, broker_url: str, queue: str | None = None, **conf: Any) -> None:
        self.server, self.broker_url, self.queue, self.conf = server, broker_url, queue, conf

    def env(self) -> dict[str, str]:
        extra = {"queue": self.queue} if self.queue else {}
        tasks = {stream: {**spec, **extra} for stream, spec in STREAMS.items()}
        return worker_env(self.server.url_db(0), self.broker_url, self.server.url_db(2), tasks, **FAST, **self.conf)


@pytest.fixture(params=["exactly-once", "fast-path", "send-task", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def setup(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Setup]:
    path = request.param
    if path == "exactly-once":  # streams and broker on one server: the atomic step
        yield Setup(redis_server, redis_server.url_db(1))
    elif path == "send-task":
        yield Setup(redis_server, redis_server.url_db(1), stream_fast_path=False)
    elif path == "fast-path":  # the broker on a server of its own: the fast path without the atomic step
        broker = RedisServer().start()
        try:
            yield Setup(redis_server, broker.url_db(0))
        finally:
            broker.stop()
    else:
        amqp: Connection = request.getfixturevalue("amqp")
        queue: str = request.getfixturevalue("queue")
        assert amqp.connected
        yield Setup(redis_server, AMQP_URL, queue, broker_transport_options={"confirm_publish": True})


def produce_everything(setup: Setup) -> dict[str, str]:
    """Every producer writes its entries; returns the FastStream and ioredis versions that published."""
    client = setup.server.client()
    url = setup.server.url_db(0)
    versions = {release: publish_faststream(release, url, f"fs{release.replace('.', '')}", FASTSTREAM_MESSAGES)
                for release in ("0.5", "0.7")}  # fmt: skip
    # A Node.js service with ioredis: one JSON document in one field, then two entries the decoder refuses.
    node = [(stream, ["payload", json.dumps(ORDER), "source", "billing"]) for stream in ("js", "jskw", "jsent")]
    node += [("js", ["source", "billing"]), ("js", ["payload", "{not json"])]  # no payload field; not JSON
    versions["ioredis"] = publish_ioredis(url, node)
    # Entries FastStream did not write, on a FastStream stream.
    client.xadd("fs07", {"a": "b"})
    client.xadd("fs07", {"__data__": b"\x89BIN\r\n\x1a\n\x00\x07garbage"})
    client.execute_command("XADD", "bin", "*", *BINARY)
    return versions


def by_stream(ledger: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for run in executed(ledger):
        out.setdefault(run["stream"], []).append(run)
    return out


def test_every_decoder_turns_real_producers_entries_into_the_right_task_arguments(setup: Setup) -> None:
    versions = produce_everything(setup)
    assert versions["0.5"] == "0.5.48" and versions["0.7"].startswith("0.7.") and versions["ioredis"].startswith("5.")
    client, ledger = setup.server.client(), setup.server.client(2)
    # On the shared RabbitMQ a worker is named after its test's own queue: two workers of one name collide.
    worker = Worker(setup.env(), setup.queue or "w1", queues=setup.queue).start()
    try:
        wait_for(lambda: len(executed(ledger)) >= TASKS, 60, f"{TASKS} executed tasks")
        wait_for(lambda: client.xlen("js:dead") == 2 and client.xlen("fs07:dead") == 2, 10, "4 dead letters")
    finally:
        assert worker.stop() == 0
    (guarantee,) = re.findall(r"fs07->\S+ \(([^)]*)\)", worker.output())[-1:]
    # the exactly-once step runs where the streams and the broker share a server, and only there
    same_server = setup.broker_url == setup.server.url_db(1)
    assert (EXACTLY_ONCE in guarantee) == (same_server and setup.conf == {}), guarantee
    runs = by_stream(ledger)
    assert len(executed(ledger)) == TASKS
    for stream in ("fs05", "fs07"):  # FastStream: the body as the one argument, its correlation id readable
        got = {run["kwargs"]["_correlation_id"]: run["args"] for run in runs[stream]}
        assert got == {corr: [body] for corr, body in FASTSTREAM_BODIES.items()}, stream
    assert runs["js"][0]["args"] == [ORDER] and runs["js"][0]["kwargs"] == {}
    assert runs["jskw"][0]["args"] == [] and runs["jskw"][0]["kwargs"] == ORDER
    (jsent,) = runs["jsent"]
    assert jsent["args"] == ["jsent", jsent["stream_id"], ORDER]
    (raw,) = runs["bin"]
    it = iter(BINARY)
    assert raw["args"] == [[[name.hex(), value.hex()] for name, value in zip(it, it, strict=True)]]
    assert raw["kwargs"] == {"fields_is_none": True}
    for dead in ("js:dead", "fs07:dead"):
        letters = client.xrange(dead)
        assert [fields[b"dlq_reason"] for _, fields in letters] == [b"decode", b"decode"], dead
    errors = [fields[b"dlq_error"].decode() for _, fields in client.xrange("js:dead")]
    assert "'payload'" in errors[0] and "missing" in errors[0]
    assert "not JSON" in errors[1]
    for group in ("fs05", "fs07", "js", "bin"):
        assert client.xinfo_groups(group)[0]["pending"] == 0


def test_a_raw_stream_without_a_converter_stops_the_worker_naming_the_stream_and_setting(
    redis_server: RedisServer,
) -> None:
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2),
        {"bin": {"task": "tests.record", "decode": "raw"}}, **FAST,
    )  # fmt: skip
    worker = Worker(env).start(wait=None)
    try:
        code = worker.wait(60)
    finally:
        worker.stop()
    output = worker.output()
    assert code != 0
    assert "stream_tasks 'decode'" in output and "'bin'" in output and "converter" in output
    assert not redis_server.client().exists("bin")  # nothing was read or created


@pytest.mark.parametrize("decode", ["json:payload", "faststream"])
def test_json_nested_past_the_recursion_limit_is_dead_lettered_with_reason_decode(
    redis_server: RedisServer, decode: str
) -> None:
    # Valid JSON as deep as this makes json.loads raise RecursionError, not ValueError.
    deep = "[" * 100_000 + "]" * 100_000
    client, ledger = redis_server.client(), redis_server.client(2)
    field = "payload" if decode.startswith("json") else "__data__"
    value = deep if field == "payload" else json.dumps({"data": deep, "headers": {"content-type": "application/json"}})
    bad = client.xadd("deep", {field: value})
    good = client.xadd("deep", {field: "[1]" if field == "payload" else json.dumps({"data": "[1]", "headers": {
        "content-type": "application/json"}})})  # fmt: skip
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2),
        {"deep": {"task": "tests.record", "decode": decode, "start": "0"}}, **FAST,
    )  # fmt: skip
    worker = Worker(env).start()
    try:
        wait_for(lambda: client.xlen("deep:dead") == 1 and len(executed(ledger)) == 1, 20, "a dead letter, a task")
    finally:
        assert worker.stop() == 0
    ((_, letter),) = client.xrange("deep:dead")
    assert letter[b"dlq_reason"] == b"decode" and letter[b"dlq_source_id"] == bad
    assert [run["stream_id"] for run in executed(ledger)] == [good.decode()]
    assert "Traceback" not in worker.output()

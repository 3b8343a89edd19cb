"""`celery inspect redis_stream`, `celery inspect stats` and `redis-stream status` against a real running worker."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from celery import __version__ as celery_version

from ..support import Worker, celery, executed, expected_server, produce_many, wait_for, worker_env
from .test_cli import PasswordRedisServer

NODE = f"w1@{socket.gethostname()}"
TASKS = {"orders": "tests.record", "events": {"task": "tests.record", "mode": "tracker"}}


def inspect(env: dict[str, str], command: str) -> dict[str, Any]:
    result = celery(env, "inspect", command, "--json", "-d", NODE, "-t", "15")
    assert result.returncode == 0, result.stdout + result.stderr
    replies: dict[str, Any] = json.loads(result.stdout)
    assert list(replies) == [NODE]
    return {"reply": replies[NODE], "text": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def running() -> Iterator[dict[str, Any]]:
    """One worker reading orders (group) and events (tracker) from "0"; 5+5 tasks done, 1 entry dead-lettered."""
    password = "pw-" + os.urandom(8).hex()
    server = PasswordRedisServer(password)
    worker = None
    try:
        server.start()
        base = f"redis://:{password}@127.0.0.1:{server.port}"
        env = worker_env(f"{base}/0", f"{base}/1", f"{base}/2", TASKS, stream_start="0")
        c = server.client(password=password)
        orders = produce_many(c, "orders", 3)
        c.execute_command("XADD", "orders", "*", "n", b"\xff not utf-8")
        orders += produce_many(c, "orders", 2, start=3)
        events = produce_many(c, "events", 5)
        worker = Worker(env).start()
        ledger = server.client(2, password=password)
        wait_for(lambda: len(executed(ledger)) >= 10 and c.xlen("orders:dead") == 1, 60, "10 tasks and 1 dead letter")
        yield {"env": env, "password": password, "orders": orders, "events": events, "worker": worker}
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


OLD_CELERY_CLI = tuple(int(x) for x in celery_version.split(".")[:2]) < (5, 4)


def test_inspect_redis_stream_reports_each_reader_of_the_worker(running: dict[str, Any]) -> None:
    if OLD_CELERY_CLI:
        # Celery 5.3's `inspect` accepts only its built-in command names (documented);
        # `celery redis-stream inspect` below is the way there.
        refused = celery(running["env"], "inspect", "redis_stream", "--json", "-d", NODE, "-t", "5")
        assert refused.returncode == 2 and "redis_stream" in refused.stderr
        return
    result = inspect(running["env"], "redis_stream")
    reply = result["reply"]
    assert (reply["enabled"], reply["alive"], reply["consumer"]) == (True, True, NODE)
    streams = {s["stream"]: s for s in reply["streams"]}
    orders, events = streams["orders"], streams["events"]
    assert (orders["mode"], orders["group"], orders["dispatched"], orders["dead_lettered"]) == ("group", "celery", 5, 1)
    assert orders["last_id"] == running["orders"][-1]
    assert (events["mode"], events["tracker"], events["dispatched"]) == ("tracker", "stream_tracker:{events}", 5)
    assert events["last_id"] == running["events"][-1]
    for s in (orders, events):
        assert (s["reading"], s["paused"], s["last_error"]) == (True, False, None)
        assert s["server"] == expected_server()  # "redis 7.0.15", "valkey 9.1.2": INFO server, per stream
    assert running["password"] not in result["text"]
    assert reply["url"].startswith("redis://:**@")


def test_redis_stream_inspect_command_reports_the_same_on_any_celery_version(running: dict[str, Any]) -> None:
    # `celery inspect` of Celery < 5.4 only accepts its built-in commands; this one broadcasts directly.
    result = celery(running["env"], "redis-stream", "inspect", "--json", "-d", NODE, "-t", "15")
    assert result.returncode == 0, result.stdout + result.stderr
    reply = json.loads(result.stdout)[NODE]
    streams = {s["stream"]: s for s in reply["streams"]}
    assert (streams["orders"]["dispatched"], streams["orders"]["dead_lettered"]) == (5, 1)
    assert streams["events"]["last_id"] == running["events"][-1]
    assert streams["orders"]["server"] == streams["events"]["server"] == expected_server()
    table = celery(running["env"], "redis-stream", "inspect", "-d", NODE, "-t", "15")
    assert table.returncode == 0, table.stdout + table.stderr
    assert NODE in table.stdout and running["orders"][-1] in table.stdout and expected_server() in table.stdout
    assert running["password"] not in result.stdout + table.stdout + table.stderr
    nobody = celery(running["env"], "redis-stream", "inspect", "-d", "nobody@nowhere", "-t", "1")
    # As `celery inspect`: one line, exit 69 (EX_UNAVAILABLE), no empty table.
    assert nobody.returncode == 69 and nobody.stdout == "", nobody.stdout + nobody.stderr
    assert nobody.stderr.strip() == "Error: no worker replied within 1s (is a worker of this app running?)"


def test_inspect_stats_includes_the_step_info(running: dict[str, Any]) -> None:
    result = inspect(running["env"], "stats")
    info = result["reply"]["redis_stream"]
    assert {s["stream"]: s["dispatched"] for s in info["streams"]} == {"orders": 5, "events": 5}
    assert running["password"] not in result["text"]


def test_status_shows_the_running_workers_consumer_and_lease(running: dict[str, Any]) -> None:
    result = celery(running["env"], "redis-stream", "status", "--json", "--max-lag", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    streams = {s["stream"]: s for s in json.loads(result.stdout)["streams"]}
    orders, events = streams["orders"], streams["events"]
    assert (orders["length"], orders["lag"], orders["pending"], orders["dead_letter_length"]) == (6, 0, 0, 1)
    assert [c["name"] for c in orders["consumers"]] == [NODE]
    assert (events["position"], events["lag"], events["lease_holder"]) == (running["events"][-1], 0, NODE)
    assert running["password"] not in result.stdout + result.stderr
    assert running["password"] not in running["worker"].output()

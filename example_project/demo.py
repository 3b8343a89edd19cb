#!/usr/bin/env python
"""End-to-end demo: a real `celery -A shop worker` turns stream entries into tasks.

    python example_project/demo.py          # or: make demo

Uses REDIS_URL when it is set; otherwise starts a private redis-server on a
free loopback port in a temporary directory (and stops it afterwards). Then
it starts the worker of the example Django project, XADDs a few entries,
waits until the worker has executed a task for each of them, prints those
task log lines and the stream positions, and stops the worker with SIGTERM
(warm shutdown). Exits 0 on success, non-zero with a message otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from produce import produce_examples  # noqa: E402

STARTUP_TIMEOUT = 60.0
EXECUTE_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
GROUP = "celery"
TRACKER_PREFIX = "stream_tracker:"


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own on 127.0.0.1, never the shared one on 6379."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise DemoError(
                "no redis-server binary on PATH. Install Redis (Debian/Ubuntu: `sudo apt-get install "
                "redis-server`, macOS: `brew install redis`) or point the demo at a running Redis with "
                "REDIS_URL=redis://host:port/db"
            )
        self.port = free_port()
        self.dir = directory
        command = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_for(self._ping, 15, f"redis-server on port {self.port}")

    def _ping(self) -> bool:
        if self.proc.poll() is not None:
            log = self.dir / "redis.log"
            raise DemoError(f"redis-server exited ({self.proc.returncode}): {log.read_text() if log.exists() else ''}")
        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class ShopWorker:
    """`celery -A shop worker` of the example project, its output in a log file."""

    def __init__(self, url: str, directory: Path) -> None:
        self.log = directory / "worker.log"
        env = {**os.environ, "REDIS_URL": url, "DJANGO_SETTINGS_MODULE": "shop.settings"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
        command = [
            sys.executable, "-m", "celery", "-A", "shop", "worker", "-n", "shop-demo@%h",
            "-Q", "celery,billing", "-c", "2", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        say("starting: " + " ".join(command[1:]))
        with open(self.log, "wb") as out:
            # A session of its own: Ctrl-C in this terminal reaches the demo,
            # which then stops the worker warmly instead of it dying mid-batch.
            self.proc = subprocess.Popen(
                command, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise DemoError(f"the worker exited with code {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def stop(self) -> int:
        """SIGTERM (warm shutdown); SIGKILL for the whole process group only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                say(f"worker did not stop within {STOP_TIMEOUT:.0f}s of SIGTERM; killing it")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


def readers_ready(client: redis.Redis, streams: dict[str, Any]) -> bool:
    """Every group exists and every tracker key is set: entries added now will be read."""
    for stream, spec in streams.items():
        if isinstance(spec, dict) and spec.get("mode") == "tracker":
            if not client.exists(f"{TRACKER_PREFIX}{{{stream}}}"):
                return False
            continue
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # the stream does not exist yet
            return False
        if not any(g["name"] in (GROUP, GROUP.encode()) for g in groups):
            return False
    return True


def executed_lines(output: str, produced: list[tuple[str, str, dict[str, str]]]) -> dict[tuple[str, str], str]:
    """The worker's task log line of each produced (stream, entry id) that was executed."""
    found: dict[tuple[str, str], str] = {}
    for line in output.splitlines():
        if "shop: " not in line:
            continue
        for stream, entry_id, _ in produced:
            if f" stream={stream} id={entry_id} " in line:
                found[stream, entry_id] = line[line.index("shop: ") + len("shop: ") :]
    return found


def positions(client: redis.Redis, streams: dict[str, Any]) -> list[str]:
    out = []
    for stream, spec in streams.items():
        if isinstance(spec, dict) and spec.get("mode") == "tracker":
            key = f"{TRACKER_PREFIX}{{{stream}}}"
            value = client.get(key)
            out.append(f"{stream}: tracker {key} = {value.decode() if value else None}")
            continue
        for group in client.xinfo_groups(stream):
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            last = group["last-delivered-id"]
            last = last.decode() if isinstance(last, bytes) else last
            out.append(f"{stream}: group {name} last-delivered-id={last} pending={group['pending']}")
    return out


def run(workdir: Path) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    server: PrivateRedis | None = None
    worker: ShopWorker | None = None
    try:
        url = os.environ.get("REDIS_URL")
        if url:
            say(f"using REDIS_URL={maybe_sanitize_url(url)}")
        else:
            server = PrivateRedis(workdir)
            url = server.url
            say(f"started a private redis-server on {url} (pid {server.proc.pid}, dir {workdir})")
        os.environ["REDIS_URL"] = url
        from shop import settings  # reads REDIS_URL

        streams: dict[str, Any] = settings.CELERY_STREAM_TASKS
        client = redis.Redis.from_url(url, socket_timeout=10)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise DemoError(f"cannot reach Redis at {maybe_sanitize_url(url)}: {exc}") from None

        worker = ShopWorker(url, workdir)

        def ready() -> bool:
            worker.check_alive()
            return readers_ready(client, streams)

        wait_for(ready, STARTUP_TIMEOUT, "the worker to create its consumer groups and trackers")
        say(f"worker pid {worker.proc.pid} is reading streams {', '.join(streams)}")

        produced = produce_examples(client)
        for stream, entry_id, fields in produced:
            say(f"XADD {stream} {entry_id} {fields}")

        def all_executed() -> bool:
            worker.check_alive()
            return len(executed_lines(worker.output(), produced)) == len(produced)

        try:
            wait_for(all_executed, EXECUTE_TIMEOUT, f"{len(produced)} tasks to be executed")
        except DemoError:
            done = executed_lines(worker.output(), produced)
            missing = [f"{s} {e}" for s, e, _ in produced if (s, e) not in done]
            raise DemoError(f"entries not executed: {', '.join(missing)}\nworker log:\n{worker.tail()}") from None
        found = executed_lines(worker.output(), produced)
        say("executed by the worker (its task log lines):")
        for stream, entry_id, _ in produced:
            print(f"    {found[stream, entry_id]}", flush=True)

        code = worker.stop()
        say(f"worker stopped by SIGTERM (warm shutdown), exit code {code}")
        if code != 0:
            raise DemoError(f"the worker exited with code {code}:\n{worker.tail()}")
        say("stream positions after the run:")
        for line in positions(client, streams):
            print(f"    {line}", flush=True)
        say(f"OK: {len(produced)} entries produced, {len(found)} tasks executed")
        return 0
    finally:
        if worker is not None:
            worker.stop()
        if server is not None:
            server.stop()
            say(f"stopped the private redis-server (pid {server.proc.pid})")


def main() -> int:
    # SIGTERM to the demo runs the same clean-up as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="shop-demo-"))
    ok = False
    try:
        code = run(workdir)
        ok = code == 0
        return code
    except (DemoError, redis.RedisError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        elif (workdir / "worker.log").exists():
            print(f"demo: the worker log is kept in {workdir / 'worker.log'}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

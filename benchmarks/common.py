"""What every benchmark scenario shares: private redis-server processes, real `celery worker` processes, helpers.

No import of the test package: a benchmark must not depend on test fixtures,
and the tests must be free to change theirs. The processes (redis-server,
`celery worker`) are celery_redis_stream.testing.processes's, as the tests' are.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
import redis

from celery_redis_stream.testing import processes as harness
from celery_redis_stream.testing.processes import Ready

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "bench"
FIELDS = {"a": "1", "b": "hello"}  # plus "n": the entry number; 3 small fields


def log(text: str) -> None:
    print(text, flush=True)


free_port = harness.free_port


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    return harness.wait_for(predicate, timeout, what, interval, error=RuntimeError)


def median_of(runs: int, what: str, fn: Callable[[], float], unit: str = "entries/s") -> dict[str, Any]:
    values = []
    for i in range(runs):
        values.append(fn())
        log(f"  {what} run {i + 1}/{runs}: {values[-1]:,.0f} {unit}")
    return {"median": statistics.median(values), "runs": values}


# ---------------------------------------------------------------- redis-server


class RedisServer(harness.RedisServer):
    """harness.RedisServer; stopping it removes its directory too."""

    def stop(self, sig: int = signal.SIGTERM, *, remove: bool = True) -> None:
        super().stop(sig, remove=remove)


class Cluster(harness.Cluster):
    """harness.Cluster of ``masters`` masters (no replicas) made of this module's RedisServer nodes."""

    def __init__(self, masters: int = 3) -> None:
        super().__init__(masters, server=RedisServer)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()


# ---------------------------------------------------------------- celery worker


class Worker(harness.WorkerProcess):
    """A real `celery worker` subprocess on benchmarks/benchapp.py (settings from BENCH_* variables).

    ``start()`` waits until the redis-stream step started its readers; ``event_time(Ready.STARTED)`` says when.
    """

    def __init__(
        self,
        env: dict[str, str],
        name: str,
        *,
        queues: str,
        extra: Iterable[str] = (),
        app: str = "benchmarks.benchapp",
    ) -> None:
        args = [
            "--pool", "solo", "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-Q", queues, *extra,
        ]  # fmt: skip
        super().__init__(app, name, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT, args=args)

    def start(self, wait: Ready | str | None = Ready.STARTED, timeout: float = 60) -> Worker:
        super().start(wait, timeout)
        return self

    def stop(self, timeout: float = 30) -> int | None:
        try:
            return super().stop(timeout)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def bench_env(stream_url: str, broker_url: str, results_url: str, **conf: Any) -> dict[str, str]:
    return {
        "BENCH_STREAM_URL": stream_url,
        "BENCH_BROKER_URL": broker_url,
        "BENCH_RESULTS_URL": results_url,
        "BENCH_CONF": json.dumps(conf),
    }


# ---------------------------------------------------------------- one server for the single-Redis scenarios


class Bench:
    """One redis-server (streams db 0, broker db 1, results db 2) and the workers started on it."""

    def __init__(self) -> None:
        self.server = RedisServer().start()
        self.streams = self.server.client(0)
        self.broker = self.server.client(1)
        self.results = self.server.client(2)
        self.workers = 0

    def close(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        for client in (self.streams, self.broker, self.results):
            client.flushdb()

    @contextmanager
    def worker(
        self,
        queues: str,
        wait: Ready | str = Ready.STARTED,
        extra: tuple[str, ...] = (),
        quiet: bool = False,
        **conf: Any,
    ) -> Iterator[Worker]:
        """A `celery worker`; ``quiet`` runs it at Celery's default log level (WARNING), as workers that
        execute tasks usually run: INFO adds two log lines per task to the measured path."""
        self.workers += 1
        if quiet:
            extra = (*extra, "--loglevel", "WARNING")
        env = bench_env(self.server.url_db(0), self.server.url_db(1), self.server.url_db(2), **conf)
        worker = Worker(env, f"bench{self.workers}", queues=queues, extra=extra)
        try:
            worker.start(wait=None if quiet else wait)
            if quiet:
                wait_for(self.bridge_reading, 60, "the bridge to read")
                time.sleep(1.5)  # and the worker's own consumer to be on its queue
            yield worker
        finally:
            worker.stop()

    def bridge_reading(self) -> bool:
        try:
            return bool(self.streams.xinfo_consumers(STREAM, "celery"))
        except redis.ResponseError:  # no stream or group yet
            return False


def stream_conf(batch: int, *, fast: bool | None = None, queue: str = "sink", task: str = "bench.noop",
                start: str = "0") -> dict[str, Any]:  # fmt: skip
    """The bridge's settings for the one benchmark stream; ``fast=None`` leaves stream_fast_path at its default."""
    conf: dict[str, Any] = {
        "stream_tasks": {STREAM: {"task": task, "queue": queue}},
        "stream_start": start,
        "stream_batch_size": batch,
    }
    if fast is not None:
        conf["stream_fast_path"] = fast
    return conf


def fill_stream(client: redis.Redis, stream: str, n: int, start: int = 0) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(stream, {**FIELDS, "n": str(i)})
        if (i - start) % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def group_done(client: redis.Redis, stream: str, group: str = "celery") -> tuple[int, int]:
    """(lag, pending) of the group; a large lag while the group does not exist yet."""
    for info in client.xinfo_groups(stream):
        if info["name"] in (group, group.encode()):
            lag = info.get("lag")
            return (10**9 if lag is None else int(lag)), int(info["pending"])
    return 10**9, 0


def rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform.processor() says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(server: RedisServer) -> dict[str, Any]:
    import celery
    import kombu

    cpu = cpu_model()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": server.client().info("server")["redis_version"],
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }

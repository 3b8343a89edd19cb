"""CPU of a worker whose mapped stream is empty, with the bridge and with ``--without-redis-stream``.

.venv/bin/python benchmarks/idle_cpu.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from benchmarks.common import Bench, log, stream_conf
from celery_redis_stream.testing.processes import Ready


def cpu_percent(pid: int, seconds: float) -> float:
    """Percent of one core the process used over ``seconds`` (after 2 s of settling)."""
    proc = psutil.Process(pid)
    time.sleep(2.0)
    before, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, t1 = proc.cpu_times(), time.monotonic()
    return 100.0 * ((after.user - before.user) + (after.system - before.system)) / (t1 - t0)


def idle_cpu(bench: Bench, seconds: float, with_bridge: bool) -> float:
    bench.reset()
    extra = () if with_bridge else ("--without-redis-stream",)
    wait: Ready | str = Ready.STARTED if with_bridge else "ready."  # no redis-stream step: Celery's own line
    with bench.worker("idle", wait=wait, extra=extra, **stream_conf(100, start="$")) as worker:
        return cpu_percent(worker.pid, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    bench = Bench()
    try:
        log(f"with the bridge: {idle_cpu(bench, args.seconds, True):.2f}% of a core")
        log(f"without: {idle_cpu(bench, args.seconds, False):.2f}% of a core")
    finally:
        bench.close()


if __name__ == "__main__":
    main()

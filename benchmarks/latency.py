"""Latency from XADD to the task's start, at 300 entries/s, in a solo worker that consumes the target queue.

    .venv/bin/python benchmarks/latency.py [--seconds 8] [--standard]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import FIELDS, STREAM, Bench, log, stream_conf, wait_for

RATE = 300


def latency(bench: Bench, seconds: float, fast: bool | None = None, batch: int = 100) -> dict[str, float]:
    count = int(RATE * seconds)
    bench.reset()
    conf = stream_conf(batch, fast=fast, queue="lat", task="bench.latency", start="$")
    with bench.worker("lat", quiet=True, **conf):
        began = time.perf_counter()
        for i in range(count):
            delay = began + i / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            bench.streams.xadd(STREAM, {**FIELDS, "n": str(i), "t": repr(time.time())})
        wait_for(lambda: bench.results.llen("latency") >= count, 60, "every latency sample")
    samples = sorted(float(x) * 1000 for x in bench.results.lrange("latency", 0, -1))
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"samples": len(samples), "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": samples[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--standard", action="store_true", help="stream_fast_path: False")
    args = parser.parse_args()
    bench = Bench()
    try:
        log(str(latency(bench, args.seconds, False if args.standard else None)))
    finally:
        bench.close()


if __name__ == "__main__":
    main()

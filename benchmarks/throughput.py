"""Throughput of the bridge in a real `celery worker`: a pre-filled stream drained into a queue nobody consumes.

    .venv/bin/python benchmarks/throughput.py [--entries 40000] [--batch 100] [--standard]

Time from the worker's ``redis-stream: reading`` log line until the group's
lag and pending count are 0 and the queue holds every message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import STREAM, Bench, fill_stream, group_done, log, stream_conf, wait_for


def bridge(bench: Bench, n: int, batch: int, fast: bool | None = None) -> float:
    """Entries per second; ``fast=None`` runs the default settings (the fast path on)."""
    bench.reset()
    fill_stream(bench.streams, STREAM, n)
    with bench.worker("unused", **stream_conf(batch, fast=fast)) as worker:
        done = wait_for(
            lambda: group_done(bench.streams, STREAM) == (0, 0) and bench.broker.llen("sink") >= n and time.time(),
            600, "the backlog dispatched", interval=0.01,
        )  # fmt: skip
        started = worker.log_time("redis-stream: reading")
        if fast is not False and "fast path not used" in worker.output():
            raise RuntimeError("the fast path was not used:\n" + worker.output()[-2000:])
    if bench.broker.llen("sink") != n:
        raise RuntimeError(f"{bench.broker.llen('sink')} messages for {n} entries")
    return n / (done - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--standard", action="store_true", help="stream_fast_path: False")
    args = parser.parse_args()
    bench = Bench()
    try:
        rate = bridge(bench, args.entries, args.batch, False if args.standard else None)
        log(f"bridge, batch {args.batch}, {'standard' if args.standard else 'default'} path: {rate:,.0f} entries/s")
    finally:
        bench.close()


if __name__ == "__main__":
    main()

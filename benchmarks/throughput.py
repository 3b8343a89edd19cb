"""Throughput of the bridge in a real `celery worker`: a pre-filled stream drained into a queue nobody consumes.

    .venv/bin/python benchmarks/throughput.py [--entries 40000] [--batch 100] [--standard]

The rate is taken while the bridge is in full swing: from the moment the
queue holds 10% of the messages to the moment it holds 90% (the worker's own
start-up, which overlaps the first batches, is not counted; the minimal
bridge baseline has none). The run ends when the group's lag and pending
count are 0 and the queue holds every message.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import STREAM, Bench, fill_stream, group_done, log, stream_conf, wait_for


def bridge(bench: Bench, n: int, batch: int, fast: bool | None = None, options: dict[str, Any] | None = None) -> float:
    """Entries per second; ``fast=None`` runs the default settings (the fast path on); ``options``: more keys of
    the stream's dict in stream_tasks (``dedupe``, ``rate_limit``)."""
    bench.reset()
    fill_stream(bench.streams, STREAM, n)
    lo, hi = n // 10, n - n // 10
    marks: dict[int, tuple[float, int]] = {}

    def progress() -> bool:
        queued = bench.broker.llen("sink")
        now = time.perf_counter()
        if lo not in marks and queued >= lo:
            marks[lo] = (now, queued)
        if hi not in marks and queued >= hi:
            marks[hi] = (now, queued)
        return queued >= n and group_done(bench.streams, STREAM) == (0, 0)

    conf = stream_conf(batch, fast=fast)
    conf["stream_tasks"][STREAM].update(options or {})
    with bench.worker("unused", **conf) as worker:
        wait_for(progress, 600, "the backlog dispatched", interval=0.005)
        if fast is not False and "fast path not used" in worker.output():
            raise RuntimeError("the fast path was not used:\n" + worker.output()[-2000:])
    if bench.broker.llen("sink") != n:
        raise RuntimeError(f"{bench.broker.llen('sink')} messages for {n} entries")
    (t0, n0), (t1, n1) = marks[lo], marks[hi]
    return (n1 - n0) / (t1 - t0)


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

"""The worker's own task rate with and without a stream backlog being bridged by the same worker at the same time.

    .venv/bin/python benchmarks/worker_share.py [--tasks 4000] [--backlog 100000]

A solo worker runs queued tasks of its own (each an INCR); only the time
during which the bridge was still busy counts (from 10% of the tasks done to
90% done, or to the moment the bridge caught up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from celery import Celery

from benchmarks.common import STREAM, Bench, fill_stream, group_done, log, stream_conf, wait_for


def task_rate(bench: Bench, app: Celery, tasks: int, backlog: int, fast: bool | None = None) -> dict[str, Any]:
    bench.reset()
    with app.producer_or_acquire() as producer, producer.batch(max_size=500):
        for _ in range(tasks):
            app.send_task("bench.count", producer=producer, queue="work")
    if backlog:
        fill_stream(bench.streams, STREAM, backlog)
    marks: dict[str, float] = {}
    lo, hi = int(tasks * 0.1), int(tasks * 0.9)

    def progress() -> bool:
        done = int(bench.results.get("executed") or 0)
        now = time.perf_counter()
        caught_up = bool(backlog) and group_done(bench.streams, STREAM) == (0, 0)
        if "lo" not in marks:
            if caught_up:
                raise RuntimeError("the bridge caught up before the measurement began: raise the backlog")
            if done >= lo:
                marks["lo"], marks["lo_done"] = now, done
            return False
        if done >= hi or caught_up:
            marks["hi"], marks["hi_done"] = now, done
            marks["caught_up"] = caught_up
            return True
        return False

    with bench.worker("work", quiet=True, **stream_conf(100, fast=fast)):
        wait_for(progress, 300, "the worker's own tasks", interval=0.01)
    return {
        "tasks_per_s": (marks["hi_done"] - marks["lo_done"]) / (marks["hi"] - marks["lo"]),
        "window_s": marks["hi"] - marks["lo"],
        "bridge_caught_up_in_window": bool(marks["caught_up"]),
    }


def main() -> None:
    from benchmarks.baselines import client_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--backlog", type=int, default=100_000)
    args = parser.parse_args()
    bench = Bench()
    try:
        app = client_app(bench)
        log(f"no backlog: {task_rate(bench, app, args.tasks, 0)}")
        log(f"backlog: {task_rate(bench, app, args.tasks, args.backlog)}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()

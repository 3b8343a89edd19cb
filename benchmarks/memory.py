"""Worker RSS after 10,000 and after N dispatched entries (default settings; the target queue is emptied as it goes).

    .venv/bin/python benchmarks/memory.py [--entries 200000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from benchmarks.common import (
    STREAM,
    Bench,
    fill_stream,
    group_done,
    log,
    peak_rss_mb,
    stream_conf,
    wait_for,
)

SMALL = 10_000


def memory(bench: Bench, large: int, batch: int = 100) -> dict[str, float]:
    bench.reset()
    fill_stream(bench.streams, STREAM, SMALL)
    out: dict[str, float] = {"entries_small": SMALL, "entries_large": large}
    with bench.worker("unused", **stream_conf(batch)) as worker:
        proc = psutil.Process(worker.pid)

        def drained() -> bool:
            bench.broker.delete("sink")  # the queue is not what is measured; keep Redis small
            return group_done(bench.streams, STREAM) == (0, 0)

        wait_for(drained, 300, f"{SMALL} entries dispatched", interval=0.2)
        time.sleep(0.5)
        out["rss_small_mb"] = proc.memory_info().rss / 2**20
        done = SMALL
        while done < large:
            step = min(50_000, large - done)
            fill_stream(bench.streams, STREAM, step, start=done)
            done += step
            wait_for(drained, 600, f"{done} entries dispatched", interval=0.2)
        time.sleep(0.5)
        out["rss_large_mb"] = proc.memory_info().rss / 2**20
        out["peak_rss_mb"] = peak_rss_mb(worker.pid)
    out["growth_mb"] = out["rss_large_mb"] - out["rss_small_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    args = parser.parse_args()
    bench = Bench()
    try:
        log(str(memory(bench, args.entries)))
    finally:
        bench.close()


if __name__ == "__main__":
    main()

"""The cost of the poison-entry bookkeeping: a worker draining a backlog with and without it, same run.

    .venv/bin/python benchmarks/deliveries.py [--entries 20000] [--runs 3] [--batch 100]

``stream_max_deliveries: None`` writes no in-flight record (the baseline);
the default 5 writes one HSET per batch and deletes it in the commit's
pipeline. Runs alternate between the two. Writes benchmarks/results/deliveries.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import RESULTS, STREAM, Bench, fill_stream, group_done, log, log_time  # noqa: E402
from tests.support import wait_for  # noqa: E402


def drain(bench: Bench, max_deliveries: int | None) -> float:
    """Entries/s of one worker dispatching the whole backlog (from its start-up log line to the last XACK)."""
    n = bench.args.entries
    bench.reset()
    fill_stream(bench.streams, STREAM, n)
    conf = {**bench.stream_conf(fast=True), "stream_max_deliveries": max_deliveries}
    with bench.worker("unused", **conf) as worker:
        done = wait_for(
            lambda: group_done(bench.streams, STREAM) == (0, 0) and bench.broker.llen("sink") >= n and time.time(),
            600, "the backlog dispatched", interval=0.01,
        )  # fmt: skip
        started = log_time(worker, "redis-stream: reading")
    assert bench.broker.llen("sink") == n
    return n / (done - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    bench = Bench(args)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.runs):
            for label, value in (("off", None), ("on", 5)):
                rate = drain(bench, value)
                rates[label].append(rate)
                log(f"max_deliveries={value}: {rate:,.0f} entries/s")
    finally:
        bench.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    out: dict[str, Any] = {
        "entries": args.entries, "batch": args.batch, "runs": args.runs, "rates": rates,
        "median_off": off, "median_on": on, "ratio": on / off,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deliveries.json").write_text(json.dumps(out, indent=2) + "\n")
    text = (
        "# Poison-entry bookkeeping: drain rate of one worker\n\n"
        f"{args.entries} entries, batch {args.batch}, {args.runs} alternating runs each, medians.\n\n"
        "| stream_max_deliveries | entries/s |\n|---|---|\n"
        f"| None (no in-flight record) | {off:,.0f} |\n| 5 (default) | {on:,.0f} |\n\n"
        f"Ratio with/without: **{on / off:.2f}**\n"
    )
    (RESULTS / "deliveries.md").write_text(text)
    log(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

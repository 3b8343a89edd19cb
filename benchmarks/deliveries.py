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

from benchmarks.common import RESULTS, STREAM, Bench, fill_stream, group_done, log, stream_conf, wait_for  # noqa: E402
from celery_redis_stream.testing.processes import Ready  # noqa: E402


def drain(bench: Bench, n: int, batch: int, max_deliveries: int | None) -> float:
    """Entries/s of one worker dispatching the whole backlog (from its step's start to the last XACK)."""
    bench.reset()
    fill_stream(bench.streams, STREAM, n)
    conf = {**stream_conf(batch, fast=True), "stream_max_deliveries": max_deliveries}
    with bench.worker("unused", **conf) as worker:
        done = wait_for(
            lambda: group_done(bench.streams, STREAM) == (0, 0) and bench.broker.llen("sink") >= n and time.time(),
            600, "the backlog dispatched", interval=0.01,
        )  # fmt: skip
        started = worker.event_time(Ready.STARTED)
    assert bench.broker.llen("sink") == n
    return n / (done - started)


def record_cost(bench: Bench, batch: int, batches: int = 2000) -> float:
    """Seconds per batch of what the bookkeeping adds: the record's HSET, and an HDEL in a pipeline."""
    from celery_redis_stream import keys
    from celery_redis_stream.batch.deliveries import Deliveries
    from celery_redis_stream.config import StreamConfig

    sc = StreamConfig(
        stream=STREAM, task="bench.noop", mode="group", group="celery", start="0",
        tracker_key=keys.tracker(STREAM), batch_size=100, dead_letter=keys.dead_letter(STREAM),
    )  # fmt: skip
    deliveries, client = Deliveries("bench@host"), bench.streams
    ids = [f"1700000000000-{i}" for i in range(batch)]
    started = time.perf_counter()
    for _ in range(batches):
        deliveries.begin(client, sc, ids)
        pipe = client.pipeline(transaction=False)
        for key, fields in deliveries.done(sc, ids).items():
            pipe.hdel(key, *fields)
        pipe.execute()  # the commit's own round trip carries this HDEL: counted here anyway (an upper bound)
        deliveries.committed(sc, ids)
    return (time.perf_counter() - started) / batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    bench = Bench()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for _ in range(args.runs):
            for label, value in (("off", None), ("on", 5)):
                rate = drain(bench, args.entries, args.batch, value)
                rates[label].append(rate)
                log(f"max_deliveries={value}: {rate:,.0f} entries/s")
        cost = statistics.median(record_cost(bench, args.batch) for _ in range(3))
    finally:
        bench.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    batch_seconds = args.batch / off
    out: dict[str, Any] = {
        "entries": args.entries, "batch": args.batch, "runs": args.runs, "rates": rates,
        "median_off": off, "median_on": on, "ratio": on / off,
        "record_seconds_per_batch": cost, "batch_seconds": batch_seconds, "share": cost / batch_seconds,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deliveries.json").write_text(json.dumps(out, indent=2) + "\n")
    text = (
        "# Poison-entry bookkeeping: drain rate of one worker\n\n"
        f"{args.entries} entries, batch {args.batch}, {args.runs} alternating runs each, medians.\n\n"
        "| stream_max_deliveries | entries/s |\n|---|---|\n"
        f"| None (no in-flight record) | {off:,.0f} |\n| 5 (default) | {on:,.0f} |\n\n"
        f"Ratio with/without: **{on / off:.2f}** (drain rates on a busy machine vary more than this cost)\n\n"
        f"Measured directly: the in-flight record costs {cost * 1e6:.0f} µs per batch (HSET, plus an HDEL that "
        f"in the worker rides in the commit's pipeline), against {batch_seconds * 1e3:.1f} ms per batch of "
        f"{args.batch} at the baseline drain rate: **{cost / batch_seconds:.1%}** of the batch time.\n"
    )
    (RESULTS / "deliveries.md").write_text(text)
    log(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The cost of traffic control: entries/s of the plain path, with deduplication, with a rate limit that never binds.

    .venv/bin/python benchmarks/traffic.py [--entries 20000] [--runs 3]

A real `celery worker` drains a pre-filled stream into a queue nobody
consumes (benchmarks/throughput.py), the broker on the streams' server (so
every batch takes the atomic step), runs interleaved so that a noisy moment
hits all three (the order rotating):

- plain: the default settings (no rate limit, no dedupe): what "free when off" is measured against;
- dedupe: ``{"key": "{n}"}``, every entry a new key (the worst case: every entry claims a record);
- rate limit: ``"1000000/s"``, a bucket that never runs dry: the cost of taking tokens before each read.

Writes benchmarks/results/traffic.json and traffic.md. Target: dedupe keeps at least half the plain rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, Bench, log, machine
from benchmarks.throughput import bridge
from celery_redis_stream.batch.dedupe import Dedupe
from celery_redis_stream.client.streams import connect
from celery_redis_stream.config import load_config, parse_rate
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.read.limit import Limiter
from celery_redis_stream.stats import StreamStats

SCENARIOS: dict[str, dict[str, Any]] = {
    "plain": {},
    "dedupe": {"dedupe": {"key": "{n}", "ttl_ms": 600_000}},
    "rate_limit_not_binding": {"rate_limit": "1000000/s"},
}


def round_trips(bench: Bench, batches: int = 300) -> dict[str, float]:
    """In-process, on the bench's server: ms per batch of 100 for the claim script, and per take + give back."""
    from celery import Celery

    app = Celery("traffic-bench", broker="memory://", set_as_current=False)
    app.conf.update(stream_url=bench.server.url_db(0), stream_tasks={"t": {
        "task": "bench.noop", "registered": False, "dedupe": {"key": "{n}", "ttl_ms": 60_000}}})  # fmt: skip
    config = load_config(app)
    (sc,) = config.streams
    assert sc.dedupe is not None
    client = connect(config)
    dedupe = Dedupe()
    started = time.perf_counter()
    for b in range(batches):
        entries = [RawEntry("t", f"{b}-{i}", (b"n", f"{b}.{i}".encode())) for i in range(100)]
        dedupe.claim(client, sc, sc.dedupe, entries)
    claim_ms = (time.perf_counter() - started) * 1000 / batches
    limiter = Limiter("t", parse_rate("1000000/s"), StreamStats("t", "group", "x", "g", None), lambda s: False)
    limiter.take(client, 100)
    started = time.perf_counter()
    for _ in range(batches):
        limiter.give_back(client, 100 - limiter.take(client, 100) + 1)
    take_ms = (time.perf_counter() - started) * 1000 / batches
    client.close()
    return {"dedupe_claim_ms_per_100": claim_ms, "rate_take_and_give_back_ms": take_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bench = Bench()
    runs: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    try:
        about = machine(bench.server)
        names = list(SCENARIOS)
        for i in range(args.runs):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # each scenario first once in a while
                runs[name].append(bridge(bench, args.entries, 100, options=SCENARIOS[name]))
                log(f"  {name} run {i + 1}/{args.runs}: {runs[name][-1]:,.0f} entries/s")
        costs = round_trips(bench)
    finally:
        bench.close()
    medians = {name: statistics.median(values) for name, values in runs.items()}
    out = {"machine": about, "entries": args.entries, "runs": runs, "median": medians,
           "dedupe_share_of_plain": medians["dedupe"] / medians["plain"], **costs}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "traffic.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"Machine: {about['cpu']}, {about['cores']} cores, shared (load average {about['load_average_at_start']}); "
        f"Redis {about['redis_server']}; {about['date']}. {args.entries:,} entries per run, batch 100, broker on "
        f"the streams' server (atomic step), median of {args.runs} interleaved runs.",
        "",
        "| scenario | entries/s (median) | runs | share of plain |",
        "|---|---|---|---|",
    ]
    for name, values in runs.items():
        shown = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {name} | {medians[name]:,.0f} | {shown} | {medians[name] / medians['plain']:.0%} |")
    lines += [
        "",
        f"In-process, per batch of 100: the dedupe claim script {costs['dedupe_claim_ms_per_100']:.2f} ms; "
        f"a rate limit's take and give back {costs['rate_take_and_give_back_ms']:.2f} ms.",
    ]
    (RESULTS / "traffic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

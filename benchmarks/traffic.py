"""The cost of traffic control: entries/s of the plain path, with deduplication, with a rate limit that never binds.

    .venv/bin/python benchmarks/traffic.py [--entries 20000] [--runs 3]

A real `celery worker` drains a pre-filled stream into a queue nobody
consumes (benchmarks/throughput.py), the broker on the streams' server (so
every batch takes the atomic step), runs interleaved so that a noisy moment
hits all three:

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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, Bench, log, machine
from benchmarks.throughput import bridge

SCENARIOS: dict[str, dict[str, Any]] = {
    "plain": {},
    "dedupe": {"dedupe": {"key": "{n}", "ttl_ms": 600_000}},
    "rate_limit_not_binding": {"rate_limit": "1000000/s"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    bench = Bench()
    runs: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    try:
        about = machine(bench.server)
        for i in range(args.runs):
            for name, options in SCENARIOS.items():
                runs[name].append(bridge(bench, args.entries, 100, options=options))
                log(f"  {name} run {i + 1}/{args.runs}: {runs[name][-1]:,.0f} entries/s")
    finally:
        bench.close()
    medians = {name: statistics.median(values) for name, values in runs.items()}
    out = {"machine": about, "entries": args.entries, "runs": runs, "median": medians,
           "dedupe_share_of_plain": medians["dedupe"] / medians["plain"]}  # fmt: skip
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
    (RESULTS / "traffic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Every benchmark scenario in one run, against baselines measured in the same run; writes the report.

    .venv/bin/python benchmarks/run.py [--quick] [--runs 3] [--entries 40000]

Starts its own redis-server (and a 3-master Redis Cluster for the many-streams
scenario) on free loopback ports and real `celery worker` processes on
benchmarks/benchapp.py; writes benchmarks/results/latest.json and latest.md.
The scenarios live one per module (throughput, baselines, latency, memory,
idle_cpu, worker_share, many_streams); the targets in targets.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import baselines, idle_cpu, latency, many_streams, memory, throughput, worker_share
from benchmarks.common import RESULTS, Bench, log, machine
from benchmarks.targets import TARGETS

LABELS = {
    "bridge_default_b100": "(a) bridge in a `celery worker`, default settings (fast path on, batch 100)",
    "bridge_default_b500": "(a) the same, `stream_batch_size: 500`",
    "bridge_standard_b100": "(a) the same, standard path (`stream_fast_path: False`, batch 100)",
    "send_task_loop": "(b) `send_task` loop, one reused producer",
    "send_task_batch": "(c) the same inside kombu `Producer.batch(max_size=100)`",
    "naive_bridge": "(d) naive bridge: XREAD COUNT 1, `send_task`, SET tracker per entry",
    "minimal_bridge_b100": "(e) minimal hand-written bridge, batch 100 (XREADGROUP, string template, LPUSH, XACK)",
    "minimal_bridge_b500": "(e) the same, batch 500",
}


def throughput_all(bench: Bench, app: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The bridge and the minimal bridge interleaved run by run, so that a noisy moment hits both."""
    n = args.entries
    scenarios = {
        "bridge_default_b100": lambda: throughput.bridge(bench, n, 100),
        "minimal_bridge_b100": lambda: baselines.minimal_bridge(bench, n, 100),
        "bridge_default_b500": lambda: throughput.bridge(bench, n, 500),
        "minimal_bridge_b500": lambda: baselines.minimal_bridge(bench, n, 500),
        "bridge_standard_b100": lambda: throughput.bridge(bench, n // 2, 100, fast=False),
        "send_task_loop": lambda: baselines.send_task_loop(bench, app, args.loop_entries),
        "send_task_batch": lambda: baselines.send_task_loop(bench, app, args.loop_entries, batch=100),
        "naive_bridge": lambda: baselines.naive_bridge(bench, app, args.naive_entries),
    }
    runs: dict[str, list[float]] = {k: [] for k in scenarios}
    for i in range(args.runs):
        for key, fn in scenarios.items():
            runs[key].append(fn())
            log(f"  {key} run {i + 1}/{args.runs}: {runs[key][-1]:,.0f} entries/s")
    return {k: {"median": statistics.median(v), "runs": v} for k, v in runs.items()}


def decoders_all(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Each decoder's entries/s, default settings, batch 100: one short run each (the same fields, written for it)."""
    out: dict[str, Any] = {}
    for decode in throughput.DECODERS:
        out[decode] = throughput.bridge(bench, args.decoder_entries, 100, decode=decode)
        log(f"  decode {decode}: {out[decode]:,.0f} entries/s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=None, help="entries per bridge throughput run (40,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per throughput figure; the median is kept (5)")
    parser.add_argument("--quick", action="store_true", help="smaller everything: about two minutes")
    args = parser.parse_args(argv)
    quick = args.quick
    args.entries = args.entries or (15_000 if quick else 40_000)
    args.runs = args.runs or (1 if quick else 5)
    args.loop_entries = 3_000 if quick else 8_000
    args.naive_entries = 1_500 if quick else 3_000
    args.latency_seconds = 4 if quick else 8
    args.rss_entries = 50_000 if quick else 200_000
    args.idle_seconds = 4 if quick else 8
    args.rate_tasks = 2_000 if quick else 4_000
    args.backlog = 60_000 if quick else 120_000
    args.many_entries = 10_000 if quick else 20_000
    args.decoder_entries = 10_000 if quick else 20_000

    bench = Bench()
    began = time.monotonic()
    try:
        app = baselines.client_app(bench)
        baselines.check_minimal_message(bench, app)
        out: dict[str, Any] = {
            "machine": machine(bench.server),
            "settings": {k: v for k, v in vars(args).items()},
        }
        log(f"redis-server {out['machine']['redis_server']} on port {bench.server.port}; "
            f"load average {out['machine']['load_average_at_start']}")  # fmt: skip
        out["throughput"] = throughput_all(bench, app, args)
        out["decoders"] = decoders_all(bench, args)

        out["latency"] = {}
        for name, fast in (("default", None), ("standard", False)):
            out["latency"][name] = result = latency.latency(bench, args.latency_seconds, fast)
            log(f"  latency at {latency.RATE}/s, {name}: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")

        out["memory"] = memory.memory(bench, args.rss_entries)
        log(f"  RSS {out['memory']['rss_small_mb']:.1f} MB -> {out['memory']['rss_large_mb']:.1f} MB")

        out["idle_cpu_percent"] = {
            "with_bridge": idle_cpu.idle_cpu(bench, args.idle_seconds, True),
            "without_bridge": idle_cpu.idle_cpu(bench, args.idle_seconds, False),
        }
        log(f"  idle CPU {out['idle_cpu_percent']}")

        share: dict[str, Any] = {}
        for name, backlog in (("no_backlog", 0), ("backlog", args.backlog)):
            share[name] = worker_share.task_rate(bench, app, args.rate_tasks, backlog)
            log(f"  worker task rate, {name}: {share[name]['tasks_per_s']:,.0f} tasks/s")
        share["drop_percent"] = 100 * (1 - share["backlog"]["tasks_per_s"] / share["no_backlog"]["tasks_per_s"])
        out["worker_share"] = share
    finally:
        bench.close()
    log("  many streams (single Redis and a 3-master cluster)")
    out["many_streams"] = many_streams.run(args.many_entries)
    many_streams.write(out["many_streams"], out["machine"]["date"])
    out["elapsed_s"] = time.monotonic() - began
    out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["targets"] = [
        {"label": t.label, "value": t.value(out), "op": t.op, "threshold": t.threshold, "met": t.met(out)}
        for t in TARGETS
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2) + "\n")
    report = markdown(out)
    (RESULTS / "latest.md").write_text(report)
    print()
    print(report)
    return 0


def markdown(out: dict[str, Any]) -> str:
    m, s, thr = out["machine"], out["settings"], out["throughput"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, shared (load average at start {m['load_average_at_start']}, "
        f"at end {m['load_average_at_end']}); Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}, "
        f"redis-py {m['redis_py']}, Redis {m['redis_server']} on loopback; {m['date']}.",
        f"Settings: {s['entries']:,} entries of 3 small fields per bridge run ({s['entries'] // 2:,} for the "
        f"standard path), {s['loop_entries']:,} for the `send_task` loops, {s['naive_entries']:,} for the naive "
        f"bridge; median of {s['runs']} interleaved run(s){' (--quick)' if s['quick'] else ''}; "
        f"total {out['elapsed_s']:.0f} s.",
        "",
        "| what | entries/s (median) | runs |",
        "|---|---:|---|",
    ]
    for key, label in LABELS.items():
        runs = ", ".join(f"{v:,.0f}" for v in thr[key]["runs"])
        lines.append(f"| {label} | {thr[key]['median']:,.0f} | {runs} |")
    lines += ["", "| target | measured | target | |", "|---|---:|---|---|"]
    for t in out["targets"]:
        unit = next(x.unit for x in TARGETS if x.label == t["label"])
        value = f"{t['value']:.2f}{unit}" if unit == "x" else f"{t['value']:.2f} {unit}".strip()
        verdict = "met" if t["met"] else "**not met**"
        lines.append(f"| {t['label']} | {value} | {t['op']} {t['threshold']:g} | {verdict} |")
    lines += ["", "| measurement | value |", "|---|---|"]
    for name, lat in out["latency"].items():
        lines.append(
            f"| latency XADD -> task start at {latency.RATE}/s, {name} path ({lat['samples']} samples) | "
            f"p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
            f"max {lat['max_ms']:.1f} ms |"
        )
    mem = out["memory"]
    lines.append(
        f"| worker RSS after {mem['entries_small']:,} / {mem['entries_large']:,} entries (default settings) | "
        f"{mem['rss_small_mb']:.1f} MB / {mem['rss_large_mb']:.1f} MB (growth {mem['growth_mb']:+.1f} MB; "
        f"peak {mem['peak_rss_mb']:.1f} MB) |"
    )
    cpu = out["idle_cpu_percent"]
    lines.append(
        f"| idle CPU, streams empty | {cpu['with_bridge']:.2f}% of a core (worker without the bridge: "
        f"{cpu['without_bridge']:.2f}%) |"
    )
    share = out["worker_share"]
    lines.append(
        f"| worker's own task rate without / with a backlog being bridged (default settings) | "
        f"{share['no_backlog']['tasks_per_s']:,.0f} / {share['backlog']['tasks_per_s']:,.0f} tasks/s "
        f"({-share['drop_percent']:+.0f}%) |"
    )
    if "decoders" in out:
        lines += ["", f"Decoders (`stream_decode`; default settings, batch 100, {s['decoder_entries']:,} entries "
                  "of the same 3 small fields, one run each; `raw` with a converter that decodes the bytes):", "",
                  "| decode | entries/s |", "|---|---:|"]  # fmt: skip
        lines += [f"| `{decode}` | {rate:,.0f} |" for decode, rate in out["decoders"].items()]
    lines += ["", "Many streams (`benchmarks/many_streams.py`): solo workers consuming an unused queue; idle CPU "
              "over 5 s with every stream empty; trickle latency: one entry at a time to a random stream, "
              f"{many_streams.TRICKLE_SAMPLES} samples with random gaps of 0-{many_streams.TRICKLE_MAX_GAP_S:g} s, "
              "XADD -> message in the broker queue.", ""]  # fmt: skip
    lines += many_streams.markdown(out["many_streams"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

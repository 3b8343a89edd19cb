"""Many streams: start-up, threads, memory, throughput, idle CPU and trickle latency of workers reading 100 streams.

    .venv/bin/python benchmarks/many_streams.py [--entries 20000]
    .venv/bin/python benchmarks/many_streams.py --patterns 100,1000,10000,20000

``--patterns``: one worker reading N pattern-discovered streams (``tenant:*``,
5 entries each): drain time, threads, RSS, idle CPU of the worker and of
Redis, latency p50/p99/max of PATTERN_SAMPLES entries spread over more than
one whole upkeep interval, warm stop time, INFO log lines at start and stop.
Writes benchmarks/results/many_patterns.json and .md.

On one redis-server (streams db 0, broker db 1) and on a private 3-master
Redis Cluster holding the streams (broker on the plain server), real
`celery worker --pool solo` processes consume an unused queue, so what is
measured is the bridge alone: stream entry -> task message accepted by the
broker. Writes benchmarks/results/many_streams.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import redis

from benchmarks.common import (
    RESULTS,
    Cluster,
    RedisServer,
    Worker,
    bench_env,
    log,
    rss_mb,
    wait_for,
)
from benchmarks.idle_cpu import cpu_percent
from celery_redis_stream.testing import processes

# (workers, streams, where, stream name template, measure idle CPU and trickle latency)
SCENARIOS = [
    (1, 100, "single", "bench:{i}", True),
    (4, 20, "single", "bench:{i}", False),
    (1, 100, "cluster", "bench:{i}", True),
    (1, 100, "cluster", "{{bench}}:{i}", True),
]
TRICKLE_SAMPLES = 40
TRICKLE_MAX_GAP_S = 0.4


def groups_ready(client: Any, streams: list[str], consumers: int) -> bool:
    """Every stream has the group, and (once they read) every worker is a consumer of it."""
    pipe = client.pipeline(transaction=False)
    for s in streams:
        pipe.xinfo_groups(s)
    try:
        replies = pipe.execute()
    except redis.ResponseError:
        return False  # a stream does not exist yet: its group is not created
    if consumers == 0:
        return all(replies)
    return all(r and r[0]["consumers"] >= consumers for r in replies)


def trickle_latency(client: Any, broker: redis.Redis, streams: list[str]) -> dict[str, float]:
    """XADD one entry to a random stream, time until its message is in the broker queue; random gaps between."""
    rng = random.Random(7)
    samples = []
    for i in range(TRICKLE_SAMPLES):
        time.sleep(rng.uniform(0, TRICKLE_MAX_GAP_S))
        started = time.perf_counter()
        client.xadd(rng.choice(streams), {"n": str(i)})
        if broker.brpop(["celery"], timeout=10) is None:
            raise RuntimeError("a trickled entry was not dispatched within 10 s")
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p90_ms": samples[int(0.9 * len(samples)) - 1],
        "max_ms": samples[-1],
    }


def scenario(
    server: RedisServer, cluster: Cluster | None, n_workers: int, n_streams: int, name: str, entries: int,
    extras: bool,
) -> dict[str, Any]:  # fmt: skip
    server.client().flushall()
    streams = [name.format(i=i) for i in range(n_streams)]
    broker = server.client(1)
    if cluster is not None:
        cluster.flush()
        c: Any = cluster.client()
        nodes = cluster.nodes
    else:
        c, nodes = server.client(), [server]
    env = bench_env(
        cluster.url if cluster is not None else server.url_db(0), server.url_db(1), server.url_db(2),
        stream_tasks=dict.fromkeys(streams, "bench.noop"), stream_block_ms=1000,
    )  # fmt: skip
    workers = [Worker(env, f"many{n}", queues="idle") for n in range(n_workers)]
    try:
        t0 = time.monotonic()
        for w in workers:
            w.start(wait=None)
        wait_for(lambda: groups_ready(c, streams, 0), 120, "all groups created", interval=0.01)
        t_groups = time.monotonic() - t0
        wait_for(lambda: groups_ready(c, streams, n_workers), 120, "every worker reading", interval=0.01)
        t_reading = time.monotonic() - t0
        time.sleep(0.5)
        rss_start = [rss_mb(w.pid) for w in workers]
        threads = [psutil.Process(w.pid).num_threads() for w in workers]
        connections = sum(1 for n in nodes for x in n.client().client_list() if x.get("name") == "celery-redis-stream")
        out: dict[str, Any] = {}
        if extras:
            out["idle_cpu_percent"] = round(cpu_percent(workers[0].pid, 5.0), 2)
            out["trickle_latency"] = {k: round(v, 1) for k, v in trickle_latency(c, broker, streams).items()}
            broker.delete("celery")

        per_stream = entries // n_streams
        total = per_stream * n_streams
        t1 = time.monotonic()
        for start in range(0, per_stream, 500):
            pipe = c.pipeline(transaction=False)
            for i in range(start, min(per_stream, start + 500)):
                for s in streams:
                    pipe.xadd(s, {"n": str(i), "payload": "x" * 32})
            pipe.execute()
        t_written = time.monotonic() - t1
        wait_for(lambda: broker.llen("celery") >= total, 300, f"{total} task messages", interval=0.02)
        elapsed = time.monotonic() - t1
        rss_end = [rss_mb(w.pid) for w in workers]
        origins: dict[str, int] = {}
        for raw in broker.lrange("celery", 0, -1):
            origin = json.loads(raw)["headers"]["origin"]
            origins[origin] = origins.get(origin, 0) + 1
        return {
            "where": "3-master cluster" if cluster is not None else "single Redis",
            "names": name.replace("{{", "{").replace("}}", "}").replace("{i}", "N"),
            "workers": n_workers,
            "streams": n_streams,
            "entries": total,
            "startup_groups_s": round(t_groups, 2),
            "startup_all_reading_s": round(t_reading, 2),
            "write_s": round(t_written, 2),
            "dispatch_s": round(elapsed, 2),
            "entries_per_s": round(total / elapsed),
            "rss_mb_start": [round(x, 1) for x in rss_start],
            "rss_mb_end": [round(x, 1) for x in rss_end],
            "threads": threads,
            "reader_connections": connections,
            "dispatched_per_worker": sorted(origins.values()),
            **out,
        }
    finally:
        for w in workers:
            w.stop()


PATTERN_SAMPLES = 150
PATTERN_ENTRIES = 5
#: The group reader's upkeep interval with the default stream_claim_idle_ms (60 s): half of it, at most 30 s.
UPKEEP_INTERVAL_S = 30.0


def info_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if " INFO/" in line)


def spread_latency(client: redis.Redis, broker: redis.Redis, streams: list[str], seconds: float) -> dict[str, float]:
    """PATTERN_SAMPLES entries, one at a time to random streams, spread evenly (jittered) over ``seconds``."""
    rng = random.Random(11)
    gap = seconds / PATTERN_SAMPLES
    samples = []
    for i in range(PATTERN_SAMPLES):
        time.sleep(rng.uniform(0.5 * gap, 1.5 * gap))
        started = time.perf_counter()
        client.xadd(rng.choice(streams), {"n": str(i)})
        if broker.brpop(["celery"], timeout=15) is None:
            raise RuntimeError("an entry was not dispatched within 15 s")
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "p99_ms": round(samples[int(0.99 * len(samples)) - 1], 1),
        "max_ms": round(samples[-1], 1),
    }


def pattern_scenario(server: RedisServer, n_streams: int) -> dict[str, Any]:
    """One worker, ``n_streams`` streams matching ``tenant:*`` with PATTERN_ENTRIES entries each."""
    c = server.client()
    c.flushall()
    streams = [f"tenant:{i}" for i in range(n_streams)]
    for start in range(0, n_streams, 1000):
        pipe = c.pipeline(transaction=False)
        for s in streams[start : start + 1000]:
            for i in range(PATTERN_ENTRIES):
                pipe.xadd(s, {"n": str(i)})
        pipe.execute()
    broker = server.client(1)
    env = bench_env(
        server.url_db(0), server.url_db(1), server.url_db(2),
        stream_tasks={"tenant:*": "bench.noop"}, stream_start="0", stream_block_ms=1000,
    )  # fmt: skip
    worker = Worker(env, f"tenants{n_streams}", queues="idle")
    total = n_streams * PATTERN_ENTRIES
    redis_pid = server.proc.pid if server.proc is not None else 0
    try:
        t0 = time.monotonic()
        worker.start(wait=None)
        wait_for(lambda: broker.llen("celery") >= total, 600, f"{total} task messages", interval=0.05)
        drain = time.monotonic() - t0
        broker.delete("celery")
        time.sleep(2.0)
        started_lines = info_lines(worker.output())
        out: dict[str, Any] = {
            "streams": n_streams,
            "entries": total,
            "drain_s": round(drain, 2),
            "threads": psutil.Process(worker.pid).num_threads(),
            "rss_mb": round(rss_mb(worker.pid), 1),
        }
        redis_cpu0 = psutil.Process(redis_pid).cpu_times()
        t1 = time.monotonic()
        out["idle_cpu_worker_percent"] = round(cpu_percent(worker.pid, 20.0), 2)
        redis_cpu1 = psutil.Process(redis_pid).cpu_times()
        spent = (redis_cpu1.user - redis_cpu0.user) + (redis_cpu1.system - redis_cpu0.system)
        out["idle_cpu_redis_percent"] = round(100.0 * spent / (time.monotonic() - t1), 2)
        out["latency"] = spread_latency(c, broker, streams, UPKEEP_INTERVAL_S + 5.0)
        t2 = time.monotonic()
        processes.WorkerProcess.stop(worker, 60)  # keeps the log (Worker.stop removes it)
        out["warm_stop_s"] = round(time.monotonic() - t2, 2)
        text = worker.output()
        out["info_lines_start"] = started_lines
        out["info_lines_start_stop"] = info_lines(text)
        out["redis_stream_info_lines"] = sum(
            1 for line in text.splitlines() if " INFO/" in line and "redis-stream:" in line
        )
        return out
    finally:
        worker.stop()


def run_patterns(sizes: list[int]) -> list[dict[str, Any]]:
    server = RedisServer().start()
    results: list[dict[str, Any]] = []
    try:
        for n in sizes:
            result = pattern_scenario(server, n)
            log(f"  1 worker x {n} pattern streams: {json.dumps(result)}")
            results.append(result)
    finally:
        server.stop()
    return results


def markdown_patterns(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| streams | drain | threads | RSS | idle CPU worker / Redis | latency p50 / p99 / max | warm stop "
        "| INFO lines start + stop |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat = r["latency"]
        lines.append(
            f"| {r['streams']:,} | {r['drain_s']} s ({r['entries']:,} entries) | {r['threads']} | {r['rss_mb']:.0f} MB "
            f"| {r['idle_cpu_worker_percent']} % / {r['idle_cpu_redis_percent']} % "
            f"| {lat['p50_ms']} / {lat['p99_ms']} / {lat['max_ms']} ms | {r['warm_stop_s']} s "
            f"| {r['info_lines_start_stop']} |"
        )
    return lines


def write_patterns(results: list[dict[str, Any]], when: str) -> None:
    """benchmarks/results/many_patterns.json and .md."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "many_patterns.json").write_text(json.dumps(results, indent=2) + "\n")
    text = [
        "# Many pattern streams in one worker",
        "",
        f"Produced by `benchmarks/many_streams.py --patterns` on {when}: one local redis-server (streams db 0, "
        'broker db 1); one `celery worker --pool solo` with `stream_tasks = {"tenant:*": ...}`, '
        f"stream_start 0, {PATTERN_ENTRIES} entries per stream, consuming an unused queue. Drain: worker launch to "
        "every entry's task message in the broker. Idle CPU: 20 s, nothing written. Latency: "
        f"{PATTERN_SAMPLES} entries, one at a time to random streams, spread over {UPKEEP_INTERVAL_S + 5:g} s "
        "(more than one upkeep interval), XADD -> message in the broker queue. Warm stop: SIGTERM to exit.",
        "",
        *markdown_patterns(results),
        "",
    ]
    (RESULTS / "many_patterns.md").write_text("\n".join(text))


def run(entries: int) -> list[dict[str, Any]]:
    server = RedisServer().start()
    cluster = Cluster(masters=3).start()
    results: list[dict[str, Any]] = []
    try:
        for n_workers, n_streams, where, name, extras in SCENARIOS:
            result = scenario(
                server, cluster if where == "cluster" else None, n_workers, n_streams, name, entries, extras
            )  # fmt: skip
            log(f"  {n_workers} worker(s) x {n_streams} streams ({where} {name}): {json.dumps(result)}")
            results.append(result)
    finally:
        cluster.stop()
        server.stop()
    return results


def markdown(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| where | stream names | workers x streams | start-up: all groups created | every worker reading "
        "| RSS per worker (start -> end) | threads per worker | reader connections | dispatch rate "
        "| dispatched per worker | idle CPU | trickle latency p50 / p90 / max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = ", ".join(f"{a:.0f} -> {b:.0f} MB" for a, b in zip(r["rss_mb_start"], r["rss_mb_end"], strict=True))
        lat = r.get("trickle_latency")
        latency = f"{lat['p50_ms']} / {lat['p90_ms']} / {lat['max_ms']} ms" if lat else ""
        idle = f"{r['idle_cpu_percent']}%" if "idle_cpu_percent" in r else ""
        lines.append(
            f"| {r['where']} | `{r['names']}` | {r['workers']} x {r['streams']} | {r['startup_groups_s']} s "
            f"| {r['startup_all_reading_s']} s | {rss} | {', '.join(map(str, r['threads']))} "
            f"| {r['reader_connections']} | {r['entries_per_s']:,}/s ({r['entries']:,} entries) "
            f"| {', '.join(map(str, r['dispatched_per_worker']))} "
            f"| {idle} | {latency} |"
        )
    return lines


def write(results: list[dict[str, Any]], when: str) -> None:
    """benchmarks/results/many_streams.json and .md."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "many_streams.json").write_text(json.dumps(results, indent=2) + "\n")
    text = [
        "# Many streams",
        "",
        f"Produced by `benchmarks/many_streams.py` (also part of `make bench`) on {when}: one local redis-server "
        "(streams db 0, broker db 1) and, for the cluster rows, a local 3-master Redis Cluster holding the streams. "
        "Workers: `celery worker --pool solo` consuming an unused queue, default settings, so the figures are the "
        "bridge alone (stream entry -> task message accepted by the broker). Start-up: from launching the "
        "worker(s) to every stream having its group, then to every worker being a consumer of every group. "
        "Threads: the whole worker process (Celery's main thread included). Idle CPU: over 5 s with every stream "
        f"empty. Trickle latency: one entry at a time to a random stream, {TRICKLE_SAMPLES} samples with random "
        f"gaps of 0-{TRICKLE_MAX_GAP_S:g} s, XADD -> message in the broker queue.",
        "",
        *markdown(results),
        "",
    ]
    (RESULTS / "many_streams.md").write_text("\n".join(text))


def main() -> None:
    from datetime import datetime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--patterns", help="comma-separated stream counts: the pattern scenario only")
    args = parser.parse_args()
    if args.patterns:
        found = run_patterns([int(n) for n in args.patterns.split(",")])
        write_patterns(found, datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
        log("\n".join(markdown_patterns(found)))
        return
    results = run(args.entries)
    write(results, datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    log("\n".join(markdown(results)))


if __name__ == "__main__":
    main()

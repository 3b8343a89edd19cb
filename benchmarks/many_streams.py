"""Many streams: start-up time, memory and throughput of 1 worker x 100 streams and 4 workers x 20 streams.

    .venv/bin/python benchmarks/many_streams.py [--entries 20000] [--runs 2]

Starts its own redis-server on a free loopback port (streams db 0, broker
db 1) and real `celery worker` processes (tests/workerapp.py, solo pool).
The workers consume an unused queue, so what is measured is the bridge alone:
stream entry -> task message accepted by the broker. Writes
benchmarks/results/many_streams.md and many_streams.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from tests.cluster import Cluster  # noqa: E402
from tests.support import RedisServer, Worker, wait_for, worker_env  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# (workers, streams, where, stream name template)
SCENARIOS = [
    (1, 100, "single", "bench:{i}"),
    (4, 20, "single", "bench:{i}"),
    (1, 100, "cluster", "bench:{i}"),
    (1, 100, "cluster", "{{bench}}:{i}"),
]


def log(text: str) -> None:
    print(text, flush=True)


def groups_ready(client: redis.Redis, streams: list[str], consumers: int) -> bool:
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


def rss_mb(worker: Worker) -> float:
    assert worker.proc is not None
    proc = psutil.Process(worker.proc.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def run(
    server: RedisServer, cluster: Cluster | None, n_workers: int, n_streams: int, name: str, entries: int
) -> dict[str, Any]:
    server.client().flushall()
    streams = [name.format(i=i) for i in range(n_streams)]
    broker = server.client(1)
    if cluster is not None:
        cluster.flush()
        c: Any = cluster.client()
        nodes = cluster.masters_now()
    else:
        c, nodes = server.client(), [server]
    env = worker_env(
        cluster.url if cluster is not None else server.url_db(0), server.url_db(1), server.url_db(2),
        dict.fromkeys(streams, "tests.record"), stream_block_ms=1000,
    )  # fmt: skip
    workers = [Worker(env, name=f"bench{n}", queues="idle") for n in range(n_workers)]
    try:
        t0 = time.monotonic()
        for w in workers:
            w.start(wait=None)
        wait_for(lambda: groups_ready(c, streams, 0), 120, "all groups created", interval=0.01)
        t_groups = time.monotonic() - t0
        wait_for(lambda: groups_ready(c, streams, n_workers), 120, "every worker reading", interval=0.01)
        t_reading = time.monotonic() - t0
        rss_start = [rss_mb(w) for w in workers]
        threads = [psutil.Process(w.proc.pid).num_threads() for w in workers if w.proc is not None]
        connections = sum(1 for n in nodes for x in n.client().client_list() if x.get("name") == "celery-redis-stream")

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
        rss_end = [rss_mb(w) for w in workers]
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
        }
    finally:
        for w in workers:
            w.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    server = RedisServer().start()
    cluster = Cluster(masters=3).start()
    results: list[dict[str, Any]] = []
    try:
        for n_workers, n_streams, where, name in SCENARIOS:
            runs = []
            for r in range(args.runs):
                result = run(server, cluster if where == "cluster" else None, n_workers, n_streams, name, args.entries)
                log(f"{n_workers} worker(s) x {n_streams} streams ({where} {name}), run {r + 1}: {json.dumps(result)}")
                runs.append(result)
            best = max(runs, key=lambda x: x["entries_per_s"])
            best["entries_per_s_median"] = round(statistics.median(x["entries_per_s"] for x in runs))
            best["startup_groups_s_median"] = round(statistics.median(x["startup_groups_s"] for x in runs), 2)
            results.append(best)
    finally:
        cluster.stop()
        server.stop()
    write(results, args)


def write(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "celery": celery.__version__,
        "redis_py": redis.__version__,
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (RESULTS / "many_streams.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    lines = [
        "# Many streams",
        "",
        "Produced by `benchmarks/many_streams.py` "
        f"(`--entries {args.entries} --runs {args.runs}`) on {machine['date']}: "
        f"{machine['cpus']} CPUs shared with other work, Python {machine['python']}, Celery {machine['celery']}, "
        f"redis-py {machine['redis_py']}, one local redis-server (streams db 0, broker db 1) "
        "and, for the cluster rows, a local 3-master Redis Cluster holding the streams. "
        "Workers: `celery worker --pool solo` consuming an unused queue, so the figures are the bridge alone "
        "(stream entry -> task message accepted by the broker). Best run shown, median in brackets.",
        "",
        "| where | stream names | workers x streams | start-up: all groups created | every worker reading "
        "| RSS per worker (start -> end) "
        "| threads per worker | reader connections | entries | dispatch rate | dispatched per worker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss = ", ".join(f"{a:.0f} -> {b:.0f} MB" for a, b in zip(r["rss_mb_start"], r["rss_mb_end"], strict=True))
        lines.append(
            f"| {r['where']} | `{r['names']}` | {r['workers']} x {r['streams']} "
            f"| {r['startup_groups_s']} s ({r['startup_groups_s_median']} s) "
            f"| {r['startup_all_reading_s']} s | {rss} | {', '.join(map(str, r['threads']))} "
            f"| {r['reader_connections']} | {r['entries']} "
            f"| {r['entries_per_s']}/s ({r['entries_per_s_median']}/s) "
            f"| {', '.join(map(str, r['dispatched_per_worker']))} |"
        )
    lines += [
        "",
        "Start-up is measured from launching the worker process(es) to every stream having its group "
        "(XGROUP CREATE MKSTREAM), then to every worker being a consumer of every group; it is dominated by "
        "Celery's own start-up. Threads are the whole worker process (Celery's own included): the bridge "
        "adds one reader thread per group on a single Redis, whatever the number of streams, and one per "
        "hash slot on a cluster (one XREADGROUP cannot span slots): 100 untagged names occupy ~100 slots, "
        "while names sharing a hash tag (`{bench}:N`) share one slot, one thread and one connection.",
        "",
    ]
    (RESULTS / "many_streams.md").write_text("\n".join(lines))
    log("\n".join(lines))


if __name__ == "__main__":
    main()

"""The atomic step (one script: push, dead letters, position) against the two round trips it replaces.

    .venv/bin/python benchmarks/atomic_step.py [--entries 10000] [--runs 3]

In one process, against its own redis-server (streams db 0, broker db 1), the
reader's own code drains a stream batch by batch, both ways, runs interleaved:

- two steps: the fast path's LPUSH pipeline on the broker connection, then the
  commit (XACK, or the fenced tracker script) on the streams connection: what a
  reader does when the broker is another server (at least once);
- atomic: the same built messages, the fence, the dead letters and the position
  in one EVALSHA (atomic.py): what it does when they share a server (exactly once).

Reads are included (XREADGROUP / XREAD per batch), as in the worker. Then
the same in real `celery worker` processes (benchmarks/benchapp.py, group
mode): the broker on the streams' server (exactly once, the atomic step) or
on a second redis-server (at least once, the two round trips). Writes
benchmarks/results/atomic_step.md and atomic_step.json.
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
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from benchmarks.common import RedisServer, Worker, fill_stream, group_done, wait_for  # noqa: E402
from celery_redis_stream.client.connection import connect  # noqa: E402
from celery_redis_stream.client.streams import read_group, read_tracked  # noqa: E402
from celery_redis_stream.config import load_config  # noqa: E402
from celery_redis_stream.position.lease import Lease  # noqa: E402
from celery_redis_stream.position.rule import commit  # noqa: E402
from celery_redis_stream.publish.dispatch import Dispatcher  # noqa: E402
from celery_redis_stream.publish.exactly_once import ExactlyOnce  # noqa: E402
from celery_redis_stream.stats import StreamStats  # noqa: E402
from celery_redis_stream.testing.processes import Ready  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "bench"
SIZES = {"3 small fields": {"a": "1", "b": "hello", "c": "x"}, "~1 KB entry": {"a": "1", "body": "x" * 1000}}


def noop(*args: Any, **kwargs: Any) -> None:
    """The mapped task; never run."""


def server_cpu(server: RedisServer) -> float:
    info = server.client(0).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def drain(
    server: RedisServer, mode: str, batch: int, fields: dict[str, str], n: int, atomic: bool
) -> tuple[float, float, float]:
    """Draining ``n`` entries one way: entries per second, and CPU µs per entry in this process and in Redis.

    On a loaded machine the rate is noisy; the CPU per entry is what each way costs.
    """
    server.client(0).flushall()
    pipe = server.client(0).pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {**fields, "n": str(i)})
    pipe.execute()
    app = Celery("bench-atomic", broker=server.url_db(1), set_as_current=False)
    app.task(name="bench.noop", shared=False)(noop)
    app.conf.update(
        stream_url=server.url_db(0),
        stream_tasks={STREAM: {"task": "bench.noop", "queue": "sink", "mode": mode}},
        stream_start="0",
        stream_batch_size=batch,
        stream_fast_path=True,
    )
    config = load_config(app)
    (sc,) = config.streams
    client = connect(config)
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    exactly = ExactlyOnce(config, dispatcher.fast_path, "bench")
    stats = StreamStats(STREAM, mode, sc.task, sc.group, sc.tracker_key)
    lease = Lease(client, "bench", 60_000) if mode == "tracker" else None
    if mode == "group":
        client.xgroup_create(STREAM, sc.group, id="0")
    else:
        client.set(sc.tracker_key, "0-0")
        assert lease is not None and lease.acquire(sc)
    position, done = "0-0", 0
    started, cpu, redis_cpu = time.perf_counter(), time.process_time(), server_cpu(server)
    try:
        while done < n:
            if mode == "group":
                entries = read_group(client, sc.group, "bench", {STREAM: ">"}, count=batch, block_ms=None)[STREAM]
            else:
                entries = read_tracked(client, {STREAM: position}, count=batch, block_ms=None)[STREAM]
            ids = [e.id for e in entries]
            if atomic:
                step = exactly.step(client, sc, ids, [], stats=stats, lease=lease, after=position)
                assert step is not None
                dead = dispatcher.send(sc, entries, step=step)
                if not step.commit(dead):
                    raise RuntimeError(f"the atomic step was not used: {stats.guarantee_reason}")
            else:
                dead = dispatcher.send(sc, entries)
                commit(client, sc, ids, dead, lease=lease)
            position, done = ids[-1], done + len(ids)
        elapsed = time.perf_counter() - started
        cpu, redis_cpu = time.process_time() - cpu, server_cpu(server) - redis_cpu
    finally:
        dispatcher.close()
        client.close()
    assert server.client(1).llen("sink") == n
    return n / elapsed, cpu / n * 1e6, redis_cpu / n * 1e6


def worker_rate(streams: RedisServer, broker: RedisServer, batch: int, n: int, name: str) -> float:
    """Entries per second of a real worker draining ``n`` entries (group mode, fast path) to ``broker``."""
    for server in {id(streams): streams, id(broker): broker}.values():
        server.client(0).flushall()
    fill_stream(streams.client(0), STREAM, n)
    conf = {
        "stream_tasks": {STREAM: {"task": "bench.noop", "queue": "sink"}},
        "stream_start": "0",
        "stream_batch_size": batch,
        "stream_fast_path": True,
    }
    env = {
        "BENCH_STREAM_URL": streams.url_db(0),
        "BENCH_BROKER_URL": broker.url_db(1),
        "BENCH_RESULTS_URL": streams.url_db(2),
        "BENCH_CONF": json.dumps(conf),
    }
    worker = Worker(env, name, queues="unused").start()
    try:
        sink = broker.client(1)
        done = wait_for(
            lambda: group_done(streams.client(0), STREAM) == (0, 0) and sink.llen("sink") >= n and time.time(),
            600, "the backlog dispatched", interval=0.01,
        )  # fmt: skip
        started = worker.event_time(Ready.STARTED)
        want = "exactly-once" if streams is broker else "at-least-once"
        if f"; {want}: " not in worker.output():
            raise RuntimeError(f"the worker did not run {want}:\n" + worker.output()[-2000:])
    finally:
        worker.stop()
    return n / (done - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker-entries", type=int, default=20_000)
    args = parser.parse_args(argv)
    server = RedisServer().start()
    other = RedisServer().start()
    rows: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    try:
        for batch in (100, 500):
            rates: dict[str, list[float]] = {"at-least-once": [], "exactly-once": []}
            for run in range(args.runs):
                rates["at-least-once"].append(worker_rate(server, other, batch, args.worker_entries, f"b{run}a"))
                rates["exactly-once"].append(worker_rate(server, server, batch, args.worker_entries, f"b{run}e"))
            two, one = statistics.median(rates["at-least-once"]), statistics.median(rates["exactly-once"])
            workers.append({"batch": batch, "at_least_once": two, "exactly_once": one, "ratio": one / two})
            workers[-1]["runs"] = rates
            print(json.dumps(workers[-1]))
        for mode in ("group", "tracker"):
            for batch in (100, 500):
                for size, fields in SIZES.items():
                    runs: dict[str, list[tuple[float, float, float]]] = {"two steps": [], "atomic": []}
                    for _ in range(args.runs):  # interleaved, so load changes hit both ways alike
                        for way in runs:
                            runs[way].append(drain(server, mode, batch, fields, args.entries, way == "atomic"))
                    row: dict[str, Any] = {"mode": mode, "batch": batch, "entry": size, "runs": runs}
                    for way, key in (("two steps", "two_steps"), ("atomic", "atomic")):
                        row[key] = {
                            "rate": statistics.median(r[0] for r in runs[way]),
                            "client_us": statistics.median(r[1] for r in runs[way]),
                            "redis_us": statistics.median(r[2] for r in runs[way]),
                        }
                    row["cpu_ratio"] = (row["two_steps"]["client_us"] + row["two_steps"]["redis_us"]) / (
                        row["atomic"]["client_us"] + row["atomic"]["redis_us"]
                    )
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "runs"}))
    finally:
        server.stop()
        other.stop()
    out = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "redis_py": redis.__version__,
        "entries": args.entries,
        "rows": rows,
        "workers": workers,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "atomic_step.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# The atomic step against the two round trips it replaces",
        "",
        f"{out['when']}, Python {out['python']}, Celery {out['celery']}, redis-py {out['redis_py']}, "
        f"{args.entries:,} entries per run, medians of {args.runs} interleaved runs "
        "(`benchmarks/atomic_step.py`, in process, reads included).",
        "",
        "CPU µs per entry: the reader's process + redis-server. The rate is noisy on a loaded machine;",
        "the CPU per entry is what each way costs. Ratio: two steps' CPU over the atomic step's (> 1: cheaper).",
        "",
        "| mode | batch | entry | two steps: entries/s, CPU µs (reader + Redis) | atomic: entries/s, CPU µs "
        "(reader + Redis) | CPU ratio |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        two, one = r["two_steps"], r["atomic"]
        lines.append(
            f"| {r['mode']} | {r['batch']} | {r['entry']} "
            f"| {two['rate']:,.0f}/s, {two['client_us']:.1f} + {two['redis_us']:.1f} "
            f"| {one['rate']:,.0f}/s, {one['client_us']:.1f} + {one['redis_us']:.1f} | {r['cpu_ratio']:.2f}x |"
        )
    lines += [
        "",
        f"In a `celery worker` (group mode, fast path, {args.worker_entries:,} entries of 3 small fields, "
        "rate from the start-up line to the last XACK): the broker on a second redis-server (at least once, "
        "two round trips) or on the streams' server (exactly once, the atomic step).",
        "",
        "| batch | at least once (second server) | exactly once (shared server) | ratio | runs (at least / exactly) |",
        "|---:|---:|---:|---:|---|",
    ]
    for w in workers:
        runs = " / ".join(", ".join(f"{r:,.0f}" for r in w["runs"][k]) for k in ("at-least-once", "exactly-once"))
        lines.append(
            f"| {w['batch']} | {w['at_least_once']:,.0f}/s | {w['exactly_once']:,.0f}/s | {w['ratio']:.2f}x | {runs} |"
        )
    (RESULTS / "atomic_step.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure the bridge against Celery's own publish loops, side by side, in one run.

    .venv/bin/python benchmarks/run.py [--entries N] [--runs 3] [--quick]

Starts its own redis-server on a free loopback port (streams db 0, broker
db 1, results db 2) and real `celery worker` processes on
benchmarks/benchapp.py; writes benchmarks/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kombu  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402

from tests.support import RedisServer, Worker, wait_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "bench"
FIELDS = {"a": "1", "b": "hello"}


def log(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- helpers


def fill_stream(client: redis.Redis, stream: str, n: int, start: int = 0) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(stream, {**FIELDS, "n": str(i)})
        if (i - start) % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def group_done(client: redis.Redis, stream: str, group: str = "celery") -> tuple[int, int]:
    """(lag, pending) of the group; a large lag while the group does not exist yet."""
    for info in client.xinfo_groups(stream):
        if info["name"] in (group, group.encode()):
            lag = info.get("lag")
            return (10**9 if lag is None else int(lag)), int(info["pending"])
    return 10**9, 0


def log_time(worker: Worker, text: str) -> float:
    """Wall time of the first worker log line containing ``text`` (Celery's asctime, local time, ms)."""
    for line in worker.output().splitlines():
        if text in line and line.startswith("["):
            stamp = line[1:24]
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise RuntimeError(f"no {text!r} in the worker log")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = RedisServer().start()
        self.streams = self.server.client(0)
        self.broker = self.server.client(1)
        self.results = self.server.client(2)
        self.workers = 0
        self.app = Celery("bench-client", broker=self.server.url_db(1), set_as_current=False)
        self.app.conf.broker_connection_retry_on_startup = True

    def close(self) -> None:
        self.server.stop()

    def reset(self) -> None:
        for client in (self.streams, self.broker, self.results):
            client.flushdb()

    def env(self, **conf: Any) -> dict[str, str]:
        return {
            "BENCH_STREAM_URL": self.server.url_db(0),
            "BENCH_BROKER_URL": self.server.url_db(1),
            "BENCH_RESULTS_URL": self.server.url_db(2),
            "BENCH_CONF": json.dumps(conf),
        }

    @contextmanager
    def worker(
        self,
        queues: str,
        wait: str = "redis-stream: reading",
        extra: tuple[str, ...] = (),
        quiet: bool = False,
        **conf: Any,
    ) -> Iterator[Worker]:
        """A `celery worker`; ``quiet`` runs it at Celery's default log level (WARNING), as workers that
        execute tasks usually run: INFO adds two log lines per task to the measured path."""
        self.workers += 1
        if quiet:
            extra = (*extra, "--loglevel", "WARNING")
        worker = Worker(self.env(**conf), f"bench{self.workers}", queues=queues, app="benchmarks.benchapp", extra=extra)
        worker.start(wait=None if quiet else wait)
        try:
            if quiet:
                wait_for(self.bridge_reading, 30, "the bridge to read")
                time.sleep(1.5)  # and the worker's own consumer to be on its queue
            yield worker
        finally:
            worker.stop()

    def bridge_reading(self) -> bool:
        try:
            return bool(self.streams.xinfo_consumers(STREAM, "celery"))
        except redis.ResponseError:  # no stream or group yet
            return False

    def stream_conf(
        self, fast: bool, queue: str = "sink", task: str = "bench.noop", start: str = "0"
    ) -> dict[str, Any]:
        return {
            "stream_tasks": {STREAM: {"task": task, "queue": queue}},
            "stream_start": start,
            "stream_batch_size": self.args.batch,
            "stream_fast_path": fast,
        }

    # ------------------------------------------------------------ (a) the bridge in a worker

    def bridge(self, fast: bool) -> float:
        n = self.args.entries
        self.reset()
        fill_stream(self.streams, STREAM, n)
        with self.worker("unused", **self.stream_conf(fast)) as worker:
            done = wait_for(
                lambda: group_done(self.streams, STREAM) == (0, 0) and self.broker.llen("sink") >= n and time.time(),
                600, "the backlog dispatched", interval=0.01,
            )  # fmt: skip
            started = log_time(worker, "redis-stream: reading")
            if "fast path not used" in worker.output():
                raise RuntimeError("the fast path was not used:\n" + worker.output()[-2000:])
        assert self.broker.llen("sink") == n
        return n / (done - started)

    # ------------------------------------------------------------ (b) (c) (d) in this process

    def send_task_loop(self, batched: bool) -> float:
        n = self.args.loop_entries
        self.reset()
        calls = [{**FIELDS, "n": str(i)} for i in range(n)]
        send_task = self.app.send_task
        with self.app.producer_or_acquire() as producer:
            send_task("bench.noop", args=[calls[0]], producer=producer, queue="warmup")
            started = time.perf_counter()
            if batched:
                with producer.batch(max_size=self.args.batch):
                    for fields in calls:
                        send_task("bench.noop", args=[fields], producer=producer, queue="sink")
            else:
                for fields in calls:
                    send_task("bench.noop", args=[fields], producer=producer, queue="sink")
            elapsed = time.perf_counter() - started
        assert self.broker.llen("sink") == n
        return n / elapsed

    def naive_bridge(self) -> float:
        """What a user writes first: XREAD COUNT 1, send_task, SET the tracker, per entry."""
        n = self.args.loop_entries
        self.reset()
        fill_stream(self.streams, STREAM, n)
        client = redis.Redis.from_url(self.server.url_db(0), decode_responses=True)
        send_task = self.app.send_task
        send_task("bench.noop", args=[FIELDS], queue="warmup")
        last = "0"
        started = time.perf_counter()
        for _ in range(n + 1):
            reply = client.xread({STREAM: last}, count=1)
            if not reply:
                break
            for entry_id, fields in reply[0][1]:
                send_task("bench.noop", args=[fields], queue="sink")
                client.set(f"stream_tracker:{STREAM}", entry_id)
                last = entry_id
        elapsed = time.perf_counter() - started
        client.close()
        assert self.broker.llen("sink") == n
        return n / elapsed

    # ------------------------------------------------------------ latency, memory, CPU, task rate

    def latency(self, fast: bool) -> dict[str, float]:
        rate, seconds = 300, self.args.latency_seconds
        count = int(rate * seconds)
        self.reset()
        conf = self.stream_conf(fast, queue="lat", task="bench.latency", start="$")
        with self.worker("lat", quiet=True, **conf):
            pipe_start = time.perf_counter()
            for i in range(count):
                due = pipe_start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                self.streams.xadd(STREAM, {**FIELDS, "n": str(i), "t": repr(time.time())})
            wait_for(lambda: self.results.llen("latency") >= count, 60, "every latency sample")
        samples = sorted(float(x) * 1000 for x in self.results.lrange("latency", 0, -1))
        q = statistics.quantiles(samples, n=100, method="inclusive")
        return {"samples": len(samples), "p50_ms": q[49], "p95_ms": q[94], "p99_ms": q[98], "max_ms": samples[-1]}

    def memory(self) -> dict[str, float]:
        small, large = 10_000, self.args.rss_entries
        self.reset()
        fill_stream(self.streams, STREAM, small)
        out: dict[str, float] = {"entries_small": small, "entries_large": large}
        with self.worker("unused", **self.stream_conf(False)) as worker:
            assert worker.proc is not None
            proc = psutil.Process(worker.proc.pid)

            def drained() -> bool:
                self.broker.delete("sink")  # the queue is not what is measured; keep Redis small
                return group_done(self.streams, STREAM) == (0, 0)

            wait_for(drained, 300, f"{small} entries dispatched", interval=0.2)
            time.sleep(0.5)
            out["rss_small_mb"] = proc.memory_info().rss / 2**20
            done = small
            while done < large:
                step = min(50_000, large - done)
                fill_stream(self.streams, STREAM, step, start=done)
                done += step
                wait_for(drained, 600, f"{done} entries dispatched", interval=0.2)
            time.sleep(0.5)
            out["rss_large_mb"] = proc.memory_info().rss / 2**20
            out["peak_rss_mb"] = peak_rss_mb(worker.proc.pid)
        out["growth_mb"] = out["rss_large_mb"] - out["rss_small_mb"]
        return out

    def idle_cpu(self, with_bridge: bool) -> float:
        self.reset()
        seconds = self.args.idle_seconds
        extra = () if with_bridge else ("--without-redis-stream",)
        wait = "redis-stream: reading" if with_bridge else "ready."
        with self.worker("idle", wait=wait, extra=extra, **self.stream_conf(False, start="$")) as worker:
            assert worker.proc is not None
            proc = psutil.Process(worker.proc.pid)
            time.sleep(2.0)
            before, t0 = proc.cpu_times(), time.monotonic()
            time.sleep(seconds)
            after, t1 = proc.cpu_times(), time.monotonic()
        used = (after.user - before.user) + (after.system - before.system)
        return 100.0 * used / (t1 - t0)

    def task_rate(self, backlog: int, fast: bool) -> dict[str, float]:
        tasks = self.args.rate_tasks
        self.reset()
        with self.app.producer_or_acquire() as producer, producer.batch(max_size=500):
            for _ in range(tasks):
                self.app.send_task("bench.count", producer=producer, queue="work")
        if backlog:
            fill_stream(self.streams, STREAM, backlog)
        marks: dict[str, float] = {}
        lo, hi = int(tasks * 0.1), int(tasks * 0.9)

        # The window runs from 10% of the tasks done to 90% done or, with a
        # backlog, to the moment the bridge caught up, whichever comes first:
        # only time during which the bridge was busy counts.
        def progress() -> bool:
            done = int(self.results.get("executed") or 0)
            now = time.perf_counter()
            caught_up = bool(backlog) and group_done(self.streams, STREAM) == (0, 0)
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

        with self.worker("work", quiet=True, **self.stream_conf(fast)):
            wait_for(progress, 300, "the worker's own tasks", interval=0.01)
        return {
            "tasks_per_s": (marks["hi_done"] - marks["lo_done"]) / (marks["hi"] - marks["lo"]),
            "window_s": marks["hi"] - marks["lo"],
            "bridge_caught_up_in_window": bool(marks["caught_up"]),
        }


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def machine(server: RedisServer) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": server.client().info("server")["redis_version"],
    }


def median_of(runs: int, what: str, fn: Callable[[], float]) -> dict[str, Any]:
    values = []
    for i in range(runs):
        values.append(fn())
        log(f"  {what} run {i + 1}/{runs}: {values[-1]:,.0f} entries/s")
    return {"median": statistics.median(values), "runs": values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=None, help="stream entries the bridge dispatches (50,000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per throughput figure; the median is kept (3)")
    parser.add_argument("--quick", action="store_true", help="smaller everything: under two minutes")
    parser.add_argument("--batch", type=int, default=500, help="stream_batch_size, and Producer.batch max_size (500)")
    parser.add_argument("--no-fast-path", action="store_true", help="skip the fast-path measurements")
    args = parser.parse_args(argv)
    quick = args.quick
    args.entries = args.entries or (20_000 if quick else 50_000)
    args.runs = args.runs or (1 if quick else 3)
    args.loop_entries = min(args.entries, 3_000 if quick else 10_000)
    args.latency_seconds = 5 if quick else 10
    args.rss_entries = 50_000 if quick else 200_000
    args.idle_seconds = 5 if quick else 10
    args.rate_tasks = 2_000 if quick else 5_000
    args.backlog = 20_000 if quick else 50_000

    bench = Bench(args)
    began = time.monotonic()
    try:
        out: dict[str, Any] = {
            "machine": machine(bench.server),
            "settings": {
                k: getattr(args, k)
                for k in (
                    "entries",
                    "runs",
                    "quick",
                    "batch",
                    "loop_entries",
                    "latency_seconds",
                    "rss_entries",
                    "idle_seconds",
                    "rate_tasks",
                    "backlog",
                )
            },
            "throughput": {},
        }
        thr = out["throughput"]
        paths = [False] if args.no_fast_path else [False, True]
        log(f"redis-server {out['machine']['redis_server']} on port {bench.server.port}; {args.entries:,} entries")
        for fast in paths:
            name = "bridge_fast" if fast else "bridge_standard"
            thr[name] = median_of(args.runs, f"(a) bridge in a worker, {'fast' if fast else 'standard'} path",
                                  lambda fast=fast: bench.bridge(fast))  # fmt: skip
        thr["send_task_loop"] = median_of(args.runs, "(b) send_task loop", lambda: bench.send_task_loop(False))
        thr["send_task_batch"] = median_of(
            args.runs, "(c) send_task in Producer.batch()", lambda: bench.send_task_loop(True)
        )
        thr["naive_bridge"] = median_of(args.runs, "(d) naive bridge", bench.naive_bridge)
        ratios = {}
        for name in ("bridge_standard", "bridge_fast"):
            if name in thr:
                for other in ("send_task_loop", "send_task_batch", "naive_bridge"):
                    ratios[f"{name}/{other}"] = thr[name]["median"] / thr[other]["median"]
        out["ratios"] = ratios
        for key, value in ratios.items():
            log(f"  {key}: {value:.2f}x")

        out["latency"] = {}
        for fast in paths:
            name = "fast" if fast else "standard"
            out["latency"][name] = result = bench.latency(fast)
            log(f"  latency at 300/s, {name} path: p50 {result['p50_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms, "
                f"p99 {result['p99_ms']:.2f} ms")  # fmt: skip

        out["memory"] = bench.memory()
        log(f"  RSS after {out['memory']['entries_small']:,}: {out['memory']['rss_small_mb']:.1f} MB, after "
            f"{out['memory']['entries_large']:,}: {out['memory']['rss_large_mb']:.1f} MB")  # fmt: skip

        out["idle_cpu_percent"] = {"with_bridge": bench.idle_cpu(True), "without_bridge": bench.idle_cpu(False)}
        log(f"  idle CPU: {out['idle_cpu_percent']['with_bridge']:.2f}% with the bridge, "
            f"{out['idle_cpu_percent']['without_bridge']:.2f}% without")  # fmt: skip

        rate: dict[str, Any] = {}
        cases = [("no_backlog", 0, False), ("backlog_standard", args.backlog, False)]
        if not args.no_fast_path:
            cases.append(("backlog_fast", args.backlog * 4, True))  # it drains four times faster
        for name, backlog, fast in cases:
            runs = [bench.task_rate(backlog, fast) for _ in range(args.runs)]
            rate[name] = {
                "backlog": backlog,
                "median": statistics.median(r["tasks_per_s"] for r in runs),
                "runs": [r["tasks_per_s"] for r in runs],
                "window_s": [r["window_s"] for r in runs],
            }
            log(f"  worker task rate, {name}: {rate[name]['median']:,.0f} tasks/s "
                f"(windows {', '.join(f'{w:.1f}' for w in rate[name]['window_s'])} s)")  # fmt: skip
        for name in ("backlog_standard", "backlog_fast"):
            if name in rate:
                rate[f"{name}_drop_percent"] = 100 * (1 - rate[name]["median"] / rate["no_backlog"]["median"])
        out["task_rate"] = rate
        out["elapsed_s"] = time.monotonic() - began
        out["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        bench.close()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2) + "\n")
    table = markdown(out)
    (RESULTS / "latest.md").write_text(table)
    print()
    print(table)
    return 0


def check(ok: bool) -> str:
    return "met" if ok else "**not met**"


def markdown(out: dict[str, Any]) -> str:
    m, s, thr, r = out["machine"], out["settings"], out["throughput"], out["ratios"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores (load average at start {m['load_average_at_start']}, "
        f"at end {m.get('load_average_at_end', '?')}); "
        f"Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}, redis-py {m['redis_py']}, "
        f"Redis {m['redis_server']} on loopback.",
        f"Settings: {s['entries']:,} entries for the bridge, {s['loop_entries']:,} for the in-process loops, "
        f"batch {s['batch']}, median of {s['runs']} run(s){' (--quick)' if s['quick'] else ''}; "
        f"total {out['elapsed_s']:.0f} s.",
        "",
        "| what | entries/s (median) | runs |",
        "|---|---:|---|",
    ]
    names = {
        "bridge_standard": "(a) bridge in a `celery worker`, standard path",
        "bridge_fast": "(a) bridge in a `celery worker`, fast path (`stream_fast_path`)",
        "send_task_loop": "(b) `send_task` loop, one reused producer",
        "send_task_batch": "(c) the same inside kombu `Producer.batch()`",
        "naive_bridge": "(d) naive bridge: XREAD COUNT 1, `send_task`, SET tracker per entry",
    }
    for key, label in names.items():
        if key in thr:
            runs = ", ".join(f"{v:,.0f}" for v in thr[key]["runs"])
            lines.append(f"| {label} | {thr[key]['median']:,.0f} | {runs} |")
    lines += ["", "| ratio | value | target |", "|---|---:|---|"]
    targets = {
        "bridge_standard/send_task_batch": 1.0,
        "bridge_fast/send_task_loop": 3.0,
        "bridge_standard/naive_bridge": 5.0,
        "bridge_fast/naive_bridge": 5.0,
    }
    for key, value in r.items():
        target = targets.get(key)
        lines.append(f"| {key} | {value:.2f}x | {f'≥ {target}x: ' + check(value >= target) if target else ''} |")
    lines += ["", "| measurement | value | target |", "|---|---:|---|"]
    for name, lat in out["latency"].items():
        lines.append(
            f"| latency XADD → task start at 300/s, {name} path ({lat['samples']} samples) | "
            f"p50 {lat['p50_ms']:.2f} ms, p95 {lat['p95_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
            f"max {lat['max_ms']:.1f} ms | "
            f"p50 ≤ 3 ms: {check(lat['p50_ms'] <= 3)}; p99 ≤ 30 ms: {check(lat['p99_ms'] <= 30)} |"
        )
    mem = out["memory"]
    lines.append(
        f"| worker RSS after {mem['entries_small']:,} / {mem['entries_large']:,} entries (standard path) | "
        f"{mem['rss_small_mb']:.1f} MB / {mem['rss_large_mb']:.1f} MB (growth {mem['growth_mb']:+.1f} MB; "
        f"peak {mem['peak_rss_mb']:.1f} MB) | within 10 MB: {check(mem['growth_mb'] <= 10)} |"
    )
    cpu = out["idle_cpu_percent"]
    lines.append(
        f"| idle CPU, streams empty | {cpu['with_bridge']:.2f}% of a core (worker without the bridge: "
        f"{cpu['without_bridge']:.2f}%) | ≤ 1%: {check(cpu['with_bridge'] <= 1)} |"
    )
    rate = out["task_rate"]
    for name in ("no_backlog", "backlog_standard", "backlog_fast"):
        if name in rate:
            drop = rate.get(f"{name}_drop_percent")
            extra = f" ({-drop:+.0f}% vs no backlog)" if drop is not None else ""
            lines.append(
                f"| worker's own task rate, {name.replace('_', ' ')} | {rate[name]['median']:,.0f} tasks/s{extra} | |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

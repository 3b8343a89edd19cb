"""The bridge on RabbitMQ (always confirmed) against Celery's own send_task loops, same run, same entries.

    .venv/bin/python benchmarks/rabbitmq.py [--entries 20000] [--runs 3] [--batch 100]

Starts a private redis-server on a free loopback port for the stream and uses
the machine's RabbitMQ (CRS_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672//)
with a queue of its own, deleted after every run. Measures:

(a) the bridge in a real `celery worker` (benchmarks/benchapp.py) whose app sets
    ``confirm_publish``: from its "reading" log line until every entry is
    acknowledged in the stream, i.e. confirmed by RabbitMQ (default settings:
    the AMQP fast path);
(b) Celery's ``send_task`` loop with ``confirm_publish=True`` and one reused
    producer (one confirm round trip per message), in this process;
(c) the same loop without confirms, for reference (RabbitMQ may lose what it
    did not confirm);
(d) the bridge as in (a) with ``stream_fast_path: False`` (``send_task`` per
    entry), for reference.

Writes benchmarks/results/amqp.md and amqp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and there "amqp" is this file, not py-amqp.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kombu  # noqa: E402
import redis  # noqa: E402
from celery import Celery  # noqa: E402
from kombu import Connection, Exchange, Queue  # noqa: E402

from benchmarks.common import RedisServer, Worker, cpu_model, log, wait_for  # noqa: E402
from celery_redis_stream.testing.processes import Ready  # noqa: E402

AMQP_URL = os.environ.get("CRS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "bench"
FIELDS = {"a": "1", "b": "hello"}
TARGET = 5.0


class AmqpBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server = RedisServer().start()
        self.streams = self.server.client(0)
        self.rabbit = Connection(AMQP_URL, connect_timeout=5)
        self.rabbit.ensure_connection(max_retries=2)
        self.queue = f"crs-bench-{uuid.uuid4().hex[:8]}"
        self.workers = 0

    def close(self) -> None:
        self.delete_queues()
        self.rabbit.release()
        self.server.stop()

    def delete_queues(self) -> None:
        channel = self.rabbit.channel()
        for name in (self.queue, f"{self.queue}-unused"):
            try:
                channel.queue_delete(name)
            except self.rabbit.channel_errors:
                channel = self.rabbit.channel()
        channel.close()

    def fresh_queue(self) -> None:
        """An empty target queue, declared as Celery declares it (a publisher that skips declaring, or
        whose declaration cache is stale, would otherwise drop its messages unseen)."""
        self.delete_queues()
        with self.rabbit.channel() as channel:
            Queue(self.queue, Exchange(self.queue, "direct"), routing_key=self.queue)(channel).declare()

    def queue_size(self) -> int:
        channel = self.rabbit.channel()
        try:
            return int(channel.queue_declare(queue=self.queue, passive=True).message_count)
        except self.rabbit.channel_errors:
            return 0
        finally:
            channel.close()

    def fill_stream(self, n: int) -> None:
        self.streams.flushdb()
        pipe = self.streams.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(STREAM, {**FIELDS, "n": str(i)})
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def acknowledged(self) -> bool:
        try:
            groups = self.streams.xinfo_groups(STREAM)
        except redis.ResponseError:
            return False
        return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0

    # (a) ---------------------------------------------------------------------

    def bridge(self, fast_path: bool = True) -> float:
        n = self.args.entries
        self.fresh_queue()
        self.fill_stream(n)
        conf = {
            "stream_tasks": {STREAM: {"task": "bench.noop", "queue": self.queue}},
            "stream_start": "0",
            "stream_batch_size": self.args.batch,
            "broker_transport_options": {"confirm_publish": True},
            "stream_fast_path": fast_path,
        }
        self.workers += 1
        env = {
            "BENCH_STREAM_URL": self.server.url_db(0),
            "BENCH_BROKER_URL": AMQP_URL,
            "BENCH_RESULTS_URL": self.server.url_db(2),
            "BENCH_CONF": json.dumps(conf),
        }
        worker = Worker(env, f"amqpbench{self.workers}", queues=f"{self.queue}-unused", app="benchmarks.benchapp")
        worker.start()
        try:
            done = wait_for(lambda: self.acknowledged() and time.time(), 600, "every entry confirmed", interval=0.01)
            started = worker.event_time(Ready.STARTED)
        finally:
            worker.stop()
        size = self.queue_size()
        if size != n:
            raise RuntimeError(f"{size} messages in the queue, expected {n}")
        return n / (done - started)

    # (b) (c) -----------------------------------------------------------------

    def send_task_loop(self, confirm: bool) -> float:
        n = self.args.loop_entries
        self.fresh_queue()
        app = Celery("amqp-bench-client", broker=AMQP_URL, set_as_current=False)
        app.conf.broker_connection_retry_on_startup = True
        if confirm:
            app.conf.broker_transport_options = {"confirm_publish": True}
        calls = [{**FIELDS, "n": str(i)} for i in range(n)]
        try:
            with app.producer_or_acquire() as producer:
                app.send_task("bench.noop", args=[calls[0]], producer=producer, queue=self.queue)
                started = time.perf_counter()
                for fields in calls:
                    app.send_task("bench.noop", args=[fields], producer=producer, queue=self.queue)
                elapsed = time.perf_counter() - started
        finally:
            app.close()
        # Unconfirmed publishes may still be on their way: wait until RabbitMQ holds them all.
        try:
            wait_for(lambda: self.queue_size() >= n + 1, 60, f"{n + 1} messages in the queue")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}: {self.queue_size()} there") from None
        return n / elapsed


def machine(bench: AmqpBench) -> dict[str, Any]:
    server = bench.rabbit.connection.server_properties
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "rabbitmq": str(server.get("version", "?")),
        "redis_server": bench.streams.info("server")["redis_version"],
    }


def markdown(out: dict[str, Any]) -> str:
    m, s, r = out["machine"], out["settings"], out["results"]
    ratio = out["ratio"]
    lines = [
        "# The bridge on RabbitMQ, always confirmed, against Celery's own send_task loops",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (load average at start {m['load_average_at_start']}); "
        f"Python {m['python']}, Celery {m['celery']}, kombu {m['kombu']}, RabbitMQ {m['rabbitmq']} and "
        f"Redis {m['redis_server']} on loopback.",
        f"Settings: {s['entries']:,} entries for the bridge and {s['loop_entries']:,} for each loop, "
        f"stream_batch_size {s['batch']}, median of {s['runs']} interleaved round(s); total {out['seconds']:.0f} s. "
        "Command: `.venv/bin/python benchmarks/rabbitmq.py`.",
        "",
        "| what | entries/s (median) | runs |",
        "|---|---:|---|",
    ]
    names = {
        "bridge": "(a) bridge in a `celery worker` (app sets `confirm_publish`; the bridge confirms per batch)",
        "send_task_confirmed": "(b) `send_task` loop, `confirm_publish=True`, one reused producer",
        "send_task_unconfirmed": "(c) `send_task` loop without confirms (reference: not safe)",
        "bridge_send_task": "(d) bridge as (a) with `stream_fast_path: False` (reference: `send_task` per entry)",
    }
    for key, label in names.items():
        runs = ", ".join(f"{v:,.0f}" for v in r[key]["runs"])
        lines.append(f"| {label} | {r[key]['median']:,.0f} | {runs} |")
    met = "met" if ratio["bridge/send_task_confirmed"] >= TARGET else "NOT met"
    lines += [
        "",
        "| ratio | value | target |",
        "|---|---:|---|",
        f"| bridge / confirmed send_task loop | {ratio['bridge/send_task_confirmed']:.2f}x | ≥ {TARGET:.0f}x: {met} |",
        "| the same, per round | "
        + ", ".join(f"{x:.2f}x" for x in ratio["bridge/send_task_confirmed per round"])
        + " | |",
        f"| bridge / unconfirmed send_task loop | {ratio['bridge/send_task_unconfirmed']:.2f}x | |",
        f"| bridge / bridge without the fast path (d) | {ratio['bridge/bridge_send_task']:.2f}x | |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000, help="stream entries the bridge dispatches (20,000)")
    parser.add_argument("--loop-entries", type=int, default=None, help="messages per send_task loop (= --entries)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is kept (3)")
    parser.add_argument("--batch", type=int, default=100, help="stream_batch_size (100, the default setting)")
    args = parser.parse_args(argv)
    args.loop_entries = args.loop_entries or args.entries
    started = time.monotonic()
    bench = AmqpBench(args)
    try:
        info = machine(bench)
        # Interleaved rounds (a, b, c, d, a, b, c, d, ...): load from elsewhere on the machine then weighs on
        # all four alike, and each round gives its own ratio.
        runs: dict[str, list[float]] = {
            "bridge": [],
            "send_task_confirmed": [],
            "send_task_unconfirmed": [],
            "bridge_send_task": [],
        }
        for i in range(args.runs):
            log(f"round {i + 1}/{args.runs}")
            runs["bridge"].append(bench.bridge())
            runs["send_task_confirmed"].append(bench.send_task_loop(True))
            runs["send_task_unconfirmed"].append(bench.send_task_loop(False))
            runs["bridge_send_task"].append(bench.bridge(fast_path=False))
            log("  " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items()))
        results = {k: {"median": statistics.median(v), "runs": v} for k, v in runs.items()}
        rounds = [b / c for b, c in zip(runs["bridge"], runs["send_task_confirmed"], strict=True)]
    finally:
        bench.close()
    bridge = results["bridge"]["median"]
    out = {
        "machine": info,
        "settings": {
            "entries": args.entries,
            "loop_entries": args.loop_entries,
            "batch": args.batch,
            "runs": args.runs,
        },
        "results": results,
        "ratio": {
            "bridge/send_task_confirmed per round": rounds,
            "bridge/send_task_confirmed": bridge / results["send_task_confirmed"]["median"],
            "bridge/send_task_unconfirmed": bridge / results["send_task_unconfirmed"]["median"],
            "bridge/bridge_send_task": bridge / results["bridge_send_task"]["median"],
        },
        "seconds": time.monotonic() - started,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "amqp.json").write_text(json.dumps(out, indent=2) + "\n")
    text = markdown(out)
    (RESULTS / "amqp.md").write_text(text)
    log(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What tracing costs the bridge: entries with trace context, and a worker instrumented with OpenTelemetry.

    .venv/bin/python benchmarks/tracing.py [--entries 20000] [--runs 3] [--batch 500]

Starts its own redis-server on a free loopback port (streams db 0, broker db
1) and real `celery worker --pool solo -Q unused` processes that bridge a
pre-filled stream to a queue nobody consumes. In one run, as ratios against
the first line:

- fast path, entries without trace fields (the baseline);
- fast path, every entry with ``traceparent``/``tracestate`` fields;
- standard path (``send_task``), entries with trace fields;
- a worker instrumented with opentelemetry-instrumentation-celery and the SDK
  (benchmarks/tracedapp.py): its publish signal receivers make the fast path
  step aside, so this is ``send_task`` plus a publish span per entry;
- in this process: the fast path's ``Dispatcher.send`` with and without
  trace fields (and with untraced fields of the same size);
- in this process: what one ``before_task_publish`` + ``after_task_publish``
  pair costs with the instrumentation connected, and from it the estimate for
  a fast path that sent those signals per message.
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

import redis  # noqa: E402

from benchmarks.common import RedisServer, Worker, wait_for  # noqa: E402
from celery_redis_stream.testing.processes import Ready  # noqa: E402

STREAM = "bench"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}


def fill(client: redis.Redis, n: int, traced: bool) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"a": "1", "b": "hello", "n": str(i), **(TRACE if traced else {})})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def bridge(server: RedisServer, n: int, batch: int, *, fast: bool, traced: bool, app: str) -> float:
    streams, broker = server.client(0), server.client(1)
    streams.flushdb()
    broker.flushdb()
    fill(streams, n, traced)
    conf = {
        "stream_tasks": {STREAM: {"task": "bench.noop", "queue": "sink"}},
        "stream_start": "0",
        "stream_batch_size": batch,
        "stream_fast_path": fast,
    }
    env = {
        "BENCH_STREAM_URL": server.url_db(0),
        "BENCH_BROKER_URL": server.url_db(1),
        "BENCH_RESULTS_URL": server.url_db(2),
        "BENCH_CONF": json.dumps(conf),
    }
    worker = Worker(env, "trace-bench", queues="unused", app=app)
    worker.start()
    try:
        done = wait_for(lambda: broker.llen("sink") >= n and time.time(), 600, "the backlog dispatched", 0.01)
        used_fast = "fast path not used" not in worker.output()
        if fast and app == "benchmarks.benchapp" and not used_fast:
            raise RuntimeError("the fast path was not used:\n" + worker.output()[-2000:])
        return n / (done - worker.event_time(Ready.STARTED))
    finally:
        worker.stop()


def dispatch_rates(server: RedisServer, reps: int = 15) -> dict[str, float]:
    """The fast path's Dispatcher.send in this process, 500-entry batches, interleaved: traced vs same-size entries."""
    from celery import Celery

    from celery_redis_stream.config import load_config
    from celery_redis_stream.entry import RawEntry
    from celery_redis_stream.publish.dispatch import Dispatcher

    app = Celery("trace-bench", broker=server.url_db(1), set_as_current=False)
    app.conf.update(
        stream_url=server.url_db(0),
        stream_tasks={STREAM: {"task": "bench.noop", "registered": False, "queue": "sink"}},
        stream_fast_path=True,
    )
    sc = load_config(app).streams[0]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    trace = [x for pair in TRACE.items() for x in pair]
    padding = [f"x{k}" if i % 2 == 0 else k for i, k in enumerate(trace)]  # the same bytes, not trace fields
    kinds = {
        "no trace fields": [],
        "trace fields": trace,
        "same-size fields that are not trace fields": padding,
    }
    batches = {
        kind: [RawEntry(STREAM, f"1-{i}", tuple(x.encode() for x in ["a", "1", "b", "hello", "n", str(i), *extra]))
               for i in range(500)]
        for kind, extra in kinds.items()
    }  # fmt: skip
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for _ in range(reps):
            for kind, batch in batches.items():
                started = time.perf_counter()
                for _ in range(4):
                    dispatcher.send(sc, batch)
                rates[kind].append(2000 / (time.perf_counter() - started))
                server.client(1).delete("sink")
    finally:
        dispatcher.close()
    return {kind: statistics.median(values) for kind, values in rates.items()}


def signal_pair_cost(n: int) -> float:
    """Seconds per before/after_task_publish pair with opentelemetry-instrumentation-celery connected."""
    import uuid

    from celery import signals

    import benchmarks.tracedapp  # noqa: F401 - instruments this process

    headers_list = [{"id": str(uuid.uuid4()), "task": "bench.noop"} for _ in range(n)]
    before, after = signals.before_task_publish.send, signals.after_task_publish.send
    started = time.perf_counter()
    for headers in headers_list:
        before(sender="bench.noop", body=((), {}, {}), exchange="", routing_key="sink", headers=headers,
               properties={}, declare=[], retry_policy=None)  # fmt: skip
        after(sender="bench.noop", body=((), {}, {}), headers=headers, exchange="", routing_key="sink")
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    cases = [
        ("fast path, no trace fields", {"fast": True, "traced": False, "app": "benchmarks.benchapp"}),
        ("fast path, trace fields", {"fast": True, "traced": True, "app": "benchmarks.benchapp"}),
        ("send_task path, trace fields", {"fast": False, "traced": True, "app": "benchmarks.benchapp"}),
        ("instrumented worker (fast path steps aside), trace fields",
         {"fast": True, "traced": True, "app": "benchmarks.tracedapp"}),
    ]  # fmt: skip
    server = RedisServer().start()
    figures: dict[str, list[float]] = {name: [] for name, _ in cases}
    try:
        for run in range(args.runs):
            for name, kw in cases:
                rate = bridge(server, args.entries, args.batch, **kw)  # type: ignore[arg-type]
                figures[name].append(rate)
                print(f"run {run + 1}: {name}: {rate:,.0f} entries/s", flush=True)
        in_process = dispatch_rates(server)
    finally:
        server.stop()
    pair = statistics.median(signal_pair_cost(20_000) for _ in range(3))
    base_name = cases[0][0]
    # Ratios are taken run by run against the baseline of the same run: on a
    # shared machine the load moves between runs more than within one.
    ratios = {name: [x / b for x, b in zip(figures[name], figures[base_name], strict=True)] for name, _ in cases}
    fast_traced = [1 / (1 / x + pair) for x in figures[cases[1][0]]]
    ratios["estimate"] = [x / b for x, b in zip(fast_traced, figures[base_name], strict=True)]
    out: dict[str, Any] = {
        "entries": args.entries, "batch": args.batch, "runs": figures, "ratios": ratios, "signal_pair_us": pair * 1e6,
    }  # fmt: skip
    print(f"\n| bridge ({args.entries:,} entries, batch {args.batch}) | entries/s (median) | vs baseline, same run |")
    print("|---|---:|---:|")
    for name, _ in cases:
        print(f"| {name} | {statistics.median(figures[name]):,.0f} | {statistics.median(ratios[name]):.2f}x |")
    estimate = statistics.median(fast_traced)
    print(f"| estimate: fast path with publish signals per message | {estimate:,.0f} | "
          f"{statistics.median(ratios['estimate']):.2f}x |")  # fmt: skip
    print(f"\none before/after_task_publish pair with the instrumentation: {pair * 1e6:.1f} µs")
    print("\n| fast path Dispatcher.send in this process (500-entry batches) | entries/s (median of 15) |")
    print("|---|---:|")
    for kind, rate in in_process.items():
        print(f"| {kind} | {rate:,.0f} |")
    out["in_process"] = in_process
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    (results / "tracing.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

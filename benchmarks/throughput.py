"""Throughput of the bridge in a real `celery worker`: a pre-filled stream drained into a queue nobody consumes.

    .venv/bin/python benchmarks/throughput.py [--entries 40000] [--batch 100] [--standard] [--decode D]
    .venv/bin/python benchmarks/throughput.py --decode all --entries 15000 --runs 3   # results/decoders.md

The rate is taken while the bridge is in full swing: from the moment the
queue holds 10% of the messages to the moment it holds 90% (the worker's own
start-up, which overlaps the first batches, is not counted; the minimal
bridge baseline has none). The run ends when the group's lag and pending
count are 0 and the queue holds every message.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    FIELDS,
    RESULTS,
    STREAM,
    Bench,
    fill_stream,
    group_done,
    log,
    machine,
    stream_conf,
    wait_for,
)
from celery_redis_stream.client import faststream

#: The decoders' throughput runs: each stream entry carries the same 3 small fields (common.FIELDS plus "n"),
#: written as that decoder expects them (FastStream's shape is its 0.7 binary format).
DECODERS = ("utf-8", "raw", "json:payload", "faststream")


def fill_for(client: redis.Redis, decode: str, n: int) -> None:
    """``n`` entries of the benchmark stream written as the producer of ``decode`` writes them."""
    if decode == "utf-8":
        fill_stream(client, STREAM, n)
        return
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        body = json.dumps({**FIELDS, "n": str(i)}).encode()
        if decode == "raw":
            pipe.xadd(STREAM, {**FIELDS, "n": str(i)})
        elif decode == "faststream":
            pipe.xadd(STREAM, {"__data__": faststream_message(body, f"c{i}")})
        else:
            pipe.xadd(STREAM, {"payload": body})
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def faststream_message(body: bytes, correlation_id: str) -> bytes:
    """``body`` as FastStream 0.6+ writes a dict (BinaryMessageFormatV1: identity, offsets, headers, body)."""
    headers = [(b"correlation_id", correlation_id.encode()), (b"content-type", b"application/json")]
    block = b"".join(struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v for k, v in headers)
    start = len(faststream.IDENTITY) + 10
    return faststream.IDENTITY + struct.pack(">HIIH", 1, start, start + 2 + len(block), len(headers)) + block + body


def decoder_conf(batch: int, decode: str) -> dict[str, Any]:
    conf = stream_conf(batch)
    spec = conf["stream_tasks"][STREAM]
    spec["decode"] = decode
    if decode == "raw":
        spec["converter"] = "benchmarks.benchapp:raw_pairs"
    return conf


def bridge(
    bench: Bench, n: int, batch: int, fast: bool | None = None, decode: str = "utf-8",
    options: dict[str, Any] | None = None,
) -> float:  # fmt: skip
    """Entries per second; ``fast=None`` runs the default settings (the fast path on); ``options``: more keys of
    the stream's dict in stream_tasks (``dedupe``, ``rate_limit``)."""
    bench.reset()
    fill_for(bench.streams, decode, n)
    lo, hi = n // 10, n - n // 10
    marks: dict[int, tuple[float, int]] = {}

    def progress() -> bool:
        queued = bench.broker.llen("sink")
        now = time.perf_counter()
        if lo not in marks and queued >= lo:
            marks[lo] = (now, queued)
        if hi not in marks and queued >= hi:
            marks[hi] = (now, queued)
        return queued >= n and group_done(bench.streams, STREAM) == (0, 0)

    conf = stream_conf(batch, fast=fast) if decode == "utf-8" else decoder_conf(batch, decode)
    conf["stream_tasks"][STREAM].update(options or {})
    with bench.worker("unused", **conf) as worker:
        wait_for(progress, 600, "the backlog dispatched", interval=0.005)
        if fast is not False and "fast path not used" in worker.output():
            raise RuntimeError("the fast path was not used:\n" + worker.output()[-2000:])
    if bench.broker.llen("sink") != n:
        raise RuntimeError(f"{bench.broker.llen('sink')} messages for {n} entries")
    (t0, n0), (t1, n1) = marks[lo], marks[hi]
    return (n1 - n0) / (t1 - t0)


def decoders(bench: Bench, entries: int, runs: int) -> dict[str, Any]:
    """Each decoder's entries/s, default settings, batch 100; ``runs`` interleaved runs, the median kept."""
    rates: dict[str, list[float]] = {decode: [] for decode in DECODERS}
    for i in range(runs):
        for decode in DECODERS:
            rates[decode].append(bridge(bench, entries, 100, decode=decode))
            log(f"  decode {decode} run {i + 1}/{runs}: {rates[decode][-1]:,.0f} entries/s")
    return {decode: {"median": statistics.median(v), "runs": v} for decode, v in rates.items()}


def write_decoders(out: dict[str, Any]) -> str:
    """benchmarks/results/decoders.{json,md}; returns the Markdown."""
    m = out["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, shared (load average at start {m['load_average_at_start']}); "
        f"Python {m['python']}, Celery {m['celery']}, redis-py {m['redis_py']}, Redis {m['redis_server']}; "
        f"{m['date']}.",
        f"Each decoder: {out['entries']:,} entries of the same 3 small fields, written as its producer writes "
        "them (`json:payload`: one JSON field; `faststream`: FastStream 0.6+'s binary format with a correlation "
        "id; `raw`: with a converter that decodes the bytes itself), drained by a `celery worker` with default "
        f"settings (fast path, exactly-once step, batch 100); median of {out['runs']} interleaved runs.",
        "",
        "| decode | entries/s (median) | runs |",
        "|---|---:|---|",
    ]
    for decode, result in out["decoders"].items():
        runs = ", ".join(f"{v:,.0f}" for v in result["runs"])
        lines.append(f"| `{decode}` | {result['median']:,.0f} | {runs} |")
    report = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decoders.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "decoders.md").write_text(report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--standard", action="store_true", help="stream_fast_path: False")
    parser.add_argument(
        "--decode", choices=[*DECODERS, "all"], default="utf-8",
        help="the stream's decoder; all: each decoder, --runs times, into benchmarks/results/decoders.md",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="runs per decoder with --decode all (median kept)")
    args = parser.parse_args()
    bench = Bench()
    try:
        if args.decode == "all":
            out = {"machine": machine(bench.server), "entries": args.entries, "runs": args.runs}
            out["decoders"] = decoders(bench, args.entries, args.runs)
            print(write_decoders(out))
            return
        rate = bridge(bench, args.entries, args.batch, False if args.standard else None, args.decode)
        path = "standard" if args.standard else "default"
        log(f"bridge, batch {args.batch}, {path} path, decode {args.decode}: {rate:,.0f} entries/s")
    finally:
        bench.close()


if __name__ == "__main__":
    main()

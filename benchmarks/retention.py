"""What consumer hygiene and retention cost Redis, as ratios against plain commands timed in the same run.

    .venv/bin/python benchmarks/retention.py [--entries 1000000] [--groups 10] [--ghosts 1000]

Starts its own redis-server on a free loopback port. Measures:

- a retention round that finds nothing to trim (the steady state, every 30 s per stream), against
  ``XINFO GROUPS`` of the same stream: the script reads that and one XPENDING summary per group;
- trimming a backlog of acknowledged entries in retention rounds (``XTRIM MINID ~`` in calls of at
  most 100 nodes), against one unbounded ``XTRIM MINID ~`` to the same id;
- removing idle empty consumers (REAP_BATCH per script call), against ``XINFO CONSUMERS`` of the
  same group.

Writes benchmarks/results/retention.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from benchmarks.common import RedisServer  # noqa: E402
from celery_redis_stream.config import StreamConfig, load_config  # noqa: E402
from celery_redis_stream.stats import StreamStats  # noqa: E402
from celery_redis_stream.upkeep.cadence import Upkeep  # noqa: E402
from celery_redis_stream.upkeep.consumers import reap_consumers  # noqa: E402
from celery_redis_stream.upkeep.retention import retention_key, trim_passed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "bench"


def stream_config() -> StreamConfig:
    app = Celery("bench", broker="memory://", set_as_current=False)
    app.conf.stream_tasks = {STREAM: {"task": "t", "registered": False, "retention_ms": 1}}
    return load_config(app).streams[0]


def fill(client: redis.Redis, n: int) -> str:
    last = ""
    for start in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.xadd(STREAM, {"n": str(i)}, id=f"{1_000_000 + i}-1")
        last = pipe.execute()[-1].decode()
    return last


def per_call(fn: Callable[[], Any], repeat: int = 200) -> float:
    """Median seconds of one call, over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="stream entries (1,000,000)")
    parser.add_argument("--groups", type=int, default=10, help="consumer groups on the stream (10)")
    parser.add_argument("--ghosts", type=int, default=1000, help="idle empty consumers to remove (1000)")
    args = parser.parse_args(argv)
    server = RedisServer().start()
    out: dict[str, Any] = {"entries": args.entries, "groups": args.groups, "ghosts": args.ghosts}
    try:
        client = server.client()
        sc = stream_config()
        last = fill(client, args.entries)
        client.xgroup_create(STREAM, "celery", id="0")
        for g in range(args.groups - 1):
            client.xgroup_create(STREAM, f"g{g}", id="0")
            client.xreadgroup(f"g{g}", "c", {STREAM: ">"}, count=10)  # ten pending each, from the start

        # 1. steady state: the bound is the first entry, nothing is trimmed
        round_s = per_call(lambda: trim_passed(client, sc, retention_ms=1, interval_ms=0))
        info_s = per_call(lambda: client.xinfo_groups(STREAM))
        assert trim_passed(client, sc, retention_ms=1, interval_ms=0).trimmed == 0
        out["idle_round_ms"] = round(round_s * 1000, 3)
        out["xinfo_groups_ms"] = round(info_s * 1000, 3)
        out["idle_round_vs_xinfo_groups"] = round(round_s / info_s, 2)

        # 2. trimming the whole backlog once every group acknowledged it
        for g in range(args.groups - 1):
            client.xgroup_setid(STREAM, f"g{g}", last)
            pending = client.xpending_range(STREAM, f"g{g}", "-", "+", 100)
            if pending:
                client.xack(STREAM, f"g{g}", *[p["message_id"] for p in pending])
        client.xgroup_setid(STREAM, "celery", last)
        snapshot = client.dump(STREAM)
        stats = {STREAM: StreamStats(stream=STREAM, mode="group", task="t", group="celery", tracker=None)}
        rounds = 0
        started = time.perf_counter()
        while client.xlen(STREAM) > 200 and rounds < 1000:
            client.hdel(retention_key(sc), "next_ms")  # each round as if the interval had passed
            Upkeep(block_ms=1000, reap_idle_ms=1).trim(client, [sc], stats)
            rounds += 1
        rounds_s = time.perf_counter() - started
        trimmed = stats[STREAM].retention_trimmed
        client.delete(STREAM)
        client.restore(STREAM, 0, snapshot)
        started = time.perf_counter()
        direct = client.execute_command("XTRIM", STREAM, "MINID", "~", last, "LIMIT", 0)
        direct_s = time.perf_counter() - started
        out.update(
            trimmed_in_rounds=trimmed,
            rounds=rounds,
            rounds_s=round(rounds_s, 3),
            one_unbounded_xtrim_trimmed=int(direct),
            one_unbounded_xtrim_s=round(direct_s, 4),
            rounds_vs_one_xtrim=round(rounds_s / direct_s, 1),
        )

        # 3. removing ghosts
        client.delete(STREAM)
        client.xgroup_create(STREAM, "celery", id="0", mkstream=True)
        pipe = client.pipeline(transaction=False)
        for i in range(args.ghosts):
            pipe.execute_command("XGROUP", "CREATECONSUMER", STREAM, "celery", f"ghost-{i}")
        pipe.execute()
        info_c = per_call(lambda: client.xinfo_consumers(STREAM, "celery"), repeat=20)
        time.sleep(0.01)
        started = time.perf_counter()
        first = reap_consumers(client, sc, "me", min_idle_ms=1)  # one script: the longest Redis is held
        call_s = time.perf_counter() - started
        stats = {STREAM: StreamStats(stream=STREAM, mode="group", task="t", group="celery", tracker=None)}
        started = time.perf_counter()
        Upkeep(block_ms=1000, reap_idle_ms=1).reap(client, [sc], "me", stats)
        round_s = time.perf_counter() - started
        assert len(first) + stats[STREAM].consumers_removed == args.ghosts
        out.update(
            reap_one_call_ms=round(call_s * 1000, 2),
            reap_one_call_removed=len(first),
            reap_round_ms=round(round_s * 1000, 2),
            reap_round_removed=stats[STREAM].consumers_removed,
            xinfo_consumers_ms=round(info_c * 1000, 2),
            reap_call_vs_xinfo_consumers=round(call_s / info_c, 2),
        )
    finally:
        server.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retention.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

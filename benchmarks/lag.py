"""What `redis-stream status` (and a metrics scrape) costs per stream, by how the lag is found.

    .venv/bin/python benchmarks/lag.py [--entries 100000] [--repeat 20]

Starts its own redis-server on a free loopback port, writes one stream of
``--entries`` entries and times ``status.stream_status`` for one group
position in each of the cases that ``lag.lag_of`` distinguishes. Figures are
ratios against the first case (Redis reports the lag itself), measured in the
same run; the median of ``--repeat`` calls. Writes benchmarks/results/lag.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RedisServer  # noqa: E402
from celery_redis_stream.client.connection import connect  # noqa: E402
from celery_redis_stream.config import load_config  # noqa: E402
from celery_redis_stream.status import stream_status  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    server = RedisServer().start()
    try:

        class App:
            conf = {"stream_url": server.url, "stream_tasks": {"s": "t"}}

        config = load_config(App(), check_registered=False)
        sc = config.streams[0]
        client = connect(config)
        pipe = client.pipeline(transaction=False)
        for i in range(args.entries):
            pipe.xadd("s", {"n": str(i)})
            if len(pipe) >= 5000:
                pipe.execute()
        pipe.execute()
        ids = [i.decode() for i, _ in client.execute_command("XRANGE", "s", "-", "+", "COUNT", 10)]
        client.xgroup_create("s", "celery", id="0")
        client.xreadgroup("celery", "c1", {"s": ">"}, count=5)
        rows = []

        def case(name: str) -> None:
            status = stream_status(client, sc)
            ms = median_ms(lambda: stream_status(client, sc), args.repeat)
            exact = "exact" if status["lag_exact"] else f">= {status['lag_at_least']}"
            rows.append((name, status["lag_at_least"], exact, ms))

        case("Redis reports the lag (XINFO GROUPS)")
        client.xdel("s", ids[9])
        case("one XDEL after the position: entries-read bounds")
        client.xdel("s", ids[8])
        case("two XDELs: the 5 entries at or before the position counted")
        middle = client.execute_command("XRANGE", "s", "-", "+", "COUNT", args.entries // 2)[-1][0].decode()
        client.xgroup_setid("s", "celery", middle)
        case("XGROUP SETID to the middle: lower bound")
    finally:
        server.stop()
    base = rows[0][3]
    lines = [
        f"# Lag: cost of `stream_status` per stream ({args.entries} entries, median of {args.repeat})",
        "",
        "Ratios against the first row, measured in the same run (`benchmarks/lag.py`).",
        "",
        "| case | lag | | time | ratio |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {lag} | {exact} | {ms:.2f} ms | {ms / base:.1f}x |" for n, lag, exact, ms in rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "lag.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Redis 8.2+/8.4+ stream commands against the bridge's own path, on one server in the same run.

    .venv/bin/python benchmarks/stream_commands.py --server /path/to/redis-server [--entries 100000]

Starts its own redis-server (``--server``, e.g. Redis 8.6) on a free loopback port. Measures, each the
median of three runs:

- reading a backlog in group mode, 100 entries per round, while another consumer holds 10,000
  pending entries (not idle): ``XREADGROUP ... >`` plus one ``XAUTOCLAIM`` every 100 rounds (the
  bridge claims every 30 s by default: far fewer), against ``XREADGROUP ... CLAIM min-idle >``
  (Redis 8.4), which looks at the oldest pending entry on every read;
- taking over 10,000 idle entries of a dead consumer: ``XAUTOCLAIM ... COUNT 100`` calls against
  ``XREADGROUP ... COUNT 100 CLAIM`` calls;
- retention: trimming a backlog that three groups acknowledged with the bridge's script
  (``XTRIM MINID ~``), with and without ``ACKED`` (Redis 8.2);
- acknowledging 100 entries: ``XACK`` against ``XACKDEL ... ACKED`` (Redis 8.2), which deletes them too.

Each as entries per second seen by the client (Python parses every reply: noisy on a busy machine) and as
the server's own microseconds per entry (INFO commandstats, reset before each run): what the command
costs Redis. Prints a table and writes benchmarks/results/stream_commands.json.
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
from celery_redis_stream.upkeep.retention import trim_passed  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "bench"
GROUP = "g"
BATCH = 100
HELD = 10_000  # pending entries another consumer holds
IDLE_MS = 60_000


SERVER_US: dict[str, list[float]] = {}  # scenario -> server microseconds per entry, one per run


def median_of(fn: Callable[[], float], runs: int = 3) -> float:
    return statistics.median(fn() for _ in range(runs))


def server_cost(client: redis.Redis, name: str, entries: int, since: float) -> None:
    """Record the server's own time for the commands run since CONFIG RESETSTAT (INFO commandstats)."""
    stats = client.info("commandstats")
    total = sum(float(v["usec"]) for k, v in stats.items() if k.startswith("cmdstat_x") or k == "cmdstat_evalsha")
    SERVER_US.setdefault(name, []).append(total / max(entries, 1))


def reset_stats(client: redis.Redis) -> float:
    client.config_resetstat()
    return time.perf_counter()


def fill(client: redis.Redis, n: int) -> None:
    client.delete(STREAM)
    for start in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.xadd(STREAM, {"n": str(i), "a": "1", "b": "hello"})
        pipe.execute()


def fresh_group(client: redis.Redis, *, held: int) -> None:
    """The group at 0, with ``held`` entries pending on consumer ``other``."""
    client.xgroup_destroy(STREAM, GROUP)
    client.xgroup_create(STREAM, GROUP, id="0")
    while held > 0:
        n = min(held, 1000)
        client.execute_command("XREADGROUP", "GROUP", GROUP, "other", "COUNT", n, "STREAMS", STREAM, ">")
        held -= n


def read_backlog(client: redis.Redis, entries: int, *, claim: bool) -> float:
    """Entries per second read by consumer ``bench`` from the group, ``claim``: with CLAIM on every read."""
    fresh_group(client, held=HELD)
    read, rounds = 0, 0
    started = reset_stats(client)
    while read < entries - HELD:
        if claim:
            reply = client.execute_command(
                "XREADGROUP", "GROUP", GROUP, "bench", "COUNT", BATCH, "CLAIM", IDLE_MS, "STREAMS", STREAM, ">"
            )
        else:
            reply = client.execute_command(
                "XREADGROUP", "GROUP", GROUP, "bench", "COUNT", BATCH, "STREAMS", STREAM, ">"
            )
            if rounds % 100 == 0:
                client.execute_command("XAUTOCLAIM", STREAM, GROUP, "bench", IDLE_MS, "0-0", "COUNT", BATCH)
        got = sum(len(entries) for _, entries in (reply.items() if isinstance(reply, dict) else reply or []))
        if not got:
            break
        read += got
        rounds += 1
    elapsed = time.perf_counter() - started
    server_cost(client, "read_backlog_claim" if claim else "read_backlog_old", read, started)
    return read / elapsed


def take_over(client: redis.Redis, *, claim: bool) -> float:
    """Entries per second taken over from a dead consumer holding HELD idle entries."""
    fresh_group(client, held=HELD)
    time.sleep(0.05)
    taken = 0
    started = reset_stats(client)
    if claim:
        while True:
            reply = client.execute_command(
                "XREADGROUP", "GROUP", GROUP, "bench", "COUNT", BATCH, "CLAIM", 20, "STREAMS", STREAM, ">"
            )
            got = sum(len(entries) for _, entries in (reply.items() if isinstance(reply, dict) else reply or []))
            taken += got
            if taken >= HELD or not got:
                break
    else:
        cursor = "0-0"
        while True:
            reply = client.execute_command("XAUTOCLAIM", STREAM, GROUP, "bench", 20, cursor, "COUNT", BATCH)
            cursor = reply[0].decode()
            taken += len(reply[1])
            if cursor == "0-0" or taken >= HELD:
                break
    elapsed = time.perf_counter() - started
    server_cost(client, "take_over_claim" if claim else "take_over_xautoclaim", taken, started)
    assert taken >= HELD, taken
    return taken / elapsed


def stream_config() -> StreamConfig:
    app = Celery("bench", broker="memory://", set_as_current=False)
    app.conf.stream_tasks = {STREAM: {"task": "t", "registered": False, "retention_ms": 1}}
    return load_config(app).streams[0]


def trim_backlog(client: redis.Redis, entries: int, *, acked: bool) -> float:
    """Entries per second trimmed under retention (the bridge's script, as many calls as it takes)."""
    fill(client, entries)
    for group in (GROUP, "celery", "other"):
        client.xgroup_create(STREAM, group, id="$")
    sc = stream_config()
    time.sleep(0.01)
    trimmed = 0
    started = reset_stats(client)
    while True:
        done = trim_passed(client, sc, retention_ms=1, interval_ms=0, acked=acked)
        trimmed += done.trimmed
        if not done.trimmed:
            break
    elapsed = time.perf_counter() - started
    server_cost(client, "trim_acked" if acked else "trim_old", trimmed, started)
    assert trimmed >= entries * 0.9, trimmed
    return trimmed / elapsed


def acknowledge(client: redis.Redis, entries: int, *, delete: bool) -> float:
    """Entries per second acknowledged in calls of BATCH ids."""
    fill(client, entries)
    client.xgroup_create(STREAM, GROUP, id="0")
    ids: list[str] = []
    while True:
        reply = client.execute_command("XREADGROUP", "GROUP", GROUP, "bench", "COUNT", 1000, "STREAMS", STREAM, ">")
        got = [e[0].decode() for _, es in (reply.items() if isinstance(reply, dict) else reply or []) for e in es]
        if not got:
            break
        ids.extend(got)
    started = reset_stats(client)
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        if delete:
            client.execute_command("XACKDEL", STREAM, GROUP, "ACKED", "IDS", len(chunk), *chunk)
        else:
            client.execute_command("XACK", STREAM, GROUP, *chunk)
    elapsed = time.perf_counter() - started
    server_cost(client, "ack_xackdel" if delete else "ack_xack", len(ids), started)
    return len(ids) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the redis-server binary (Redis 8.4+ for CLAIM)")
    parser.add_argument("--entries", type=int, default=100_000, help="stream entries (100,000)")
    args = parser.parse_args(argv)
    server = RedisServer(binary=args.server).start()
    try:
        client = server.client(0)
        version = client.info("server")["redis_version"]
        fill(client, args.entries)
        client.xgroup_create(STREAM, GROUP, id="0")
        rows: dict[str, Any] = {
            "read_backlog_old": median_of(lambda: read_backlog(client, args.entries, claim=False)),
            "read_backlog_claim": median_of(lambda: read_backlog(client, args.entries, claim=True)),
            "take_over_xautoclaim": median_of(lambda: take_over(client, claim=False)),
            "take_over_claim": median_of(lambda: take_over(client, claim=True)),
            "trim_old": median_of(lambda: trim_backlog(client, args.entries, acked=False)),
            "trim_acked": median_of(lambda: trim_backlog(client, args.entries, acked=True)),
            "ack_xack": median_of(lambda: acknowledge(client, args.entries, delete=False)),
            "ack_xackdel": median_of(lambda: acknowledge(client, args.entries, delete=True)),
        }
    finally:
        server.stop()
    pairs = [
        ("group read, 100 per round", "read_backlog_old", "read_backlog_claim"),
        ("take over 10,000 idle entries", "take_over_xautoclaim", "take_over_claim"),
        ("retention trim of a backlog", "trim_old", "trim_acked"),
        ("acknowledge 100 per call", "ack_xack", "ack_xackdel"),
    ]
    server_us = {name: statistics.median(values) for name, values in SERVER_US.items()}
    print(f"redis {version}, {args.entries:,} entries; median of 3 runs")
    print(f"  {'':32} {'client entries/s':>24} {'server us/entry':>22}")
    for what, old, new in pairs:
        print(
            f"  {what:32} {rows[old]:>11,.0f} {rows[new]:>11,.0f}  {server_us[old]:>10.3f} {server_us[new]:>10.3f}"
            "   (old, new)"
        )
    RESULTS.mkdir(exist_ok=True)
    out = {
        "server": f"redis {version}", "entries": args.entries, "entries_per_second": rows,
        "server_us_per_entry": server_us,
    }  # fmt: skip
    (RESULTS / "stream_commands.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

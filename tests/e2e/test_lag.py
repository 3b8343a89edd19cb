"""Lag and time lag on a real redis-server: 100k-entry streams, with and without XDEL, against the true count."""

from __future__ import annotations

import json
from typing import Any

import redis

from ..support import RedisServer, server_fixture
from .test_cli import cli, env_for

N = 100_000


def fill(client: redis.Redis, stream: str, n: int) -> list[str]:
    ids: list[str] = []
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"n": str(i)})
        if len(pipe) >= 5000:
            ids += [x.decode() for x in pipe.execute()]
    ids += [x.decode() for x in pipe.execute()]
    return ids


def key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def true_lag(client: redis.Redis, stream: str, position: str) -> int:
    """The truth, the expensive way: every id of the stream read and compared."""
    return sum(1 for entry_id, _ in client.xrange(stream) if key(entry_id.decode()) > key(position))


def status(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = cli(env, "status", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return {s["stream"]: s for s in json.loads(result.stdout)["streams"]}


def redis_lag(client: redis.Redis, stream: str) -> Any:
    return next(g for g in client.xinfo_groups(stream) if g["name"] == b"celery")["lag"]


server = server_fixture(scope="module")


def test_group_lag_is_exact_on_100k_entries_where_redis_says_nil(server: RedisServer) -> None:
    c = server.client()
    c.delete("orders")
    ids = fill(c, "orders", N)
    env = env_for(server.url)
    c.xgroup_create("orders", "celery", id="0")
    c.xreadgroup("celery", "c1", {"orders": ">"}, count=5)
    position = ids[4]
    s = status(env)["orders"]
    assert (s["lag"], s["lag_exact"], s["lag_at_least"]) == (N - 5, True, N - 5)

    # One XDEL after the position: Redis reports nil; entries-read and the
    # stream's counters still pin it down (the 179,999 case).
    c.xdel("orders", ids[50_000])
    assert redis_lag(c, "orders") is None
    s = status(env)["orders"]
    assert (s["lag"], s["lag_exact"]) == (true_lag(c, "orders", position), True) == (N - 6, True)

    # A second XDEL: the bounds no longer meet; counting the few entries at or
    # before the position gives it exactly.
    c.xdel("orders", ids[70_000])
    assert redis_lag(c, "orders") is None
    s = status(env)["orders"]
    assert (s["lag"], s["lag_exact"]) == (true_lag(c, "orders", position), True) == (N - 7, True)

    # Moved to the middle (XGROUP SETID: Redis forgets entries-read): too many
    # on both sides to count within the limit, so a lower bound, never a smaller bare number.
    middle = ids[N // 2]
    c.xgroup_setid("orders", "celery", middle)
    truth = true_lag(c, "orders", middle)
    s = status(env)["orders"]
    assert (s["lag"], s["lag_exact"]) == (None, False)
    assert 10_000 <= s["lag_at_least"] <= truth
    table = cli(env, "status")
    assert f">={s['lag_at_least']}" in table.stdout, table.stdout
    # --max-lag above the limit counts that far: exact again, and over it.
    code_and = cli(env, "status", "--json", "--max-lag", "60000")
    s = {x["stream"]: x for x in json.loads(code_and.stdout)["streams"]}["orders"]
    assert (s["lag"], s["lag_exact"], code_and.returncode) == (truth, True, 0)
    code = cli(env, "status", "--max-lag", "20000").returncode
    assert code == 1  # a lower bound above the threshold is over it


def test_tracker_lag_is_exact_near_either_end_and_a_lower_bound_in_the_middle(server: RedisServer) -> None:
    c = server.client()
    c.delete("events", "stream_tracker:{events}")
    ids = fill(c, "events", N)
    env = env_for(server.url)
    # The case: 100,000 behind, once shown as 10,000.
    c.set("stream_tracker:{events}", ids[0])
    s = status(env)["events"]
    assert (s["lag"], s["lag_exact"]) == (N - 1, True)
    c.set("stream_tracker:{events}", ids[3])
    c.xdel("events", ids[60_000])
    s = status(env)["events"]
    assert (s["lag"], s["lag_exact"]) == (true_lag(c, "events", ids[3]), True) == (N - 5, True)
    c.set("stream_tracker:{events}", ids[-3])
    assert (status(env)["events"]["lag"]) == 2
    c.set("stream_tracker:{events}", ids[N // 3])
    s = status(env)["events"]
    assert s["lag"] is None and not s["lag_exact"]
    assert 10_000 <= s["lag_at_least"] <= true_lag(c, "events", ids[N // 3])


def test_time_lag_is_the_age_of_the_oldest_entry_not_yet_dispatched(server: RedisServer) -> None:
    c = server.client()
    c.delete("orders", "events", "stream_tracker:{events}")
    seconds, micros = c.time()
    now = seconds * 1000 + micros // 1000
    aged = [f"{now - age * 1000}-0" for age in (300, 200, 100)]
    for entry_id in aged:
        c.xadd("orders", {"n": "x"}, id=entry_id)
        c.xadd("events", {"n": "x"}, id=entry_id)
    env = env_for(server.url)
    c.xgroup_create("orders", "celery", id="0")
    c.xreadgroup("celery", "c1", {"orders": ">"}, count=1)  # 300 s old, pending: older than the first undelivered
    s = status(env)
    assert 300 <= s["orders"]["lag_seconds"] < 330
    c.xack("orders", "celery", aged[0])
    assert 200 <= status(env)["orders"]["lag_seconds"] < 230
    c.set("stream_tracker:{events}", aged[1])
    assert 100 <= status(env)["events"]["lag_seconds"] < 130
    c.set("stream_tracker:{events}", aged[2])
    c.xreadgroup("celery", "c1", {"orders": ">"}, count=10)
    c.xack("orders", "celery", *aged)
    s = status(env)
    assert (s["orders"]["lag_seconds"], s["events"]["lag_seconds"]) == (0, 0)  # nothing waits
    table = cli(env, "status").stdout
    assert "time lag" in table and "0.0s" in table

"""End to end with real `celery worker` processes and a private redis-server.

Dispatch is measured in the broker queue where workers are killed (a killed
worker's prefetched tasks would confound an execution count); execution is
checked where the task itself matters.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest

from ..support import (
    RedisServer,
    Worker,
    executed,
    fast_env,
    produce_many,
    queued_messages,
    wait_for,
    worker_pool,
)


def dispatched(server: RedisServer, queue: str = "celery") -> list[dict[str, Any]]:
    return queued_messages(server.client(1), queue)


def wait_dispatched(server: RedisServer, n: int, timeout: float = 60, queue: str = "celery") -> list[dict[str, Any]]:
    wait_for(lambda: server.client(1).llen(queue) >= n, timeout, f"{n} messages in {queue}")
    return dispatched(server, queue)


def test_an_entry_runs_the_mapped_task_with_its_fields_and_stream_headers(redis_server: RedisServer) -> None:
    env = fast_env(
        redis_server,
        {
            "orders": "tests.record",
            "kw": {"task": "tests.record", "call": "kwargs"},
            "ent": {"task": "tests.record", "call": "entry"},
            "conv": {"task": "tests.record", "converter": "tests.workerapp:to_order"},
        },
    )
    client = redis_server.client()
    ids = {
        stream: client.xadd(stream, {"order_id": "42", "amount": "9.90"}).decode()
        for stream in ("orders", "kw", "ent", "conv")
    }
    worker = Worker(env).start()
    try:
        wait_for(lambda: len(executed(redis_server.client(2))) >= 4, 30, "4 executed tasks")
    finally:
        assert worker.stop() == 0
    runs = {run["stream"]: run for run in executed(redis_server.client(2))}
    fields = {"order_id": "42", "amount": "9.90"}
    assert runs["orders"]["args"] == [fields] and runs["orders"]["kwargs"] == {}
    assert runs["kw"]["args"] == [] and runs["kw"]["kwargs"] == fields
    assert runs["ent"]["args"] == ["ent", ids["ent"], fields]
    assert runs["conv"]["args"] == [42] and runs["conv"]["kwargs"] == {"amount": "9.90", "delivery": 1}
    for stream, run in runs.items():
        assert run["stream_id"] == ids[stream]
    assert "redis-stream: reading" in worker.output()
    assert client.xinfo_groups("orders")[0]["pending"] == 0


def test_queue_and_send_options_per_stream_reach_the_broker(redis_server: RedisServer) -> None:
    env = fast_env(redis_server, {"orders": {"task": "tests.record", "queue": "orders_q", "options": {"priority": 3}}})
    produce_many(redis_server.client(), "orders", 3)
    worker = Worker(env, queues="other").start()
    broker = redis_server.client(1)
    # kombu's Redis transport keeps priority 3 in its own sub-list of the queue
    queue_key = "orders_q\x06\x163"
    try:
        wait_for(lambda: broker.llen(queue_key) >= 3, 30, "3 messages in orders_q")
    finally:
        worker.stop()
    raw = broker.lrange(queue_key, 0, -1)
    assert len(raw) == 3
    assert all(json.loads(m)["properties"]["priority"] == 3 for m in raw)
    assert all(json.loads(m)["properties"]["delivery_info"]["routing_key"] == "orders_q" for m in raw)


def test_a_new_group_starting_at_dollar_skips_older_entries(redis_server: RedisServer) -> None:
    client = redis_server.client()
    produce_many(client, "orders", 5)
    worker = Worker(fast_env(redis_server, {"orders": "tests.record"}, stream_start="$"), queues="other").start()
    try:
        wait_for(lambda: client.xinfo_groups("orders"), 10, "group created")
        new = produce_many(client, "orders", 3, start=100)
        got = wait_dispatched(redis_server, 3)
        time.sleep(0.5)
    finally:
        worker.stop()
    assert [m["redis_stream_id"] for m in dispatched(redis_server)] == new
    assert len(got) == 3


def test_two_workers_split_a_stream_and_dispatch_each_entry_once(redis_server: RedisServer) -> None:
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_batch_size=20)
    a = Worker(env, "a", queues="other").start()
    b = Worker(env, "b", queues="other").start()
    try:
        produced: list[str] = []
        for i in range(20):
            produced += produce_many(redis_server.client(), "orders", 50, start=i * 50)
            time.sleep(0.05)
        messages = wait_dispatched(redis_server, len(produced))
        time.sleep(1)
        consumers = {c["name"].decode(): c for c in redis_server.client().xinfo_consumers("orders", "celery")}
    finally:
        a.stop(), b.stop()
    messages = dispatched(redis_server)
    ids = [m["redis_stream_id"] for m in messages]
    assert sorted(ids) == sorted(produced)  # every entry once: none missing, none twice
    assert set(consumers) == {f"a@{a_host()}", f"b@{a_host()}"}
    # a warm stop with nothing pending removes the worker's own consumer
    assert redis_server.client().xinfo_consumers("orders", "celery") == []


def a_host() -> str:
    import socket

    return socket.gethostname()


def test_same_entry_dispatched_again_keeps_its_task_id(redis_server: RedisServer) -> None:
    env = fast_env(redis_server, {"orders": "tests.record"})
    produced = produce_many(redis_server.client(), "orders", 5)
    worker = Worker(env, queues="other").start()
    wait_dispatched(redis_server, 5)
    worker.stop()
    first = {m["redis_stream_id"]: m["id"] for m in dispatched(redis_server)}
    # Rewind the group: the same entries are dispatched again, by another worker.
    redis_server.client().xgroup_setid("orders", "celery", "0")
    other = Worker(env, "other", queues="other").start()
    wait_dispatched(redis_server, 10)
    other.stop()
    again = [m for m in dispatched(redis_server)][5:]
    assert sorted(first) == sorted(produced)
    assert {m["redis_stream_id"]: m["id"] for m in again} == first
    # another group on the same stream gets other task ids
    redis_server.client(1).delete("celery")
    env2 = fast_env(redis_server, {"orders": {"task": "tests.record", "group": "g2"}})
    third = Worker(env2, "third", queues="other").start()
    wait_dispatched(redis_server, 5)
    third.stop()
    assert not set(first.values()) & {m["id"] for m in dispatched(redis_server)}


def produce_steadily(
    server: RedisServer, stream: str, total: int, stop: threading.Event, rate_batch: int = 25
) -> list[str]:
    ids: list[str] = []
    client = server.client()
    while len(ids) < total and not stop.is_set():
        ids += produce_many(client, stream, min(rate_batch, total - len(ids)), start=len(ids))
        time.sleep(0.02)
    return ids


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_kill_9_and_restart_loses_nothing_and_duplicates_at_most_a_batch_per_kill(
    redis_server: RedisServer, mode: str
) -> None:
    batch = 20
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_batch_size=batch, stream_mode=mode)
    total, kills = 1500, 3
    done = threading.Event()
    result: list[str] = []
    producer = threading.Thread(target=lambda: result.extend(produce_steadily(redis_server, "orders", total, done)))
    worker = Worker(env, queues="other").start()
    producer.start()
    rng = random.Random(7)
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.2))
            worker.kill()
            worker = Worker(env, queues="other").start()
        producer.join(60)
        wait_dispatched(redis_server, total, timeout=60)
        time.sleep(1)
    finally:
        done.set()
        worker.stop()
    messages = dispatched(redis_server)
    counts = Counter(m["redis_stream_id"] for m in messages)
    assert set(counts) == set(result) and len(result) == total  # nothing missing
    duplicates = sum(c - 1 for c in counts.values())
    assert duplicates <= batch * kills
    task_ids: dict[str, set[str]] = {}
    for m in messages:
        task_ids.setdefault(m["redis_stream_id"], set()).add(m["id"])
    assert all(len(ids) == 1 for ids in task_ids.values())  # a re-dispatch keeps its task id


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_sigterm_mid_stream_then_restart_dispatches_everything_exactly_once(
    redis_server: RedisServer, mode: str, workers: list[Worker]
) -> None:
    # Small batches keep the default (fast) path busy for seconds, so the SIGTERM lands mid-stream.
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_batch_size=10, stream_mode=mode)
    total = 20000
    produced = produce_many(redis_server.client(), "orders", total)
    worker = Worker(env, queues="other").start()
    wait_for(lambda: redis_server.client(1).llen("celery") > 0, 30, "first dispatches")
    assert worker.stop() == 0
    assert redis_server.client(1).llen("celery") < total, "the stop came too late to be mid-stream"
    assert "redis-stream: stopped" in worker.output()
    workers.append(Worker(env, "w1", queues="other").start())  # same nodename: same consumer
    wait_dispatched(redis_server, total)
    time.sleep(1)
    ids = [m["redis_stream_id"] for m in dispatched(redis_server)]
    assert sorted(ids) == sorted(produced)


def test_pending_entries_of_a_dead_worker_are_claimed_by_another(redis_server: RedisServer) -> None:
    client = redis_server.client()
    produced = produce_many(client, "orders", 30)
    client.xgroup_create("orders", "celery", id="0")
    # A worker that read these entries and died before dispatching them.
    client.xreadgroup("celery", "dead@host", {"orders": ">"}, count=30)
    assert client.xpending("orders", "celery")["pending"] == 30
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_claim_idle_ms=1000)
    worker = Worker(env, "alive", queues="other").start()
    try:
        wait_dispatched(redis_server, 30, timeout=30)
        wait_for(lambda: client.xpending("orders", "celery")["pending"] == 0, 10, "claimed entries acknowledged")
    finally:
        worker.stop()
    assert sorted(m["redis_stream_id"] for m in dispatched(redis_server)) == sorted(produced)
    assert "claimed 30 idle entries" in worker.output()


def test_own_pending_entries_are_dispatched_first_on_restart(redis_server: RedisServer) -> None:
    client = redis_server.client()
    produced = produce_many(client, "orders", 10)
    client.xgroup_create("orders", "celery", id="0")
    client.xreadgroup("celery", f"w1@{a_host()}", {"orders": ">"}, count=4)
    env = fast_env(redis_server, {"orders": "tests.record"})  # claim idle 60 s: only own pending is re-read
    worker = Worker(env, "w1", queues="other").start()
    try:
        wait_dispatched(redis_server, 10)
    finally:
        worker.stop()
    ids = [m["redis_stream_id"] for m in dispatched(redis_server)]
    assert ids == produced  # the 4 pending first, then the new ones, in order
    assert client.xpending("orders", "celery")["pending"] == 0


def test_tracker_mode_resumes_after_the_stored_position(redis_server: RedisServer) -> None:
    client = redis_server.client()
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_mode="tracker")
    first = produce_many(client, "orders", 10)
    worker = Worker(env, queues="other").start()
    wait_dispatched(redis_server, 10)
    worker.stop()
    assert client.get("stream_tracker:{orders}").decode() == first[-1]
    assert client.get("stream_tracker:{orders}:lease") is None  # released on warm shutdown
    second = produce_many(client, "orders", 10, start=10)
    worker = Worker(env, queues="other").start()
    wait_dispatched(redis_server, 20)
    time.sleep(0.5)
    worker.stop()
    assert [m["redis_stream_id"] for m in dispatched(redis_server)] == first + second
    assert not client.exists("orders:dead")


def test_two_workers_on_a_tracked_stream_dispatch_nothing_twice_and_take_over(redis_server: RedisServer) -> None:
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_mode="tracker", stream_claim_idle_ms=1500)
    a = Worker(env, "a", queues="other").start()
    b = Worker(
        env,
        "b",
        queues="other",
    ).start(wait="ready.")
    client = redis_server.client()
    try:
        produced = []
        for i in range(10):
            produced += produce_many(client, "orders", 50, start=i * 50)
            time.sleep(0.05)
        wait_dispatched(redis_server, 500)
        holder = client.get("stream_tracker:{orders}:lease").decode()
        owner, standby = (a, b) if holder.startswith("a@") else (b, a)
        owner.kill()  # dies holding the lease; the other takes over after it expires
        produced += produce_many(client, "orders", 100, start=500)
        wait_dispatched(redis_server, 600, timeout=30)
        time.sleep(0.5)
    finally:
        a.stop(), b.stop()
    ids = [m["redis_stream_id"] for m in dispatched(redis_server)]
    assert sorted(ids) == sorted(produced)
    assert "reading tracked stream=orders" in standby.output()


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", 2), ("threads", 2), ("solo", 1)])
def test_one_reader_per_worker_whatever_the_pool(redis_server: RedisServer, pool: str, concurrency: int) -> None:
    env = fast_env(redis_server, {"orders": "tests.record"})
    produced = produce_many(redis_server.client(), "orders", 200)
    worker = Worker(env, pool=pool, concurrency=concurrency).start()
    try:
        wait_for(lambda: len(executed(redis_server.client(2))) >= 200, 60, "200 executed")
        clients = redis_server.client().client_list()
        readers = [c for c in clients if c.get("name") == "celery-redis-stream"]
        time.sleep(0.5)
    finally:
        worker.stop()
    runs = executed(redis_server.client(2))
    assert sorted(r["stream_id"] for r in runs) == sorted(produced)
    assert len(readers) == 1
    assert worker.output().count("redis-stream: reading") == 1


def test_the_worker_runs_on_the_pool_crs_pool_names_and_the_bridge_feeds_it(redis_server: RedisServer) -> None:
    """The CI matrix's pool cells: CRS_POOL reaches `celery worker --pool` (the banner names it), one reader feeds
    the pool, and the tasks run in it: in child processes on prefork, in the worker process on the others."""
    pool = worker_pool()
    env = fast_env(redis_server, {"orders": "tests.record"})
    produced = produce_many(redis_server.client(), "orders", 100)
    worker = Worker(env, concurrency=1 if pool == "solo" else 2).start()
    try:
        wait_for(lambda: len(executed(redis_server.client(2))) >= 100, 60, "100 executed")
        readers = [c for c in redis_server.client().client_list() if c.get("name") == "celery-redis-stream"]
    finally:
        assert worker.stop() == 0
    shown = {"threads": "thread"}.get(pool, pool)  # Celery's banner names the pool's module
    assert f"({shown})" in worker.output().split("[queues]")[0]
    runs = executed(redis_server.client(2))
    assert sorted(r["stream_id"] for r in runs) == sorted(produced)
    assert len(readers) == 1
    pids = {r["pid"] for r in runs}
    assert (worker.pid not in pids) if pool == "prefork" else (pids == {worker.pid})


def test_an_invalid_setting_stops_the_worker_before_anything_is_read(redis_server: RedisServer) -> None:
    produce_many(redis_server.client(), "orders", 3)
    env = fast_env(redis_server, {"orders": "tests.not_registered"})
    worker = Worker(env).start(wait=None)
    code = worker.wait(60)
    assert code != 0
    assert "CRITICAL/MainProcess] redis-stream: setting stream_tasks for stream 'orders'" in worker.output()
    assert "not registered" in worker.output()
    assert not redis_server.client().xinfo_groups("orders")  # nothing was read or created


def test_worker_options_choose_which_streams_are_read(redis_server: RedisServer) -> None:
    env = fast_env(redis_server, {"a": "tests.record", "b": "tests.record"})
    client = redis_server.client()
    produce_many(client, "a", 2)
    produce_many(client, "b", 2)
    only_b = Worker(env, "onlyb", queues="other", extra=["--redis-streams", "b"]).start()
    wait_dispatched(redis_server, 2)
    time.sleep(0.5)
    only_b.stop()
    assert {m["redis_stream"] for m in dispatched(redis_server)} == {"b"}
    assert "reading b->tests.record" in only_b.output() and "a->" not in only_b.output()
    without = Worker(env, "none", queues="other", extra=["--without-redis-stream"]).start(wait="ready.")
    time.sleep(1)
    without.stop()
    assert "redis-stream: reading" not in without.output()
    assert not any(g["name"] == b"celery" for g in client.xinfo_groups("a"))


def test_warm_shutdown_is_prompt(redis_server: RedisServer) -> None:
    env = fast_env(redis_server, {"orders": "tests.record"}, stream_block_ms=1000)
    worker = Worker(env, queues="other").start()
    time.sleep(0.5)
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    # generous bound: detects a reader that blocks shutdown, not a speed target
    assert time.monotonic() - started < 10
    assert "redis-stream: stopped" in worker.output()

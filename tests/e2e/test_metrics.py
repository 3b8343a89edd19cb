"""stream_metrics_port: Prometheus metrics served by the worker's main process."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from ..support import RedisServer, Worker, free_port, produce_many, wait_for, worker_env
from .test_cli import cli


def scrape(port: int) -> dict[tuple[str, str], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, sample.labels.get("stream", ""))] = sample.value
    return out


def test_a_worker_serves_counters_lag_and_pause_per_stream(redis_server: RedisServer, workers: list[Worker]) -> None:
    port = free_port()
    env = worker_env(
        redis_server.url_db(0),
        redis_server.url_db(1),
        redis_server.url_db(2),
        {
            "orders": {"task": "tests.record", "max_queue_length": 10, "batch_size": 10},
            "audit": {"task": "tests.record", "mode": "tracker"},
        },
        stream_start="0",
        stream_block_ms=200,
        stream_metrics_port=port,
        stream_metrics_addr="127.0.0.1",
        stream_max_entry_bytes=100,
    )
    client = redis_server.client()
    client.xadd("orders", {"big": "x" * 200})
    produce_many(client, "orders", 30)
    produce_many(client, "audit", 5)
    # nobody consumes the target queue: backpressure pauses "orders" with a backlog left in the stream
    worker = Worker(env, queues="other", pool="prefork", concurrency=2)
    workers.append(worker)
    worker.start()
    worker.wait_log("metrics on http://127.0.0.1", 10)
    wait_for(lambda: scrape(port).get(("redis_stream_paused", "orders")) == 1, 30, "orders paused")
    wait_for(lambda: scrape(port).get(("redis_stream_dispatched_total", "audit")) == 5, 30, "audit dispatched")
    metrics = scrape(port)
    dispatched = metrics[("redis_stream_dispatched_total", "orders")]
    assert metrics[("redis_stream_dead_lettered_total", "orders")] == 1
    assert metrics[("redis_stream_dead_letter_length", "orders")] == 1
    assert dispatched == redis_server.client(1).llen("celery") - 5
    assert metrics[("redis_stream_lag", "orders")] == 31 - 1 - dispatched > 0
    assert metrics[("redis_stream_pending", "orders")] == 0
    assert metrics[("redis_stream_lag", "audit")] == 0
    assert metrics[("redis_stream_paused", "audit")] == 0
    assert metrics[("redis_stream_redis_up", "")] == 1
    # The backlog waits: its age grows, and inspect (asked through the broker) reports it too.
    wait_for(lambda: scrape(port)[("redis_stream_lag_seconds", "orders")] >= 1, 30, "time lag")
    replies = json.loads(cli(env, "inspect", "--json", "-t", "5").stdout)
    ages = {s["stream"]: s["lag_seconds"] for s in next(iter(replies.values()))["streams"]}
    assert ages["orders"] >= 1 and ages["audit"] == 0, ages
    assert worker.stop() == 0


def samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(body) for s in f.samples]


def value(port: int, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, sample_value in samples(port):
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


def test_metrics_carry_the_group_reasons_reader_state_broker_retries_and_time_lag(
    redis_server: RedisServer, workers: list[Worker]
) -> None:
    broker = RedisServer().start()
    try:
        ports = [free_port(), free_port()]
        tasks = {
            "orders": {"task": "tests.record", "batch_size": 10},
            "audit": {"task": "tests.record", "mode": "tracker"},
            "broken": {"task": "tests.record", "group": "other"},  # a string key: WRONGTYPE stops its reader
        }
        client = redis_server.client()
        client.set("broken", "not a stream")
        client.xadd("orders", {"big": "x" * 200})
        client.xadd("orders", {"n": b"\xff"})
        produce_many(client, "audit", 3)
        started = []
        for i, port in enumerate(ports):
            env = worker_env(
                redis_server.url_db(0), broker.url_db(1), redis_server.url_db(2), tasks, stream_start="0",
                stream_block_ms=200, stream_metrics_port=port, stream_max_entry_bytes=100,
            )  # fmt: skip
            worker = Worker(env, name=f"w{i}")
            workers.append(worker)
            started.append(worker.start())
            # stream_metrics_addr is not set: the endpoint is on loopback only.
            worker.wait_log(f"metrics on http://127.0.0.1:{port}/metrics", 10)

        def state(port: int, stream: str) -> str | None:
            on = [s[1]["state"] for s in samples(port) if s[0] == "redis_stream_reader_state" and s[2] == 1]
            found = [s[1]["state"] for s in samples(port) if s[0] == "redis_stream_reader_state"
                     and s[1]["stream"] == stream and s[2] == 1]  # fmt: skip
            assert len(on) == len(tasks), on  # exactly one state per stream is 1
            return found[0] if found else None

        # A reader that has not run yet shows standing_by: wait for every state, not the lease alone.
        wait_for(
            lambda: sorted(state(p, "audit") or "" for p in ports) == ["reading", "standing_by"]
            and [state(p, "broken") for p in ports] == ["stopped", "stopped"]
            and [state(p, "orders") for p in ports] == ["reading", "reading"],
            30, "the lease taken, the broken stream stopped and the group read on both workers",
        )  # fmt: skip
        total = {p: value(p, "redis_stream_dead_lettered_total", stream="orders") or 0 for p in ports}
        wait_for(lambda: sum(value(p, "redis_stream_dead_lettered_total", stream="orders") or 0 for p in ports) == 2,
                 30, "two dead letters")  # fmt: skip
        reasons = {}
        for p in ports:
            for name, labels, v in samples(p):
                if name == "redis_stream_dead_lettered_by_reason_total" and v:
                    assert labels["group"] == "celery" and labels["mode"] == "group"
                    reasons[labels["reason"]] = reasons.get(labels["reason"], 0) + v
        assert reasons == {"too_large": 1, "not_utf8": 1}, (reasons, total)
        assert value(ports[0], "redis_stream_lag", stream="audit", group="stream_tracker:{audit}") == 0
        assert value(ports[0], "redis_stream_lag_at_least", stream="orders", group="celery") == 0
        assert value(ports[0], "redis_stream_lag_seconds", stream="orders", group="celery") == 0

        # Broker down: entries wait, the readers retry and say so; time lag grows.
        broker.stop()
        produce_many(client, "orders", 20)
        wait_for(lambda: any((value(p, "redis_stream_broker_retries_total", stream="orders") or 0) > 0 for p in ports),
                 30, "a broker retry")  # fmt: skip
        wait_for(lambda: (value(ports[0], "redis_stream_lag_seconds", stream="orders") or 0) >= 1, 30, "time lag")
        assert (value(ports[0], "redis_stream_lag_at_least", stream="orders") or 0) + (
            value(ports[0], "redis_stream_pending", stream="orders") or 0
        ) >= 1
        broker.start()
        wait_for(lambda: value(ports[0], "redis_stream_lag_seconds", stream="orders") == 0, 60, "caught up")
        assert value(ports[0], "redis_stream_lag", stream="orders") == 0
        for worker in started:
            assert worker.stop() == 0
    finally:
        broker.stop()

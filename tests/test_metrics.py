"""stream_metrics_port: Prometheus metrics served by the worker's main process."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from .support import RedisServer, Worker, free_port, produce_many, wait_for, worker_env


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
    assert worker.stop() == 0

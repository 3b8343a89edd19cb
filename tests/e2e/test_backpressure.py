"""stream_max_queue_length: the backlog stays in the stream while the Celery queue is full."""

from __future__ import annotations

import threading
import time

from ..support import RedisServer, Worker, executed, produce_many, wait_for, worker_env


def test_the_broker_queue_never_exceeds_the_limit_plus_one_batch(
    redis_server: RedisServer, workers: list[Worker]
) -> None:
    limit, batch, total = 40, 10, 400
    env = worker_env(
        redis_server.url_db(0),
        redis_server.url_db(1),
        redis_server.url_db(2),
        {"orders": "tests.slow"},
        stream_start="0",
        stream_block_ms=100,
        stream_batch_size=batch,
        stream_max_queue_length=limit,
    )
    env["CRS_SLOW_SECONDS"] = "0.01"
    produced = produce_many(redis_server.client(), "orders", total)
    broker = redis_server.client(1)
    lengths: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            lengths.append(int(broker.llen("celery")))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        bridge = Worker(env, "bridge", queues="other")
        workers.append(bridge)
        bridge.start()
        bridge.wait_log("pausing stream=orders", 30)
        consumer = Worker(env, "consumer", extra=["--without-redis-stream"])
        workers.append(consumer)
        consumer.start(wait="ready.")
        wait_for(lambda: len(executed(redis_server.client(2))) >= total, 90, "all entries executed")
    finally:
        done.set()
        sampler.join()
    assert max(lengths) <= limit + batch
    assert max(lengths) >= limit  # the limit was reached, so the pause was real
    assert sorted(run["stream_id"] for run in executed(redis_server.client(2))) == sorted(produced)
    assert "resuming stream=orders" in bridge.output()

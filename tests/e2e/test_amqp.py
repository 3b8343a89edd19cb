"""An AMQP broker (the machine's RabbitMQ on 127.0.0.1:5672): confirmed publishes and backpressure.

Each test uses its own queue names on the default vhost and deletes them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kombu import Connection

from ..support import RedisServer, Worker, produce_many, wait_for, worker_env
from .conftest import AMQP_URL

# The machine's one RabbitMQ: queues and worker names of each test's own, deleted afterwards.
pytestmark = pytest.mark.rabbitmq


def queue_size(connection: Connection, name: str) -> int:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue=name, passive=True).message_count)
    except connection.channel_errors:
        return 0
    finally:
        channel.close()


def drain(connection: Connection, name: str) -> list[dict[str, Any]]:
    simple = connection.SimpleQueue(name, no_ack=False)
    out = []
    try:
        while True:
            try:
                message = simple.get(timeout=1)
            except simple.Empty:
                return out
            out.append({"headers": message.headers, "body": json.loads(message.body)})
            message.ack()
    finally:
        simple.close()


def env_for(server: RedisServer, queue: str, **conf: Any) -> dict[str, str]:
    env = worker_env(
        server.url_db(0),
        AMQP_URL,
        server.url_db(2),
        {"orders": {"task": "tests.record", "queue": queue, **conf.pop("stream", {})}},
        stream_start="0",
        stream_block_ms=200,
        broker_transport_options={"confirm_publish": True},
        **conf,
    )
    return env


def test_entries_are_published_with_confirms_to_rabbitmq(
    redis_server: RedisServer, amqp: Connection, queue: str, workers: list[Worker]
) -> None:
    produced = produce_many(redis_server.client(), "orders", 200)
    worker = Worker(env_for(redis_server, queue), name=queue, queues=f"{queue}-other")
    workers.append(worker)
    worker.start()
    wait_for(lambda: queue_size(amqp, queue) == 200, 60, "200 messages in RabbitMQ")
    wait_for(lambda: redis_server.client().xinfo_groups("orders")[0]["pending"] == 0, 10, "all acknowledged")
    assert worker.stop() == 0
    messages = drain(amqp, queue)
    assert [m["headers"]["redis_stream_id"] for m in messages] == produced
    assert messages[0]["body"][0] == [{"n": "0"}]
    assert "guest:guest" not in worker.output()


def test_backpressure_reads_the_rabbitmq_queue_length(
    redis_server: RedisServer, amqp: Connection, queue: str, workers: list[Worker]
) -> None:
    produce_many(redis_server.client(), "orders", 300)
    env = env_for(redis_server, queue, stream={"max_queue_length": 30, "batch_size": 10})
    worker = Worker(env, name=queue, queues=f"{queue}-other")
    workers.append(worker)
    worker.start()
    worker.wait_log("pausing stream=orders", 30)
    size = queue_size(amqp, queue)
    assert 30 < size <= 40
    group = redis_server.client().xinfo_groups("orders")[0]
    assert group["lag"] == 300 - size  # the backlog stays in the stream
    drain(amqp, queue)  # a consumer empties the queue: the reader resumes
    worker.wait_log("resuming stream=orders", 30)
    assert worker.stop() == 0

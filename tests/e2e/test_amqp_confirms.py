"""RabbitMQ faults: the bridge's own publishing always waits for publisher confirms.

A real `celery worker` bridges a private redis-server's stream into a queue
of its own on the machine's RabbitMQ, reached through a proxy the test
controls (tests/proxy.py); the worker consumes another queue, so every task
it publishes stays in the target queue to be counted. Each test deletes its
queues.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from ..ledger import acked_ids, id_key
from ..proxy import Proxy
from ..support import RedisServer, Worker, produce_many, wait_for, worker_env
from .conftest import AMQP_URL
from .test_amqp import queue_size

# The machine's one RabbitMQ, hung and cut through proxies: queues and worker names of each test's own.
pytestmark = pytest.mark.rabbitmq

RABBITMQ_PORT = 5672


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    proxy = Proxy(RABBITMQ_PORT)
    try:
        yield proxy
    finally:
        proxy.stop()


def amqp_url(proxy: Proxy) -> str:
    return f"amqp://guest:guest@127.0.0.1:{proxy.port}//"


def bridge(server: RedisServer, broker_url: str, queue: str, **conf: Any) -> Worker:
    stream = conf.pop("stream", {})
    env = worker_env(
        server.url_db(0),
        broker_url,
        server.url_db(2),
        {"orders": {"task": "tests.record", "queue": queue, **stream}},
        stream_start="0",
        stream_block_ms=200,
        stream_batch_size=50,
        broker_connection_timeout=5,
        **conf,
    )
    return Worker(env, name=queue, queues=f"{queue}-other")


def queued_stream_ids(connection: Connection, name: str) -> list[str]:
    """Every message in the queue (removed), as the stream ids in their headers."""
    ids = []
    channel = connection.channel()
    try:
        while True:
            message = channel.basic_get(name, no_ack=True)
            if message is None:
                return ids
            ids.append(message.headers["redis_stream_id"])
    finally:
        channel.close()


class Trickle(threading.Thread):
    """XADDs ``total`` entries at about ``rate`` per second, in chunks of ten."""

    def __init__(self, client: redis.Redis, total: int, rate: float) -> None:
        super().__init__(name="trickle", daemon=True)
        self.client, self.total, self.rate = client, total, rate
        self.produced: list[str] = []

    def run(self) -> None:
        started = time.monotonic()
        while len(self.produced) < self.total:
            self.produced.extend(produce_many(self.client, "orders", 10, start=len(self.produced)))
            delay = started + len(self.produced) / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)


@pytest.mark.parametrize("app_confirms", [False, True], ids=["app-without-confirm_publish", "app-confirm_publish"])
def test_rabbitmq_hang_then_dropped_connections_lose_no_acknowledged_entry(
    redis_server: RedisServer,
    amqp: Connection,
    queue: str,
    proxy: Proxy,
    workers: list[Worker],
    app_confirms: bool,
) -> None:
    conf: dict[str, Any] = {"broker_transport_options": {"confirm_publish": True}} if app_confirms else {}
    worker = bridge(redis_server, amqp_url(proxy), queue, **conf)
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    trickle = Trickle(client, 2000, 100.0)  # about 20 s
    trickle.start()
    time.sleep(5)
    proxy.set_mode("hang")  # RabbitMQ stops answering for 10 s ...
    hung = time.monotonic()
    time.sleep(1)  # a batch confirmed just before the hang may still be acknowledged
    acked_at_hang = acked_ids(client, trickle.produced)
    time.sleep(9)
    acked_while_hung = acked_ids(client, trickle.produced) - acked_at_hang
    proxy.set_mode("pass")  # ... then every connection that hung is reset
    trickle.join(60)
    produced = trickle.produced
    assert len(produced) == 2000
    wait_for(lambda: client.xinfo_groups("orders")[0]["lag"] == 0, 60, "every entry read")
    wait_for(lambda: client.xinfo_groups("orders")[0]["pending"] == 0, 60, "every entry acknowledged")
    recovered = time.monotonic() - hung
    assert worker.stop() == 0
    acked = acked_ids(client, produced)
    copies = Counter(queued_stream_ids(amqp, queue))
    missing = sorted(acked - set(copies), key=id_key)
    extra = sum(n - 1 for n in copies.values())
    output = worker.output()
    print(
        f"confirm_publish in app={app_confirms}: produced={len(produced)} acked={len(acked)} "
        f"in queue={sum(copies.values())} distinct={len(copies)} missing={len(missing)} extra_copies={extra} "
        f"acked while hung={len(acked_while_hung)} all acked {recovered:.1f}s after the hang began"
    )
    assert not acked_while_hung, sorted(acked_while_hung, key=id_key)[:10]
    assert acked == set(produced)
    assert not missing, missing[:10]
    assert set(copies) == set(produced)
    assert extra <= 2 * 50, extra  # at most about the batches in flight when the connection dropped
    warnings = [line.split("] ", 1)[-1] for line in output.splitlines() if "position kept" in line]
    print("\n".join(warnings))
    assert warnings, output[-3000:]
    assert "guest:guest" not in output


def test_hanging_rabbitmq_warns_within_the_confirm_timeout_and_acknowledges_nothing(
    redis_server: RedisServer,
    amqp: Connection,
    queue: str,
    proxy: Proxy,
    workers: list[Worker],
) -> None:
    # The app asks for kombu's per-message confirms and its own confirm_timeout, which wins over the 10 s default.
    conf = {"broker_transport_options": {"confirm_publish": True, "confirm_timeout": 3}}
    worker = bridge(redis_server, amqp_url(proxy), queue, **conf)
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    first = produce_many(client, "orders", 100)
    wait_for(lambda: queue_size(amqp, queue) == 100, 30, "the first 100 entries in RabbitMQ")
    wait_for(lambda: acked_ids(client, first) == set(first), 10, "the first 100 entries acknowledged")

    proxy.set_mode("hang")
    hung = time.monotonic()
    later = produce_many(client, "orders", 100, start=100)
    worker.wait_log("broker unavailable, position kept", 30)
    warned_after = time.monotonic() - hung
    time.sleep(2)
    assert acked_ids(client, first + later) == set(first)  # nothing published during the hang is acknowledged
    group = client.xinfo_groups("orders")[0]
    assert group["pending"] + group["lag"] == 100, group
    assert worker.proc is not None and worker.proc.poll() is None
    warning = next(line for line in worker.output().splitlines() if "broker unavailable, position kept" in line)
    assert "WARNING" in warning and "within 3s" in warning, warning

    proxy.set_mode("pass")
    wait_for(lambda: acked_ids(client, first + later) == set(first + later), 60, "every entry acknowledged")
    assert worker.stop() == 0
    copies = Counter(queued_stream_ids(amqp, queue))
    print(f"warned {warned_after:.1f}s after the hang began: {warning.split('] ', 1)[-1]}")
    assert set(copies) == set(first + later)
    assert "recovered after" in worker.output()


def test_a_full_queue_that_rejects_publishes_is_retried_and_nothing_is_acknowledged_before_it_fits(
    redis_server: RedisServer,
    amqp: Connection,
    queue: str,
    workers: list[Worker],
) -> None:
    # RabbitMQ nacks what a queue with x-overflow=reject-publish cannot hold.
    arguments = {"x-max-length": 200, "x-overflow": "reject-publish"}
    worker = bridge(redis_server, AMQP_URL, queue, task_queues={queue: {"queue_arguments": arguments}})
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    produced = produce_many(client, "orders", 300)
    worker.wait_log("nacked", 30)
    wait_for(lambda: queue_size(amqp, queue) == 200, 30, "a full queue")
    time.sleep(2)
    acked = acked_ids(client, produced)
    assert len(acked) <= 200, len(acked)  # only what the queue holds may be acknowledged
    assert acked == set(produced[: len(acked)])
    # A consumer empties the queue: the rest fits and is dispatched. A retry may land
    # while the queue is being emptied, so `first` can hold some of the rest too.
    first = queued_stream_ids(amqp, queue)
    try:
        wait_for(lambda: acked_ids(client, produced) == set(produced), 60, "every entry acknowledged")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {len(first)} drained:\n{worker.output()[-4000:]}") from None
    assert worker.stop() == 0
    rest = queued_stream_ids(amqp, queue)
    copies = Counter(first + rest)
    extra = sum(n - 1 for n in copies.values())
    print(f"queue of 200 rejecting publishes: {len(first)} then {len(rest)} messages, extra copies={extra}")
    assert set(copies) == set(produced)
    assert extra == 0  # what RabbitMQ confirmed is not sent again with the retried part of its batch
    assert "RabbitMQ nacked" in worker.output()


def test_a_message_no_queue_receives_is_not_dispatched_until_a_queue_is_bound(
    redis_server: RedisServer,
    amqp: Connection,
    queue: str,
    workers: list[Worker],
) -> None:
    # The stream's tasks go to a topic exchange that no queue is bound to yet (an operator binds one later).
    exchange = f"{queue}-x"
    stream = {"options": {"exchange": exchange, "routing_key": "orders"}}
    worker = bridge(redis_server, AMQP_URL, queue, stream=stream)
    workers.append(worker)
    channel = amqp.channel()
    try:
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        worker.start()
        client = redis_server.client()
        produced = produce_many(client, "orders", 20)
        worker.wait_log("returned", 30)
        time.sleep(2)
        assert acked_ids(client, produced) == set()  # returned is not dispatched
        assert worker.proc is not None and worker.proc.poll() is None
        line = next(line for line in worker.output().splitlines() if "returned" in line)
        assert "WARNING" in line and "NO_ROUTE" in line and "no queue is bound" in line, line
        print(line.split("] ", 1)[-1])

        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.queue_bind(queue, exchange, "orders")
        wait_for(lambda: acked_ids(client, produced) == set(produced), 60, "every entry acknowledged")
        assert worker.stop() == 0
        assert Counter(queued_stream_ids(amqp, queue)) == Counter(produced)
    finally:
        try:
            channel.exchange_delete(exchange)
        except amqp.channel_errors:
            pass
        channel.close()


def test_a_missing_exchange_keeps_the_position_until_it_is_declared(
    redis_server: RedisServer,
    amqp: Connection,
    queue: str,
    workers: list[Worker],
) -> None:
    # RabbitMQ closes the channel (404 NOT_FOUND): the batch is retried, not dead-lettered or acknowledged.
    exchange = f"{queue}-x"
    worker = bridge(redis_server, AMQP_URL, queue, stream={"options": {"exchange": exchange, "routing_key": "orders"}})
    workers.append(worker)
    channel = amqp.channel()
    try:
        worker.start()
        client = redis_server.client()
        produced = produce_many(client, "orders", 10)
        worker.wait_log("NOT_FOUND", 30)
        time.sleep(1)
        assert acked_ids(client, produced) == set()
        assert client.xlen("orders:dead") == 0
        line = next(line for line in worker.output().splitlines() if "NOT_FOUND" in line)
        assert "WARNING" in line and "position kept" in line, line
        print(line.split("] ", 1)[-1])

        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        channel.queue_declare(queue, durable=True, auto_delete=False)
        channel.queue_bind(queue, exchange, "orders")
        wait_for(lambda: acked_ids(client, produced) == set(produced), 60, "every entry acknowledged")
        assert worker.stop() == 0
        assert Counter(queued_stream_ids(amqp, queue)) == Counter(produced)
    finally:
        try:
            channel.exchange_delete(exchange)
        except amqp.channel_errors:
            pass
        channel.close()


def test_amqp_task_messages_are_the_ones_celery_send_task_publishes(
    redis_server: RedisServer,
    amqp: Connection,
    queue: str,
    workers: list[Worker],
) -> None:
    options = {"priority": 3, "expires": 600}
    worker = bridge(redis_server, AMQP_URL, queue, stream={"options": options})
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    produced = produce_many(client, "orders", 3)
    wait_for(lambda: queue_size(amqp, queue) == 3, 30, "3 messages")
    assert worker.stop() == 0
    channel = amqp.channel()
    try:
        bridged = [channel.basic_get(queue, no_ack=True) for _ in range(3)]
        assert [m.headers["redis_stream_id"] for m in bridged] == produced
        # The same task sent by Celery itself, with the bridge's task id and headers.
        app = Celery("workerapp", broker=AMQP_URL, set_as_current=False)
        first = bridged[0]
        app.send_task(
            "tests.record",
            args=[{"n": "0"}],
            task_id=first.headers["id"],
            queue=queue,
            headers={"redis_stream": "orders", "redis_stream_id": produced[0]},
            **options,
        )
        wait_for(lambda: queue_size(amqp, queue) == 1, 10, "Celery's own message")
        celerys = channel.basic_get(queue, no_ack=True)
        app.close()
    finally:
        channel.close()
    varying = {"origin", "expires"}  # the sending process and the send time
    assert {k: v for k, v in first.headers.items() if k not in varying} == {
        k: v for k, v in celerys.headers.items() if k not in varying
    }
    assert first.body == celerys.body
    props = {k: v for k, v in first.properties.items() if k not in ("application_headers", "reply_to")}
    assert props == {k: v for k, v in celerys.properties.items() if k not in ("application_headers", "reply_to")}
    assert props["priority"] == 3
    assert first.delivery_info["routing_key"] == celerys.delivery_info["routing_key"] == queue
    assert json.loads(first.body)[0] == [{"n": "0"}]

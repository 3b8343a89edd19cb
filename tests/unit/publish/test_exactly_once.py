"""The exactly-once step in-process: a batch's messages and its position move in one script, or not at all."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_redis_stream.client.connection import Client, connect
from celery_redis_stream.client.streams import read_group, read_tracked
from celery_redis_stream.config import BridgeConfig, StreamConfig, load_config
from celery_redis_stream.exceptions import LeaseLost
from celery_redis_stream.position.lease import Lease
from celery_redis_stream.publish.dispatch import Dispatcher
from celery_redis_stream.publish.exactly_once import EXACTLY_ONCE, ExactlyOnce, config_reason
from celery_redis_stream.stats import StreamStats

from ...support import RedisServer, make_app

STREAMS_DB, BROKER_DB = 7, 8


@pytest.fixture
def dbs(unit_redis: RedisServer) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    streams, broker = unit_redis.client(STREAMS_DB), unit_redis.client(BROKER_DB)
    streams.flushdb()
    broker.flushdb()
    yield streams, broker
    streams.close()
    broker.close()


def setup(server: RedisServer, mode: str) -> tuple[Celery, BridgeConfig, StreamConfig, Client]:
    app = make_app(
        "exactly", broker=server.url_db(BROKER_DB), stream_url=server.url_db(STREAMS_DB),
        stream_tasks={"orders": {"task": "shop.handle", "mode": mode}}, stream_start="0",
    )  # fmt: skip
    config = load_config(app)
    return app, config, config.streams[0], connect(config)


class Run:
    """One reader's side of a batch: read, build, step, commit (as batch/batches.py does)."""

    def __init__(self, app: Celery, config: BridgeConfig, sc: StreamConfig, client: Client) -> None:
        self.sc, self.client = sc, client
        self.dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
        self.exactly = ExactlyOnce(config, self.dispatcher.fast_path, "c1")
        self.stats = StreamStats(sc.stream, sc.mode, sc.task, sc.group, sc.tracker_key)
        self.lease = Lease(client, "c1", 60_000) if sc.mode == "tracker" else None

    def read(self, after: str = "0-0") -> list[str]:
        if self.sc.mode == "group":
            entries = read_group(self.client, self.sc.group, "c1", {"orders": ">"}, count=10, block_ms=None)
        else:
            entries = read_tracked(self.client, {"orders": after}, count=10, block_ms=None)
        self.entries = entries["orders"]
        return [e.id for e in self.entries]

    def batch(self, after: str = "0-0") -> bool:
        ids = self.read(after)
        step = self.exactly.step(self.client, self.sc, ids, [], stats=self.stats, lease=self.lease, after=after)
        assert step is not None
        dead = self.dispatcher.send(self.sc, self.entries, step=step)
        return step.commit(dead)

    def close(self) -> None:
        self.dispatcher.close()
        self.client.close()


def test_a_group_batch_moves_its_messages_and_its_acks_together(
    unit_redis: RedisServer, dbs: tuple[redis.Redis, redis.Redis]
) -> None:
    streams, broker = dbs
    ids = [streams.xadd("orders", {"n": str(i)}).decode() for i in range(3)]
    app, config, sc, client = setup(unit_redis, "group")
    client.xgroup_create("orders", sc.group, id="0")
    run = Run(app, config, sc, client)
    try:
        assert run.batch() is True
        assert run.stats.guarantee == EXACTLY_ONCE
    finally:
        run.close()
    assert broker.llen("celery") == 3
    assert streams.xpending("orders", sc.group)["pending"] == 0  # acknowledged in the same step
    assert streams.xinfo_groups("orders")[0]["last-delivered-id"].decode() == ids[-1]


def test_a_tracker_batch_fenced_by_another_lease_holder_publishes_nothing(
    unit_redis: RedisServer, dbs: tuple[redis.Redis, redis.Redis]
) -> None:
    streams, broker = dbs
    for i in range(3):
        streams.xadd("orders", {"n": str(i)})
    app, config, sc, client = setup(unit_redis, "tracker")
    streams.set(sc.tracker_key, "0-0")
    run = Run(app, config, sc, client)
    try:
        assert run.lease is not None and run.lease.acquire(sc)
        streams.set(sc.tracker_key, "9-0")  # another worker moved the tracker meanwhile
        with pytest.raises(LeaseLost):
            run.batch(after="0-0")
    finally:
        run.close()
    assert broker.llen("celery") == 0  # the fence refused the whole step: no message, no move
    assert streams.get(sc.tracker_key) == b"9-0"


def test_a_tracker_batch_moves_the_tracker_with_its_messages(
    unit_redis: RedisServer, dbs: tuple[redis.Redis, redis.Redis]
) -> None:
    streams, broker = dbs
    ids = [streams.xadd("orders", {"n": str(i)}).decode() for i in range(2)]
    app, config, sc, client = setup(unit_redis, "tracker")
    streams.set(sc.tracker_key, "0-0")
    run = Run(app, config, sc, client)
    try:
        assert run.lease is not None and run.lease.acquire(sc)
        assert run.batch(after="0-0") is True
    finally:
        run.close()
    assert broker.llen("celery") == 2 and streams.get(sc.tracker_key) == ids[-1].encode()


def test_without_the_fast_path_the_stream_stays_at_least_once_and_says_why(unit_redis: RedisServer) -> None:
    app = make_app(
        "exactly-off", broker=unit_redis.url_db(BROKER_DB), stream_url=unit_redis.url_db(STREAMS_DB),
        stream_tasks={"orders": "shop.handle"}, stream_fast_path=False,
    )  # fmt: skip
    config = load_config(app)
    assert "stream_fast_path is off" in str(config_reason(config, config.streams[0]))
    on = load_config(
        make_app("exactly-on", stream_url=unit_redis.url_db(STREAMS_DB), stream_tasks={"o": "shop.handle"})
    )
    assert config_reason(on, on.streams[0]) is None  # the settings alone allow it; the servers decide

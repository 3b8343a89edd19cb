"""Sentinel: a master, a replica and one sentinel; a real worker on a sentinel:// stream_url follows a failover."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from redis.sentinel import Sentinel

from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import load_config

from ..cluster import Producer, wait_logged
from ..support import RedisServer, Worker, executed, free_port, produce_many, wait_for, worker_env

MASTER = "m"


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel`` monitoring one master (quorum 1, fast failover)."""

    def __init__(self, master_port: int) -> None:
        super().__init__()
        self.master_port = master_port

    def start(self) -> SentinelServer:
        conf = Path(self.dir, "sentinel.conf")
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 3000\n"
        )
        log = os.path.join(self.dir, "redis.log")
        cmd = [self.binary, str(conf), "--sentinel", "--daemonize", "no", "--logfile", log]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._ping, 10, f"redis sentinel on port {self.port}")
        return self


@pytest.fixture
def sentinel_setup() -> Iterator[dict[str, Any]]:
    servers: list[RedisServer] = []
    try:
        master = RedisServer("--repl-diskless-sync-delay", "0").start()
        servers.append(master)
        replica = RedisServer("--replicaof", "127.0.0.1", str(master.port), "--repl-diskless-sync-delay", "0")
        servers.append(replica.start())
        wait_for(lambda: replica.client().info("replication").get("master_link_status") == "up", 20, "replica in sync")
        sentinel = SentinelServer(master.port)
        servers.append(sentinel.start())
        s = sentinel.client()
        wait_for(lambda: s.sentinel_slaves(MASTER), 20, "the sentinel to discover the replica")
        broker = RedisServer().start()
        servers.append(broker)
        yield {"master": master, "replica": replica, "sentinel": sentinel, "broker": broker}
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


def test_sentinel_url_with_master_name_option_reaches_the_master(sentinel_setup: dict[str, Any]) -> None:
    sentinel, master = sentinel_setup["sentinel"], sentinel_setup["master"]
    app = Celery(broker="memory://", set_as_current=False)
    app.conf.update(
        stream_url=f"sentinel://127.0.0.1:{sentinel.port}/3?master_name={MASTER}", stream_tasks={"orders": "t"}
    )
    client = connect(load_config(app, check_registered=False))
    client.set("probe", "1")
    assert master.client(3).get("probe") == b"1"
    assert client.connection_pool.service_name == MASTER


def test_worker_follows_a_sentinel_failover_and_dispatches_what_survived(
    sentinel_setup: dict[str, Any], workers: list[Worker]
) -> None:
    master, replica, sentinel, broker = (sentinel_setup[k] for k in ("master", "replica", "sentinel", "broker"))
    group_stream, tracked = "orders", "events"
    env = worker_env(
        f"sentinel://127.0.0.1:{sentinel.port}/0",
        broker.url_db(1),
        broker.url_db(2),
        {group_stream: "tests.record", tracked: {"task": "tests.record", "mode": "tracker"}},
        stream_start="0",
        stream_block_ms=200,
        stream_transport_options={"master_name": MASTER},
    )
    produce_many(master.client(), group_stream, 5)
    produce_many(master.client(), tracked, 5)
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    ledger = broker.client(2)
    wait_logged(workers, lambda: len(executed(ledger)) >= 10, 60, "the first 10 tasks")

    writer = Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=2).master_for(MASTER, socket_timeout=2)
    producer = Producer(writer, [group_stream, tracked], pause=0.01)
    producer.start()
    try:
        wait_for(lambda: len(producer.acked) >= 50, 30, "writes before the failover")
        master.stop(signal.SIGKILL)
        s = sentinel.client()
        wait_for(lambda: int(s.sentinel_get_master_addr_by_name(MASTER)[1]) == replica.port, 30, "the replica promoted")
        wait_for(lambda: replica.client().info("replication")["role"] == "master", 30, "the replica to be master")
        promoted_at = len(producer.acked)
        wait_for(lambda: len(producer.acked) >= promoted_at + 30, 30, "writes after the failover")
    finally:
        producer.stop()
    c = replica.client()
    kept = [(s, i.decode()) for s in (group_stream, tracked) for i, _ in c.xrange(s)]
    wait_logged(
        workers,
        lambda: {(r["stream"], r["stream_id"]) for r in executed(ledger)} >= set(kept),
        60,
        f"all {len(kept)} surviving entries dispatched",
    )
    assert producer.acked[-1] in set(kept), "entries written to the new master are read"
    assert worker.proc is not None and worker.proc.poll() is None
    got = [(r["stream"], r["stream_id"]) for r in executed(ledger)]
    lost = set(producer.acked) - set(kept)
    print(
        f"sentinel failover: kept={len(kept)} dispatched={len(set(got))} re-dispatched={len(got) - len(set(got))} "
        f"lost-by-async-replication={len(lost)} failed-writes={producer.failed}"
    )
    print("\n".join(line for line in worker.output().splitlines() if "WARNING" in line or "ERROR" in line))


def test_sentinel_broker_url_is_the_default_stream_url_with_its_master_name(sentinel_setup: dict[str, Any]) -> None:
    sentinel, master = sentinel_setup["sentinel"], sentinel_setup["master"]
    # kombu's form: every sentinel, ';'-joined; the first one here is down and is skipped.
    broker_url = f"sentinel://127.0.0.1:{free_port()}/4;sentinel://127.0.0.1:{sentinel.port}/4"
    app = Celery(broker=broker_url, set_as_current=False)
    app.conf.update(broker_transport_options={"master_name": MASTER}, stream_tasks={"orders": "t"})
    config = load_config(app, check_registered=False)
    assert config.url == broker_url
    assert config.transport_options["master_name"] == MASTER
    client = connect(config)
    client.set("probe", "2")
    assert master.client(4).get("probe") == b"2"

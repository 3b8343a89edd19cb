"""Redis Cluster: real 3-master clusters (redis+cluster:// stream_url) read by real `celery worker` processes.

The broker and the ledger live on a separate plain redis-server (db 1 and db 2).
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest
import redis
from celery import Celery
from redis.crc import key_slot

from celery_redis_stream import keys
from celery_redis_stream.config import load_config
from celery_redis_stream.exceptions import StreamConfigError

from ..cluster import Cluster, Producer, wait_logged
from ..support import RedisServer, Worker, executed, produce_many, server_fixture, worker_env

broker_server = server_fixture(scope="module")


@pytest.fixture
def broker(cluster: Cluster, broker_server: RedisServer) -> RedisServer:
    cluster.flush()
    broker_server.client().flushall()
    return broker_server


def one_stream_per_master(cluster: Cluster, prefix: str) -> list[str]:
    """Stream names whose slots are served by different masters, one per master."""
    names: dict[int, str] = {}
    for i in range(1000):
        name = f"{prefix}{i}"
        names.setdefault(cluster.owner_of(name).port, name)
        if len(names) == cluster.masters:
            return sorted(names.values())
    raise AssertionError("could not spread stream names over the masters")


def dispatched(ledger: Any) -> list[tuple[str, str]]:
    return [(r["stream"], r["stream_id"]) for r in executed(ledger)]


def all_entries(client: Any, streams: list[str]) -> list[tuple[str, str]]:
    return [(s, i.decode()) for s in streams for i, _ in client.xrange(s)]


def test_group_mode_reads_streams_on_every_master_and_dead_letters_into_the_streams_slot(
    cluster: Cluster, broker: RedisServer, workers: list[Worker]
) -> None:
    streams = one_stream_per_master(cluster, "orders-")
    c = cluster.client()
    for s in streams:
        produce_many(c, s, 20)
    bad = c.execute_command("XADD", streams[0], "*", "n", b"\xff not utf-8").decode()
    env = worker_env(cluster.url, broker.url_db(1), broker.url_db(2), dict.fromkeys(streams, "tests.record"),
                     stream_start="0")  # fmt: skip
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    for s in streams:
        produce_many(c, s, 10, start=20)
    ledger = broker.client(2)
    dead = "{" + streams[0] + "}:dead"
    wait_logged(workers, lambda: len(executed(ledger)) >= 90 and c.exists(dead), 60, "90 tasks and a dead letter")
    time.sleep(0.5)  # a duplicate would show up now

    expected = [e for e in all_entries(c, streams) if e != (streams[0], bad)]
    got = dispatched(ledger)
    fields = {(s, i.decode()): {k.decode(): v.decode() for k, v in f.items()} for s in streams for i, f in c.xrange(s)
              if (s, i.decode()) != (streams[0], bad)}  # fmt: skip
    assert all(r["args"] == [fields[(r["stream"], r["stream_id"])]] for r in executed(ledger))
    assert sorted(got) == sorted(expected)
    assert len(set(got)) == len(got) == 90

    # The dead letter sits in the source stream's slot, so it fails over with it.
    assert c.cluster_keyslot(dead) == c.cluster_keyslot(streams[0])
    [(_, letter)] = c.xrange(dead)
    assert letter[b"dlq_source_id"] == bad.encode()
    assert letter[b"dlq_source_stream"] == streams[0].encode()
    for s in streams:
        assert c.xpending(s, "celery")["pending"] == 0
    assert worker.proc is not None and worker.proc.poll() is None


def test_tracker_mode_keeps_tracker_and_lease_in_the_streams_slot(
    cluster: Cluster, broker: RedisServer, workers: list[Worker]
) -> None:
    streams = one_stream_per_master(cluster, "events-")
    c = cluster.client()
    bad = {}
    for s in streams:
        produce_many(c, s, 7)
        bad[s] = c.xadd(s, {"name": b"\xff"}).decode()  # not UTF-8: a dead letter, written in the fenced move
        produce_many(c, s, 8, start=7)
    env = worker_env(cluster.url, broker.url_db(1), broker.url_db(2), dict.fromkeys(streams, "tests.record"),
                     stream_start="0", stream_mode="tracker")  # fmt: skip
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    ledger = broker.client(2)
    wait_logged(workers, lambda: len(executed(ledger)) >= 45, 60, "45 tasks")
    for s in streams:
        tracker, lease = keys.tracker(s), keys.lease(keys.tracker(s))
        last = c.xrange(s)[-1][0]
        wait_logged(workers, lambda t=tracker, x=last: c.get(t) == x, 10, f"{tracker} at the last entry")  # type: ignore[misc]
        assert c.exists(lease)
        assert c.cluster_keyslot(tracker) == c.cluster_keyslot(lease) == c.cluster_keyslot(s)
        ((_, letter),) = c.xrange("{" + s + "}:dead")
        assert letter[b"dlq_reason"] == b"not_utf8" and letter[b"name"] == b"\xff"
    assert len(executed(ledger)) == 45
    got = dispatched(ledger)
    assert sorted(got) == sorted(e for e in all_entries(c, streams) if e[1] != bad[e[0]])
    assert len(set(got)) == len(got)


def _config(url: str, tasks: dict[str, Any], **conf: Any) -> Any:
    app = Celery(broker="memory://", set_as_current=False)
    app.conf.update(stream_url=url, stream_tasks=tasks, **conf)
    return load_config(app, check_registered=False)


def test_cluster_key_names_share_the_streams_hash_slot() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    config = _config(url, {"orders": "t", "{t1}:orders": "t", "payments": {"task": "t", "tracker": "{payments}x"}})
    by_name = {sc.stream: sc for sc in config.streams}
    assert by_name["orders"].dead_letter == "{orders}:dead"
    assert by_name["orders"].tracker_key == "stream_tracker:{orders}"
    assert by_name["orders"].lease_key == "stream_tracker:{orders}:lease"
    assert by_name["{t1}:orders"].dead_letter == "{t1}:orders:dead"
    assert by_name["{t1}:orders"].tracker_key == "stream_tracker:{t1}:orders"
    for sc in config.streams:
        slot = key_slot(sc.stream.encode())
        assert {key_slot(k.encode()) for k in (sc.dead_letter, sc.tracker_key, sc.lease_key)} == {slot}
    # The same names on a single Redis keep the documented default.
    assert _config("redis://127.0.0.1:7000/0", {"orders": "t"}).streams[0].dead_letter == "orders:dead"


@pytest.mark.parametrize(
    ("tasks", "conf", "what"),
    [
        ({"orders": {"task": "t", "tracker": "orders-position"}}, {}, "tracker key 'stream_tracker:orders-position'"),
        ({"{t1}:orders": "t"}, {"stream_dead_letter": "{dlq}:{stream}"}, "dead-letter stream '{dlq}:{t1}:orders'"),
        # a '}' without a hash tag: no tag can name the stream's slot
        ({"orders}": "t"}, {}, "dead-letter stream '{orders}}:dead'"),
    ],
)
def test_cluster_refuses_keys_that_cannot_share_the_streams_slot(tasks: Any, conf: Any, what: str) -> None:
    with pytest.raises(StreamConfigError, match="must hash to the stream's slot") as info:
        _config("redis+cluster://127.0.0.1:7000", tasks, **conf)
    assert what.split(" ")[-1].strip("'") in str(info.value)
    assert next(iter(tasks)) in str(info.value)


def bridge_a_group_and_a_tracked_stream(
    cluster: Cluster, broker: RedisServer, workers: list[Worker], group_stream: str, tracked: str
) -> tuple[Worker, redis.Redis]:
    """A worker reading one group-mode and one tracker-mode stream, 5 entries each already executed."""
    env = worker_env(
        cluster.url, broker.url_db(1), broker.url_db(2),
        {group_stream: "tests.record", tracked: {"task": "tests.record", "mode": "tracker"}},
        stream_start="0", stream_block_ms=200,
    )  # fmt: skip
    c = cluster.client()
    produce_many(c, group_stream, 5)
    produce_many(c, tracked, 5)
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    ledger = broker.client(2)
    wait_logged(workers, lambda: len(executed(ledger)) >= 10, 60, "the first 10 tasks")
    return worker, ledger


def test_reshard_of_a_streams_slot_under_load_loses_nothing(
    cluster: Cluster, broker: RedisServer, workers: list[Worker]
) -> None:
    group_stream, tracked = "reshard-g", "reshard-t"
    worker, ledger = bridge_a_group_and_a_tracked_stream(cluster, broker, workers, group_stream, tracked)

    producer = Producer(cluster.client(), [group_stream, tracked])
    producer.start()
    try:
        time.sleep(1.0)
        moves = []
        for s in (group_stream, tracked):
            slot = key_slot(s.encode())
            source = cluster.owner(slot)
            target = next(m for m in cluster.masters_now() if m.port != source.port)
            # Held half-migrated for a moment: the worker meets ASK, then MOVED.
            moved = cluster.migrate_slot(slot, target, hold=0.5)
            assert cluster.owner(slot).port == target.port
            moves.append(moved)
            time.sleep(0.5)
        assert moves[0] >= 1 and moves[1] >= 3  # the stream; the stream, its tracker and its lease
    finally:
        producer.stop()
    c = cluster.client()
    expected = all_entries(c, [group_stream, tracked])
    assert set(producer.acked) <= set(expected), "a reshard loses no acknowledged write"
    wait_logged(
        workers, lambda: set(dispatched(ledger)) >= set(expected), 60, f"all {len(expected)} entries dispatched"
    )
    got = dispatched(ledger)
    assert set(got) == set(expected)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker survives the reshard"
    duplicates = len(got) - len(set(got))
    print(
        f"reshard: {len(expected)} entries, {duplicates} re-dispatched, moved keys {moves}, "
        f"failed writes {producer.failed}"
    )
    print("\n".join(line for line in worker.output().splitlines() if "WARNING" in line or "ERROR" in line))


def test_master_failover_dispatches_everything_the_cluster_kept(
    broker_server: RedisServer, workers: list[Worker]
) -> None:
    broker_server.client().flushall()
    cluster = Cluster(masters=3, replicas=1).start()
    try:
        # Both streams share one slot (hash tag), so one kill hits group and tracker mode.
        group_stream, tracked = "{fo}:group", "{fo}:tracked"
        worker, ledger = bridge_a_group_and_a_tracked_stream(cluster, broker_server, workers, group_stream, tracked)

        producer = Producer(cluster.client(), [group_stream, tracked], pause=0.01)
        producer.start()
        try:
            time.sleep(1.0)
            slot = key_slot(group_stream.encode())
            old = cluster.owner(slot)
            cluster.kill(old)
            new = cluster.wait_promoted(old, slot)
            time.sleep(1.5)  # writes continue on the promoted replica
        finally:
            producer.stop()
        assert new.port != old.port
        c = cluster.client()
        kept = all_entries(c, [group_stream, tracked])
        wait_logged(
            workers, lambda: set(dispatched(ledger)) >= set(kept), 60, f"all {len(kept)} kept entries dispatched"
        )
        lost = set(producer.acked) - set(kept)  # acknowledged by the old master, never replicated
        got = dispatched(ledger)
        assert worker.proc is not None and worker.proc.poll() is None, "the worker survives the failover"
        written_after = [e for e in producer.acked if e in set(kept)][-5:]
        assert written_after and set(written_after) <= set(got), "entries written after the failover are read"
        print(
            f"failover: kept={len(kept)} dispatched={len(set(got))} re-dispatched={len(got) - len(set(got))} "
            f"lost-by-async-replication={len(lost)} failed-writes={producer.failed}"
        )
        print("\n".join(line for line in worker.output().splitlines() if "WARNING" in line or "ERROR" in line))
    finally:
        cluster.stop()


def test_one_reader_per_group_on_a_cluster_whatever_the_hash_slots() -> None:
    from celery_redis_stream.service import Service

    tagged = [f"{{tenant}}:s{i}" for i in range(10)]
    spread = ["orders", "payments", "events"]
    assert len({key_slot(s.encode()) for s in [*spread, tagged[0]]}) == 4
    config = _config("redis+cluster://127.0.0.1:7000", dict.fromkeys([*tagged, *spread], "t"))
    service = Service(Celery(broker="memory://", set_as_current=False), config, consumer="c")
    readers = [sorted(sc.stream for sc in loop.reader.incoming) for loop in service.loops]
    assert readers == [sorted([*tagged, *spread])]
    # On a single Redis one read covers every stream of a group.
    single = _config("redis://127.0.0.1:7000/0", dict.fromkeys([*tagged, *spread], "t"))
    assert len(Service(Celery(broker="memory://", set_as_current=False), single, consumer="c").loops) == 1


def test_pattern_discovery_finds_streams_on_every_master(
    cluster: Cluster, broker: RedisServer, workers: list[Worker]
) -> None:
    c = cluster.client()
    before = one_stream_per_master(cluster, "tenant:a")
    expected = {(s, i) for s in before for i in produce_many(c, s, 3)}
    env = worker_env(cluster.url, broker.url_db(1), broker.url_db(2), {"tenant:*": "tests.record"},
                     stream_start="0", stream_discovery_interval=0.5, stream_block_ms=200)  # fmt: skip
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    ledger = broker.client(2)
    wait_logged(workers, lambda: set(dispatched(ledger)) >= expected, 60, "streams that existed at start")
    later = one_stream_per_master(cluster, "tenant:b")
    expected |= {(s, i) for s in later for i in produce_many(c, s, 3)}
    bad = c.execute_command("XADD", later[0], "*", "n", b"\xff").decode()
    dead = "{" + later[0] + "}:dead"
    wait_logged(workers, lambda: set(dispatched(ledger)) >= expected and c.exists(dead), 60, "streams created later")
    time.sleep(1.5)  # more discovery rounds: the dead-letter stream is not read
    got = dispatched(ledger)
    assert set(got) == expected and len(got) == len(expected)
    assert c.xrange(dead)[0][1][b"dlq_source_id"] == bad.encode()
    assert worker.output().count("found stream=") == 6


# The documented group-mode user of docs/scaling.md for stream "orders" on a cluster.
CLUSTER_GROUP_ACL = [
    *"on >CHANGE-ME-7f3a resetkeys resetchannels -@all +ping +client|setname +cluster|slots +command".split(),
    *"+xgroup|create +xreadgroup +xautoclaim +xpending +xack ~orders".split(),
    *"+evalsha +script|load +xinfo|consumers +xgroup|delconsumer".split(),  # consumer hygiene
    *"+xrange +hset +hdel +hget +hgetall +hmget +hincrby +evalsha +script|load +script|exists".split(),
    *"~stream_deliveries:{orders}:celery:inflight ~stream_deliveries:{orders}:celery:failures".split(),
    "(+xadd ~{orders}:dead)",
]


def test_least_privilege_acl_user_on_a_cluster(cluster: Cluster, broker: RedisServer, workers: list[Worker]) -> None:
    for node in cluster.masters_now():
        node.client().execute_command("ACL", "SETUSER", "stream-group", *CLUSTER_GROUP_ACL)
    try:
        c = cluster.client()
        ids = produce_many(c, "orders", 5)
        bad = c.execute_command("XADD", "orders", "*", "n", b"\xff").decode()
        url = cluster.url.replace("://", "://stream-group:CHANGE-ME-7f3a@")
        env = worker_env(url, broker.url_db(1), broker.url_db(2), {"orders": "tests.record"}, stream_start="0")
        worker = Worker(env)
        workers.append(worker)
        worker.start()
        ledger = broker.client(2)
        wait_logged(workers, lambda: len(executed(ledger)) >= 5 and c.exists("{orders}:dead"), 60, "5 tasks, 1 dead")
        assert sorted(i for _, i in dispatched(ledger)) == sorted(ids)
        assert c.xrange("{orders}:dead")[0][1][b"dlq_source_id"] == bad.encode()
        assert c.xpending("orders", "celery")["pending"] == 0
        assert "CHANGE-ME-7f3a" not in worker.output()
        assert "stream-group:**@" in worker.output()
        # redis-py ignores a refused CLIENT SETINFO (Redis 7.2+, Valkey), as docs/security.md says
        denied = [
            e for node in cluster.masters_now() for e in node.client().acl_log() if e.get("object") != "client|setinfo"
        ]  # fmt: skip
        assert denied == [], denied
    finally:
        for node in cluster.masters_now():
            node.client().execute_command("ACL", "DELUSER", "stream-group")
            node.client().execute_command("ACL", "LOG", "RESET")


def bridge_streams(
    cluster: Cluster, broker: RedisServer, workers: list[Worker], grouped: list[str], tracked: list[str]
) -> tuple[Worker, redis.Redis]:
    """A worker reading ``grouped`` (one group) and ``tracked`` streams, 5 entries of each already executed."""
    tasks: dict[str, Any] = dict.fromkeys(grouped, "tests.record")
    tasks.update({s: {"task": "tests.record", "mode": "tracker"} for s in tracked})
    env = worker_env(cluster.url, broker.url_db(1), broker.url_db(2), tasks, stream_start="0", stream_block_ms=200)
    c = cluster.client()
    for s in tasks:
        produce_many(c, s, 5)
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    ledger = broker.client(2)
    wait_logged(workers, lambda: len(executed(ledger)) >= 5 * len(tasks), 60, "the first tasks")
    return worker, ledger


def test_reshard_under_load_with_one_reader_polling_many_slots_loses_nothing(
    cluster: Cluster, broker: RedisServer, workers: list[Worker]
) -> None:
    grouped, tracked = one_stream_per_master(cluster, "rs-g"), one_stream_per_master(cluster, "rs-t")[:2]
    worker, ledger = bridge_streams(cluster, broker, workers, grouped, tracked)
    assert worker.proc is not None
    # One reader thread per mode, all slots: the main thread, the group reader, the tracker reader.
    assert psutil.Process(worker.proc.pid).num_threads() <= 4
    producer = Producer(cluster.client(), [*grouped, *tracked])
    producer.start()
    try:
        time.sleep(1.0)
        for s in (grouped[0], tracked[0]):
            slot = key_slot(s.encode())
            source = cluster.owner(slot)
            target = next(m for m in cluster.masters_now() if m.port != source.port)
            assert cluster.migrate_slot(slot, target, hold=0.5) >= 1  # ASK while half-migrated, then MOVED
            assert cluster.owner(slot).port == target.port
            time.sleep(0.5)
    finally:
        producer.stop()
    c = cluster.client()
    expected = all_entries(c, [*grouped, *tracked])
    assert set(producer.acked) <= set(expected)
    wait_logged(workers, lambda: set(dispatched(ledger)) >= set(expected), 60, f"all {len(expected)} dispatched")
    assert set(dispatched(ledger)) == set(expected)
    assert worker.proc.poll() is None, "the worker survives the reshard"
    # The redirections are followed inside the round: no failed round, no backoff.
    problems = [line for line in worker.output().splitlines() if "WARNING" in line or "ERROR" in line]
    assert problems == []


def test_master_failover_with_one_reader_polling_many_slots(broker_server: RedisServer, workers: list[Worker]) -> None:
    broker_server.client().flushall()
    cluster = Cluster(masters=3, replicas=1).start()
    try:
        grouped, tracked = one_stream_per_master(cluster, "fo-g"), one_stream_per_master(cluster, "fo-t")
        worker, ledger = bridge_streams(cluster, broker_server, workers, grouped, tracked)
        producer = Producer(cluster.client(), [*grouped, *tracked], pause=0.01)
        producer.start()
        try:
            time.sleep(1.0)
            slot = key_slot(grouped[0].encode())
            old = cluster.owner(slot)
            cluster.kill(old)
            cluster.wait_promoted(old, slot)
            time.sleep(1.5)  # writes continue on the promoted replica
        finally:
            producer.stop()
        c = cluster.client()
        kept = all_entries(c, [*grouped, *tracked])
        wait_logged(workers, lambda: set(dispatched(ledger)) >= set(kept), 60, f"all {len(kept)} kept dispatched")
        assert worker.proc is not None and worker.proc.poll() is None, "the worker survives the failover"
        written_after = [e for e in producer.acked if e in set(kept)][-5:]
        assert written_after and set(written_after) <= set(dispatched(ledger))
    finally:
        cluster.stop()


def test_a_read_over_many_slots_reads_every_slot_in_one_round_and_waits_longer_while_idle(cluster: Cluster) -> None:
    from celery_redis_stream.client import cluster as slots
    from celery_redis_stream.client.connection import connect
    from celery_redis_stream.client.streams import read_group

    cluster.flush()
    streams = one_stream_per_master(cluster, "poll-")
    client = connect(_config(cluster.url, dict.fromkeys(streams, "t")))
    try:
        for s in streams:
            client.xgroup_create(s, "g", id="0", mkstream=True)
        positions = dict.fromkeys(streams, ">")
        head = ("XREADGROUP", "GROUP", "g", "c", "COUNT", 10)
        waits = []
        for _ in range(6):
            assert read_group(client, "g", "c", positions, count=10, block_ms=1000) == {}
            waits.append(slots._idle.wait[head])
        assert waits == [20, 40, 80, 160, 200, 200]  # doubling from IDLE_WAIT_MIN_MS up to IDLE_WAIT_MAX_MS
        for s in streams:
            client.xadd(s, {"n": s})
        got = read_group(client, "g", "c", positions, count=10, block_ms=1000)
        assert sorted(got) == sorted(streams)  # one round reads every slot, on every master
        assert all(len(entries) == 1 for entries in got.values())
        assert slots._idle.wait[head] == slots.IDLE_WAIT_MIN_MS
    finally:
        client.close()


def test_status_names_the_node_server_of_each_stream(cluster: Cluster, broker: RedisServer) -> None:
    from celery_redis_stream.client.connection import connect
    from celery_redis_stream.status import collect

    from ..support import expected_server

    names = one_stream_per_master(cluster, "srv")
    app = Celery("srv", broker=broker.url_db(1), set_as_current=False)
    app.conf.update(stream_url=cluster.url, stream_tasks={n: {"task": "t", "registered": False} for n in names})
    config = load_config(app, check_registered=False)
    client = connect(config)
    try:
        for name in names:
            client.xadd(name, {"n": "1"})
        rows = collect(client, config)["streams"]
    finally:
        client.close()
    assert [(r["stream"], r["server"]) for r in rows] == [(n, expected_server()) for n in names]

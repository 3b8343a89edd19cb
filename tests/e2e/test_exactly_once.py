"""Exactly once into a Redis broker that shares the streams' server: resets at any byte, lost replies, kill -9.

Streams and broker URLs both go through a proxy (tests/proxy.py) in front of
one private redis-server; dispatch is counted in the broker queue
(tests/ledger.py): not one entry missing, not one dispatched twice.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_redis_stream import keys
from celery_redis_stream.client.connection import connect
from celery_redis_stream.client.streams import read_group, read_tracked
from celery_redis_stream.config import load_config
from celery_redis_stream.publish.dispatch import Dispatcher
from celery_redis_stream.publish.exactly_once import EXACTLY_ONCE, STEP, ExactlyOnce, PositionMoved
from celery_redis_stream.stats import StreamStats

from ..ledger import GROUP, STREAM, Ledger, Producer, pause_the_holder_until_refused
from ..proxy import Proxy
from ..support import RedisServer, Worker, wait_for
from .test_inspect import inspect

TRACKER_KEY = keys.tracker(STREAM)
TOTAL = 4000
RESETS = 40


def startup_line(worker: Worker) -> str:
    lines = [line for line in worker.output().splitlines() if "redis-stream: reading orders->" in line]
    assert lines, worker.output()[-3000:]
    return lines[-1]


def settled(server: RedisServer, mode: str, ledger: Ledger) -> bool:
    """Nothing left in flight: no pending entry (group) or the tracker at the last produced id."""
    client = server.client()
    if mode == "group":
        return int(client.xpending(STREAM, GROUP)["pending"]) == 0
    value = client.get(TRACKER_KEY)
    return value is not None and value.decode() == ledger.produced[-1]


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[Proxy]:
    proxy = Proxy(redis_server.port)
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.mark.parametrize("broker_db", [0, 1], ids=["same-db", "other-db"])
@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_random_resets_and_kill_9_dispatch_every_entry_exactly_once(redis_server, proxy, spawn, mode, broker_db):
    urls = (proxy.url(0), proxy.url(broker_db), redis_server.url_db(2))
    ledger = Ledger(STREAM, redis_server.client(broker_db))
    queue = redis_server.client(broker_db)
    worker = spawn(*urls, mode=mode).start()
    assert f"{EXACTLY_ONCE}: the streams and the broker share one Redis server" in startup_line(worker)

    # Resets at random byte counts, in both directions: requests cut mid-command,
    # scripts that ran but whose reply was lost, replies cut half-way.
    proxy.reset_randomly(1, 150_000, limit=RESETS, seed=random.randrange(1 << 30))
    producer = Producer(ledger, redis_server.client(), TOTAL, chunk=20, pause=0.004)
    producer.start()
    kills = 0
    for share in (0.3, 0.6):
        wait_for(lambda share=share: queue.llen("celery") >= TOTAL * share, 90, f"{share:.0%} dispatched", interval=0.1)
        time.sleep(random.uniform(0.0, 0.3))
        worker.kill()  # anywhere in read / script / recovery
        kills += 1
        worker = spawn(*urls, mode=mode).start()
    producer.join(90)
    assert len(ledger.produced) == TOTAL
    wait_for(lambda: queue.llen("celery") >= TOTAL, 120, "every entry dispatched", interval=0.2)
    wait_for(lambda: settled(redis_server, mode, ledger), 60, "nothing left in flight", interval=0.2)
    time.sleep(1.0)  # a late duplicate, if any, would land now

    report = ledger.report()
    print(f"{mode}, broker db {broker_db}: {proxy.resets} resets, {kills} kill -9: {report}")
    assert proxy.resets >= RESETS // 2, f"only {proxy.resets} resets happened: nothing was proven"
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert not report.unexpected, report
    assert report.dispatched == TOTAL, report
    assert worker.proc.poll() is None  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["group", "tracker"])
@pytest.mark.parametrize("lost", ["reply", "request"])
def test_a_lost_script_reply_or_request_dispatches_nothing_twice_and_loses_nothing(
    redis_server, proxy, spawn, mode, lost
):
    worker = spawn(proxy.url(0), proxy.url(1), redis_server.url_db(2), mode=mode).start()
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    ledger.produce(client, 200)
    wait_for(ledger.all_dispatched, 30, "the first 200 entries dispatched")
    if lost == "reply":
        # The step's reply ({1}): the script ran, the worker never hears of it.
        proxy.cut_reply_when(lambda data: data == b"*1\r\n:1\r\n")
    else:
        # The step's request (not the tracker lease's script): the server never runs it.
        sha = hashlib.sha1(STEP.encode()).hexdigest().encode()
        proxy.cut_request_when(lambda data: sha in data)
    ledger.produce(client, 200, atomic=True)
    wait_for(lambda: proxy.cuts == 1, 30, f"the step's {lost} cut")
    ledger.produce(client, 200)
    wait_for(ledger.all_dispatched, 30, "every entry dispatched after the cut")
    wait_for(lambda: settled(redis_server, mode, ledger), 30, "nothing left in flight")
    time.sleep(1.0)

    report = ledger.report()
    print(f"{mode}: lost {lost} of the atomic step: {report}")
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert "recovered after" in worker.output()


def _inspect_stream(worker: Worker) -> dict[str, Any]:
    reply = inspect(worker.env, "redis_stream")["reply"]
    (stats,) = [s for s in reply["streams"] if s["stream"] == STREAM]
    return dict(stats)


@pytest.mark.parametrize("servers", ["shared", "separate"])
def test_startup_line_and_inspect_say_which_guarantee_applies(redis_server, spawn, servers):
    broker = redis_server if servers == "shared" else RedisServer().start()
    try:
        worker = spawn(redis_server.url, broker.url_db(1), redis_server.url_db(2)).start()
        ledger = Ledger(STREAM, broker.client(1))
        ledger.produce(redis_server.client(), 300)
        wait_for(ledger.all_dispatched, 30, "300 entries dispatched")
        stats = _inspect_stream(worker)
        line = startup_line(worker)
        report = ledger.report()
    finally:
        if broker is not redis_server:
            broker.stop()
    print(line, json.dumps(stats))
    if servers == "shared":
        assert "exactly-once: the streams and the broker share one Redis server (databases 0 and 1)" in line
        assert stats["guarantee"] == "exactly-once", stats
        assert "share one Redis server" in stats["guarantee_reason"]
    else:
        assert "at-least-once: the streams and the broker are different Redis servers" in line
        assert stats["guarantee"] == "at-least-once", stats
        assert "different Redis servers" in stats["guarantee_reason"]
    assert not report.missing and report.extra_copies == 0, report


def test_a_fast_path_fallback_is_at_least_once_and_says_why(redis_server, workers):
    from ..ledger import BRIDGE_ONLY_QUEUE, FAST
    from ..support import worker_env

    env = worker_env(
        redis_server.url, redis_server.url_db(1), redis_server.url_db(2),
        {STREAM: {"task": "tests.record"}}, **FAST,
    )  # fmt: skip
    worker = Worker(env, "w1", queues=BRIDGE_ONLY_QUEUE, app="tests.signalapp")
    workers.append(worker)
    worker.start()
    ledger = Ledger(STREAM, redis_server.client(1))
    ledger.produce(redis_server.client(), 100)
    wait_for(ledger.all_dispatched, 30, "100 entries dispatched")
    stats = _inspect_stream(worker)
    line = startup_line(worker)
    print(line, json.dumps(stats))
    why = "the fast path steps aside: a before_task_publish receiver is connected"
    assert f"at-least-once: {why}" in line
    assert stats["guarantee"] == "at-least-once", stats
    assert "before_task_publish" in stats["guarantee_reason"], stats
    assert ledger.report().extra_copies == 0


# -- the fence, in process --------------------------------------------------------------------------


def record(*args: Any, **kwargs: Any) -> None:
    """The task the in-process apps map their stream to; never run here."""


def make_app(server: RedisServer, mode: str) -> Celery:
    app = Celery("atomic", broker=server.url_db(1), set_as_current=False)
    app.task(name="tests.record", shared=False)(record)
    app.conf.update(
        stream_url=server.url, stream_tasks={STREAM: {"task": "tests.record", "mode": mode}}, stream_start="0",
    )  # fmt: skip
    return app


def test_group_fence_refuses_a_batch_another_consumer_claimed_and_pushes_nothing(redis_server):
    app = make_app(redis_server, "group")
    config = load_config(app)
    (sc,) = config.streams
    client = connect(config)
    raw = redis_server.client()
    raw.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ids = [raw.xadd(STREAM, {"n": str(i)}).decode() for i in range(10)]
    entries = read_group(client, GROUP, "me", {STREAM: ">"}, count=10, block_ms=None)[STREAM]
    raw.xclaim(STREAM, GROUP, "other", 0, [ids[3]])  # one entry moved to another consumer meanwhile
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    exactly = ExactlyOnce(config, dispatcher.fast_path, "me")
    stats = StreamStats(STREAM, "group", sc.task, GROUP, None)
    try:
        step = exactly.step(client, sc, ids, [], stats=stats)
        assert step is not None
        dead = dispatcher.send(sc, entries, step=step)
        with pytest.raises(PositionMoved):
            step.commit(dead)
        assert redis_server.client(1).llen("celery") == 0  # nothing pushed
        assert int(raw.xpending(STREAM, GROUP)["pending"]) == 10  # nothing acknowledged

        # Re-reading its own pending entries, the consumer sends the nine still its own, once.
        mine = read_group(client, GROUP, "me", {STREAM: "0"}, count=10, block_ms=None)[STREAM]
        assert [e.id for e in mine] == [i for i in ids if i != ids[3]]
        step = exactly.step(client, sc, [e.id for e in mine], [], stats=stats)
        assert step is not None
        assert step.commit(dispatcher.send(sc, mine, step=step))
        assert redis_server.client(1).llen("celery") == 9
        assert stats.guarantee == EXACTLY_ONCE
        assert [p["consumer"] for p in raw.xpending_range(STREAM, GROUP, "-", "+", 10)] == [b"other"]
    finally:
        dispatcher.close()
        client.close()


def test_tracker_fence_refuses_a_moved_tracker_or_a_lost_lease_and_pushes_nothing(redis_server):
    from celery_redis_stream.exceptions import LeaseLost
    from celery_redis_stream.position.lease import Lease

    app = make_app(redis_server, "tracker")
    config = load_config(app)
    (sc,) = config.streams
    client = connect(config)
    raw = redis_server.client()
    ids = [raw.xadd(STREAM, {"n": str(i)}).decode() for i in range(10)]
    raw.set(sc.tracker_key, "0-0")
    lease = Lease(client, "me", 60_000)
    assert lease.acquire(sc)
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    exactly = ExactlyOnce(config, dispatcher.fast_path, "me")
    stats = StreamStats(STREAM, "tracker", sc.task, None, sc.tracker_key)
    entries = read_tracked(client, {STREAM: "0-0"}, count=10, block_ms=None)[STREAM]
    try:
        raw.set(sc.tracker_key, ids[4])  # moved (a reset, or this very step run before a lost reply)
        raw.set("in-flight", "batch")
        step = exactly.step(client, sc, ids, [], stats=stats, lease=lease, after="0-0")
        assert step is not None
        step.add("DEL", "in-flight")
        with pytest.raises(PositionMoved):
            step.commit(dispatcher.send(sc, entries, step=step))
        assert redis_server.client(1).llen("celery") == 0
        assert raw.exists("in-flight")  # a refused step changes nothing

        raw.set(sc.tracker_key, "0-0")
        raw.set(sc.lease_key, "someone-else")
        step = exactly.step(client, sc, ids, [], stats=stats, lease=lease, after="0-0")
        assert step is not None
        with pytest.raises(LeaseLost):
            step.commit(dispatcher.send(sc, entries, step=step))
        assert redis_server.client(1).llen("celery") == 0
        assert raw.get(sc.tracker_key) == b"0-0"

        raw.set(sc.lease_key, "me")
        raw.set("in-flight", "batch")
        step = exactly.step(client, sc, ids, [], stats=stats, lease=lease, after="0-0")
        assert step is not None
        step.add("DEL", "in-flight")  # what another part adds to the same step
        assert step.commit(dispatcher.send(sc, entries, step=step))
        assert redis_server.client(1).llen("celery") == 10
        assert raw.get(sc.tracker_key) == ids[-1].encode()
        assert not raw.exists("in-flight")
    finally:
        dispatcher.close()
        client.close()


def test_dead_letters_and_priority_lists_go_in_the_same_step(redis_server):
    app = make_app(redis_server, "group")
    app.conf.stream_tasks = {STREAM: {"task": "tests.record", "options": {"priority": 6}}}
    config = load_config(app)
    (sc,) = config.streams
    client = connect(config)
    raw = redis_server.client()
    raw.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    raw.xadd(STREAM, {"n": "1"})
    raw.execute_command("XADD", STREAM, "*", "n", b"\xff")  # not UTF-8: dead-lettered
    raw.xadd(STREAM, {"n": "3"})
    entries = read_group(client, GROUP, "me", {STREAM: ">"}, count=10, block_ms=None)[STREAM]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    exactly = ExactlyOnce(config, dispatcher.fast_path, "me")
    stats = StreamStats(STREAM, "group", sc.task, GROUP, None)
    try:
        step = exactly.step(client, sc, [e.id for e in entries], [], stats=stats)
        assert step is not None
        dead = dispatcher.send(sc, entries, step=step)
        assert [d.reason for d in dead] == ["not_utf8"]
        assert raw.xlen(sc.dead_letter) == 0  # not yet: in the step
        assert step.commit(dead)
        broker = redis_server.client(1)
        priority_lists = [k for k in broker.keys("celery*") if broker.type(k) == b"list"]
        assert priority_lists and all(re.match(rb"celery\x06\x16[0-9]", k) for k in priority_lists), priority_lists
        assert sum(broker.llen(k) for k in priority_lists) == 2
        assert raw.xlen(sc.dead_letter) == 1
        assert int(raw.xpending(STREAM, GROUP)["pending"]) == 0
    finally:
        dispatcher.close()
        client.close()


# -- a worker paused past its claim time or lease: its stale batch is fenced off -----------------------


def test_paused_group_worker_sends_nothing_that_another_consumer_claimed(redis_server, spawn):
    from ..ledger import pending_of

    urls = (redis_server.url, redis_server.url_db(1), redis_server.url_db(2))
    paused = spawn(*urls, name="w1").start()
    other = spawn(*urls, name="w2").start()
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    ledger.produce(client, 300)
    wait_for(ledger.all_dispatched, 30, "the first 300 entries dispatched")
    # Pause w1 while its blocked read is registered, so the next entries are
    # delivered to it (pending on w1) but cannot be sent by it.
    for _ in range(20):
        paused.signal(signal.SIGSTOP)
        ledger.produce(client, 50, atomic=True)
        time.sleep(0.3)
        if pending_of(client, "w1@"):
            break
        paused.signal(signal.SIGCONT)
        time.sleep(random.uniform(0.05, 0.2))
    stranded = pending_of(client, "w1@")
    assert stranded, "w1 never held pending entries when paused"
    wait_for(lambda: pending_of(client, "w1@") == 0, 30, "w2 to claim w1's pending entries")
    wait_for(ledger.all_dispatched, 30, "w2 to dispatch what w1 held")
    paused.signal(signal.SIGCONT)  # w1 goes on with its stale batch: the fence refuses it
    paused.wait_log("no longer pending on this consumer", 30)
    ledger.produce(client, 300)
    wait_for(ledger.all_dispatched, 30, "every entry dispatched after the pause")
    time.sleep(1.0)

    report = ledger.report()
    print(f"group worker paused holding {stranded} entries: {report}")
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert "claimed" in other.output()


def test_paused_tracker_owner_sends_nothing_after_losing_its_lease(redis_server, spawn):
    urls = (redis_server.url, redis_server.url_db(1), redis_server.url_db(2))
    conf = {"mode": "tracker", "stream_block_ms": 1000}
    owner = spawn(*urls, name="w1", **conf).start()
    owner.wait_log("reading tracked stream", 30)
    standby = spawn(*urls, name="w2", **conf).start()
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    ledger.produce(client, 300)
    wait_for(ledger.all_dispatched, 30, "the first 300 entries dispatched")
    outcomes = pause_the_holder_until_refused(client, ledger, owner, standby)
    ledger.produce(client, 300)
    wait_for(ledger.all_dispatched, 30, "every entry dispatched after the pause")
    time.sleep(1.0)

    report = ledger.report()
    print(f"tracker owner paused: {report} after {outcomes}")
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert client.get(TRACKER_KEY).decode() == ledger.produced[-1]


def test_a_least_privilege_streams_user_stays_at_least_once_without_a_single_acl_denial(redis_server, spawn):
    from .test_security import acl_denials, documented_acl

    admin = redis_server.client()
    admin.execute_command(*documented_acl("stream-group"))
    url = f"redis://stream-group:CHANGE-ME@127.0.0.1:{redis_server.port}/0"
    worker = spawn(url, redis_server.url_db(1), redis_server.url_db(2)).start()
    ledger = Ledger(STREAM, redis_server.client(1))
    ledger.produce(admin, 200)
    wait_for(ledger.all_dispatched, 30, "200 entries dispatched")
    wait_for(lambda: settled(redis_server, "group", ledger), 30, "every entry acknowledged")
    line = startup_line(worker)
    print(line)
    assert "at-least-once: the streams and the broker connect as different Redis users" in line
    assert acl_denials(admin, "stream-group") == []  # no INFO, no EVALSHA tried
    assert ledger.report().extra_copies == 0


def test_a_batch_larger_than_one_lua_unpack_goes_in_one_step(redis_server):
    n = 8000  # above Lua's ~8,000 values per unpack(): the pushes and the XACK are split inside the step
    app = make_app(redis_server, "group")
    app.conf.stream_batch_size = n
    config = load_config(app)
    (sc,) = config.streams
    client = connect(config)
    raw = redis_server.client()
    raw.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    pipe = raw.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"n": str(i)})
    pipe.execute()
    entries = read_group(client, GROUP, "me", {STREAM: ">"}, count=n, block_ms=None)[STREAM]
    dispatcher = Dispatcher(app, max_entry_bytes=1 << 20)
    exactly = ExactlyOnce(config, dispatcher.fast_path, "me")
    stats = StreamStats(STREAM, "group", sc.task, GROUP, None)
    try:
        step = exactly.step(client, sc, [e.id for e in entries], [], stats=stats)
        assert step is not None
        assert step.commit(dispatcher.send(sc, entries, step=step))
        broker = redis_server.client(1)
        assert broker.llen("celery") == n
        # oldest first, as kombu's consumer pops them (from the right)
        first = json.loads(broker.lindex("celery", -1))["headers"]["redis_stream_id"]
        assert first == entries[0].id
        assert int(raw.xpending(STREAM, GROUP)["pending"]) == 0
    finally:
        dispatcher.close()
        client.close()

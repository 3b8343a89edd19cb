"""Consumer hygiene and retention with real `celery worker` processes and a private redis-server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from celery_redis_stream import keys

from ..ledger import GROUP, STREAM, Ledger
from ..support import ROOT, RedisServer, Worker, wait_for, worker_env

Spawn = Callable[..., Worker]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    # Radix nodes of 10 entries: the approximate XTRIM ~ removes whole nodes, measurably on a short stream.
    started = RedisServer("--stream-node-max-entries", "10").start()
    try:
        yield started
    finally:
        started.stop()


def urls(server: RedisServer) -> tuple[str, str, str]:
    return server.url_db(0), server.url_db(1), server.url_db(2)


def consumers(client: redis.Redis) -> dict[str, int]:
    try:
        return {c["name"].decode(): int(c["pending"]) for c in client.xinfo_consumers(STREAM, GROUP)}
    except redis.ResponseError:
        return {}


def ids(client: redis.Redis) -> list[str]:
    return [i.decode() for i, _ in client.xrange(STREAM)]


def status(server: RedisServer, *args: str, **conf: Any) -> str:
    env = worker_env(*urls(server), {STREAM: {"task": "tests.record", **conf}})
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.workerapp", "redis-stream", "status", *args],
        cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rolling_restarts_under_new_names_leave_one_consumer(server: RedisServer, spawn: Spawn) -> None:
    client = server.client()
    ledger = Ledger(STREAM, server.client(1))
    pods = [spawn(*urls(server), name="pod0").start()]
    for i in range(1, 6):
        ledger.produce(client, 30)
        wait_for(ledger.all_dispatched, 60, f"round {i} dispatched")
        # as a Kubernetes rollout does: the new pod (a new name) starts, then the old one stops warmly
        pods.append(spawn(*urls(server), name=f"pod{i}").start())
        assert pods[-2].stop() == 0
        assert "removed own consumer pod" in pods[-2].output()
    ledger.produce(client, 30)
    wait_for(ledger.all_dispatched, 60, "last round dispatched")
    wait_for(lambda: set(consumers(client)) <= {pods[-1].name + "@" + os.uname().nodename}, 10, "old consumers gone")
    assert len(consumers(client)) == 1
    # status shows the one consumer left with its idle time, in JSON and in text
    (shown,) = json.loads(status(server, "--json"))["streams"][0]["consumers"]
    assert shown["name"] == pods[-1].name + "@" + os.uname().nodename and shown["idle_ms"] >= 0
    text = status(server)
    assert re.search(r"consumer\W+pending\W+idle", text) and re.search(rf"{shown['name']}\W+0\W+\d+\.\ds", text)
    report = ledger.report()
    assert not report.missing and not report.duplicates, report
    assert pods[-1].stop() == 0
    assert consumers(client) == {}


def test_ghost_consumers_go_when_empty_and_one_with_pending_entries_only_after_they_were_claimed(
    server: RedisServer, spawn: Spawn
) -> None:
    client = server.client()
    ledger = Ledger(STREAM, server.client(1))
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ledger.produce(client, 20)
    acked = [i.decode() for i, _ in client.xreadgroup(GROUP, "ghost-empty", {STREAM: ">"}, count=10)[0][1]]
    client.xack(STREAM, GROUP, *acked)
    held = [i.decode() for i, _ in client.xreadgroup(GROUP, "ghost-pending", {STREAM: ">"}, count=10)[0][1]]
    ledger.lost_by_redis(acked)  # acknowledged by the ghost: never the bridge's to dispatch
    # claim rounds (and with them removal rounds) every 6 s; pending entries are claimed after 12 s idle
    worker = spawn(*urls(server), stream_reap_idle_ms=1000, stream_claim_idle_ms=12000).start()
    wait_for(lambda: "ghost-empty" not in consumers(client), 30, "the empty ghost removed")
    # fresh again: the pending entries idle from now, and a new empty ghost as a witness of the next round
    client.xclaim(STREAM, GROUP, "ghost-pending", 0, held, justid=True)
    client.execute_command("XGROUP", "CREATECONSUMER", STREAM, GROUP, "ghost-late")
    wait_for(lambda: "ghost-late" not in consumers(client), 30, "the late empty ghost removed")
    # that round saw ghost-pending idle as long as ghost-late, but holding entries not yet claimed: kept
    assert consumers(client).get("ghost-pending") == 10
    assert not ledger.dispatched_ids() & set(held)
    wait_for(lambda: "ghost-pending" not in consumers(client), 60, "the pending ghost removed after the claim")
    wait_for(ledger.all_dispatched, 30, "the claimed entries dispatched")
    report = ledger.report()
    assert not report.missing and not report.duplicates and ledger.dispatched_ids() == set(held), report
    log = worker.output()
    assert "removed consumer ghost-empty from group=celery stream=orders: idle" in log
    assert "removed consumer ghost-pending from group=celery stream=orders" in log
    assert worker.stop() == 0


def test_retention_keeps_what_a_foreign_group_holds_and_trims_it_once_acknowledged(
    server: RedisServer, spawn: Spawn
) -> None:
    client = server.client()
    ledger = Ledger(STREAM, server.client(1))
    produced = ledger.produce(client, 200)
    client.xgroup_create(STREAM, "audit", id="0")
    audit = [i.decode() for i, _ in client.xreadgroup("audit", "auditor", {STREAM: ">"}, count=100)[0][1]]
    worker = spawn(*urls(server), stream_retention_ms=1).start()
    wait_for(ledger.all_dispatched, 60, "everything dispatched")
    state = keys.retention(keys.tracker(STREAM))
    first = wait_for(lambda: client.hget(state, "last_run_ms"), 30, "a retention round")
    wait_for(lambda: client.hget(state, "last_run_ms") != first, 30, "another retention round after dispatch")
    assert ids(client) == produced, "entries pending in a foreign group were trimmed"
    client.xack(STREAM, "audit", *audit)
    wait_for(lambda: client.xlen(STREAM) < 200, 30, "trimmed once the foreign group acknowledged")
    wait_for(lambda: client.hget(state, "trimmed") == b"90", 30, "the trimmed total")
    # the foreign group has not read past the 100th entry: everything after it stays, though we acknowledged it
    assert ids(client) == produced[90:]
    worker.wait_log("redis-stream: trimmed 90 entries of stream=orders before " + produced[99], 10)
    shown = json.loads(status(server, "--json", retention_ms=1))["streams"][0]
    assert (shown["retention_ms"], shown["retention_trimmed"], shown["retention_minid"]) == (1, 90, produced[99])
    row = next(line for line in status(server, retention_ms=1).splitlines() if produced[99] in line)
    assert re.search(r"orders\W+0\.001s\W+90\W", row), row
    assert worker.stop() == 0
    assert not ledger.report().missing


def test_tracker_mode_retention_trims_only_what_the_tracker_passed(server: RedisServer, spawn: Spawn) -> None:
    client = server.client()
    ledger = Ledger(STREAM, server.client(1))
    produced = ledger.produce(client, 300)
    # nobody consumes the target queue: backpressure stops the tracker part way
    worker = spawn(
        *urls(server), mode="tracker", stream_retention_ms=1, stream_batch_size=20, stream_max_queue_length=40
    ).start()
    tracker = keys.tracker(STREAM)
    wait_for(lambda: client.get(tracker) not in (None, b"0-0"), 30, "the tracker moving")
    wait_for(lambda: client.xlen(STREAM) < 300, 30, "trimming behind the tracker")
    worker.wait_log("pausing stream=orders", 30)
    state = f"{tracker}:retention"
    last = client.hget(state, "last_run_ms")
    wait_for(lambda: client.hget(state, "last_run_ms") != last, 30, "another retention round while paused")
    position = client.get(tracker).decode()
    kept = ids(client)
    assert produced.index(position) < 250, "backpressure should have stopped the tracker early"
    assert set(produced[produced.index(position) :]) <= set(kept), "an entry the tracker had not passed was trimmed"
    assert 300 - len(kept) == int(client.hget(f"{tracker}:retention", "trimmed")) >= 10
    assert kept[0] <= position
    assert worker.stop() == 0


def test_the_documented_retention_acl_is_enough_to_reap_and_trim(server: RedisServer, spawn: Spawn) -> None:
    from .test_security import acl_denials, documented_acl

    admin = server.client()
    admin.execute_command(*documented_acl("stream-retention"))
    ledger = Ledger(STREAM, server.client(1))
    admin.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    produced = ledger.produce(admin, 100)
    admin.xack(STREAM, GROUP, *[i for i, _ in admin.xreadgroup(GROUP, "ghost", {STREAM: ">"}, count=10)[0][1]])
    ledger.lost_by_redis(produced[:10])
    url = f"redis://stream-retention:CHANGE-ME@127.0.0.1:{server.port}/0"
    worker = spawn(url, *urls(server)[1:], name="acl", stream_retention_ms=1, stream_reap_idle_ms=500).start()
    wait_for(ledger.all_dispatched, 60, "everything dispatched")
    wait_for(lambda: "ghost" not in consumers(admin), 30, "the idle ghost removed")
    wait_for(lambda: admin.xlen(STREAM) <= 10, 30, "trimmed")
    assert worker.stop() == 0
    assert consumers(admin) == {}
    assert acl_denials(admin, "stream-retention") == []
    assert "cannot" not in worker.output()

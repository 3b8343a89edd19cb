"""Streams-Redis faults: restarts with and without persistence, a deleted key, a trim past
pending entries, and a read whose reply is lost."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import pytest

from ..ledger import FAST, GROUP, STREAM, Ledger, reader_blocked
from ..proxy import Proxy
from ..support import RedisServer, wait_for

RECREATED = f"group {GROUP} on stream {STREAM} was missing; recreated from 0"


@pytest.fixture
def servers() -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two private servers: the first is started by the test (its options vary), the second is the broker."""
    broker = RedisServer().start()
    streams: list[RedisServer] = []
    yield streams, broker  # type: ignore[misc]
    for server in streams:
        server.stop(signal.SIGKILL)
    broker.stop()


@pytest.mark.parametrize("persistence", ["aof", "none"])
def test_streams_redis_restart_loses_only_what_redis_lost(servers, spawn, persistence):
    started, broker = servers
    args = ("--appendonly", "yes", "--appendfsync", "always") if persistence == "aof" else ()
    streams = RedisServer(*args).start()
    started.append(streams)
    # The worker reaches the streams Redis through a proxy, so the test decides
    # when it can reconnect: only after entries were written to the restarted
    # server, which a group recreated from "$" instead of "0" would skip.
    proxy = Proxy(streams.port)
    try:
        batch = 20
        worker = spawn(proxy.url(0), broker.url_db(1), broker.url_db(2), stream_batch_size=batch).start()
        ledger = Ledger(STREAM, broker.client(1))
        ledger.produce(streams.client(), 1000)
        wait_for(lambda: ledger.count_dispatched() >= 200, 30, "200 entries dispatched")
        # The bridge can drain the other 800 before the kill: 300 more, written while the worker is paused,
        # are undispatched for sure, so a server that keeps nothing loses some.
        worker.signal(signal.SIGSTOP)
        ledger.produce(streams.client(), 300)
        streams.stop(signal.SIGKILL)  # the paused worker may hold a batch in flight
        proxy.set_mode("refuse")
        worker.signal(signal.SIGCONT)
        time.sleep(1.0)  # the streams Redis is down: the reader retries with backoff
        if persistence == "none":
            ledger.lost_by_redis(set(ledger.produced) - ledger.dispatched_ids())
        streams.start()  # same port, same directory
        ledger.produce(streams.client(), 500)
        proxy.set_mode("pass")
        wait_for(ledger.all_dispatched, 60, "every entry Redis kept dispatched")
        time.sleep(1.0)  # let a hot loop, if any, show in the log
    finally:
        proxy.stop()

    report = ledger.report()
    output = worker.output()
    print(f"streams redis restarted ({persistence}): {report}")
    assert worker.proc.poll() is None, output[-3000:]  # type: ignore[union-attr]
    assert not report.missing, report
    assert not report.unexpected, report
    assert report.extra_copies <= batch, report
    assert not report.inconsistent_task_ids, report
    if persistence == "aof":
        assert report.redis_lost == 0
        assert RECREATED not in output
    else:
        assert report.redis_lost > 0  # the restart really lost undispatched entries
        # The group came back from 0 (every entry written after the restart was
        # dispatched), and the event is logged once, not in a loop.
        assert output.count(RECREATED) == 1, output[-3000:]
    assert output.count("recovered after") >= 1


def test_deleted_stream_key_recovers_and_dispatches_later_entries(redis_server, spawn):
    worker = spawn(redis_server.url, redis_server.url_db(1), redis_server.url_db(2)).start()
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    ledger.produce(client, 500)
    wait_for(ledger.all_dispatched, 30, "the first 500 entries dispatched")

    wait_for(lambda: reader_blocked(client, "xreadgroup"), 10, "the reader blocked in XREADGROUP")
    client.delete(STREAM)  # while the reader blocks on it
    time.sleep(5 * FAST["stream_block_ms"] / 1000)
    deleted = time.monotonic()
    ledger.produce(client, 500)
    wait_for(ledger.all_dispatched, 30, "entries written after the delete dispatched")
    recovered_after = time.monotonic() - deleted

    # Deleted and rewritten at once: the recreated group must start at "0",
    # or these entries are skipped.
    wait_for(lambda: reader_blocked(client, "xreadgroup"), 10, "the reader blocked in XREADGROUP")
    pipe = client.pipeline(transaction=True)
    pipe.delete(STREAM)
    for i in range(500):
        pipe.xadd(STREAM, {"n": f"again-{i}"})
    ledger.produced.extend(x.decode() for x in pipe.execute()[1:])
    wait_for(ledger.all_dispatched, 30, "entries rewritten with the delete dispatched")

    report = ledger.report()
    print(f"stream key deleted: later entries dispatched {recovered_after:.2f}s after the rewrite: {report}")
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert worker.proc.poll() is None  # type: ignore[union-attr]
    assert worker.output().count(RECREATED) == 2


def test_trimmed_pending_entries_are_counted_logged_and_the_rest_dispatched(redis_server, spawn):
    client = redis_server.client()
    ledger = Ledger(STREAM, redis_server.client(1))
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    ledger.produce(client, 1200)
    own = "crs-w1"
    # Entries delivered but never acknowledged, as a killed worker leaves them:
    # half on the worker's own consumer name, half on a consumer that is gone.
    for consumer in (own, "gone", own, "gone"):
        client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=150)
    client.xtrim(STREAM, maxlen=900, approximate=False)  # drops the oldest 300: 150 own + 150 gone, all pending
    ledger.lost_by_redis(ledger.produced[:300])

    worker = spawn(redis_server.url, redis_server.url_db(1), redis_server.url_db(2), stream_consumer=own).start()
    wait_for(ledger.all_dispatched, 30, "every entry that was not trimmed dispatched")
    wait_for(lambda: client.xpending(STREAM, GROUP)["pending"] == 0, 30, "no pending entries left")

    report = ledger.report()
    output = worker.output()
    trimmed = sum(int(n) for n in re.findall(r"(\d+) pending entr(?:y|ies) of stream=orders were trimmed", output))
    print(f"trimmed past pending: logged trimmed={trimmed}: {report}")
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert not set(ledger.produced[:300]) & ledger.dispatched_ids()
    assert trimmed == 300, output[-3000:]
    assert worker.proc.poll() is None  # type: ignore[union-attr]
    assert "Traceback" not in output


def test_lost_reply_to_a_read_is_recovered_from_own_pending(redis_server, spawn):
    proxy = Proxy(redis_server.port)
    try:
        # A claim idle time far beyond the test: only re-reading the consumer's
        # own pending list can recover what the lost reply stranded there.
        worker = spawn(
            proxy.url(0), redis_server.url_db(1), redis_server.url_db(2), stream_claim_idle_ms=600_000
        ).start()
        ledger = Ledger(STREAM, redis_server.client(1))
        client = redis_server.client()
        ledger.produce(client, 500)
        wait_for(ledger.all_dispatched, 30, "the first 500 entries dispatched")

        proxy.cut_reply_when(lambda data: b"lost-reply" in data)
        ledger.produce(client, 500, marker="lost-reply")
        wait_for(ledger.all_dispatched, 30, "every entry dispatched after the lost reply")
        wait_for(lambda: client.xpending(STREAM, GROUP)["pending"] == 0, 30, "no pending entries left")

        report = ledger.report()
        print(f"lost reply: {report}")
        assert proxy.cuts == 1
        assert not report.missing, report
        assert report.extra_copies == 0, report
        assert worker.proc.poll() is None  # type: ignore[union-attr]
    finally:
        proxy.stop()

"""Broker faults: refused (redis-server stopped) and hanging (a proxy that never answers).

The bridge must not move the stream position past what the broker accepted,
must not burn CPU or hang forever, and must dispatch everything once the
broker is back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from ..ledger import FAST, STREAM, Ledger, acked_ids
from ..proxy import Proxy
from ..support import RedisServer, wait_for

BATCH = FAST["stream_batch_size"]


@pytest.fixture
def streams() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_broker_down_keeps_position_backs_off_and_dispatches_everything_after(streams, spawn):
    # AOF on the broker so the tasks dispatched before the outage survive its restart.
    broker = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        worker = spawn(streams.url, broker.url_db(1), streams.url_db(2)).start()
        ledger = Ledger(STREAM, broker.client(1))
        client = streams.client()
        ledger.produce(client, 300)
        wait_for(ledger.all_dispatched, 30, "the first 300 entries dispatched")
        before = ledger.dispatched_ids()

        broker.stop()
        process = psutil.Process(worker.proc.pid)  # type: ignore[union-attr]
        process.cpu_percent(None)
        started = time.monotonic()
        for _ in range(10):  # about 12 s of outage while 800 entries arrive
            ledger.produce(client, 80)
            time.sleep(1.2)
        outage = time.monotonic() - started
        cpu = process.cpu_percent(None)

        assert worker.proc.poll() is None, worker.output()[-3000:]  # type: ignore[union-attr]
        # Nothing the broker did not take was acknowledged ...
        assert acked_ids(client, ledger.produced) <= before
        # ... and the group still owes (almost) everything written during the outage.
        group = client.xinfo_groups(STREAM)[0]
        assert group["lag"] + group["pending"] >= 800, group
        assert cpu < 50, f"worker used {cpu:.0f}% CPU during a {outage:.0f}s broker outage"
        assert "broker unavailable, position kept" in worker.output()

        broker.start()  # same port, same AOF
        wait_for(ledger.all_dispatched, 60, "every entry dispatched after the broker returned")
        report = ledger.report()
        print(f"broker down {outage:.1f}s, worker cpu {cpu:.1f}%: {report}")
        assert not report.missing, report
        assert report.extra_copies <= BATCH, report
        assert not report.inconsistent_task_ids, report
        assert worker.proc.poll() is None  # type: ignore[union-attr]
    finally:
        broker.stop()


def test_hanging_broker_times_out_keeps_position_and_resumes_after_healing(streams, spawn):
    broker = RedisServer().start()
    proxy = Proxy(broker.port)
    try:
        worker = spawn(streams.url, proxy.url(1), streams.url_db(2)).start()
        ledger = Ledger(STREAM, broker.client(1))
        client = streams.client()
        ledger.produce(client, 300)
        wait_for(ledger.all_dispatched, 30, "the first 300 entries dispatched")
        before = ledger.dispatched_ids()

        proxy.set_mode("hang")
        hung = time.monotonic()
        for _ in range(7):
            ledger.produce(client, 100)
        # The publish must give up (socket timeout) rather than block the reader forever.
        worker.wait_log("broker unavailable, position kept", 40)
        timed_out_after = time.monotonic() - hung
        assert worker.proc.poll() is None  # type: ignore[union-attr]
        assert acked_ids(client, ledger.produced) <= before
        assert ledger.dispatched_ids() == before

        proxy.set_mode("pass")
        healed = time.monotonic()
        wait_for(ledger.all_dispatched, 60, "every entry dispatched after the broker healed")
        resumed_after = time.monotonic() - healed
        report = ledger.report()
        print(
            f"publish timed out after {timed_out_after:.1f}s; all dispatched {resumed_after:.1f}s after heal: {report}"
        )
        assert not report.missing, report
        assert report.extra_copies <= BATCH, report
        assert not report.inconsistent_task_ids, report
    finally:
        proxy.stop()
        broker.stop()

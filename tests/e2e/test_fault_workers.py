"""Worker faults: paused (SIGSTOP) past its claim idle time or lease, kill -9 loops, SIGTERM during a burst.

Dispatch is counted in the broker queue (see tests/ledger.py); the bridge
workers consume another queue.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable

import pytest

from celery_redis_stream import keys

from ..ledger import FAST, STREAM, Ledger, Producer, id_key, pause_the_holder_until_refused, pending_of
from ..support import RedisServer, Worker, wait_for

BATCH = FAST["stream_batch_size"]
LONG = bool(os.environ.get("CRS_LONG"))
KILL_CYCLES = 20 if LONG else 5
TRACKER_KEY = keys.tracker(STREAM)


# Streams and broker share one server here, where the fast path would make every batch exactly once
# (tests/e2e/test_exactly_once.py): these tests hold the at-least-once path to its bounds.
AT_LEAST_ONCE = {"stream_fast_path": False}


def urls(server: RedisServer) -> tuple[str, str, str]:
    return server.url, server.url_db(1), server.url_db(2)


class TrackerSampler(threading.Thread):
    """Reads the tracker key every few milliseconds; the values must never go backwards."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(name="tracker-sampler", daemon=True)
        self.client = server.client()
        self.values: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 110
        while not self.done.is_set() and time.monotonic() < deadline:
            value = self.client.get(TRACKER_KEY)
            if value is not None and (not self.values or self.values[-1] != value.decode()):
                self.values.append(value.decode())
            time.sleep(0.005)

    def backwards(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in zip(self.values, self.values[1:], strict=False) if id_key(b) < id_key(a)]


def test_paused_group_worker_loses_nothing_and_duplicates_at_most_a_batch(redis_server, spawn):
    paused = spawn(*urls(redis_server), **AT_LEAST_ONCE, name="w1").start()
    other = spawn(*urls(redis_server), **AT_LEAST_ONCE, name="w2").start()
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    ledger.produce(client, 500)
    wait_for(ledger.all_dispatched, 30, "the first 500 entries dispatched")

    # Pause w1 while its blocked read is registered, so the next entries are
    # delivered to it (pending on w1) but cannot be dispatched by it.
    for _ in range(20):
        paused.signal(signal.SIGSTOP)
        ledger.produce(client, 100, atomic=True)
        time.sleep(0.3)
        if pending_of(client, "w1@"):
            break
        paused.signal(signal.SIGCONT)
        time.sleep(random.uniform(0.05, 0.2))
    stranded = pending_of(client, "w1@")
    assert stranded, "w1 never held pending entries when paused"
    # w2 claims them after stream_claim_idle_ms while w1 is still stopped.
    wait_for(lambda: pending_of(client, "w1@") == 0, 30, "w2 to claim w1's pending entries")
    wait_for(ledger.all_dispatched, 30, "w2 to dispatch what w1 held")
    paused.signal(signal.SIGCONT)  # w1 finishes its stale batch: the bounded duplicates
    ledger.produce(client, 400)
    wait_for(ledger.all_dispatched, 30, "every entry dispatched after the pause")
    time.sleep(1.0)

    report = ledger.report()
    print(f"group worker paused holding {stranded} entries: {report}")
    assert not report.missing, report
    assert report.extra_copies <= BATCH, report
    assert not report.inconsistent_task_ids, report
    assert paused.proc.poll() is None and other.proc.poll() is None  # type: ignore[union-attr]
    assert "claimed" in other.output()


def test_paused_tracker_worker_never_moves_the_tracker_back(redis_server, spawn):
    # A longer block so the blocked read is still registered when the entries arrive.
    conf = {"mode": "tracker", "stream_block_ms": 1000}
    owner = spawn(*urls(redis_server), **AT_LEAST_ONCE, name="w1", **conf).start()
    owner.wait_log("reading tracked stream", 30)
    standby = spawn(*urls(redis_server), **AT_LEAST_ONCE, name="w2", **conf).start()
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    sampler = TrackerSampler(redis_server)
    sampler.start()
    try:
        ledger.produce(client, 500)
        wait_for(ledger.all_dispatched, 30, "the first 500 entries dispatched")

        # Pause the owner while it blocks in XREAD, then write: the reply reaches the paused owner, which
        # tries to dispatch and commit it when resumed, after w2 took over and moved the tracker further.
        def further() -> None:
            ledger.produce(client, 200)
            wait_for(ledger.all_dispatched, 30, "the new holder to move the tracker further")

        pause_the_holder_until_refused(client, ledger, owner, standby, entries=100, meanwhile=further)
        ledger.produce(client, 300)
        wait_for(ledger.all_dispatched, 30, "every entry dispatched after the pause")
        time.sleep(1.0)
    finally:
        sampler.done.set()
        sampler.join(5)

    report = ledger.report()
    print(f"tracker owner paused: tracker samples={len(sampler.values)}: {report}")
    assert not sampler.backwards(), sampler.backwards()
    assert client.get(TRACKER_KEY).decode() == ledger.produced[-1]
    assert not report.missing, report
    assert report.extra_copies <= BATCH, report
    assert not report.inconsistent_task_ids, report


def _kill_loop(server: RedisServer, spawn: Callable[..., Worker], mode: str, cycles: int) -> None:
    ledger = Ledger(STREAM, server.client(1))
    client = server.client()
    batch = 20
    behind_at_kill = []  # produced minus dispatched when the kill landed
    for _ in range(cycles):
        worker = spawn(*urls(server), **AT_LEAST_ONCE, mode=mode, stream_batch_size=batch).start()
        # Entries keep arriving while the worker runs, so the kill lands at a
        # random point of the read / publish / commit cycle.
        producer = Producer(ledger, client, 2000, chunk=10, pause=0.01)
        producer.start()
        time.sleep(random.uniform(0.2, 0.7))
        worker.kill()
        behind_at_kill.append(len(ledger.produced) - ledger.count_dispatched())
        producer.finish()
    final = spawn(*urls(server), **AT_LEAST_ONCE, mode=mode, stream_batch_size=batch).start()
    wait_for(ledger.all_dispatched, 60, "every entry dispatched after the last kill")
    final.stop()

    report = ledger.report()
    print(f"{mode}: {cycles} kill -9 cycles, entries not yet dispatched at each kill {behind_at_kill}: {report}")
    assert len(ledger.produced) >= 1000
    assert not report.missing, report
    assert not report.unexpected, report
    assert report.extra_copies <= cycles * batch, report
    assert max(report.duplicates.values(), default=0) <= cycles, report
    assert not report.inconsistent_task_ids, report
    # The kills landed while entries were flowing, not only between bursts.
    assert any(behind_at_kill), behind_at_kill


@pytest.mark.parametrize(
    "mode", [pytest.param(m, marks=[pytest.mark.slow] if LONG else []) for m in ("group", "tracker")]
)
def test_many_kill_9_cycles_lose_nothing_and_duplicate_at_most_a_batch_per_kill(redis_server, spawn, mode):
    _kill_loop(redis_server, spawn, mode, KILL_CYCLES)


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_sigterm_during_a_burst_duplicates_nothing(redis_server, spawn, mode):
    ledger = Ledger(STREAM, redis_server.client(1))
    client = redis_server.client()
    # Small batches keep the burst going while the worker shuts down (the default fast path
    # bridges 5,000 entries of batch 5 in about a second: the burst is three times that).
    worker = spawn(*urls(redis_server), **AT_LEAST_ONCE, mode=mode, stream_batch_size=5).start()
    ledger.produce(client, 15000)
    wait_for(lambda: ledger.count_dispatched() >= 50, 30, "the burst to be under way")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    at_stop = ledger.count_dispatched()
    assert at_stop < len(ledger.produced), "the burst ended before the shutdown: nothing was proven"

    restarted = spawn(*urls(redis_server), **AT_LEAST_ONCE, mode=mode, stream_batch_size=5).start()
    wait_for(ledger.all_dispatched, 60, "every entry dispatched after the restart")
    restarted.stop()

    report = ledger.report()
    print(f"{mode}: SIGTERM after {at_stop} of {len(ledger.produced)} dispatched: {report}")
    assert not report.missing, report
    assert report.extra_copies == 0, report

"""Shutdown with real `celery worker` processes: reading stops the moment any shutdown begins.

Warm (SIGTERM), cold (SIGQUIT) and Celery's soft shutdown
(``worker_soft_shutdown_timeout``, SIGTERM remapped to SIGQUIT as Celery's
docs recommend), in both modes, under a steady producer. The position (the
group's last-delivered-id, or the tracker key) is sampled every few
milliseconds: it must not move more than 2 s after the signal, while the
worker is still in its soft-shutdown window. After a restart every entry is
dispatched, none twice (streams and broker share one server here, where the
bridge is exactly once: tests/e2e/test_exactly_once.py).
"""

from __future__ import annotations

import signal
import threading
import time

import celery
import pytest

from celery_redis_stream import keys

from ..ledger import GROUP, STREAM, Ledger, Producer
from ..support import RedisServer, Worker, wait_for

TRACKER_KEY = keys.tracker(STREAM)
SOFT_SECONDS = 8
# A batch read before the signal is finished: one read (200 ms here) and its dispatch, well inside this.
STOPPED_WITHIN = 2.0
# worker_soft_shutdown_timeout and REMAP_SIGTERM came with Celery 5.5; before, a stop has no window to test.
SOFT_SHUTDOWN = pytest.mark.skipif(
    tuple(int(p) for p in celery.__version__.split(".")[:2]) < (5, 5), reason="soft shutdown needs Celery 5.5+"
)


class PositionSampler(threading.Thread):
    """Reads the position every 10 ms and keeps the time of each move."""

    def __init__(self, server: RedisServer, mode: str) -> None:
        super().__init__(name="position-sampler", daemon=True)
        self.client = server.client()
        self.mode = mode
        self.moves: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.error: BaseException | None = None  # a sampler that died would report no move at all

    def position(self) -> str | None:
        if self.mode == "tracker":
            value = self.client.get(TRACKER_KEY)
            return value.decode() if value is not None else None
        groups = {g["name"].decode(): g for g in self.client.xinfo_groups(STREAM)} if self.client.exists(STREAM) else {}
        return groups[GROUP]["last-delivered-id"].decode() if GROUP in groups else None

    def run(self) -> None:
        deadline = time.monotonic() + 120
        last = None
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                now = self.position()
                if now != last:
                    self.moves.append((time.monotonic(), str(now)))
                    last = now
                time.sleep(0.01)
        except BaseException as exc:  # reported by the test through moves_after
            self.error = exc

    def moves_after(self, moment: float) -> list[float]:
        """Seconds after ``moment`` at which the position moved."""
        assert self.error is None, f"the position sampler failed: {self.error!r}"
        return [at - moment for at, _ in self.moves if at > moment]


def bridge(spawn, server: RedisServer, mode: str, *, remap: bool = False, pool: str = "solo", **conf: object) -> Worker:
    worker: Worker = spawn(server.url, server.url_db(1), server.url_db(2), mode=mode, stream_batch_size=20, **conf)
    if remap:
        worker.env["REMAP_SIGTERM"] = "SIGQUIT"
    if pool != "solo":
        at = worker.cmd.index("--pool")
        worker.cmd[at + 1 : at + 4] = [pool, "-c", "2"]
    return worker


def stop_mid_stream(
    server: RedisServer, spawn, mode: str, sig: signal.Signals, *, soft: bool, pool: str = "solo"
) -> list[float]:
    """Start a worker under a steady producer, send ``sig`` mid-stream, restart; the moves after the signal."""
    ledger = Ledger(STREAM, server.client(1))
    conf: dict[str, object] = {}
    if soft:
        # On idle too: this worker runs no task (it only bridges), and Celery skips the window without one.
        conf = {"worker_soft_shutdown_timeout": SOFT_SECONDS, "worker_enable_soft_shutdown_on_idle": True}
    worker = bridge(spawn, server, mode, remap=soft and sig == signal.SIGTERM, pool=pool, **conf).start()
    sampler = PositionSampler(server, mode)
    producer = Producer(ledger, server.client(), 60_000, chunk=10, pause=0.01)
    sampler.start()
    producer.start()
    try:
        wait_for(lambda: ledger.count_dispatched() >= 200, 30, "the bridge under way")
        signalled = time.monotonic()
        worker.signal(sig)
        if soft:
            time.sleep(STOPPED_WITHIN + 2)
            assert worker.proc is not None and worker.proc.poll() is None, "the soft-shutdown window ended early"
        worker.wait(SOFT_SECONDS + 30)
        ended = time.monotonic()
        assert ended - signalled < SOFT_SECONDS + 15
    finally:
        producer.finish()
        sampler.done.set()
        sampler.join(5)
    moves = sampler.moves_after(signalled)
    last = max(moves, default=0)
    print(f"{mode} {sig.name} soft={soft} pool={pool}: {len(moves)} moves after the signal, last at {last:.2f}s")
    if soft:
        assert "stopped reading: the worker is shutting down" in worker.output()
    assert "redis-stream: stopped" in worker.output()

    restarted = bridge(spawn, server, mode).start()
    wait_for(ledger.all_dispatched, 60, "every entry dispatched after the restart")
    restarted.stop()
    report = ledger.report()
    print(f"{mode} {sig.name} soft={soft} after the restart: {report}")
    assert not report.missing, report
    assert report.extra_copies == 0, report
    assert not report.inconsistent_task_ids, report
    return moves


@SOFT_SHUTDOWN
@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_soft_shutdown_stops_reading_at_once_and_a_restart_dispatches_each_entry_once(redis_server, spawn, mode):
    moves = stop_mid_stream(redis_server, spawn, mode, signal.SIGTERM, soft=True)
    assert max(moves, default=0) <= STOPPED_WITHIN, moves


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_warm_shutdown_stops_reading_at_once_and_a_restart_dispatches_each_entry_once(redis_server, spawn, mode):
    moves = stop_mid_stream(redis_server, spawn, mode, signal.SIGTERM, soft=False)
    assert max(moves, default=0) <= STOPPED_WITHIN, moves


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_cold_shutdown_stops_reading_at_once_and_a_restart_dispatches_each_entry_once(redis_server, spawn, mode):
    moves = stop_mid_stream(redis_server, spawn, mode, signal.SIGQUIT, soft=False)
    assert max(moves, default=0) <= STOPPED_WITHIN, moves


@SOFT_SHUTDOWN
def test_sigquit_with_soft_shutdown_stops_reading_at_once(redis_server, spawn):
    moves = stop_mid_stream(redis_server, spawn, "group", signal.SIGQUIT, soft=True)
    assert max(moves, default=0) <= STOPPED_WITHIN, moves


@SOFT_SHUTDOWN
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_soft_shutdown_stops_reading_at_once_whatever_the_pool(redis_server, spawn, pool):
    # The signal reaches the main process; prefork children never read (they are forked before the readers start).
    moves = stop_mid_stream(redis_server, spawn, "group", signal.SIGTERM, soft=True, pool=pool)
    assert max(moves, default=0) <= STOPPED_WITHIN, moves

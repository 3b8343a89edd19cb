"""Poison entries: an entry whose conversion kills the worker is dead-lettered after stream_max_deliveries
deliveries, its neighbours are dispatched, and outages or warm shutdowns never count.

The workers are real `celery worker` processes; the test restarts one whenever it dies, as systemd or
Kubernetes would. Dispatch is counted in the broker queue (tests/ledger.py).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from celery_redis_stream import keys
from celery_redis_stream.batch.deliveries import failures_key, inflight_key

from ..ledger import BRIDGE_ONLY_QUEUE, FAST, STREAM, Ledger
from ..proxy import Proxy
from ..support import RedisServer, Worker, wait_for, worker_env

DEAD = f"{STREAM}:dead"
POISON_CONVERTER = "tests.workerapp:poison_converter"


class Supervisor:
    """Starts workers and restarts any that died, under the same name, counting the deaths."""

    def __init__(self, make: Any, names: list[str], *, rename: bool = False) -> None:
        self.make = make
        self.rename = rename
        self.workers: dict[str, Worker] = {name: make(name).start(wait=None) for name in names}
        self.deaths: dict[str, int] = dict.fromkeys(names, 0)
        self.retired: list[Worker] = []

    def tick(self) -> None:
        for name, worker in list(self.workers.items()):
            assert worker.proc is not None
            if worker.proc.poll() is not None:
                self.deaths[name] += 1
                assert self.total_deaths < 40, "workers keep dying"
                worker.wait(5)
                self.retired.append(worker)
                # rename: the dead worker never comes back under its name (a new pod name, say)
                self.workers[name] = self.make(f"{name}-{self.deaths[name]}" if self.rename else name).start(wait=None)

    @property
    def total_deaths(self) -> int:
        return sum(self.deaths.values())

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        def check() -> Any:
            self.tick()
            return predicate()

        wait_for(check, timeout, what, interval=0.2)

    def logs(self) -> str:
        return "".join(w.output() for w in [*self.retired, *self.workers.values()])

    def kill(self) -> None:
        for worker in self.workers.values():
            worker.kill()


def sc_for(mode: str) -> Any:
    from celery_redis_stream.config import StreamConfig

    return StreamConfig(
        stream=STREAM, task="tests.record", mode=mode, group="celery", start="0",  # type: ignore[arg-type]
        tracker_key=keys.tracker(STREAM), batch_size=50, dead_letter=DEAD,
    )  # fmt: skip


def poison_worker(server: RedisServer, mode: str, name: str, broker_url: str | None = None, **conf: Any) -> Worker:
    tasks = {STREAM: {"task": "tests.record", "mode": mode, "converter": POISON_CONVERTER}}
    env = worker_env(server.url, broker_url or server.url_db(1), server.url_db(2), tasks, **{**FAST, **conf})
    return Worker(env, name, queues=BRIDGE_ONLY_QUEUE)


def dead_letters(client: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    out = []
    for entry_id, pairs in client.xrange(DEAD):
        out.append((entry_id.decode(), pairs))
    return out


def poison_reads(server: RedisServer) -> list[dict[str, Any]]:
    return [json.loads(x) for x in server.client(2).lrange("poison_reads", 0, -1)]


@pytest.mark.timeout(360)  # bounded by the waits below, which are generous for a loaded machine
@pytest.mark.parametrize(
    ("mode", "names"),
    [("group", ["w1"]), ("tracker", ["w1"]), ("group", ["w1", "w2"])],
    ids=["group", "tracker", "group-two-workers"],
)
def test_an_entry_that_kills_the_worker_is_dead_lettered_after_max_deliveries_and_its_neighbours_run(
    redis_server: RedisServer, mode: str, names: list[str]
) -> None:
    max_deliveries = 3
    client = redis_server.client()
    ledger = Ledger(STREAM, redis_server.client(1))
    # 12 good entries, the poison one, 12 good ones: one read returns them all.
    good = ledger.produce(client, 12, atomic=True)
    poison = client.xadd(STREAM, {"n": "poison", "poison": "1", "blob": b"\xc3\xa9t\xc3\xa9"}).decode()
    good += ledger.produce(client, 12, atomic=True)
    # Two workers: the other one claims what a dead one held after stream_claim_idle_ms. On a loaded machine a
    # worker can take longer than the ledger's 2 s to die of the entry it read, and a claim while it still lives
    # is a second read of the same delivery; 6 s keeps the claims to entries whose holder is gone.
    claim_idle = {"stream_claim_idle_ms": 6000} if len(names) > 1 else {}
    supervisor = Supervisor(
        lambda name: poison_worker(redis_server, mode, name, stream_max_deliveries=max_deliveries, **claim_idle),
        names,
    )
    try:
        supervisor.wait(lambda: dead_letters(client), 150, "the poison entry dead-lettered")
        supervisor.wait(lambda: set(good) <= ledger.dispatched_ids(), 60, "every good entry dispatched")
        more = ledger.produce(client, 20)  # the stream moves on
        supervisor.wait(lambda: set(more) <= ledger.dispatched_ids(), 60, "entries after it dispatched")
        deaths = supervisor.total_deaths
        time.sleep(2.0)
        supervisor.tick()
        assert supervisor.total_deaths == deaths, "a worker died again after the poison entry was dead-lettered"
    finally:
        supervisor.kill()
    logs = supervisor.logs()
    print("\n".join(line for line in logs.splitlines() if "died holding" in line or "reason=max_deliveries" in line))

    ((_, letter),) = dead_letters(client)
    assert letter[b"dlq_reason"] == b"max_deliveries"
    assert letter[b"dlq_source_id"].decode() == poison
    assert letter[b"blob"] == b"\xc3\xa9t\xc3\xa9" and letter[b"poison"] == b"1"  # original fields, byte for byte
    assert f"died {max_deliveries} times".encode() in letter[b"dlq_error"]
    # Read (and converted) exactly max_deliveries times, each time killing the worker; the next read
    # dead-lettered it without converting it again. The converter saw the failed deliveries counted.
    reads = poison_reads(redis_server)
    assert [r["delivery"] for r in reads] == list(range(1, max_deliveries + 1)), reads
    assert deaths == max_deliveries, (supervisor.deaths, logs[-3000:])
    report = ledger.report()
    print(f"poison {mode} {names}: deaths={supervisor.deaths} {report}")  # the figures in docs/failure-modes.md
    assert report.missing == [] and report.inconsistent_task_ids == [] and report.unexpected == [], report
    assert poison not in ledger.dispatched_ids()
    assert report.extra_copies <= 25, report  # at most the batches a crash interrupted
    assert "died holding" in logs and "reason=max_deliveries" in logs
    # Nothing left behind: no in-flight record, no failure count of a settled entry.
    sc = sc_for(mode)
    assert client.hlen(inflight_key(sc)) == 0
    assert client.hgetall(failures_key(sc)) == {}


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_a_long_broker_outage_dead_letters_nothing_even_with_max_deliveries_1(
    redis_server: RedisServer, mode: str
) -> None:
    broker = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    proxy = Proxy(broker.port)
    worker = poison_worker(redis_server, mode, "w1", broker_url=proxy.url(1), stream_max_deliveries=1)
    try:
        worker.start()
        client = redis_server.client()
        ledger = Ledger(STREAM, broker.client(1))
        ledger.produce(client, 100)
        wait_for(ledger.all_dispatched, 30, "the first entries dispatched")
        proxy.set_mode("refuse")
        ledger.produce(client, 200)
        # Longer than several retries of the capped backoff (0.2, 0.4, 0.8, 1.6, 3.2 s...).
        wait_for(lambda: "broker unavailable" in worker.output(), 30, "the worker to see the broker down")
        time.sleep(12)
        proxy.set_mode("pass")
        wait_for(ledger.all_dispatched, 60, "every entry dispatched after the outage")
        worker.wait_log("recovered after", 30)
        assert worker.proc is not None and worker.proc.poll() is None
        assert worker.stop() == 0  # warmly: the last batch's commit is not cut off
    finally:
        worker.kill()
        proxy.stop()
        broker.stop()
    output = worker.output()
    failed = [int(line.rsplit("after ", 1)[1].split()[0]) for line in output.splitlines() if "recovered after" in line]
    assert max(failed) >= 2, output[-2000:]  # failed attempts over 12 s, none of them counted
    assert client.xlen(DEAD) == 0
    assert "died holding" not in output
    sc = sc_for(mode)
    assert client.hgetall(failures_key(sc)) == {} and client.hlen(inflight_key(sc)) == 0


@pytest.mark.timeout(300)  # bounded by the waits below, which are generous for a loaded machine
@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_warm_shutdowns_in_the_middle_of_a_backlog_count_nothing(redis_server: RedisServer, mode: str) -> None:
    client = redis_server.client()
    ledger = Ledger(STREAM, redis_server.client(1))
    for _ in range(10):  # the fast path drains quickly: enough backlog that each SIGTERM lands in the middle
        ledger.produce(client, 5000)
    outputs = []
    conf = {"stream_max_deliveries": 1, "stream_batch_size": 10}  # many small batches: one is always in flight
    for _ in range(3):
        before = ledger.count_dispatched()
        worker = poison_worker(redis_server, mode, "w1", **conf).start()
        try:
            wait_for(lambda b=before: ledger.count_dispatched() > b + 100, 30, "dispatching to start")
            assert not ledger.all_dispatched()
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0
        finally:
            worker.kill()
            outputs.append(worker.output())
    worker = poison_worker(redis_server, mode, "w1", **conf).start()
    try:
        wait_for(ledger.all_dispatched, 120, "the whole backlog dispatched")
    finally:
        worker.kill()
        outputs.append(worker.output())
    logs = "".join(outputs)
    assert "died holding" not in logs, logs[-3000:]
    assert client.xlen(DEAD) == 0
    report = ledger.report()
    assert report.missing == [] and report.extra_copies == 0, report  # a warm shutdown re-dispatches nothing
    assert client.hgetall(failures_key(sc_for(mode))) == {}


@pytest.mark.timeout(420)  # bounded by the waits below, which are generous for a loaded machine
def test_a_poison_entry_does_not_ping_pong_through_a_fleet_whose_dead_workers_never_come_back(
    redis_server: RedisServer,
) -> None:
    """Every restart gets a new consumer name: only the workers that claim the dead ones' entries can count."""
    max_deliveries = 3
    client = redis_server.client()
    ledger = Ledger(STREAM, redis_server.client(1))
    good = ledger.produce(client, 10, atomic=True)
    poison = client.xadd(STREAM, {"n": "poison", "poison": "1"}).decode()
    good += ledger.produce(client, 10, atomic=True)
    supervisor = Supervisor(
        lambda name: poison_worker(redis_server, "group", name, stream_max_deliveries=max_deliveries),
        ["w1", "w2"],
        rename=True,
    )
    sc = sc_for("group")
    try:
        supervisor.wait(lambda: dead_letters(client), 180, "the poison entry dead-lettered")
        supervisor.wait(lambda: set(good) <= ledger.dispatched_ids(), 60, "every good entry dispatched")
        deaths = supervisor.total_deaths
        # The records of the workers that died meanwhile are counted (and forgotten: the entry is settled).
        supervisor.wait(lambda: client.hlen(inflight_key(sc)) == 0, 90, "every dead worker's record counted")
        assert supervisor.total_deaths == deaths, "a worker died after the poison entry was dead-lettered"
    finally:
        supervisor.kill()
    logs = supervisor.logs()
    print(f"ping-pong: deaths={supervisor.deaths} reads={len(poison_reads(redis_server))}")
    ((_, letter),) = dead_letters(client)
    assert letter[b"dlq_reason"] == b"max_deliveries" and letter[b"dlq_source_id"].decode() == poison
    assert max_deliveries <= deaths <= 30, supervisor.deaths  # bounded: counting lags by the grace time
    assert len(poison_reads(redis_server)) == deaths  # every death was a read of the poison entry
    assert "died holding" in logs and "consumer w" in logs
    report = ledger.report()
    assert report.missing == [] and report.inconsistent_task_ids == [] and report.unexpected == [], report
    assert poison not in ledger.dispatched_ids()
    assert client.hgetall(failures_key(sc)) == {}


@pytest.mark.timeout(300)  # bounded by the waits below, which are generous for a loaded machine
@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_a_streams_redis_restart_in_the_middle_of_a_backlog_dead_letters_nothing(
    redis_server: RedisServer, mode: str
) -> None:
    """The streams Redis goes away (and comes back with its data) while batches are in flight."""
    streams = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    try:
        tasks = {STREAM: {"task": "tests.record", "mode": mode, "converter": POISON_CONVERTER}}
        conf = {**FAST, "stream_max_deliveries": 1, "stream_batch_size": 10}
        env = worker_env(streams.url, redis_server.url_db(1), redis_server.url_db(2), tasks, **conf)
        worker = Worker(env, "w1", queues=BRIDGE_ONLY_QUEUE)
        client = streams.client()
        ledger = Ledger(STREAM, redis_server.client(1))
        for _ in range(2):
            ledger.produce(client, 4000)
        try:
            worker.start()
            for _ in range(2):
                before = ledger.count_dispatched()
                wait_for(lambda b=before: ledger.count_dispatched() > b + 200, 60, "dispatching")
                streams.stop()
                time.sleep(3)
                streams.start()
                client = streams.client()
            wait_for(ledger.all_dispatched, 120, "the whole backlog dispatched")
            time.sleep(1)
            assert worker.proc is not None and worker.proc.poll() is None
            assert worker.stop() == 0
        finally:
            worker.kill()
        output = worker.output()
        assert output.count("recovered after") >= 2, output[-3000:]
        assert "died holding" not in output
        assert client.xlen(DEAD) == 0
        report = ledger.report()
        assert report.missing == [] and report.inconsistent_task_ids == [], report
        sc = sc_for(mode)
        assert client.hgetall(failures_key(sc)) == {} and client.hlen(inflight_key(sc)) == 0
    finally:
        streams.stop()

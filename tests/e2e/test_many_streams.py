"""Many streams, many workers: one blocking read for 100 streams; 4 workers splitting 20 streams.

The workers consume an unused queue, so the task messages they dispatch stay
in the broker's ``celery`` list where the test reads them (with the ``origin``
header naming the dispatching process).
"""

from __future__ import annotations

import random
import statistics
import time
from collections import Counter

from ..cluster import wait_logged
from ..support import RedisServer, Worker, produce_many, queued_messages, worker_env


def reader_connections(server: RedisServer) -> list[dict[str, str]]:
    return [c for c in server.client().client_list() if c.get("name") == "celery-redis-stream"]


def test_one_worker_reads_100_streams_over_one_connection(redis_server: RedisServer, workers: list[Worker]) -> None:
    streams = [f"many:{i}" for i in range(100)]
    c = redis_server.client()
    expected = {(s, i) for s in streams for i in produce_many(c, s, 10)}
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2),
        dict.fromkeys(streams, "tests.record"), stream_start="0",
    )  # fmt: skip
    worker = Worker(env, queues="idle")
    workers.append(worker)
    worker.start()
    broker = redis_server.client(1)
    wait_logged(workers, lambda: broker.llen("celery") >= 1000, 60, "1000 task messages")
    for s in streams[::10]:
        expected.add((s, produce_many(c, s, 1, start=10)[0]))
    wait_logged(workers, lambda: broker.llen("celery") >= 1010, 30, "1010 task messages")

    got = [(h["redis_stream"], h["redis_stream_id"]) for h in queued_messages(broker)]
    assert len(got) == len(set(got)) == 1010
    assert set(got) == expected
    # One thread, one connection, one blocking XREADGROUP naming all 100 streams.
    conns = reader_connections(redis_server)
    assert len(conns) == 1, conns
    assert "many:99" in worker.output() and worker.proc is not None and worker.proc.poll() is None


def test_four_workers_share_20_streams_without_duplicates(redis_server: RedisServer, workers: list[Worker]) -> None:
    streams = [f"shared:{i}" for i in range(20)]
    c = redis_server.client()
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2),
        dict.fromkeys(streams, "tests.record"), stream_batch_size=5, stream_block_ms=200,
    )  # fmt: skip
    for n in range(4):
        workers.append(Worker(env, name=f"w{n}", queues="idle"))
    for w in workers:
        w.start(wait=None)

    def consumers() -> int:
        try:
            return min(len(c.xinfo_consumers(s, "celery")) for s in streams)
        except Exception:
            return 0

    wait_logged(workers, lambda: consumers() == 4, 90, "4 consumers in every group")
    expected = set()
    for _ in range(20):
        pipe = c.pipeline(transaction=False)
        for s in streams:
            pipe.xadd(s, {"n": "1"})
        expected |= set(zip(streams, (i.decode() for i in pipe.execute()), strict=True))
        time.sleep(0.02)
    broker = redis_server.client(1)
    wait_logged(workers, lambda: broker.llen("celery") >= 400, 60, "400 task messages")
    time.sleep(0.5)  # a duplicate would show up now

    messages = queued_messages(broker)
    got = [(h["redis_stream"], h["redis_stream_id"]) for h in messages]
    assert len(got) == len(set(got)) == 400, "each entry dispatched once"
    assert set(got) == expected
    assert len({h["id"] for h in messages}) == 400
    by_pid = Counter(h["origin"].split("@")[0].removeprefix("gen") for h in messages)
    pids = {str(w.proc.pid) for w in workers if w.proc is not None}
    assert set(by_pid) <= pids
    assert set(by_pid) == pids, f"every worker dispatched some: {dict(by_pid)}"
    for s in streams:
        assert c.xpending(s, "celery")["pending"] == 0
    print(f"4 workers x 20 streams: dispatched per worker {sorted(by_pid.values())}")


SCALE_STREAMS = 2000


def info_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " INFO/" in line and "redis-stream:" in line]


def test_2000_pattern_streams_no_upkeep_stall_few_log_lines_prompt_stop(
    redis_server: RedisServer, workers: list[Worker]
) -> None:
    """The shape of 10,000 tenant streams in one worker, small enough for CI.

    Upkeep rounds every 2 s (stream_claim_idle_ms 4 s): an entry written at
    any moment, during a round or not, is dispatched about as fast as on a
    quiet worker; claims and consumer removal still happen where they are
    due; discovery and the warm stop log a bounded number of INFO lines; the
    warm stop (removing the worker's consumer from 2,000 groups) is prompt.
    """
    c = redis_server.client()
    streams = [f"tenant:{i}" for i in range(SCALE_STREAMS)]
    pipe = c.pipeline(transaction=False)
    for s in streams:
        pipe.xadd(s, {"n": "0"})
    pipe.execute()
    # tenant:7: its one entry pending on a dead consumer, to be claimed; tenant:9: an idle consumer, to be removed.
    c.xgroup_create("tenant:7", "celery", id="0")
    c.xreadgroup("celery", "ghost-pending", {"tenant:7": ">"}, count=1)
    c.xgroup_create("tenant:9", "celery", id="0")
    c.execute_command("XGROUP", "CREATECONSUMER", "tenant:9", "celery", "ghost-empty")
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2), {"tenant:*": "tests.record"},
        stream_start="0", stream_claim_idle_ms=4000, stream_reap_idle_ms=3000,
    )  # fmt: skip
    worker = Worker(env, queues="idle")
    workers.append(worker)
    worker.start()
    broker = redis_server.client(1)
    # Every entry, the one on the dead consumer too (claimed after 4 s idle).
    wait_logged(workers, lambda: broker.llen("celery") >= SCALE_STREAMS, 60, f"{SCALE_STREAMS} task messages")
    wait_logged(workers, lambda: "ghost-empty" not in {x["name"] for x in c.xinfo_consumers("tenant:9", "celery")},
                30, "the idle consumer removed")  # fmt: skip
    broker.delete("celery")

    # One entry at a time to random streams over 6 s: three upkeep rounds.
    rng = random.Random(5)
    samples = []
    for i in range(60):
        time.sleep(rng.uniform(0.0, 0.2))
        started = time.perf_counter()
        c.xadd(rng.choice(streams), {"n": str(i)})
        assert broker.brpop(["celery"], timeout=10) is not None, "an entry was not dispatched within 10 s"
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    median, worst = statistics.median(samples), samples[-1]
    print(f"{SCALE_STREAMS} streams: latency p50 {median:.1f} ms, max {worst:.1f} ms")
    # A serial round (four round trips per stream) held every read up for about a second here; a loaded
    # machine adds a few hundred milliseconds at most.
    assert worst < max(600.0, 10 * median), samples

    started = time.monotonic()
    assert worker.stop() == 0
    stop_s = time.monotonic() - started
    lines = info_lines(worker.output())
    assert len(lines) <= 100, f"{len(lines)} INFO lines"
    assert f"found {SCALE_STREAMS} streams matching tenant:*" in worker.output()
    assert "removed consumer ghost-empty from group=celery stream=tenant:9" in worker.output()
    assert "claimed 1 idle entry of stream=tenant:7 group=celery" in worker.output()
    assert "more streams of group=celery: stopped with nothing pending" in worker.output()
    # The benchmark's figure is 5 s at 10,000 streams; 2,000 take under 2 s on a quiet machine.
    assert stop_s < 10.0, f"warm stop took {stop_s:.1f} s"
    pipe = c.pipeline(transaction=False)
    for s in streams:
        pipe.xinfo_groups(s)
    assert all(groups[0]["consumers"] == 0 for groups in pipe.execute()), "the worker left every group"

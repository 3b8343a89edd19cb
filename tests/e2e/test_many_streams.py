"""Many streams, many workers: one blocking read for 100 streams; 4 workers splitting 20 streams.

The workers consume an unused queue, so the task messages they dispatch stay
in the broker's ``celery`` list where the test reads them (with the ``origin``
header naming the dispatching process).
"""

from __future__ import annotations

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

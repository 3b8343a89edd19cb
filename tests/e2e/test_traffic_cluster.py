"""Traffic control on Redis Cluster: the bucket and the business-key records live in each stream's slot."""

from __future__ import annotations

import time
from collections import Counter

from celery_redis_stream import keys

from ..cluster import Cluster, wait_logged
from ..support import RedisServer, Worker, queued_messages, worker_env
from .test_traffic import Arrivals


def test_rate_limit_and_dedupe_hold_in_group_and_tracker_mode_on_a_cluster(
    cluster: Cluster, redis_server: RedisServer, workers: list[Worker]
) -> None:
    names: dict[int, str] = {}
    for i in range(1000):  # two streams served by two different masters
        names.setdefault(cluster.owner_of(f"orders-{i}").port, f"orders-{i}")
        if len(names) == 2:
            break
    grouped, tracked = sorted(names.values())
    c = cluster.client()
    produced: dict[str, list[str]] = {}
    for stream in (grouped, tracked):
        # 80 entries, 40 orders: each order twice, the copies 40 entries apart.
        produced[stream] = [c.xadd(stream, {"order_id": f"o{i % 40}"}).decode() for i in range(80)]
    options = {"task": "tests.record", "rate_limit": "40/s", "dedupe": {"key": "{order_id}", "ttl_ms": 60_000}}
    tasks = {grouped: {**options, "queue": "qg"}, tracked: {**options, "queue": "qt", "mode": "tracker"}}
    env = worker_env(cluster.url, redis_server.url_db(1), redis_server.url_db(2), tasks, stream_start="0",
                     stream_block_ms=200)  # fmt: skip
    arrivals = {grouped: Arrivals(redis_server, "qg"), tracked: Arrivals(redis_server, "qt")}
    for sampler in arrivals.values():
        sampler.start()
    a, b = Worker(env, "a", queues="other"), Worker(env, "b", queues="other")
    workers += [a, b]
    a.start(), b.start(wait="ready.")
    broker = redis_server.client(1)
    wait_logged(workers, lambda: broker.llen("qg") >= 40 and broker.llen("qt") >= 40, 60, "40 tasks per stream")
    # Every entry passed (the copies were read too, under the limit), then nothing more comes.
    wait_logged(workers, lambda: c.get(keys.tracker(tracked)) == produced[tracked][-1].encode(), 30, "tracker at end")
    time.sleep(1.0)
    for sampler in arrivals.values():
        sampler.finish()
    for stream, queue in ((grouped, "qg"), (tracked, "qt")):
        messages = queued_messages(broker, queue)
        assert len(messages) == 40 and max(Counter(m["redis_stream_id"] for m in messages).values()) == 1
        assert {m["redis_stream_id"] for m in messages} == set(produced[stream][:40])  # the first copy of each
        # 80 entries read at 40 a second: the 40 first copies are spread over at least one second.
        assert arrivals[stream].span(1, 40) >= 0.8, arrivals[stream].span(1, 40)
        assert arrivals[stream].most_in(1.0) <= 45
        slot = c.cluster_keyslot(stream)
        assert c.cluster_keyslot(keys.rate_bucket(stream)) == slot
        position = "group:celery" if stream == grouped else f"tracker:{keys.tracker(stream)}"
        record = keys.dedupe_record(stream, position, "o1")
        assert c.exists(record) and c.cluster_keyslot(record) == slot
    assert c.xpending(grouped, "celery")["pending"] == 0

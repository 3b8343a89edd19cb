"""Consumer hygiene and retention on a real 3-master Redis Cluster: every script stays in its stream's slot."""

from __future__ import annotations

from celery import Celery

from celery_redis_stream.client.capabilities import XTRIM_ACKED, probe
from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import load_config
from celery_redis_stream.upkeep.consumers import reap_consumers, remove_own_consumer
from celery_redis_stream.upkeep.retention import retention_status, trim_passed

from ..cluster import Cluster


def test_reaping_and_trimming_run_on_every_master_through_the_bridge_client(cluster: Cluster) -> None:
    names: dict[int, str] = {}
    for i in range(1000):
        names.setdefault(cluster.owner_of(f"s{i}").port, f"s{i}")
    streams = sorted(names.values())
    assert len(streams) == 3
    app = Celery("hyg", broker="memory://", set_as_current=False)
    app.conf.stream_url = cluster.url
    app.conf.stream_tasks = {
        s: {"task": "t", "registered": False, "mode": "tracker" if s == streams[0] else "group", "retention_ms": 1}
        for s in streams
    }
    config = load_config(app)
    client = connect(config)
    admin = cluster.client()
    assert XTRIM_ACKED not in probe(client)
    for sc in config.streams:
        ids = [admin.xadd(sc.stream, {"n": str(n)}, id=f"{1000 + n}-1").decode() for n in range(250)]
        if sc.mode == "tracker":
            admin.set(sc.tracker_key, ids[-1])
        else:
            admin.xgroup_create(sc.stream, sc.group, id="0")
            for consumer in ("ghost", "me"):
                reply = admin.xreadgroup(sc.group, consumer, {sc.stream: ">"}, count=125)
                admin.xack(sc.stream, sc.group, *[i for i, _ in reply[0][1]])
            assert [r.name for r in reap_consumers(client, sc, "me", min_idle_ms=0)] == ["ghost"]
            assert remove_own_consumer(client, sc, "me") is True
            assert admin.xinfo_consumers(sc.stream, sc.group) == []
        done = trim_passed(client, sc, retention_ms=1, interval_ms=0)
        assert (done.status, done.trimmed, done.minid) == ("ran", 200, ids[-1])  # two nodes of 100 before the bound
        assert admin.xlen(sc.stream) == 50
        assert retention_status(client, sc)["retention_trimmed"] == 200

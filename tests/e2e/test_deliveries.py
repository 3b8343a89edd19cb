"""The failed-delivery bookkeeping against a real redis-server: a crash is counted once, whoever finds it."""

from __future__ import annotations

import time
from typing import Any

from celery_redis_stream.batch.deliveries import SEEN, Deliveries, failures_key, inflight_key
from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import BridgeConfig, StreamConfig
from celery_redis_stream.entry import RawEntry

from ..support import RedisServer


def make_sc(mode: str = "group", max_deliveries: int | None = 3) -> StreamConfig:
    return StreamConfig(
        stream="orders", task="t", mode=mode, group="celery", start="0",  # type: ignore[arg-type]
        tracker_key="stream_tracker:{orders}", batch_size=10, dead_letter="orders:dead",
        max_deliveries=max_deliveries,
    )  # fmt: skip


def client_for(server: RedisServer, sc: StreamConfig) -> Any:
    return connect(
        BridgeConfig(url=server.url, consumer=None, block_ms=100, claim_idle_ms=100, max_entry_bytes=10, streams=(sc,))
    )


def pending(client: Any, consumer: str, *ids: str) -> None:
    """Entries ``ids`` of the stream, delivered to ``consumer`` and not acknowledged."""
    for entry_id in ids:
        client.xadd("orders", {"n": entry_id}, id=entry_id)
    if not client.exists("stream_created"):
        client.xgroup_create("orders", "celery", id="0")
        client.set("stream_created", 1)
    client.execute_command("XREADGROUP", "GROUP", "celery", consumer, "COUNT", len(ids), "STREAMS", "orders", ">")


def entries(*ids: str) -> list[RawEntry]:
    return [RawEntry("orders", i, (b"n", i.encode())) for i in ids]


def test_keys_live_in_the_streams_cluster_slot() -> None:
    assert inflight_key(make_sc()) == "stream_deliveries:{orders}:celery:inflight"
    assert failures_key(make_sc()) == "stream_deliveries:{orders}:celery:failures"
    assert inflight_key(make_sc("tracker")) == "stream_tracker:{orders}:inflight"
    assert failures_key(make_sc("tracker")) == "stream_tracker:{orders}:failures"


def test_a_dead_runs_record_is_counted_once_and_its_entries_go_alone(redis_server: RedisServer) -> None:
    sc = make_sc()
    client = client_for(redis_server, sc)
    pending(client, "w1@h", "1-0", "2-0", "3-0")
    dead = Deliveries("w1@h")
    dead.begin(client, sc, ["1-0", "2-0", "3-0"])  # ... and the process dies here
    again, other = Deliveries("w1@h"), Deliveries("w1@h")  # two starts racing (one wins)
    again.recover(client, sc)
    other.recover(client, sc)
    assert client.hgetall(failures_key(sc)) == {b"1-0": b"1", b"2-0": b"1", b"3-0": b"1"}
    assert client.hlen(inflight_key(sc)) == 0
    assert again.delivery_count(sc, "2-0") == 2 and other.delivery_count(sc, "2-0") == 1
    batch = entries("0-1", "1-0", "2-0", "3-0", "4-0")
    assert [[e.id for e in part] for part in again.split(sc, batch)] == [["0-1"], ["1-0"], ["2-0"], ["3-0"], ["4-0"]]
    # Committing a suspect deletes its count with the record, in the commit's pipeline.
    again.begin(client, sc, ["1-0"])
    assert again.done(sc, ["1-0"]) == {
        inflight_key(sc): ["w1@h", SEEN + "w1@h"],
        failures_key(sc): ["1-0"],
    }


def test_an_outage_handled_by_the_live_process_never_counts(redis_server: RedisServer) -> None:
    sc = make_sc()
    client = client_for(redis_server, sc)
    live = Deliveries("w1@h")
    live.begin(client, sc, ["1-0"])
    live.recover(client, sc)  # the same run after a Redis error: its own token
    assert client.hgetall(failures_key(sc)) == {}
    live.abandon(client, [sc])
    assert client.hlen(inflight_key(sc)) == 0


def test_max_deliveries_gives_up_only_at_the_limit_and_none_writes_nothing(redis_server: RedisServer) -> None:
    sc = make_sc(max_deliveries=2)
    client = client_for(redis_server, sc)
    client.hset(failures_key(sc), mapping={"1-0": 2, "2-0": 1})
    deliveries = Deliveries("w1@h")
    deliveries.load(client, sc, ["1-0", "2-0", "3-0"])
    (letter,) = deliveries.given_up(sc, entries("1-0", "2-0", "3-0"))
    assert (letter.raw.id, letter.reason) == ("1-0", "max_deliveries")
    assert "died 2 times" in letter.error and "stream_max_deliveries=2" in letter.error
    never = make_sc(max_deliveries=None)
    assert deliveries.given_up(never, entries("1-0")) == []
    deliveries.begin(client, never, ["5-0"])
    assert client.hlen(inflight_key(never)) == 0


def test_another_consumers_record_counts_after_it_stayed_unchanged_for_the_grace_time(
    redis_server: RedisServer,
) -> None:
    sc = make_sc()
    client = client_for(redis_server, sc)
    grace = 2.0  # long enough that two statements in a row always fall inside it
    pending(client, "w1@h", "1-0", "2-0")
    # w1 dies holding 1-0, 2-0 and 0-5; never comes back. 0-5 was claimed and acknowledged by another meanwhile.
    Deliveries("w1@h").begin(client, sc, ["0-5", "1-0", "2-0"])
    a, b = Deliveries("w2@h"), Deliveries("w3@h")
    a.sweep(client, sc, grace=grace)  # first sight: marked in Redis, suspects, not counted
    assert a.suspects(sc) == {"0-5", "1-0", "2-0"} and client.hgetall(failures_key(sc)) == {}
    b.sweep(client, sc, grace=grace)  # too early for anyone
    assert client.hgetall(failures_key(sc)) == {}
    time.sleep(grace + 0.2)
    b2 = Deliveries("w4@h")  # a worker that never saw it before: the mark is in Redis
    b2.sweep(client, sc, grace=grace)
    a.sweep(client, sc, grace=grace)
    assert client.hgetall(failures_key(sc)) == {b"1-0": b"1", b"2-0": b"1"}  # counted once; 0-5 settled
    assert client.hlen(inflight_key(sc)) == 0
    # A record that changes (a live consumer's next batch) starts its grace time again.
    live = Deliveries("w5@h")
    live.begin(client, sc, ["7-0"])
    a.sweep(client, sc, grace=grace)
    time.sleep(grace + 0.2)
    live.begin(client, sc, ["8-0"])
    a.sweep(client, sc, grace=grace)
    assert b"7-0" not in client.hgetall(failures_key(sc)) and b"8-0" not in client.hgetall(failures_key(sc))


def test_the_scripts_run_on_a_redis_cluster() -> None:
    from ..cluster import Cluster

    cluster = Cluster(masters=3).start()
    try:
        for mode in ("group", "tracker"):
            sc = make_sc(mode)
            config = BridgeConfig(
                url=cluster.url, consumer=None, block_ms=100, claim_idle_ms=100, max_entry_bytes=10, streams=(sc,)
            )
            client = connect(config)
            if mode == "group":
                pending(client, "w1@h", "1-0", "2-0")
            Deliveries("w1@h").begin(client, sc, ["1-0", "2-0"])
            Deliveries("w9@h").begin(client, sc, ["2-0"])  # another consumer that died too
            survivor = Deliveries("w1@h")
            survivor.recover(client, sc)
            survivor.sweep(client, sc, grace=0.0)  # marks w9's record
            survivor.sweep(client, sc, grace=0.0)  # and counts it
            assert client.hgetall(failures_key(sc)) == {b"1-0": b"1", b"2-0": b"2"}, mode
            assert client.hlen(inflight_key(sc)) == 0
    finally:
        cluster.stop()

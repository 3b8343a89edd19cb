"""produce(..., idempotency_key=...): one entry per key within the TTL, atomically, on every server kind.

Real servers only: the server CRS_SERVER selects (Redis 7.0 in ``make test``; Redis 8.6, Valkey 8 and
Valkey 9 in CI's matrix cells, .ci/matrix.sh) and a 3-master Redis Cluster of it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from celery_redis_stream import deadletters, produce
from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import load_config

from ..cluster import Cluster
from ..support import RedisServer, make_app, wait_for

THREADS = 8
KEYS = 100


@pytest.fixture(scope="module", params=["server", "cluster"])
def client(request: pytest.FixtureRequest) -> Iterator[redis.Redis | RedisCluster]:
    if request.param == "cluster":
        cluster = Cluster(masters=3).start()
        try:
            yield cluster.client()
        finally:
            cluster.stop()
        return
    server = RedisServer().start()
    try:
        yield server.client()
    finally:
        server.stop()


def _race(client: redis.Redis | RedisCluster, stream: str, keys: list[str]) -> list[dict[str, str]]:
    """Eight threads produce every key once each, all at the same moment; what each got back, per thread."""
    barrier = threading.Barrier(THREADS)
    results: list[dict[str, str]] = [{} for _ in range(THREADS)]
    errors: list[BaseException] = []

    def producer(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            for key in keys:
                results[n][key] = produce(client, stream, {"key": key, "by": str(n)}, idempotency_key=key)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_eight_racing_producers_add_one_entry_per_key_and_all_get_its_id(
    client: redis.Redis | RedisCluster,
) -> None:
    stream = f"idem-{uuid.uuid4().hex}"
    keys = [f"order-{n}" for n in range(KEYS)]
    results = _race(client, stream, keys)
    entries = client.xrange(stream)
    assert len(entries) == KEYS
    ids_by_key = {fields[b"key"].decode(): entry_id.decode() for entry_id, fields in entries}
    assert sorted(ids_by_key) == sorted(keys)  # each key once
    for got in results:
        assert got == ids_by_key  # every producer got the one entry's id for every key


def test_a_key_produced_again_after_its_ttl_adds_a_new_entry(client: redis.Redis | RedisCluster) -> None:
    stream = f"idem-{uuid.uuid4().hex}"
    first = produce(client, stream, {"n": "1"}, idempotency_key="k", idempotency_ttl_s=2)
    assert produce(client, stream, {"n": "2"}, idempotency_key="k", idempotency_ttl_s=2) == first
    assert client.xlen(stream) == 1
    time.sleep(2.1)
    wait_for(lambda: produce(client, stream, {"n": "3"}, idempotency_key="k") != first, 5, "a new entry after the TTL")
    assert [fields[b"n"] for _, fields in client.xrange(stream)] == [b"1", b"3"]


def test_the_same_key_on_another_stream_and_produce_without_a_key_always_add(
    client: redis.Redis | RedisCluster,
) -> None:
    a, b = f"idem-{uuid.uuid4().hex}", f"idem-{uuid.uuid4().hex}"
    produce(client, a, {"n": "1"}, idempotency_key="k")
    produce(client, b, {"n": "1"}, idempotency_key="k")  # ids of two streams may be equal: count entries
    produce(client, a, {"n": "2"})
    produce(client, a, {"n": "2"})
    assert client.xlen(a) == 3 and client.xlen(b) == 1


def test_idempotent_produce_trims_with_maxlen(client: redis.Redis | RedisCluster) -> None:
    stream = f"idem-{uuid.uuid4().hex}"
    for n in range(20):
        produce(client, stream, {"n": str(n)}, maxlen=5, approximate=False, idempotency_key=f"k{n}")
    assert client.xlen(stream) == 5


def test_a_requeue_run_twice_on_a_cluster_adds_each_letter_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """dead-letters --requeue's idempotent XADDs in one MULTI, on Redis Cluster: the letter's keys share its slot."""
    cluster = Cluster(masters=3).start()
    try:
        app = make_app("requeue", stream_url=cluster.url, stream_tasks={"orders": "shop.handle"})
        config = load_config(app)
        sc = config.streams[0]
        client = connect(config)
        for n in range(3):
            pairs = [b"n", str(n).encode(), b"dlq_source_stream", b"orders", b"dlq_source_id", f"{n}-1".encode(),
                     b"dlq_reason", b"decode", b"dlq_error", b"why"]  # fmt: skip
            client.execute_command("XADD", sc.dead_letter, "*", *pairs)

        def cut(*args: object) -> None:
            raise ConnectionError("interrupted before the letters were deleted")

        with monkeypatch.context() as patch:
            patch.setattr(client, "xdel", cut)
            with pytest.raises(ConnectionError):
                deadletters.requeue(client, sc, 10)
        assert deadletters.requeue(client, sc, 10) == (3, 0)
        entries = client.execute_command("XRANGE", "orders", "-", "+")
        assert [list(fields) for _, fields in entries] == [[b"n", b"0"], [b"n", b"1"], [b"n", b"2"]]
        assert deadletters.read(client, sc) == []
    finally:
        cluster.stop()


@pytest.mark.parametrize("name", ["orders}", "{t1}:orders", "a{b", "{}x}"])
def test_a_stream_name_with_braces_gets_one_entry_per_key_or_a_clear_refusal_on_a_cluster(
    client: redis.Redis | RedisCluster, name: str
) -> None:
    stream = f"{name}-{uuid.uuid4().hex[:8]}"
    untaggable = isinstance(client, RedisCluster) and "}" in stream and not stream.startswith("{t1}")
    if untaggable:  # no hash tag can name the slot of a stream whose name has a '}' but no tag of its own
        with pytest.raises(ValueError, match="give the stream a hash tag"):
            produce(client, stream, {"n": "1"}, idempotency_key="k")
        assert client.exists(stream) == 0
        return
    first = produce(client, stream, {"n": "1"}, idempotency_key="k")
    assert produce(client, stream, {"n": "2"}, idempotency_key="k") == first
    assert client.xlen(stream) == 1

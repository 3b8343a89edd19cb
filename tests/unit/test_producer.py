"""produce(): XADD with trimming and the caller's trace context, against one redis-server."""

from __future__ import annotations

import uuid

import pytest
import redis

from celery_redis_stream import EmptyEntryError, produce

from ..support import RedisServer


@pytest.fixture
def client(unit_redis: RedisServer) -> redis.Redis:
    return unit_redis.client(3)


def test_produce_returns_the_new_id_as_text_and_writes_every_field(client: redis.Redis) -> None:
    stream = f"p-{uuid.uuid4().hex}"
    entry_id = produce(client, stream, {"order_id": "42", b"raw": b"\xff", "n": 7, "x": 1.5})
    assert isinstance(entry_id, str) and "-" in entry_id
    ((got_id, fields),) = client.xrange(stream)
    assert got_id.decode() == entry_id
    assert fields == {b"order_id": b"42", b"raw": b"\xff", b"n": b"7", b"x": b"1.5"}


def test_produce_with_maxlen_trims_the_oldest_entries(client: redis.Redis) -> None:
    stream = f"p-{uuid.uuid4().hex}"
    ids = [produce(client, stream, {"n": str(i)}, maxlen=3, approximate=False) for i in range(6)]
    assert [i.decode() for i, _ in client.xrange(stream)] == ids[-3:]


def test_an_empty_entry_is_refused_before_redis_is_asked(client: redis.Redis) -> None:
    stream = f"p-{uuid.uuid4().hex}"
    with pytest.raises(EmptyEntryError, match="at least one field"):
        produce(client, stream, {})
    assert not client.exists(stream)


def test_produce_does_not_change_the_callers_mapping(client: redis.Redis) -> None:
    fields = {"a": "1"}
    produce(client, f"p-{uuid.uuid4().hex}", fields)
    assert fields == {"a": "1"}


def test_an_idempotent_entry_over_the_scripts_field_limit_is_refused_before_redis_is_asked(
    client: redis.Redis,
) -> None:
    from celery_redis_stream.producer import MAX_IDEMPOTENT_FIELDS

    stream = f"big-{uuid.uuid4().hex[:8]}"
    most = {f"f{n}": "v" for n in range(MAX_IDEMPOTENT_FIELDS)}
    first = produce(client, stream, most, idempotency_key="k", maxlen=10)  # the limit itself works, MAXLEN included
    assert produce(client, stream, most, idempotency_key="k", maxlen=10) == first
    with pytest.raises(ValueError, match=f"at most {MAX_IDEMPOTENT_FIELDS} fields"):
        produce(client, stream, {**most, "one": "more"}, idempotency_key="k2")
    assert client.xlen(stream) == 1
    assert produce(client, stream, {**most, "one": "more"})  # without a key: no limit but Redis's own


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("-inf"), float("nan")])
def test_an_idempotency_ttl_that_is_not_a_positive_finite_number_of_seconds_is_refused(
    client: redis.Redis, ttl: float
) -> None:
    stream = f"ttl-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ValueError, match="positive, finite number of seconds"):
        produce(client, stream, {"n": "1"}, idempotency_key="k", idempotency_ttl_s=ttl)
    assert not client.exists(stream)

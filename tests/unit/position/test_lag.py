"""Lag of a position: exact where Redis says so cheaply, a bounded count, or a lower bound; and ages."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from celery_redis_stream.position.lag import (
    Lag,
    count_after,
    entry_age,
    id_key,
    lag_of,
    oldest_waiting,
    pending_min,
    server_ms,
)

from ...support import RedisServer, produce_many


@pytest.fixture
def client(unit_redis: RedisServer) -> Iterator[redis.Redis]:
    client = unit_redis.client(7, decode_responses=True)
    yield client
    client.flushdb()


def stream_with(client: redis.Redis, n: int) -> tuple[str, list[str]]:
    stream = f"lag-{uuid.uuid4().hex[:8]}"
    return stream, produce_many(client, stream, n)


def info_of(client: redis.Redis, stream: str) -> dict[str, object]:
    """XINFO STREAM in the shape lag_of reads (status._stream_info makes the same)."""
    raw = client.xinfo_stream(stream)
    return {
        "length": raw["length"],
        "first_id": raw["first-entry"][0],
        "last_entry_id": raw["last-entry"][0],
        "entries_added": raw.get("entries-added"),
        "max_deleted_id": raw.get("max-deleted-entry-id"),
    }


def test_id_key_orders_ids_and_refuses_anything_else() -> None:
    assert id_key("5") == (5, 0) and id_key("5-3") == (5, 3) and id_key("10-0") > id_key("9-99")
    with pytest.raises(ValueError, match="not a stream entry id"):
        id_key("$")


def test_the_trivial_positions_come_from_xinfo_alone(client: redis.Redis) -> None:
    stream, ids = stream_with(client, 5)
    info = info_of(client, stream)
    assert lag_of(client, stream, ids[-1], info) == Lag(0, True)
    assert lag_of(client, stream, "0-0", info) == Lag(5, True)
    assert lag_of(client, stream, ids[0], info) == Lag(4, True)


def test_a_position_inside_the_stream_is_counted_or_bounded(client: redis.Redis) -> None:
    stream, ids = stream_with(client, 30)
    info = info_of(client, stream)
    assert lag_of(client, stream, ids[9], info) == Lag(20, True)
    assert count_after(client, stream, ids[9], info) == (20, True)
    assert count_after(client, stream, ids[9], info, limit=5) == (5, False)
    low = lag_of(client, stream, ids[9], info, limit=5)
    assert low.count <= 20 and not low.exact
    assert low.fields() == {"lag": None, "lag_exact": False, "lag_at_least": low.count}


def test_a_groups_own_lag_is_used_when_redis_gives_it(client: redis.Redis) -> None:
    stream, ids = stream_with(client, 10)
    client.xgroup_create(stream, "g", ids[3])
    (raw,) = client.xinfo_groups(stream)
    group = {"lag": raw["lag"], "entries_read": raw["entries-read"]}
    assert lag_of(client, stream, ids[3], info_of(client, stream), group=group) == Lag(6, True)
    group = {"lag": None, "entries_read": None}  # no help from Redis: counted
    assert lag_of(client, stream, ids[3], info_of(client, stream), group=group) == Lag(6, True)


def test_the_oldest_waiting_entry_is_the_oldest_pending_or_the_next_one(client: redis.Redis) -> None:
    stream, ids = stream_with(client, 6)
    client.xgroup_create(stream, "g", "0")
    assert pending_min(client, stream, "g") is None
    client.xreadgroup("g", "c", {stream: ">"}, count=2)
    assert pending_min(client, stream, "g") == ids[0]
    assert oldest_waiting(client, stream, ids[1]) == ids[2]
    assert oldest_waiting(client, stream, ids[1], pending_min(client, stream, "g")) == ids[0]
    assert oldest_waiting(client, stream, ids[-1]) is None


def test_ages_use_the_servers_clock_and_never_go_negative(client: redis.Redis) -> None:
    now = server_ms(client)
    assert entry_age(None, now) == 0.0
    assert entry_age(f"{now - 1500}-0", now) == 1.5
    assert entry_age(f"{now + 10_000}-0", now) == 0.0

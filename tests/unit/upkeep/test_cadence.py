"""upkeep/cadence.py: reaping and trimming a few times a minute at most, counted, a refusal never fatal; a round
spread over its interval; the batched removal at a warm stop."""

from __future__ import annotations

import time
from unittest.mock import Mock

import pytest
from redis.exceptions import ResponseError

from celery_redis_stream.client.connection import PIPELINE_CHUNK, Client
from celery_redis_stream.stats import StreamStats
from celery_redis_stream.upkeep.cadence import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    ROUND_SHARE,
    TURN_MAX,
    TURN_WAIT,
    Spread,
    Upkeep,
    cadence,
)  # fmt: skip

from ..streams import stream_config

SC = stream_config(retention_ms=1000)


def _stats() -> dict[str, StreamStats]:
    return {"orders": StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)}


def test_cadence_is_half_the_threshold_within_its_bounds() -> None:
    assert cadence(20_000, 50) == 10.0
    assert cadence(100, 50) == MIN_INTERVAL and cadence(100, 8_000) == 8.0  # at least one read's time
    assert cadence(3_600_000, 50) == MAX_INTERVAL


def test_reap_removes_idle_empty_consumers_counts_them_and_waits_its_interval(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    client.xadd("orders", {"n": 1}, id="1-0")
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "crashed", "STREAMS", "orders", ">")
    client.execute_command("XGROUP", "CREATECONSUMER", "orders", "celery", "gone")
    time.sleep(0.005)
    upkeep, stats = Upkeep(block_ms=50, reap_idle_ms=1), _stats()
    with caplog.at_level("INFO"):
        upkeep.reap(client, [SC], "c1", stats)
    assert stats["orders"].consumers_removed == 1
    assert any("removed consumer gone from group=celery stream=orders" in r.getMessage() for r in caplog.records)
    client.execute_command("XGROUP", "CREATECONSUMER", "orders", "celery", "gone-too")
    upkeep.reap(client, [SC], "c1", stats)  # within reap_every (5 s): no second round
    names = {c["name"] for c in client.xinfo_consumers("orders", "celery")}
    assert names == {b"crashed", b"gone-too"} and stats["orders"].consumers_removed == 1


def test_trim_under_retention_is_counted_and_a_stream_without_retention_is_left_alone(client: Client) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(1, 401):
        pipe.xadd("orders", {"n": i}, id=f"{i}-0")
    pipe.execute()
    client.xgroup_create("orders", "celery", id="$")
    upkeep, stats = Upkeep(block_ms=50, reap_idle_ms=60_000), _stats()
    upkeep.trim(client, [stream_config()], stats)  # no retention_ms
    assert client.xlen("orders") == 400
    upkeep.trim(client, [SC], stats)  # one round calls the script again while it trims
    assert stats["orders"].retention_trimmed == 400 - client.xlen("orders") > 0
    assert client.xlen("orders") <= 100


def test_a_redis_refusal_is_logged_once_without_the_password_and_reading_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusal = ResponseError("NOPERM this user has no permissions to run the 'evalsha' command (redis://:s3cret@h)")
    # Scripts of many streams go in a pipeline: the refusal comes back in place of the reply.
    client = Mock(register_script=Mock(return_value=Mock(sha="0" * 40)))
    client.pipeline.return_value.execute.return_value = [refusal]
    upkeep, stats = Upkeep(block_ms=50, reap_idle_ms=60_000), _stats()
    with caplog.at_level("DEBUG"):
        for _ in range(2):
            upkeep.next_reap.clear()  # the next round is due now
            upkeep.next_trim.clear()
            upkeep.reap(client, [SC], "c1", stats)
            upkeep.trim(client, [SC], stats)
    refused = [r for r in caplog.records if "reading goes on" in r.getMessage()]
    assert [r.levelname for r in refused] == ["WARNING", "WARNING", "DEBUG", "DEBUG"]
    assert "cannot remove idle consumers on stream=orders" in refused[0].getMessage()
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
    assert (stats["orders"].consumers_removed, stats["orders"].retention_trimmed) == (0, 0)


def test_a_round_of_few_streams_is_done_in_one_turn() -> None:
    spread = Spread(30.0)
    streams = [f"s{i}" for i in range(100)]
    assert spread.take(streams, 0.0) == streams
    assert spread.take(streams, 1.0) == []  # between rounds
    assert spread.until_next(1.0) == 29.0
    assert spread.take(streams, 30.0) == streams


def test_a_round_of_many_streams_is_spread_over_its_interval() -> None:
    spread = Spread(30.0)
    streams = [f"s{i}" for i in range(10_000)]
    span = 30.0 * ROUND_SHARE
    taken: list[str] = []
    turns = 0
    now = 0.0
    while True:
        part = spread.take(streams, now)
        assert len(part) <= TURN_MAX
        taken += part
        turns += 1
        if len(taken) == len(streams):
            break
        assert now <= span + 1.0, "the round ends within its share of the interval"
        now += 0.25  # a turn of the reading loop every quarter of a second
    assert taken == streams, "every stream once, in order"
    assert turns > 10, "in many short turns"
    assert span - 1.0 <= now <= span
    assert spread.take(streams, now + 0.25) == []  # the next round starts 30 s after this one started
    assert spread.take(streams, 30.0)[:3] == ["s0", "s1", "s2"]


def test_a_slow_loop_catches_up_in_bigger_turns_up_to_turn_max() -> None:
    spread = Spread(30.0)
    streams = [f"s{i}" for i in range(20_000)]
    assert len(spread.take(streams, 0.0)) == PIPELINE_CHUNK
    assert spread.until_next(0.0) == 30.0 * ROUND_SHARE * TURN_WAIT / len(streams)
    assert len(spread.take(streams, 12.0)) == TURN_MAX  # half the span later: 10,000 due, at most TURN_MAX now


def test_a_warm_stop_removes_the_own_consumer_from_many_groups_in_pipelines(client: Client) -> None:
    streams = [stream_config(stream=f"t:{i}") for i in range(PIPELINE_CHUNK + 10)]
    pipe = client.pipeline(transaction=False)
    for sc in streams:
        pipe.xgroup_create(sc.stream, "celery", id="$", mkstream=True)
        pipe.execute_command("XGROUP", "CREATECONSUMER", sc.stream, "celery", "me")
    pipe.execute()
    client.xadd("t:3", {"n": "1"})
    client.xreadgroup("celery", "me", {"t:3": ">"})  # one entry pending on us there: we stay in that group
    stats = {
        sc.stream: StreamStats(stream=sc.stream, mode="group", task="t", group="celery", tracker=None) for sc in streams
    }
    Upkeep(block_ms=200, reap_idle_ms=1).leave(client, streams, "me", stats)
    left = {sc.stream for sc in streams if client.xinfo_groups(sc.stream)[0]["consumers"]}
    assert left == {"t:3"}
    assert sum(s.consumers_removed for s in stats.values()) == len(streams) - 1

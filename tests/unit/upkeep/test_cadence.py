"""upkeep/cadence.py: a round of per-stream upkeep spread over its interval; the batched removal at a warm stop."""

from __future__ import annotations

import redis

from celery_redis_stream.client.connection import PIPELINE_CHUNK
from celery_redis_stream.stats import StreamStats
from celery_redis_stream.upkeep.cadence import ROUND_SHARE, TURN_MAX, TURN_WAIT, Spread, Upkeep

from ..streams import stream_config


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


def test_a_warm_stop_removes_the_own_consumer_from_many_groups_in_pipelines(client: redis.Redis) -> None:
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

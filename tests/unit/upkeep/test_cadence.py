"""upkeep/cadence.py: reaping and trimming a few times a minute at most, counted, a refusal never fatal."""

from __future__ import annotations

import time
from unittest.mock import Mock

import pytest
from redis.exceptions import ResponseError

from celery_redis_stream.client.connection import Client
from celery_redis_stream.stats import StreamStats
from celery_redis_stream.upkeep.cadence import MAX_INTERVAL, MIN_INTERVAL, Upkeep, cadence

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
    client = Mock(register_script=Mock(return_value=Mock(side_effect=refusal)))
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

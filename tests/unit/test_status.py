"""status.py: the typed rows of ``status --json``, the max-lag verdict, time lags for inspect."""

from __future__ import annotations

import pytest

from celery_redis_stream import keys
from celery_redis_stream.client.connection import Client
from celery_redis_stream.config import parse_rate
from celery_redis_stream.entry import parse_dedupe
from celery_redis_stream.status import collect, parse_target, stream_status, time_lags

from .conftest import UnitDB
from .streams import bridge_config, stream_config

GROUP = stream_config("orders")
TRACKED = stream_config("events", mode="tracker")


def test_a_missing_stream_reports_nothing_to_read(client: Client) -> None:
    row = stream_status(client, GROUP)
    assert (row["stream"], row["mode"], row["exists"]) == ("orders", "group", False)
    assert (row["length"], row["last_id"]) == (0, None)
    assert (row["group_exists"], row["lag"], row["lag_exact"], row["pending"]) == (False, 0, True, 0)
    assert (row["dead_letter"], row["dead_letter_length"], row["retention_trimmed"]) == ("orders:dead", 0, 0)


def test_group_and_tracker_rows(client: Client) -> None:
    for i in range(1, 6):
        client.xadd("orders", {"n": i}, id=f"{i}-0")
        client.xadd("events", {"n": i}, id=f"{i}-0")
    client.xgroup_create("orders", "celery", id="2-0")
    client.set(TRACKED.tracker_key, "4-0")
    group, tracker = stream_status(client, GROUP), stream_status(client, TRACKED)
    assert (group["length"], group["last_id"], group["last_delivered_id"], group["lag"]) == (5, "5-0", "2-0", 3)
    assert "tracker_key" not in group and "group" not in tracker
    assert (tracker["tracker_key"], tracker["position"], tracker["lag"], tracker["lease_holder"]) == (
        "stream_tracker:{events}", "4-0", 1, None,
    )  # fmt: skip
    assert set(time_lags(client, [GROUP, TRACKED])) == {"orders", "events"}


def test_a_wrong_type_is_shown_on_its_stream_and_fails_the_check(unit_db: UnitDB, client: Client) -> None:
    client.set("orders", "not a stream")
    data = collect(client, bridge_config(unit_db.url, GROUP, TRACKED), max_lag=10)
    orders, events = data["streams"]
    assert "WRONGTYPE" in orders["error"] and "error" not in events
    assert data["over_max_lag"] == ["orders"] and not data["ok"]
    assert time_lags(client, [GROUP]) == {"orders": None}


def test_max_lag_is_over_when_the_lag_is_only_bounded(unit_db: UnitDB, client: Client) -> None:
    for i in range(1, 4):
        client.xadd("events", {"n": i}, id=f"{i}-0")
    config = bridge_config(unit_db.url, TRACKED)
    assert collect(client, config, max_lag=3)["ok"]
    assert collect(client, config, max_lag=2)["over_max_lag"] == ["events"]
    assert collect(client, config)["ok"]  # no max_lag: nothing is over


def test_parse_target() -> None:
    assert parse_target("0") == "0" and parse_target("$") == "$" and parse_target("17") == "17-0"
    assert parse_target("1970-01-01T00:00:01Z") == "1000-0"
    with pytest.raises(ValueError, match="expected"):
        parse_target("yesterday")
    assert parse_target("18446744073709551615-18446744073709551615") == "18446744073709551615-18446744073709551615"
    for past_redis in ("18446744073709551616-0", "1-18446744073709551616"):  # a tracker holding it stops every read
        with pytest.raises(ValueError, match="out of range"):
            parse_target(past_redis)


def test_traffic_fields_rate_limited_only_while_entries_wait_and_the_fleets_deduplicated_count(client: Client) -> None:
    plain = stream_status(client, stream_config())
    assert (plain["rate_limit"], plain["rate_limited"], plain["dedupe_key"], plain["deduplicated"]) == (
        None, False, None, 0,
    )  # fmt: skip
    sc = stream_config(rate_limit=parse_rate("20/s"), dedupe=parse_dedupe({"key": "{order_id}"}))
    client.xgroup_create("orders", "celery", id="0", mkstream=True)
    now_ms = int(client.time()[0]) * 1000
    client.hset(keys.rate_bucket("orders"), "limited_at", now_ms)  # a reader was refused a token just now
    client.hincrby(keys.dedupe_count("orders", "group:celery"), "deduplicated", 3)
    idle = stream_status(client, sc)
    assert (idle["rate_limit"], idle["rate_limited"], idle["dedupe_key"], idle["deduplicated"]) == (
        "20/s", False, "{order_id}", 3,
    )  # fmt: skip  # nothing waits: an idle reader holding the token is no limit
    client.xadd("orders", {"order_id": "1"})
    assert stream_status(client, sc)["rate_limited"] is True
    client.hset(keys.rate_bucket("orders"), "limited_at", now_ms - 10_000)
    assert stream_status(client, sc)["rate_limited"] is False  # no reader refused lately

"""read/limit.py and the rate settings: Celery's notation, the token bucket on a real Redis, shared by readers."""

from __future__ import annotations

import time

import pytest

from celery_redis_stream import StreamConfigError, keys
from celery_redis_stream.client.connection import Client
from celery_redis_stream.config import load_config, parse_rate
from celery_redis_stream.read.limit import Limiter, bucket_state
from celery_redis_stream.stats import StreamStats

from ...support import make_app


@pytest.mark.parametrize(
    ("value", "count", "interval_ms", "capacity"),
    [("100/s", 100, 1000, 10), ("600/m", 600, 60_000, 1), ("1000/h", 1000, 3_600_000, 1), ("5", 5, 1000, 1),
     (20, 20, 1000, 2), (0.5, 0.5, 1000, 1), ("2.5/s", 2.5, 1000, 1), ("50000/m", 50000, 60_000, 83)],
)  # fmt: skip
def test_rates_are_read_in_celerys_notation(value: object, count: float, interval_ms: int, capacity: int) -> None:
    rate = parse_rate(value)
    assert (rate.count, rate.interval_ms, rate.capacity) == (count, interval_ms, capacity)


@pytest.mark.parametrize("value", ["0/s", "-1", "ten/s", "10/d", "", True, [10], 0, float("nan")])
def test_a_bad_rate_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(value)


def test_a_bad_rate_limit_stops_the_worker_naming_the_setting_and_the_stream() -> None:
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "rate_limit": "fast"}})
    with pytest.raises(StreamConfigError, match=r"rate_limit.*orders"):
        load_config(app)
    app = make_app(stream_tasks={"orders": "shop.handle"}, stream_rate_limit="10/d")
    with pytest.raises(StreamConfigError, match=r"stream_rate_limit"):
        load_config(app)


def test_the_global_rate_limit_applies_to_every_stream_unless_one_says_none() -> None:
    app = make_app(
        stream_tasks={"a": "shop.handle", "b": {"task": "shop.handle", "rate_limit": None},
                      "c": {"task": "shop.handle", "rate_limit": "5/m"}},
        stream_rate_limit=50,
    )  # fmt: skip
    limits = {sc.stream: sc.rate_limit and str(sc.rate_limit) for sc in load_config(app).streams}
    assert limits == {"a": "50/s", "b": None, "c": "5/m"}
    assert all(sc.rate_limit is None for sc in load_config(make_app(stream_tasks={"a": "shop.handle"})).streams)


def wait_nowhere(seconds: float) -> bool:
    return False


def test_the_bucket_starts_empty_grants_at_most_its_rate_and_takes_back_what_was_not_used(client: Client) -> None:
    stats = StreamStats("orders", "group", "t", "celery", None)
    limiter = Limiter("orders", parse_rate("50/s"), stats, wait_nowhere)
    started = time.monotonic()
    granted = 0
    while time.monotonic() - started < 1.0:
        granted += limiter.take(client, 100)
        time.sleep(0.01)
    assert 40 <= granted <= 51  # 50 a second, from an empty bucket
    assert stats.rate_limit_waits > 0 and stats.rate_limited
    assert bucket_state(client, "orders", int(time.time() * 1000))
    time.sleep(1.2)  # refills to a tenth of a second's worth, no more: never a burst
    assert limiter.take(client, 1000) == 5
    limiter.give_back(client, 30)
    assert limiter.take(client, 1000) == 5
    assert client.ttl(keys.rate_bucket("orders")) > 0  # an idle bucket goes away


def test_two_limiters_share_one_bucket(client: Client) -> None:
    a = Limiter("orders", parse_rate("100/s"), StreamStats("orders", "group", "t", "celery", None), wait_nowhere)
    b = Limiter("orders", parse_rate("100/s"), StreamStats("orders", "group", "t", "celery", None), wait_nowhere)
    assert a.take(client, 15) == 0  # a new bucket is empty
    time.sleep(1.1)
    # One bucket of a tenth of a second's worth (10), plus what refills between the two takes on a slow machine;
    # two buckets would give 20.
    assert 10 <= a.take(client, 15) + b.take(client, 15) < 15

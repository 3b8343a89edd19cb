"""Traffic control without a worker: the settings, the token bucket and the business-key claims on a real Redis."""

from __future__ import annotations

import time

import pytest

from celery_redis_stream import StreamConfigError, keys
from celery_redis_stream.client.connection import Client
from celery_redis_stream.config import load_config
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.stats import StreamStats
from celery_redis_stream.traffic.dedupe import Dedupe
from celery_redis_stream.traffic.limit import Limiter, bucket_state
from celery_redis_stream.traffic.rules import DedupeRule, MissingKeyField, parse_dedupe, parse_rate

from ..support import make_app


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


@pytest.mark.parametrize(
    "value",
    [{"key": "order_id"}, {"key": ""}, {"key": "{order_id:>5}"}, {"key": "{order_id!r}"}, {"key": "{a.b}"},
     {"key": "{order_id}", "ttl_ms": 0}, {"key": "{order_id}", "ttl": 5}, {"ttl_ms": 5}, "{order_id}", {"key": "{"}],
)  # fmt: skip
def test_a_bad_dedupe_is_refused_at_start_up(value: object) -> None:
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "dedupe": value}})
    with pytest.raises(StreamConfigError, match=r"dedupe.*orders"):
        load_config(app)


def test_a_dedupe_key_is_its_template_over_the_entry_fields() -> None:
    rule = parse_dedupe({"key": "{tenant}:{order_id}", "ttl_ms": 1000})
    assert rule.key((b"order_id", b"7", b"tenant", b"acme", b"x", b"\xff")) == "acme:7"
    assert rule.key_of({"tenant": "t", "order_id": "{1}"}) == "t:{1}"
    assert parse_dedupe({"key": "{{literal}}-{id}"}).key((b"id", b"1")) == "{literal}-1"
    assert parse_dedupe({"key": "{id}"}).ttl_ms == 86_400_000
    with pytest.raises(MissingKeyField, match="tenant"):
        rule.key((b"order_id", b"7"))
    with pytest.raises(MissingKeyField, match="UTF-8"):
        rule.key((b"order_id", b"\xff", b"tenant", b"t"))


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
    assert a.take(client, 15) + b.take(client, 15) == 10  # one bucket of a tenth of a second's worth


def entry(entry_id: str, **fields: str) -> RawEntry:
    pairs: list[bytes] = []
    for name, value in fields.items():
        pairs += [name.encode(), value.encode()]
    return RawEntry("orders", entry_id, tuple(pairs))


def test_claims_let_one_entry_per_key_through_and_the_same_entry_again(client: Client) -> None:
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "dedupe": {"key": "{order_id}", "ttl_ms": 60000}}})
    (sc,) = load_config(app).streams
    assert isinstance(sc.dedupe, DedupeRule)
    dedupe = Dedupe()
    batch = [entry("1-0", order_id="a"), entry("2-0", order_id="a"), entry("3-0", order_id="b"), entry("4-0", x="1")]
    first = dedupe.claim(client, sc, sc.dedupe, batch)
    assert [e.id for e in first.live] == ["1-0", "3-0"] and first.skipped == ["2-0"]
    assert [(d.raw.id, d.reason) for d in first.dead] == [("4-0", "dedupe_key")]
    again = dedupe.claim(client, sc, sc.dedupe, batch[:3])  # re-read after a crash: the claim is its own
    assert [e.id for e in again.live] == ["1-0", "3-0"] and again.skipped == ["2-0"]
    # A dead-lettered holder lets go of its key; a copy is then dispatched.
    dedupe.release(client, sc, sc.dedupe, [DeadLetter(batch[0], "converter", "boom")])
    later = dedupe.claim(client, sc, sc.dedupe, [entry("5-0", order_id="a")])
    assert [e.id for e in later.live] == ["5-0"]
    record = keys.dedupe_record("orders", "group:celery", "a")
    assert record.startswith("stream_dedupe:{orders}:") and 0 < client.pttl(record) <= 60000


def test_preview_says_whether_an_entry_would_be_deduplicated_given_a_redis(client: Client) -> None:
    from celery_redis_stream.testing import preview

    dedupe = {"key": "{tenant}:{order_id}", "ttl_ms": 60000}
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "dedupe": dedupe}, "plain": "shop.handle"})
    fields = {"tenant": "t", "order_id": "1"}
    unknown = preview(app, "orders", fields, entry_id="5-0")
    assert (unknown.dedupe_key, unknown.deduplicated, unknown.args) == ("t:1", None, [fields])
    assert preview(app, "orders", fields, entry_id="5-0", redis=client).deduplicated is False
    (sc,) = [s for s in load_config(app).streams if s.stream == "orders"]
    assert sc.dedupe is not None
    Dedupe().claim(client, sc, sc.dedupe, [entry("4-0", tenant="t", order_id="1")])  # dispatched by entry 4-0
    assert preview(app, "orders", fields, entry_id="5-0", redis=client).deduplicated is True
    assert preview(app, "orders", fields, entry_id="4-0", redis=client).deduplicated is False  # its own record
    missing = preview(app, "orders", {"order_id": "1"}, redis=client)
    assert missing.dead_letter is not None and missing.dead_letter.reason == "dedupe_key"
    assert missing.deduplicated is False and missing.args == []
    assert preview(app, "plain", fields).deduplicated is False

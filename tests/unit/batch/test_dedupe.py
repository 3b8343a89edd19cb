"""batch/dedupe.py and the dedupe setting: the key template, the claims on a real Redis, preview's answer."""

from __future__ import annotations

import pytest

from celery_redis_stream import StreamConfigError, keys
from celery_redis_stream.batch.dedupe import Dedupe
from celery_redis_stream.client.connection import Client
from celery_redis_stream.config import load_config
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import DedupeRule, RawEntry, parse_dedupe
from celery_redis_stream.exceptions import EntryError

from ...support import make_app


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
    assert rule.key((b"tenant", b"t", b"order_id", b"{1}", b"tenant", b"again")) == "t:{1}"  # the first one counts
    assert parse_dedupe({"key": "{{literal}}-{id}"}).key((b"id", b"1")) == "{literal}-1"
    assert parse_dedupe({"key": "{id}"}).ttl_ms == 86_400_000
    with pytest.raises(EntryError, match="tenant"):
        rule.key((b"order_id", b"7"))
    with pytest.raises(EntryError, match="UTF-8"):
        rule.key((b"order_id", b"\xff", b"tenant", b"t"))


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


def test_under_a_json_decoder_the_key_comes_from_the_decoded_object(client: Client) -> None:
    dedupe = {"key": "{tenant}:{order_id}"}
    app = make_app(stream_tasks={"orders": {"task": "shop.handle", "decode": "json:payload", "dedupe": dedupe}})
    (sc,) = load_config(app).streams
    assert sc.dedupe is not None
    batch = [
        entry("1-0", payload='{"tenant": "t", "order_id": 42}'),
        entry("2-0", payload='{"order_id": 42, "tenant": "t", "note": "again"}'),
        entry("3-0", payload='{"tenant": "t"}'),
        entry("4-0", payload="not json"),
        entry("5-0", payload='["a list"]', tenant="u", order_id="7"),  # not an object: the entry's own fields
    ]
    sorted_ = Dedupe().claim(client, sc, sc.dedupe, batch)
    assert [e.id for e in sorted_.live] == ["1-0", "5-0"] and sorted_.skipped == ["2-0"]
    assert [(d.raw.id, d.reason) for d in sorted_.dead] == [("3-0", "dedupe_key"), ("4-0", "decode")]
    assert client.get(keys.dedupe_record("orders", "group:celery", "t:42")) == b"1-0"
    assert client.get(keys.dedupe_record("orders", "group:celery", "u:7")) == b"5-0"

"""keys.py: the one place the key layout is derived, in both modes and on a cluster."""

from __future__ import annotations

from celery_redis_stream import keys
from celery_redis_stream.batch.deliveries import failures_key, inflight_key
from celery_redis_stream.upkeep.retention import retention_key

from .streams import stream_config


def test_a_plain_stream_gets_its_name_as_hash_tag_in_every_derived_key() -> None:
    sc = stream_config("orders")
    assert sc.tracker_key == "stream_tracker:{orders}"
    assert sc.lease_key == "stream_tracker:{orders}:lease"
    assert retention_key(sc) == "stream_tracker:{orders}:retention"
    assert inflight_key(sc) == "stream_deliveries:{orders}:celery:inflight"
    assert failures_key(sc) == "stream_deliveries:{orders}:celery:failures"
    assert sc.dead_letter == "orders:dead"


def test_tracker_mode_keeps_its_delivery_records_beside_the_tracker() -> None:
    sc = stream_config("orders", mode="tracker")
    assert inflight_key(sc) == "stream_tracker:{orders}:inflight"
    assert failures_key(sc) == "stream_tracker:{orders}:failures"


def test_a_stream_with_a_hash_tag_keeps_its_own_name() -> None:
    assert keys.hash_tag("{t1}:orders") == "t1"
    assert keys.hash_tag("orders") is None and keys.hash_tag("a{}b") is None
    assert keys.tracker("{t1}:orders") == "stream_tracker:{t1}:orders"
    assert keys.inflight("{t1}:orders", "g", "x") == "stream_deliveries:{t1}:orders:g:inflight"


def test_tracker_option_and_prefix() -> None:
    assert keys.tracker("orders", "pos:", "orders-position") == "pos:orders-position"
    assert keys.tracker("orders", "pos:") == "pos:{orders}"


def test_dead_letter_shares_the_slot_on_a_cluster_unless_the_template_has_a_tag() -> None:
    assert keys.dead_letter("orders", cluster=True) == "{orders}:dead"
    assert keys.dead_letter("orders", cluster=False) == "orders:dead"
    assert keys.dead_letter("{t1}:orders", cluster=True) == "{t1}:orders:dead"
    assert keys.dead_letter("orders", "{dlq}:{stream}", cluster=True) == "{dlq}:orders"


def test_dead_letter_pattern_finds_the_source_stream() -> None:
    pattern = keys.dead_letter_pattern(keys.DEAD_LETTER_TEMPLATE)
    for name in ("orders:dead", "{orders}:dead"):
        match = pattern.match(name)
        assert match is not None and match.group(1) == "orders"
    assert pattern.match("orders") is None

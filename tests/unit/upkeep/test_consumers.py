"""upkeep/consumers.py: idle empty consumers removed; one with pending entries never, nor our own."""

from __future__ import annotations

import time

import pytest

from celery_redis_stream.client.connection import Client
from celery_redis_stream.upkeep import consumers
from celery_redis_stream.upkeep.consumers import reap_consumers, remove_own_consumer

from ..streams import stream_config

SC = stream_config()


def _group(client: Client, *, pending_on: str, empty: tuple[str, ...]) -> None:
    client.xadd("orders", {"n": 1}, id="1-0")
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", pending_on, "STREAMS", "orders", ">")
    for name in empty:
        client.execute_command("XGROUP", "CREATECONSUMER", "orders", "celery", name)


def _names(client: Client) -> set[str]:
    return {c["name"].decode() for c in client.xinfo_consumers("orders", "celery")}


def test_a_consumer_with_pending_entries_is_never_reaped_nor_our_own(client: Client) -> None:
    _group(client, pending_on="crashed", empty=("c1", "gone-1", "gone-2"))
    time.sleep(0.005)
    removed = reap_consumers(client, SC, "c1", min_idle_ms=1)
    assert sorted(r.name for r in removed) == ["gone-1", "gone-2"] and all(r.idle_ms >= 1 for r in removed)
    assert _names(client) == {"c1", "crashed"}  # its entry would be lost with it


def test_consumers_idle_less_than_the_threshold_stay(client: Client) -> None:
    _group(client, pending_on="crashed", empty=("fresh",))
    assert reap_consumers(client, SC, "c1", min_idle_ms=60_000) == []
    assert _names(client) == {"crashed", "fresh"}


def test_one_call_removes_at_most_a_batch(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumers, "REAP_BATCH", 2)
    _group(client, pending_on="crashed", empty=("a", "b", "c", "d", "e"))
    assert len(reap_consumers(client, SC, "c1", min_idle_ms=0)) == 2
    assert len(reap_consumers(client, SC, "c1", min_idle_ms=0)) == 2
    assert len(reap_consumers(client, SC, "c1", min_idle_ms=0)) == 1
    assert _names(client) == {"crashed"}


def test_own_consumer_is_removed_on_a_warm_stop_only_with_nothing_pending(client: Client) -> None:
    _group(client, pending_on="c1", empty=("c2",))
    assert not remove_own_consumer(client, SC, "c1")
    assert remove_own_consumer(client, SC, "c2")
    assert _names(client) == {"c1"}
    assert not remove_own_consumer(client, stream_config("missing"), "c1")  # no stream, no group: nothing to do

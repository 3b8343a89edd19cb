"""position.py and the position of each mode: the commit after dispatch, the lease fence, the status fields."""

from __future__ import annotations

import pytest

from celery_redis_stream.client.connection import Client
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.exceptions import LeaseLost
from celery_redis_stream.position.group import GroupPosition
from celery_redis_stream.position.lag import server_ms
from celery_redis_stream.position.lease import Lease
from celery_redis_stream.position.rule import commit, position_of
from celery_redis_stream.position.tracker import TrackerPosition
from celery_redis_stream.status import _stream_info

from ..conftest import UnitDB
from ..streams import stream_config


def _pending(client: Client, *ids: str) -> None:
    for entry_id in ids:
        client.xadd("orders", {"n": entry_id}, id=entry_id)
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "c1", "STREAMS", "orders", ">")


def test_each_mode_has_its_position_type() -> None:
    group, tracker = position_of(stream_config()), position_of(stream_config(mode="tracker"))
    assert isinstance(group, GroupPosition) and (group.mode, group.name, group.shared) == ("group", "celery", True)
    assert isinstance(tracker, TrackerPosition)
    assert (tracker.mode, tracker.name, tracker.shared) == ("tracker", "stream_tracker:{orders}", False)
    assert group.acked(["1-0"], ["0-5"]) == ["1-0", "0-5"] and tracker.acked(["1-0"], ["0-5"]) == ["1-0"]
    assert group.retention() == ([], "celery") and tracker.retention() == (["stream_tracker:{orders}"], "")


def test_group_commit_writes_dead_letters_acks_and_forgets_in_one_go(client: Client, unit_db: UnitDB) -> None:
    sc = stream_config()
    _pending(client, "1-0", "2-0")
    client.hset("forget", mapping={"a": 1, "b": 2})
    bad = DeadLetter(RawEntry("orders", "2-0", (b"n", b"2-0")), "converter_error", "boom")
    commit(client, sc, ["1-0", "2-0"], [bad], forget={"forget": ["a"]})
    assert unit_db.client.xpending("orders", "celery")["pending"] == 0
    ((_, fields),) = unit_db.client.xrange("orders:dead")
    assert fields[b"dlq_source_id"] == b"2-0" and fields[b"dlq_reason"] == b"converter_error"
    assert client.hkeys("forget") == [b"b"]


def test_nothing_to_commit_writes_nothing(client: Client) -> None:
    commit(client, stream_config(), [], [DeadLetter(RawEntry("orders", "1-0", ()), "x", "y")])
    assert not client.exists("orders:dead")


def test_tracker_commit_moves_forward_under_the_lease_never_back(client: Client) -> None:
    sc = stream_config(mode="tracker")
    lease = Lease(client, "me", 10_000)
    assert lease.acquire(sc)
    commit(client, sc, ["1-0", "5-0"], [], lease=lease, forget={})
    assert client.get(sc.tracker_key) == b"5-0"
    commit(client, sc, ["3-0"], [], lease=lease, forget={})
    assert client.get(sc.tracker_key) == b"5-0"


def test_tracker_commit_without_the_lease_raises_and_keeps_the_position(client: Client) -> None:
    sc = stream_config(mode="tracker")
    client.set(sc.lease_key, "someone-else", px=10_000)
    lease = Lease(client, "me", 10_000)
    assert not lease.acquire(sc)
    with pytest.raises(LeaseLost):
        commit(client, sc, ["1-0"], [], lease=lease)
    assert client.get(sc.tracker_key) is None


def test_lease_is_renewed_by_its_holder_and_released(client: Client) -> None:
    sc = stream_config(mode="tracker")
    mine, theirs = Lease(client, "me", 10_000), Lease(client, "them", 10_000)
    assert mine.acquire(sc) and mine.acquire(sc) and not theirs.acquire(sc)
    mine.release(sc)
    assert theirs.acquire(sc)


def test_group_status_before_and_after_the_group_exists(client: Client) -> None:
    sc = stream_config()
    for i in range(1, 4):
        client.xadd("orders", {"n": i}, id=f"{i}-0")
    position = position_of(sc)
    info = _stream_info(client, "orders")
    before = position.status(client, info, limit=100, now_ms=server_ms(client))
    assert (before["group_exists"], before["lag"], before["consumers"]) == (False, 3, [])
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "c1", "COUNT", 1, "STREAMS", "orders", ">")
    after = position.status(client, info, limit=100, now_ms=server_ms(client))
    assert (after["group_exists"], after["last_delivered_id"], after["pending"], after["lag"]) == (True, "1-0", 1, 2)
    assert [c["name"] for c in after["consumers"]] == ["c1"]
    assert position.waiting(client) == ("1-0", "1-0")


def test_tracker_status_reports_position_holder_and_a_bad_value(client: Client) -> None:
    sc = stream_config(mode="tracker")
    for i in range(1, 4):
        client.xadd("orders", {"n": i}, id=f"{i}-0")
    client.set(sc.tracker_key, "1-0")
    client.set(sc.lease_key, "w1")
    position = position_of(sc)
    info = _stream_info(client, "orders")
    row = position.status(client, info, limit=100, now_ms=server_ms(client))
    assert (row["position"], row["lease_holder"], row["lag"], row["lag_exact"]) == ("1-0", "w1", 2, True)
    assert position.waiting(client) == ("1-0", None)
    client.set(sc.tracker_key, "not-an-id")
    row = position.status(client, info, limit=100, now_ms=server_ms(client))
    assert row["lag"] is None and "not an entry id" in row["error"]

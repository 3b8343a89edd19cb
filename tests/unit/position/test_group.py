"""position/group.py: group mode's commit (dead letters, XACK, forgotten records in one go) and its status."""

from __future__ import annotations

from celery_redis_stream.client.connection import Client
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.position.lag import server_ms
from celery_redis_stream.position.rule import commit, position_of
from celery_redis_stream.status import _stream_info

from ..conftest import UnitDB
from ..streams import stream_config


def _pending(client: Client, *ids: str) -> None:
    for entry_id in ids:
        client.xadd("orders", {"n": entry_id}, id=entry_id)
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "c1", "STREAMS", "orders", ">")


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


def test_group_commit_acknowledges_only_the_batch_and_status_counts_each_consumers_pending(client: Client) -> None:
    sc = stream_config()
    _pending(client, "1-0", "2-0", "3-0")  # all three pending on c1
    client.xadd("orders", {"n": 4}, id="4-0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "c2", "STREAMS", "orders", ">")  # 4-0 pending on c2
    position = position_of(sc)
    commit(client, sc, ["1-0"], [])
    assert position.waiting(client) == ("4-0", "2-0")  # the oldest entry still pending, not the one acked
    row = position.status(client, _stream_info(client, "orders"), limit=100, now_ms=server_ms(client))
    assert row["pending"] == 3
    assert {c["name"]: c["pending"] for c in row["consumers"]} == {"c1": 2, "c2": 1}

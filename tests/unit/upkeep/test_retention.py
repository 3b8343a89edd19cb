"""upkeep/retention.py: trimming what every group and the tracker passed, never past a group's position."""

from __future__ import annotations

from unittest.mock import Mock

from redis.exceptions import ResponseError

from celery_redis_stream.client.capabilities import XTRIM_ACKED, probe
from celery_redis_stream.client.connection import Client
from celery_redis_stream.position.lease import Lease
from celery_redis_stream.position.rule import commit
from celery_redis_stream.upkeep.retention import retention_status, trim_passed

from ..streams import stream_config

GROUP = stream_config(retention_ms=1000)
TRACKED = stream_config(mode="tracker", retention_ms=1000)
N = 400  # old ids (1-0 .. 400-0): four radix nodes of 100, so that XTRIM MINID ~ has whole nodes to drop


def _entries(client: Client) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(1, N + 1):
        pipe.xadd("orders", {"n": i}, id=f"{i}-0")
    pipe.execute()


def _first(client: Client) -> int:
    ((entry_id, _),) = client.xrange("orders", count=1)
    return int(entry_id.split(b"-")[0])


def _trim_all(client: Client, sc: object) -> int:
    total = 0
    while (done := trim_passed(client, sc, retention_ms=1000, interval_ms=0)).trimmed:  # type: ignore[arg-type]
        total += done.trimmed
    assert done.status == "ran"
    return total


def test_never_trims_past_the_last_delivered_id_of_any_group(client: Client) -> None:
    _entries(client)
    client.xgroup_create("orders", "celery", id="350-0")
    client.xgroup_create("orders", "audit", id="250-0")  # another app's group, further behind
    trimmed = _trim_all(client, GROUP)
    assert trimmed > 0 and _first(client) <= 250 and client.xlen("orders") == N - trimmed
    assert client.xrange("orders", "250-0", "250-0")  # the entry at the bound itself is kept


def test_never_trims_an_entry_still_pending_even_behind_the_last_delivered_id(client: Client) -> None:
    _entries(client)
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "c1", "COUNT", 350, "STREAMS", "orders", ">")
    client.xack("orders", "celery", *[f"{i}-0" for i in range(1, 351) if i != 250])  # 250-0 is still pending
    assert _trim_all(client, GROUP) > 0 and _first(client) <= 250


def test_a_tracked_stream_is_trimmed_up_to_its_tracker_only_and_not_at_all_without_one(client: Client) -> None:
    _entries(client)
    assert trim_passed(client, TRACKED, retention_ms=1000, interval_ms=0).status == "no tracker"
    lease = Lease(client, "c1", 10_000)
    assert lease.acquire(TRACKED)
    commit(client, TRACKED, ["250-0"], [], lease=lease)
    assert _trim_all(client, TRACKED) > 0 and _first(client) <= 250


def test_nothing_is_trimmed_before_the_own_group_exists_or_within_the_retention(client: Client) -> None:
    _entries(client)
    assert trim_passed(client, GROUP, retention_ms=1000, interval_ms=0).status == "no group"
    assert client.xlen("orders") == N  # the reader creates the group from "0" and must find them
    client.delete("orders")
    pipe = client.pipeline(transaction=False)
    for i in range(N):
        pipe.xadd("orders", {"n": i})  # ids of now
    pipe.execute()
    client.xgroup_create("orders", "celery", id="$")
    done = trim_passed(client, GROUP, retention_ms=3_600_000, interval_ms=0)
    assert (done.status, done.trimmed, client.xlen("orders")) == ("ran", 0, N)


def test_one_run_per_interval_fleet_wide_and_the_status_counts_what_was_trimmed(client: Client) -> None:
    _entries(client)
    client.xgroup_create("orders", "celery", id="$")
    first = trim_passed(client, GROUP, retention_ms=1000, interval_ms=60_000)
    assert first.status == "ran" and first.trimmed > 0
    assert trim_passed(client, GROUP, retention_ms=1000, interval_ms=60_000).status == "skipped"  # another worker
    row = retention_status(client, GROUP)
    assert (row["retention_ms"], row["retention_trimmed"], row["retention_minid"]) == (1000, first.trimmed, first.minid)
    assert row["retention_last_run_ms"] == row["retention_last_trim_ms"] is not None


def test_acked_is_used_only_where_the_server_documents_it() -> None:
    docs = {b"xtrim": [b"arguments", [[b"name", b"strategy"], [b"name", b"acked", b"token", b"ACKED"]]]}
    assert XTRIM_ACKED in probe(Mock(execute_command=Mock(return_value=docs)))  # Redis 8.2
    refused = Mock(execute_command=Mock(side_effect=ResponseError("ERR unknown command 'COMMAND DOCS'")))
    assert XTRIM_ACKED not in probe(refused)

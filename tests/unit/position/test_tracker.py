"""position/tracker.py: tracker mode's fenced commit (forward only, by the lease holder only) and its status."""

from __future__ import annotations

import pytest

from celery_redis_stream.client.connection import Client
from celery_redis_stream.exceptions import LeaseLost
from celery_redis_stream.position.lag import server_ms
from celery_redis_stream.position.lease import Lease
from celery_redis_stream.position.rule import commit, position_of
from celery_redis_stream.status import _stream_info

from ..streams import stream_config


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


def test_ids_compare_as_numbers_and_a_holder_that_lost_the_lease_moves_nothing(client: Client) -> None:
    sc = stream_config(mode="tracker")
    mine, theirs = Lease(client, "me", 10_000), Lease(client, "them", 10_000)
    assert mine.acquire(sc)
    commit(client, sc, ["9-0"], [], lease=mine)
    commit(client, sc, ["10-0"], [], lease=mine)  # "10-0" < "9-0" as text: compared as numbers
    assert client.get(sc.tracker_key) == b"10-0"
    commit(client, sc, ["9-5"], [], lease=mine)
    assert client.get(sc.tracker_key) == b"10-0"
    client.delete(sc.lease_key)  # expired while the holder was paused; another worker takes it
    assert theirs.acquire(sc)
    with pytest.raises(LeaseLost):
        commit(client, sc, ["20-0"], [], lease=mine)
    assert client.get(sc.tracker_key) == b"10-0" and client.get(sc.lease_key) == b"them"
    commit(client, sc, ["11-0"], [], lease=theirs)
    assert position_of(sc).waiting(client) == ("11-0", None)

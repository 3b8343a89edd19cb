"""position/tracker.py: tracker mode's fenced commit (forward only, by the lease holder only) and its status."""

from __future__ import annotations

import pytest

from celery_redis_stream.client.connection import MAX_COMMAND_ARGS, Client
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import RawEntry
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


def _sources(client: Client, key: str) -> list[bytes]:
    """The dlq_source_id of each dead letter in ``key`` (the client keeps stream replies as flat lists)."""
    return [dict(zip(fields[::2], fields[1::2], strict=True))[b"dlq_source_id"] for _, fields in client.xrange(key)]


def _letter(entry_id: str, pairs: tuple[bytes, ...] = (b"n", b"1")) -> DeadLetter:
    return DeadLetter(RawEntry("orders", entry_id, pairs), "converter", "boom")


def test_a_tracker_batchs_dead_letters_move_with_it_under_the_lease_and_only_forward(client: Client) -> None:
    sc = stream_config(mode="tracker")
    mine, theirs = Lease(client, "me", 10_000), Lease(client, "them", 10_000)
    assert mine.acquire(sc)
    commit(client, sc, ["1-0", "2-0"], [_letter("1-0"), _letter("2-0", (b"a", b"x", b"a", b"y"))], lease=mine)
    assert _sources(client, sc.dead_letter) == [b"1-0", b"2-0"]
    assert client.get(sc.tracker_key) == b"2-0"
    # The same batch again (a re-read behind the tracker): its dead letters were written with it already.
    commit(client, sc, ["1-0", "2-0"], [_letter("1-0")], lease=mine)
    assert client.xlen(sc.dead_letter) == 2
    # A holder that lost the lease writes no dead letter: the new holder writes it, once.
    client.delete(sc.lease_key)
    assert theirs.acquire(sc)
    with pytest.raises(LeaseLost):
        commit(client, sc, ["3-0"], [_letter("3-0")], lease=mine)
    assert client.xlen(sc.dead_letter) == 2
    commit(client, sc, ["3-0"], [_letter("3-0")], lease=theirs)
    assert _sources(client, sc.dead_letter) == [b"1-0", b"2-0", b"3-0"]
    # Repeated field names are kept, in order, as XADD wrote them.
    assert list(client.xrange(sc.dead_letter)[1][1][:4]) == [b"a", b"x", b"a", b"y"]


def test_a_dead_letter_too_long_for_one_script_command_is_written_before_the_move(client: Client) -> None:
    sc = stream_config(mode="tracker")
    lease = Lease(client, "me", 10_000)
    assert lease.acquire(sc)
    wide = tuple(x for n in range(MAX_COMMAND_ARGS) for x in (f"f{n}".encode(), b"v"))
    commit(client, sc, ["1-0", "2-0"], [_letter("1-0", wide), _letter("2-0")], lease=lease)
    ((_, first), _) = client.xrange(sc.dead_letter)
    assert len(first) == len(_letter("1-0", wide).pairs()) > MAX_COMMAND_ARGS
    assert _sources(client, sc.dead_letter) == [b"1-0", b"2-0"] and client.get(sc.tracker_key) == b"2-0"

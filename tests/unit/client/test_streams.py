"""client/streams.py: group creation, reads of own pending and new entries, claiming, where a tracker starts."""

from __future__ import annotations

from celery_redis_stream.client.connection import Client
from celery_redis_stream.client.streams import (
    as_entry_id,
    autoclaim,
    ensure_group,
    last_id,
    read_group,
    read_tracked,
    start_position,
)

from ..streams import stream_config


def test_ensure_group_creates_once_and_never_resets(client: Client) -> None:
    sc = stream_config()
    assert ensure_group(client, sc)
    client.xadd("orders", {"n": 1}, id="1-0")
    read_group(client, "celery", "c1", {"orders": ">"}, count=10, block_ms=None)
    assert not ensure_group(client, sc, "0")  # BUSYGROUP: the group is left as it is
    assert client.xinfo_groups("orders")[0]["last-delivered-id"] == b"1-0"


def test_read_group_new_then_own_pending(client: Client) -> None:
    ensure_group(client, stream_config())
    client.xadd("orders", {"a": "1"}, id="1-0")
    client.execute_command("XADD", "orders", "2-0", "a", "1", "a", "2")
    new = read_group(client, "celery", "c1", {"orders": ">"}, count=10, block_ms=None)["orders"]
    assert [e.id for e in new] == ["1-0", "2-0"]
    assert new[1].pairs == (b"a", b"1", b"a", b"2")  # raw: duplicate names kept
    again = read_group(client, "celery", "c1", {"orders": "0"}, count=10, block_ms=None)["orders"]
    assert [e.id for e in again] == ["1-0", "2-0"]
    assert read_group(client, "celery", "c1", {"orders": ">"}, count=10, block_ms=10) == {}


def test_autoclaim_moves_idle_entries_and_reports_trimmed_ones(client: Client) -> None:
    sc = stream_config()
    ensure_group(client, sc)
    for i in (1, 2):
        client.xadd("orders", {"n": i}, id=f"{i}-0")
    read_group(client, "celery", "dead", {"orders": ">"}, count=10, block_ms=None)
    client.xdel("orders", "2-0")
    cursor, entries, trimmed = autoclaim(client, sc, "c1", min_idle_ms=0, start="0-0", count=10)
    assert cursor == "0-0" and [e.id for e in entries] == ["1-0"] and trimmed == ["2-0"]


def test_read_tracked_reads_after_the_position(client: Client) -> None:
    for i in (1, 2, 3):
        client.xadd("orders", {"n": i}, id=f"{i}-0")
    reply = read_tracked(client, {"orders": "1-0"}, count=10, block_ms=None)
    assert [e.id for e in reply["orders"]] == ["2-0", "3-0"]


def test_a_tracker_starting_at_dollar_is_pinned_and_stored(client: Client) -> None:
    sc = stream_config(mode="tracker", start="$")
    assert start_position(client, sc) == "0-0"  # no stream yet
    client.delete(sc.tracker_key)
    client.xadd("orders", {"n": 1}, id="7-0")
    assert start_position(client, sc) == "7-0"
    client.xadd("orders", {"n": 2}, id="8-0")
    assert start_position(client, sc) == "7-0" and client.get(sc.tracker_key) == b"7-0"


def test_last_id_and_entry_ids(client: Client) -> None:
    assert last_id(client, "missing") == "0-0"
    client.xadd("orders", {"n": 1}, id="3-4")
    assert last_id(client, "orders") == "3-4"
    assert as_entry_id("$", lambda: "3-4") == "3-4"
    assert as_entry_id("0", lambda: "x") == "0-0" and as_entry_id("5-1", lambda: "x") == "5-1"


def test_packed_read_reads_like_the_plain_command_and_repacks_when_streams_change(client: Client) -> None:
    from celery_redis_stream.client.streams import PackedRead

    for s in ("a", "b"):
        ensure_group(client, stream_config(stream=s))
    client.xadd("a", {"n": "1"}, id="1-0")
    packed = PackedRead()
    got = read_group(client, "celery", "c1", {"a": ">", "b": ">"}, count=10, block_ms=10, packed=packed)
    assert [e.id for e in got["a"]] == ["1-0"]
    tail = packed.tail
    client.xadd("b", {"n": "2"}, id="2-0")
    got = read_group(client, "celery", "c1", {"a": ">", "b": ">"}, count=10, block_ms=10, packed=packed)
    assert packed.tail is tail, "same streams: packed once"
    assert [e.id for e in got["b"]] == ["2-0"]
    assert read_group(client, "celery", "c1", {"b": ">"}, count=10, block_ms=10, packed=packed) == {}
    assert packed.tail != tail


def test_a_wakeable_read_ends_at_once_on_wake(client: Client) -> None:
    import threading
    import time

    from celery_redis_stream.client.streams import PackedRead

    ensure_group(client, stream_config())
    packed = PackedRead()
    threading.Timer(0.3, packed.wake).start()
    started = time.monotonic()
    got = read_group(client, "celery", "c1", {"orders": ">"}, count=10, block_ms=10_000, packed=packed, wakeable=True)
    assert got == {} and time.monotonic() - started < 5.0
    # Nothing was lost: an entry written now is read by the next read.
    client.xadd("orders", {"n": "1"}, id="1-0")
    got = read_group(client, "celery", "c1", {"orders": ">"}, count=10, block_ms=10, packed=packed)
    assert [e.id for e in got["orders"]] == ["1-0"]

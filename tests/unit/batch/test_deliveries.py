"""batch/deliveries.py: a crash holding a batch counts one failed delivery per entry, once, by whoever sees it."""

from __future__ import annotations

from celery_redis_stream.batch.deliveries import Deliveries, failures_key, inflight_key
from celery_redis_stream.client.connection import Client
from celery_redis_stream.position.rule import commit

from ..streams import stream_config

SC = stream_config(max_deliveries=3)
TRACKED = stream_config(mode="tracker", max_deliveries=3)


def _read_by(client: Client, consumer: str, *ids: str) -> None:
    for entry_id in ids:
        client.xadd("orders", {"n": entry_id}, id=entry_id)
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", consumer, "STREAMS", "orders", ">")


def _counts(client: Client, sc: object = SC) -> dict[bytes, bytes]:
    return dict(client.hgetall(failures_key(sc)))  # type: ignore[arg-type]


def test_the_batch_a_previous_run_died_holding_is_counted_once_settled_entries_forgotten(client: Client) -> None:
    _read_by(client, "c1", "1-0", "2-0", "3-0")
    Deliveries("c1").begin(client, SC, ["1-0", "2-0", "3-0"])  # then the process died
    client.xack("orders", "celery", "3-0")  # claimed and acknowledged by another worker meanwhile
    restarted = Deliveries("c1")
    restarted.recover(client, SC)
    assert _counts(client) == {b"1-0": b"1", b"2-0": b"1"} and not client.hexists(inflight_key(SC), "c1")
    assert (restarted.delivery_count(SC, "1-0"), restarted.delivery_count(SC, "3-0")) == (2, 1)
    Deliveries("c1").recover(client, SC)  # the same crash is never counted twice
    assert _counts(client) == {b"1-0": b"1", b"2-0": b"1"}


def test_errors_this_run_handled_are_no_crash(client: Client) -> None:
    _read_by(client, "c1", "1-0", "2-0")
    live = Deliveries("c1")
    live.begin(client, SC, ["1-0"])
    live.recover(client, SC)  # this run's own record (taking the lease again, a group recreated)
    live.abandon(client, [SC])  # after a broker error: the record goes, nothing counted
    assert not client.exists(inflight_key(SC)) and _counts(client) == {}
    live.begin(client, SC, ["2-0"])
    commit(client, SC, ["2-0"], [], forget=live.done(SC, ["2-0"]))  # the commit deletes the record with the move
    assert not client.exists(inflight_key(SC))
    Deliveries("c1").begin(client, stream_config(max_deliveries=None), ["3-0"])
    assert not client.exists(inflight_key(SC))  # nothing is ever given up: no record, no cost


def test_another_consumers_record_is_a_suspect_at_once_and_counted_after_the_grace_by_one_worker(
    client: Client,
) -> None:
    _read_by(client, "dead", "1-0", "2-0")
    Deliveries("dead").begin(client, SC, ["1-0", "2-0"])
    first, second = Deliveries("c1"), Deliveries("c2")
    first.sweep(client, SC, grace=60)
    first.sweep(client, SC, grace=60)
    assert first.suspects(SC) == {"1-0", "2-0"} and _counts(client) == {}  # marked, within the grace
    second.sweep(client, SC, grace=0)
    first.sweep(client, SC, grace=0)
    assert _counts(client) == {b"1-0": b"1", b"2-0": b"1"}  # counted once, by the first to see it past the grace
    assert not client.exists(inflight_key(SC))


def test_a_live_consumer_that_keeps_replacing_its_record_is_never_counted(client: Client) -> None:
    _read_by(client, "busy", "1-0", "2-0")
    busy, watcher = Deliveries("busy"), Deliveries("c1")
    busy.begin(client, SC, ["1-0"])
    watcher.sweep(client, SC, grace=0)  # marks the record it saw
    busy.begin(client, SC, ["2-0"])  # the next batch: a new record
    watcher.sweep(client, SC, grace=0)
    assert _counts(client) == {} and client.hexists(inflight_key(SC), "busy")


def test_a_tracker_holder_knows_every_count_of_its_stream_on_taking_the_lease(client: Client) -> None:
    client.hset(failures_key(TRACKED), mapping={"1-0": 2, "4-0": 3})
    holder = Deliveries("c1")
    holder.recover(client, TRACKED)
    assert holder.suspects(TRACKED) == {"1-0", "4-0"} and holder.delivery_count(TRACKED, "4-0") == 4

"""readers.py: a round of each reader against a real Redis, with the publishing replaced by a Mock."""

from __future__ import annotations

import threading
from unittest.mock import Mock

import pytest
from celery import Celery

from celery_redis_stream.client.connection import Client
from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.read.base import Discovery, Wiring
from celery_redis_stream.read.group import GroupReader
from celery_redis_stream.read.tracker import TrackerReader
from celery_redis_stream.signals import reader_ready
from celery_redis_stream.stats import StreamStats

from ..conftest import UnitDB
from ..streams import bridge_config, stream_config

GROUP = stream_config("orders", fast_path=False)
TRACKED = stream_config("events", mode="tracker", fast_path=False)


def wiring(url: str, sender: object = None) -> Wiring:
    stats = {
        "orders": StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None),
        "events": StreamStats(stream="events", mode="tracker", task="t", group=None, tracker=TRACKED.tracker_key),
    }
    app = Celery(broker="memory://", set_as_current=False)
    return Wiring(app, bridge_config(url, GROUP, TRACKED), "c1", threading.Event(), stats, sender=sender)


def sent(send: Mock) -> list[str]:
    return [e.id for call in send.call_args_list for e in call.args[1]]


def test_group_reader_creates_the_group_signals_ready_then_reads_and_acks(unit_db: UnitDB, client: Client) -> None:
    ready: list[dict[str, object]] = []

    def receiver(sender: object, signal: object, **kwargs: object) -> None:
        ready.append({"sender": sender, **kwargs})

    reader_ready.connect(receiver, weak=False)
    sender = object()
    try:
        reader = GroupReader(wiring(unit_db.url, sender), batch_size=10, group="celery")
        reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
        reader.add(GROUP)
        reader.step(client)  # setup, then own pending (none)
        assert ready == [{"sender": sender, "streams": ("orders",), "mode": "group", "consumer": "c1"}]
        assert reader.wiring.stats["orders"].reading
        client.xadd("orders", {"n": 1}, id="1-0")
        client.xadd("orders", {"n": 2}, id="2-0")
        reader.step(client)  # claim round, then the new entries
        assert sent(send.send) == ["1-0", "2-0"]
        assert unit_db.client.xpending("orders", "celery")["pending"] == 0
        reader.close(client, warm=True)
        assert unit_db.client.xinfo_consumers("orders", "celery") == []  # a warm stop leaves no empty consumer
    finally:
        reader_ready.disconnect(receiver)


def test_after_a_broker_error_the_group_reader_rereads_its_own_pending(unit_db: UnitDB, client: Client) -> None:
    reader = GroupReader(wiring(unit_db.url), batch_size=10, group="celery")
    reader.batches.dispatcher = send = Mock(send=Mock(side_effect=BrokerUnavailable("down")))
    reader.add(GROUP)
    reader.step(client)
    client.xadd("orders", {"n": 1}, id="1-0")
    with pytest.raises(BrokerUnavailable):
        reader.step(client)
    reader.on_error(BrokerUnavailable("down"))
    assert reader.pending == {"orders": "0"}
    send.send.side_effect, send.send.return_value = None, []
    reader.step(client)  # from "0": the entry read before the error
    assert sent(send.send)[-1] == "1-0" and unit_db.client.xpending("orders", "celery")["pending"] == 0
    reader.close(client, warm=False)


def test_tracker_reader_takes_the_lease_reads_and_moves_the_tracker(unit_db: UnitDB, client: Client) -> None:
    reader = TrackerReader(wiring(unit_db.url), batch_size=10)
    reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
    reader.add(TRACKED)
    client.xadd("events", {"n": 1}, id="1-0")
    reader.step(client)
    assert sent(send.send) == ["1-0"] and client.get(TRACKED.tracker_key) == b"1-0"
    assert client.get(TRACKED.lease_key) == b"c1" and reader.wiring.stats["events"].reading
    reader.close(client, warm=True)
    assert not client.exists(TRACKED.lease_key)  # released on the way out


def test_tracker_reader_stands_by_while_another_worker_holds_the_lease(unit_db: UnitDB, client: Client) -> None:
    client.set(TRACKED.lease_key, "someone-else", px=60_000)
    client.xadd("events", {"n": 1}, id="1-0")
    reader = TrackerReader(wiring(unit_db.url), batch_size=10)
    reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
    reader.add(TRACKED)
    reader.step(client)
    assert send.send.call_count == 0 and not reader.wiring.stats["events"].reading
    assert client.get(TRACKED.tracker_key) is None
    reader.close(client, warm=True)


def test_discovery_hands_over_new_matching_streams_once(unit_db: UnitDB, client: Client) -> None:
    pattern = stream_config("orders:*")
    client.xadd("orders:eu", {"n": 1})
    client.xadd("orders:eu:dead", {"n": 1})
    client.set("orders:not-a-stream", 1)
    found = Mock()
    stop = threading.Event()
    stop.set()  # no waiting between scans in the test
    known = {"orders:eu:dead"}
    discovery = Discovery(
        [pattern], config=bridge_config(unit_db.url, pattern), stop_event=stop, known=known.__contains__,
        check=Mock(), found=found,
    )  # fmt: skip
    discovery.step(client)
    ((sc,), _) = found.call_args
    assert sc.stream == "orders:eu" and sc.start == "0"  # present at start: stream_start applies
    known.add("orders:eu")
    client.xadd("orders:us", {"n": 1})
    discovery.step(client)
    ((later,), _) = found.call_args
    assert later.stream == "orders:us" and later.start == "0" and found.call_count == 2


def test_discovery_refuses_a_stream_whose_name_is_not_utf8_with_an_error(
    unit_db: UnitDB, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    pattern = stream_config("orders:*")
    client.xadd(b"orders:\xff", {"n": 1})
    found = Mock()
    stop = threading.Event()
    stop.set()
    discovery = Discovery(
        [pattern], config=bridge_config(unit_db.url, pattern), stop_event=stop, known=lambda name: False,
        check=Mock(), found=found,
    )  # fmt: skip
    with caplog.at_level("ERROR"):
        discovery.step(client)
        discovery.step(client)
    assert found.call_count == 0  # never read under a replacement name, which MKSTREAM would create
    assert client.exists("orders:\ufffd") == 0
    errors = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert errors == ["redis-stream: not reading stream b'orders:\\xff' matching orders:*: its name is not UTF-8"]

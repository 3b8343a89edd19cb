"""read/group.py: group mode's rounds against a real Redis, with the publishing replaced by a Mock."""

from __future__ import annotations

import time
from unittest.mock import Mock

import pytest
from redis.exceptions import ResponseError

from celery_redis_stream.client.connection import Client
from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.read.group import GroupReader
from celery_redis_stream.signals import reader_ready

from ..conftest import UnitDB
from ..streams import stream_config
from .readers import GROUP, sent, wiring


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


def test_entries_left_pending_by_a_dead_consumer_are_claimed_and_dispatched(unit_db: UnitDB, client: Client) -> None:
    reader = GroupReader(wiring(unit_db.url), batch_size=10, group="celery")
    reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
    reader.add(GROUP)
    reader.step(client)  # setup, then own pending (none)
    client.xadd("orders", {"n": 1}, id="1-0")
    client.xadd("orders", {"n": 2}, id="2-0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "dead", "STREAMS", "orders", ">")
    time.sleep(0.12)  # idle past claim_idle_ms (100 ms)
    reader.step(client)  # the claim round
    assert sent(send.send) == ["1-0", "2-0"]
    assert unit_db.client.xpending("orders", "celery")["pending"] == 0
    reader.close(client, warm=False)


def test_a_group_that_vanished_is_recreated_from_0_and_nothing_written_meanwhile_is_skipped(
    unit_db: UnitDB, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    reader = GroupReader(wiring(unit_db.url), batch_size=10, group="celery")
    reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
    reader.add(stream_config("orders", fast_path=False, start="$"))
    reader.step(client)
    client.delete("orders")  # Redis restarted empty, or the key was deleted
    client.xadd("orders", {"n": 1}, id="1-0")
    client.xadd("orders", {"n": 2}, id="2-0")
    with pytest.raises(ResponseError, match="NOGROUP"):
        reader.step(client)
    reader.on_error(ResponseError("NOGROUP"))
    with caplog.at_level("WARNING"):
        reader.step(client)  # recreated from "0", not from stream_start
        reader.step(client)
    assert sent(send.send) == ["1-0", "2-0"]
    assert any("was missing; recreated from 0" in r.getMessage() for r in caplog.records)
    reader.close(client, warm=False)

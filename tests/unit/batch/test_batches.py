"""batch.Batches: prepare -> publish -> commit; nothing is committed when the publish fails; suspects go alone."""

from __future__ import annotations

from collections.abc import Iterator
from unittest.mock import Mock

import pytest

from celery_redis_stream.batch.batches import Batches
from celery_redis_stream.batch.deliveries import Deliveries, failures_key
from celery_redis_stream.client.connection import Client
from celery_redis_stream.client.streams import ensure_group, read_group
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.stats import StreamStats

from ..conftest import UnitDB
from ..streams import raw_client, stream_config

SC = stream_config(max_deliveries=2)


@pytest.fixture
def client(unit_db: UnitDB) -> Iterator[Client]:
    client = raw_client(unit_db.url)
    ensure_group(client, SC)
    yield client
    client.close()


def batches(send: Mock) -> tuple[Batches, StreamStats, Mock]:
    stats = StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)
    dispatcher, pacer = Mock(send=send), Mock()
    exactly = Mock(step=Mock(return_value=None))  # at least once: the commit is position.commit
    return Batches(dispatcher, exactly, Deliveries("c1"), pacer, {"orders": stats}), stats, pacer


def read(client: Client, *ids: str) -> list[RawEntry]:
    for entry_id in ids:
        client.xadd("orders", {"n": entry_id}, id=entry_id)
    return read_group(client, "celery", "c1", {"orders": ">"}, count=10, block_ms=None)["orders"]


def pending(client: Client) -> int:
    summary = client.execute_command("XPENDING", "orders", "celery")
    return int(summary[0])


def test_a_batch_is_published_then_acknowledged_with_its_dead_letters(client: Client) -> None:
    entries = read(client, "1-0", "2-0", "3-0")
    send = Mock(side_effect=lambda sc, live, counts, step: [DeadLetter(live[1], "converter_error", "boom")])
    handler, stats, pacer = batches(send)
    handler.handle(client, SC, entries)
    (_, live, counts), _ = send.call_args
    assert [e.id for e in live] == ["1-0", "2-0", "3-0"] and counts == {"1-0": 1, "2-0": 1, "3-0": 1}
    assert pending(client) == 0 and client.xlen("orders:dead") == 1
    assert (stats.dispatched, stats.dead_lettered, stats.last_id) == (2, 1, "3-0")
    assert stats.dead_lettered_by_reason == {"converter_error": 1}
    pacer.pace.assert_called_once()


def test_nothing_moves_when_the_broker_refuses_the_batch(client: Client) -> None:
    entries = read(client, "1-0", "2-0")
    handler, stats, _ = batches(Mock(side_effect=BrokerUnavailable("down")))
    with pytest.raises(BrokerUnavailable):
        handler.handle(client, SC, entries)
    assert pending(client) == 2 and stats.dispatched == 0
    assert not client.exists("orders:dead")


def test_suspects_go_alone_and_one_past_max_deliveries_is_dead_lettered_unconverted(client: Client) -> None:
    entries = read(client, "1-0", "2-0", "3-0", "4-0")
    client.hset(failures_key(SC), mapping={"2-0": 2, "3-0": 1})
    send = Mock(return_value=[])
    handler, stats, _ = batches(send)
    handler.deliveries.load(client, SC, [e.id for e in entries])
    handler.handle(client, SC, entries)
    sent = [[e.id for e in call.args[1]] for call in send.call_args_list]
    assert sent == [["1-0"], ["3-0"], ["4-0"]]  # 2-0 reached max_deliveries: never converted again
    assert send.call_args_list[1].args[2] == {"3-0": 2}  # its delivery count
    ((_, letter),) = client.xrange("orders:dead")
    assert letter[letter.index(b"dlq_reason") + 1] == b"max_deliveries"
    assert pending(client) == 0 and stats.dead_lettered_by_reason == {"max_deliveries": 1}
    assert client.hlen(failures_key(SC)) == 0  # committed suspects' counts are forgotten


def test_trimmed_pending_entries_are_acknowledged_and_counted(client: Client) -> None:
    read(client, "1-0", "2-0")
    client.xdel("orders", "2-0")
    handler, stats, _ = batches(Mock(return_value=[]))
    live = [RawEntry("orders", "1-0", (b"n", b"1-0"))]
    handler.handle(client, SC, live, trimmed=["2-0"])
    assert pending(client) == 0 and (stats.dispatched, stats.trimmed) == (1, 1)

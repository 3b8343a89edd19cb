"""read/tracker.py: tracker mode's rounds under the lease against a real Redis, the publishing a Mock."""

from __future__ import annotations

from unittest.mock import Mock

import pytest

from celery_redis_stream.client.connection import Client
from celery_redis_stream.exceptions import LeaseLost
from celery_redis_stream.read.tracker import TrackerReader

from ..conftest import UnitDB
from .readers import TRACKED, sent, wiring


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


def test_a_new_holder_resumes_after_the_stored_position(unit_db: UnitDB, client: Client) -> None:
    for i in range(1, 4):
        client.xadd("events", {"n": i}, id=f"{i}-0")
    client.set(TRACKED.tracker_key, "1-0")  # committed by the previous holder
    reader = TrackerReader(wiring(unit_db.url), batch_size=10)
    reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
    reader.add(TRACKED)
    reader.step(client)
    assert sent(send.send) == ["2-0", "3-0"] and client.get(TRACKED.tracker_key) == b"3-0"
    reader.close(client, warm=True)


def test_a_reader_that_lost_its_lease_stops_reading_and_keeps_the_new_holders_position(
    unit_db: UnitDB, client: Client
) -> None:
    reader = TrackerReader(wiring(unit_db.url), batch_size=10)
    reader.batches.dispatcher = send = Mock(send=Mock(return_value=[]))
    reader.add(TRACKED)
    client.xadd("events", {"n": 1}, id="1-0")
    reader.step(client)
    assert client.get(TRACKED.tracker_key) == b"1-0"

    def taken_meanwhile(*args: object, **kwargs: object) -> list[object]:
        client.set(TRACKED.lease_key, "someone-else", px=60_000)  # expired while this worker was paused
        return []

    send.send.side_effect = taken_meanwhile
    client.xadd("events", {"n": 2}, id="2-0")
    with pytest.raises(LeaseLost):
        reader.step(client)
    assert client.get(TRACKED.tracker_key) == b"1-0" and not reader.wiring.stats["events"].reading
    assert reader.owned == {}
    reader.close(client, warm=True)
    assert client.get(TRACKED.lease_key) == b"someone-else"  # not released: it is not ours

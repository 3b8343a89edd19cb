"""read/base.py: discovery of the streams a pattern matches (the readers' rounds: test_group.py, test_tracker.py)."""

from __future__ import annotations

import threading
from unittest.mock import Mock

import pytest

from celery_redis_stream.client.connection import Client
from celery_redis_stream.read.base import Discovery

from ..conftest import UnitDB
from ..streams import bridge_config, stream_config


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

"""service.Service without a worker: which readers it makes, what discovery leaves alone, a prompt stop."""

from __future__ import annotations

import time

from celery import Celery

from celery_redis_stream.read.group import GroupReader
from celery_redis_stream.read.tracker import TrackerReader
from celery_redis_stream.service import Service

from .conftest import UnitDB
from .streams import bridge_config, stream_config


def service(url: str, *streams: object) -> Service:
    app = Celery(broker="memory://", set_as_current=False)
    return Service(app, bridge_config(url, *streams), consumer="c@h")  # type: ignore[arg-type]


def test_one_reader_per_group_and_batch_size_and_one_for_trackers() -> None:
    svc = service(
        "redis://127.0.0.1:1/0",
        stream_config("a"), stream_config("b"), stream_config("c", group="other"), stream_config("d", batch_size=5),
        stream_config("e", mode="tracker"), stream_config("f", mode="tracker"),
    )  # fmt: skip
    readers = sorted(
        (type(t.reader).__name__, sorted(sc.stream for sc in t.reader.incoming))  # type: ignore[attr-defined]
        for t in svc.loops
    )
    assert readers == [
        ("GroupReader", ["a", "b"]), ("GroupReader", ["c"]), ("GroupReader", ["d"]), ("TrackerReader", ["e", "f"]),
    ]  # fmt: skip
    assert all(isinstance(t.reader, (GroupReader, TrackerReader)) for t in svc.loops)
    assert (svc.stats["a"].group, svc.stats["a"].tracker) == ("celery", None)
    assert (svc.stats["e"].group, svc.stats["e"].tracker) == (None, "stream_tracker:{e}")
    assert svc.discovery is None


def test_discovery_leaves_read_and_dead_letter_streams_alone() -> None:
    svc = service("redis://127.0.0.1:1/0", stream_config("orders"), stream_config("events:*"))
    assert svc.discovery is not None
    assert svc.known("orders") and svc.known("orders:dead") and svc.known("events:eu:dead")
    assert not svc.known("events:eu") and not svc.known("payments:dead")


def test_start_reads_and_stop_is_prompt_and_idempotent(unit_db: UnitDB) -> None:
    svc = service(unit_db.url, stream_config("orders", fast_path=False))
    svc.start()
    try:
        deadline = time.monotonic() + 10
        while not svc.stats["orders"].reading and time.monotonic() < deadline:
            time.sleep(0.01)
        assert svc.stats["orders"].reading and svc.alive
    finally:
        started = time.monotonic()
        svc.stop()
    assert not svc.alive and time.monotonic() - started < 2
    svc.stop()
    assert unit_db.client.xinfo_groups("orders")[0]["name"] == b"celery"
    assert svc.info()["consumer"] == "c1"  # stream_consumer wins over the worker's name

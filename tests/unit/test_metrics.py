"""metrics.py: what a scrape reports: the readers' own counts always, lag and pending from Redis when it answers."""

from __future__ import annotations

import sys
import threading
from types import SimpleNamespace

import pytest

from celery_redis_stream.config import load_config
from celery_redis_stream.exceptions import StreamConfigError
from celery_redis_stream.metrics import BridgeCollector, MetricsServer, reader_states
from celery_redis_stream.stats import StreamStats

from ..support import free_port, make_app
from .conftest import UnitDB

TASKS = {"orders": "shop.handle", "audit": {"task": "shop.handle", "mode": "tracker"}}
AUDIT = ("audit", "tracker", "stream_tracker:{audit}")  # labelled by the tracker key: never merged with a group
ORDERS = ("orders", "group", "celery")


def service(url: str, *, alive: bool = True, reading: bool = True) -> SimpleNamespace:
    config = load_config(make_app("metrics", stream_url=url, stream_tasks=TASKS))
    stats = {
        "orders": StreamStats(stream="orders", mode="group", task="shop.handle", group="celery", tracker=None,
                              dispatched=7, dead_lettered=1, dead_lettered_by_reason={"not_utf8": 1}, reading=reading),
        "audit": StreamStats(stream="audit", mode="tracker", task="shop.handle", group=None, tracker=AUDIT[2]),
    }  # fmt: skip
    loops = [
        SimpleNamespace(streams=["orders"], is_alive=lambda: True),
        SimpleNamespace(streams=["audit"], is_alive=lambda: alive),
    ]
    configs = {sc.stream: sc for sc in config.streams}
    return SimpleNamespace(config=config, configs=configs, stats=stats, stop_event=threading.Event(), loops=loops)


def scrape(readers: SimpleNamespace) -> dict[str, dict[tuple[str, ...], float]]:
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in BridgeCollector(readers).collect():  # type: ignore[arg-type]
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sample.labels.values())] = sample.value
    return out


def test_reader_states_reading_standing_by_and_stopped() -> None:
    readers = service("redis://127.0.0.1:1/0", alive=False, reading=False)
    assert reader_states(readers) == {"orders": "standing_by", "audit": "stopped"}  # its thread ended
    readers.stats["orders"].reading = True
    assert reader_states(readers) == {"orders": "reading", "audit": "stopped"}
    readers.stop_event.set()
    assert reader_states(readers) == {"orders": "stopped", "audit": "stopped"}


def test_a_scrape_reads_lag_pending_and_dead_letters_from_redis(unit_db: UnitDB) -> None:
    client = unit_db.client
    for i in range(1, 4):
        client.xadd("orders", {"n": i}, id=f"{i}-0")
        client.xadd("audit", {"n": i}, id=f"{i}-0")
    client.xgroup_create("orders", "celery", id="0")
    client.execute_command("XREADGROUP", "GROUP", "celery", "c1", "COUNT", 1, "STREAMS", "orders", ">")
    client.set(AUDIT[2], "1-0")
    client.xadd("orders:dead", {"n": 0})
    metrics = scrape(service(unit_db.url))
    assert metrics["redis_stream_redis_up"] == {(): 1.0}
    assert metrics["redis_stream_lag"] == {ORDERS: 2.0, AUDIT: 2.0}
    assert metrics["redis_stream_pending"] == {ORDERS: 1.0}  # a tracker has nothing pending
    assert metrics["redis_stream_dead_letter_length"][ORDERS] == 1.0
    assert metrics["redis_stream_dispatched_total"] == {ORDERS: 7.0, AUDIT: 0.0}
    assert metrics["redis_stream_dead_lettered_by_reason_total"] == {(*ORDERS, "not_utf8"): 1.0}
    states = metrics["redis_stream_reader_state"]
    assert (states[(*ORDERS, "reading")], states[(*ORDERS, "standing_by")], states[(*AUDIT, "reading")]) == (1, 0, 0)


def test_a_scrape_answers_while_redis_is_down_with_the_readers_own_counts() -> None:
    metrics = scrape(service(f"redis://127.0.0.1:{free_port()}/0"))
    assert metrics["redis_stream_redis_up"] == {(): 0.0}
    assert metrics["redis_stream_dispatched_total"][ORDERS] == 7.0
    assert "redis_stream_lag" not in metrics and "redis_stream_pending" not in metrics


def test_a_metrics_port_without_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(StreamConfigError, match=r"stream_metrics_port needs prometheus_client.*\[prometheus\]"):
        MetricsServer(service("redis://127.0.0.1:1/0"), port=free_port(), addr="127.0.0.1")  # type: ignore[arg-type]


def test_traffic_control_shows_in_the_readers_counts() -> None:
    readers = service(f"redis://127.0.0.1:{free_port()}/0")
    orders = readers.stats["orders"]
    orders.rate_limit_waits, orders.rate_limited, orders.deduplicated = 3, True, 2
    metrics = scrape(readers)
    assert metrics["redis_stream_rate_limit_waits_total"] == {ORDERS: 3.0, AUDIT: 0.0}
    assert metrics["redis_stream_rate_limited"] == {ORDERS: 1.0, AUDIT: 0.0}
    assert metrics["redis_stream_deduplicated_total"] == {ORDERS: 2.0, AUDIT: 0.0}

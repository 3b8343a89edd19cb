"""backpressure.Backpressure: pause while the target queue is over its limit; a flapping queue is logged quietly."""

from __future__ import annotations

import logging
from unittest.mock import Mock

import pytest
from celery import Celery

from celery_redis_stream.exceptions import BrokerUnavailable
from celery_redis_stream.read.backpressure import Backpressure, target_queue
from celery_redis_stream.stats import StreamStats

from ..streams import stream_config

SC = stream_config(max_queue_length=10, queue="orders-q")


def gauged(*sizes: int) -> tuple[Backpressure, StreamStats]:
    backpressure = Backpressure(Celery("bp", set_as_current=False))
    backpressure.gauge = Mock(size=Mock(side_effect=list(sizes)))
    backpressure.watch(SC)
    return backpressure, StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)


def test_a_stream_without_a_limit_is_never_paused() -> None:
    backpressure, stats = gauged()
    assert not backpressure.paused(stream_config(), stats)
    backpressure.gauge.size.assert_not_called()


def test_pause_and_resume_are_logged_once_a_minute_at_info(caplog: pytest.LogCaptureFixture) -> None:
    backpressure, stats = gauged(11, 11, 3, 12, 2)
    with caplog.at_level(logging.DEBUG, logger="celery_redis_stream.read.backpressure"):
        assert backpressure.paused(SC, stats) and stats.paused
        assert backpressure.paused(SC, stats)  # still paused: nothing logged
        assert not backpressure.paused(SC, stats) and not stats.paused
        assert backpressure.paused(SC, stats)  # flapping within a minute: DEBUG
        assert not backpressure.paused(SC, stats)
    levels = [(r.levelname, r.getMessage().split()[1]) for r in caplog.records]
    assert levels == [("INFO", "pausing"), ("INFO", "resuming"), ("DEBUG", "pausing"), ("DEBUG", "resuming")]
    assert "queue=orders-q length=11 limit=10" in caplog.records[0].getMessage()


def test_an_unreadable_queue_is_a_broker_outage() -> None:
    backpressure, stats = gauged()
    backpressure.gauge = Mock(size=Mock(side_effect=OSError("refused")))
    with pytest.raises(BrokerUnavailable, match="orders-q"):
        backpressure.paused(SC, stats)
    backpressure.gauge.close.assert_called_once()


def test_target_queue_follows_the_stream_then_the_routing() -> None:
    app = Celery("bp", set_as_current=False)
    app.conf.task_routes = {"t": {"queue": "routed"}}
    assert target_queue(app, SC) == "orders-q"
    assert target_queue(app, stream_config()) == "routed"
    assert target_queue(Celery("bp", set_as_current=False), stream_config()) == "celery"

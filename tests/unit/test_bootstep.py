"""RedisStreamStep as Celery drives it (StartStopStep: include, start, stop, terminate), against a Mock worker."""

from __future__ import annotations

from typing import Any
from unittest.mock import Mock

import pytest
from celery import signals
from celery.exceptions import ImproperlyConfigured

from celery_redis_stream import RedisStreamStep
from celery_redis_stream.service import Service

from ..support import make_app

# Nothing listens here: a Service built against it never connects unless started.
UNREACHABLE = "redis://127.0.0.1:1/0"


def worker(**conf: Any) -> Mock:
    app = make_app("step", tasks=(), stream_url=UNREACHABLE, **conf)
    return Mock(app=app, hostname="w1@host", steps=[])


def test_without_redis_stream_the_step_is_left_out_and_nothing_is_built() -> None:
    parent = worker(stream_tasks={"orders": {"task": "t", "registered": False}})
    step = RedisStreamStep(parent, without_redis_stream=True)
    assert RedisStreamStep.conditional
    assert step.include(parent) is False
    assert parent.steps == [] and step.obj is None and parent.redis_stream is None


def test_no_mapped_streams_make_a_step_with_nothing_to_start(caplog: pytest.LogCaptureFixture) -> None:
    parent = worker(stream_tasks={})
    step = RedisStreamStep(parent)
    with caplog.at_level("INFO"):
        assert step.include(parent) is True
    assert parent.steps == [step] and step.obj is None and parent.redis_stream is None
    step.start(parent), step.stop(parent), step.terminate(parent)  # no service: nothing to do
    assert step.info(parent) == {"redis_stream": {"streams": []}}
    assert "redis-stream: no streams mapped (stream_tasks is empty); not reading" in caplog.text


def test_the_step_creates_the_service_and_a_stop_then_terminate_is_one_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    parent = worker(stream_tasks={"orders": {"task": "t", "registered": False}, "audit": {"task": "t",
                    "registered": False}})  # fmt: skip
    step = RedisStreamStep(parent, redis_streams="orders")
    assert step.include(parent) is True
    service = step.obj
    assert isinstance(service, Service) and parent.redis_stream is service
    assert list(service.stats) == ["orders"] and service.consumer == "w1@host"
    assert step.info(parent)["redis_stream"]["streams"][0]["stream"] == "orders"
    with caplog.at_level("INFO"):
        step.stop(parent)  # warm shutdown
        step.terminate(parent)  # then cold: the same shutdown, already done
    assert service.stop_event.is_set() and not service.alive
    assert caplog.text.count("redis-stream: stopped") == 1


def test_a_bad_setting_stops_the_worker_in_create_with_a_critical_line(caplog: pytest.LogCaptureFixture) -> None:
    parent = worker(stream_tasks={"orders": {"task": "t", "registered": False, "mode": "sideways"}})
    step = RedisStreamStep(parent)
    with caplog.at_level("CRITICAL"), pytest.raises(ImproperlyConfigured) as info:
        step.include(parent)
    assert "(the worker did not start; nothing was read)" in str(info.value)
    assert [r.levelname for r in caplog.records] == ["CRITICAL"]
    assert caplog.records[0].getMessage().startswith("redis-stream: ")
    assert parent.steps == [] and parent.redis_stream is None


def test_include_if_follows_the_worker_option() -> None:
    parent = worker(stream_tasks={})
    assert RedisStreamStep(parent).include_if(parent) is True
    assert RedisStreamStep(parent, without_redis_stream=True).include_if(parent) is False
    assert RedisStreamStep(parent, redis_streams=" a, ,b ").only == ("a", "b")


def test_start_stop_and_terminate_drive_the_service_as_startstopstep_does() -> None:
    parent = worker(stream_tasks={"orders": {"task": "t", "registered": False}})
    step = RedisStreamStep(parent)
    step.include(parent)
    service = step.obj = Mock(spec=Service)
    step.start(parent)
    step.stop(parent)
    step.terminate(parent)
    assert service.start.call_count == 1 and service.stop.call_count == 1 and service.terminate.call_count == 1


def test_install_is_idempotent() -> None:
    from celery_redis_stream import install

    app = make_app("install", tasks=())
    install(app)
    install(app)
    assert list(app.steps["worker"]).count(RedisStreamStep) == 1
    names = [o.name for o in app.user_options["worker"]]
    assert names.count("without_redis_stream") == 1 and names.count("redis_streams") == 1


def test_any_shutdown_of_this_worker_halts_reading_before_the_step_stops() -> None:
    parent = worker(stream_tasks={"orders": {"task": "t", "registered": False}})
    seen: list[bool] = []
    # Celery 5.5+'s cold handler calls this first and sleeps the soft-shutdown window in it.
    parent.wait_for_soft_shutdown = lambda: seen.append(parent.redis_stream.stop_event.is_set())
    receivers = len(signals.worker_shutting_down.receivers)
    step = RedisStreamStep(parent)
    step.include(parent)
    service: Service = step.obj
    signals.worker_shutting_down.send(sender="other@host", sig="SIGTERM", how="Warm", exitcode=0)
    assert not service.stop_event.is_set()  # another worker of this process
    signals.worker_shutting_down.send(sender="w1@host", sig="SIGTERM", how="Warm", exitcode=0)
    assert service.stop_event.is_set() and not service.closing.is_set()  # halted, not yet stopped

    parent2 = worker(stream_tasks={"orders": {"task": "t", "registered": False}})
    parent2.hostname = "w2@host"
    parent2.wait_for_soft_shutdown = lambda: seen.append(parent2.redis_stream.stop_event.is_set())
    step2 = RedisStreamStep(parent2)
    step2.include(parent2)
    parent2.wait_for_soft_shutdown()
    assert seen == [True]  # halted before the soft-shutdown window
    for one, p in ((step, parent), (step2, parent2)):
        one.stop(p)
    assert step2.obj.closing.is_set()
    assert len(signals.worker_shutting_down.receivers) == receivers  # the receivers went with the steps

"""pacing.Pacer: a reader pauses after a batch only while the worker runs tasks of its own, and never for a trickle."""

from __future__ import annotations

import pytest
from celery.worker import state as worker_state

from celery_redis_stream.batch import pacing
from celery_redis_stream.batch.pacing import Pacer


def ran_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_state, "all_total_count", [worker_state.all_total_count[0] + 1])


def test_reader_pauses_between_batches_only_while_the_worker_runs_its_own_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    pacer = Pacer(pauses.append)
    pacer.pace(0.1)  # an idle worker: no pause
    assert pauses == []
    ran_a_task(monkeypatch)
    pacer.pace(0.1)  # the worker ran a task since the last batch
    assert pauses == [0.1 * pacing.YIELD_SHARE]
    pacer.pace(0.1)  # and none since
    assert len(pauses) == 1
    ran_a_task(monkeypatch)
    pacer.pace(pacing.YIELD_MIN_SECONDS / 2)  # busy, but a small batch: latency first
    assert len(pauses) == 1
    ran_a_task(monkeypatch)
    pacer.pace(10.0)  # capped
    assert pauses[-1] == pacing.YIELD_MAX_SECONDS
    ran_a_task(monkeypatch)
    pacer.pace(0.001, pacing.YIELD_MIN_ENTRIES)  # a quick batch, but a full one: a backlog
    assert pauses[-1] == 0.001 * pacing.YIELD_SHARE
    ran_a_task(monkeypatch)
    pacer.pace(0.001, 3)  # a quick small batch: a trickle, latency first
    assert len(pauses) == 3

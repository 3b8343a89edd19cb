"""tests.workerapp with a before_task_publish receiver connected: the fast path steps aside in this worker."""

from __future__ import annotations

from typing import Any

from celery import signals

from .workerapp import app

__all__ = ["app"]


@signals.before_task_publish.connect
def mark(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is not None:
        headers["seen_by_receiver"] = "1"

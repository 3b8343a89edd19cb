"""Tasks fed by the streams mapped in settings.CELERY_STREAM_TASKS.

Each logs what it received and the entry it came from (self.request.redis_stream
and redis_stream_id). A real task should be idempotent: an entry can be
dispatched more than once (at least once), always with the same task id.
"""

from typing import Any

from celery import shared_task
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)


def _log(task: Any, what: str, received: Any) -> None:
    logger.info(
        "shop: %s stream=%s id=%s task_id=%s received %r",
        what, task.request.redis_stream, task.request.redis_stream_id, task.request.id, received,
    )  # fmt: skip


@shared_task(bind=True)
def handle_order(self: Any, fields: dict[str, str]) -> None:
    _log(self, "handle_order", fields)


@shared_task(bind=True)
def capture_payment(self: Any, **kwargs: str) -> None:
    _log(self, "capture_payment", kwargs)
    try:
        valid = float(kwargs.get("amount", "")) > 0
    except ValueError:
        valid = False
    if not valid:
        # Fails for good: with dead_letter_failed_tasks the entry lands in payments:dead.
        raise ValueError(f"cannot capture amount {kwargs.get('amount')!r}")


@shared_task(bind=True)
def ship_order(self: Any, order_id: int, **details: str) -> None:
    _log(self, "ship_order", {"order_id": order_id, **details})


@shared_task(bind=True)
def audit_event(self: Any, stream: str, entry_id: str, fields: dict[str, str]) -> None:
    _log(self, "audit_event", [stream, entry_id, fields])

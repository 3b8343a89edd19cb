"""tests.workerapp with a reader_ready receiver that logs what it got, and whether the worker imported rich."""

from __future__ import annotations

import sys
from typing import Any

from celery.utils.log import get_logger

from celery_redis_stream.signals import reader_ready

from .workerapp import app

__all__ = ["app"]

logger = get_logger(__name__)


@reader_ready.connect
def ready(sender: Any, streams: tuple[str, ...], mode: str, consumer: str, **kwargs: Any) -> None:
    # The tables and progress bars of the CLI need rich; a worker must not load it.
    rich = sorted(m for m in sys.modules if m == "rich" or m.startswith("rich."))
    logger.warning(
        "reader_ready streams=%s mode=%s consumer=%s rich_modules=%d", ",".join(streams), mode, consumer, len(rich)
    )

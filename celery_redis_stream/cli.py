"""`celery redis-stream ...`: status, reset and dead-letters, registered as a celery.commands entry point."""

from __future__ import annotations

from typing import Any

import click

__all__ = ["redis_stream"]


@click.group(name="redis-stream")
@click.pass_context
def redis_stream(ctx: Any) -> None:
    """Inspect and steer the Redis streams this app maps to tasks."""

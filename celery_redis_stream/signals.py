"""Signals the readers send: ``reader_ready``, once a reader has set up its streams and is about to read them."""

from __future__ import annotations

from collections.abc import Iterable

from celery.utils.dispatch import Signal

__all__ = ["reader_ready"]

#: Sent by a reader thread once its consumer group exists (group mode) or it
#: holds the lease and knows its position (tracker mode), just before it reads.
#: ``sender`` is the worker's :class:`~celery_redis_stream.service.Service`;
#: ``streams`` the names that became ready (a tuple), ``mode`` ``"group"`` or
#: ``"tracker"``, ``consumer`` the consumer name. Sent again when a reader sets
#: itself up again (after a Redis error, a lease taken back, a discovered stream).
reader_ready = Signal(name="reader_ready", providing_args={"streams", "mode", "consumer"})


def send_reader_ready(sender: object, streams: Iterable[str], *, mode: str, consumer: str) -> None:
    """Send :data:`reader_ready` if anyone listens; receivers run in the reader thread, and their errors are logged."""
    # As Celery does for heartbeat_sent: nothing is built or sent when nobody listens.
    if reader_ready.receivers:
        reader_ready.send(sender=sender, streams=tuple(streams), mode=mode, consumer=consumer)

"""QueueGauge: how many messages wait in a Celery queue, for pausing a stream's reader."""

from __future__ import annotations

import contextlib
from typing import Any

from .config import StreamConfig

__all__ = ["QueueGauge", "target_queue"]


def target_queue(app: Any, sc: StreamConfig) -> str:
    """The queue a stream's tasks land in: the stream's ``queue`` or the app's routing."""
    if sc.queue:
        return sc.queue
    route = app.amqp.router.route(dict(sc.options), sc.task)
    queue = route.get("queue")
    return str(getattr(queue, "name", None) or queue or app.conf.task_default_queue)


class QueueGauge:
    """Reads queue lengths over one broker connection.

    A passive queue declare works on every kombu transport: the Redis
    transport answers with the length of the queue's lists (priorities
    included), AMQP with the broker's message count.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._connection: Any = None
        self._channel: Any = None

    def size(self, queue: str) -> int:
        if self._connection is None:
            self._connection = self.app.connection_for_write()
            self._connection.ensure_connection(max_retries=1)
        if self._channel is None:
            self._channel = self._connection.channel()
        try:
            return int(self._channel.queue_declare(queue=queue, passive=True).message_count)
        except self._connection.channel_errors:
            # The queue does not exist yet (nothing was ever sent to it); AMQP
            # closes the channel on this, so the next call opens another.
            self._channel = None
            return 0

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is dropped anyway
                connection.release()

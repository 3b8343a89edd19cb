"""Backpressure: a stream's reader pauses while its target Celery queue holds more than max_queue_length."""

from __future__ import annotations

import contextlib
import time

from celery import Celery
from celery.utils.log import get_logger
from kombu.connection import Connection

from ..client.connection import describe
from ..config import StreamConfig
from ..exceptions import BrokerUnavailable
from ..stats import StreamStats

__all__ = ["Backpressure", "QueueGauge", "target_queue"]

logger = get_logger(__name__)

#: A queue hovering at its limit flips every read: a pause and its resume are
#: logged at INFO, further ones within this many seconds at DEBUG.
QUIET_SECONDS = 60.0


def target_queue(app: Celery, sc: StreamConfig) -> str:
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

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._connection: Connection | None = None
        self._channel: object = None

    def size(self, queue: str) -> int:
        if self._connection is None:
            self._connection = self.app.connection_for_write()
            self._connection.ensure_connection(max_retries=1)
        connection = self._connection
        if self._channel is None:
            self._channel = connection.channel()
        try:
            return int(self._channel.queue_declare(queue=queue, passive=True).message_count)  # type: ignore[attr-defined]
        except connection.channel_errors:
            # The queue does not exist yet (nothing was ever sent to it); AMQP
            # closes the channel on this, so the next call opens another.
            self._channel = None
            return 0

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is dropped anyway
                connection.release()  # type: ignore[no-untyped-call]


class Backpressure:
    """One reader's view of its streams' target queues: leave the backlog in the stream while a queue is full."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.gauge = QueueGauge(app)
        self.queues: dict[str, str] = {}
        self.quiet_until: dict[str, float] = {}
        self.loud_pause: dict[str, bool] = {}

    def watch(self, sc: StreamConfig) -> None:
        """Measure the target queue of ``sc`` if it has a max_queue_length."""
        if sc.max_queue_length is not None:
            self.queues[sc.stream] = target_queue(self.app, sc)

    def paused(self, sc: StreamConfig, stats: StreamStats) -> bool:
        """Whether ``sc`` waits this round; BrokerUnavailable when the queue's length cannot be read."""
        if sc.max_queue_length is None:
            return False
        queue = self.queues[sc.stream]
        try:
            size = self.gauge.size(queue)
        except Exception as exc:
            self.gauge.close()
            raise BrokerUnavailable(f"cannot read the length of queue {queue!r}: {describe(exc)}") from exc
        paused = size > sc.max_queue_length
        if paused != stats.paused:
            stats.paused = paused
            self._log(sc, queue, size, paused)
        return paused

    def _log(self, sc: StreamConfig, queue: str, size: int, paused: bool) -> None:
        now = time.monotonic()
        if paused:
            loud = now >= self.quiet_until.get(sc.stream, 0.0)
            if loud:
                self.quiet_until[sc.stream] = now + QUIET_SECONDS
            self.loud_pause[sc.stream] = loud
        else:
            loud = self.loud_pause.get(sc.stream, True)
        (logger.info if loud else logger.debug)(
            "redis-stream: %s stream=%s queue=%s length=%d limit=%d",
            "pausing" if paused else "resuming", sc.stream, queue, size, sc.max_queue_length,
        )  # fmt: skip

    def close(self) -> None:
        self.gauge.close()

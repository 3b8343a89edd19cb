"""ReaderThread: the one thread type that runs a reader: its client, its rounds, backoff after errors, cleanup."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable

from celery.utils.log import get_logger

from .client.connection import Client, classify, describe
from .exceptions import BrokerUnavailable, LeaseLost
from .read.base import Reader
from .stats import StreamStats

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "ReaderThread", "StreamStats", "backoff"]

logger = get_logger(__name__)

BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: doubling from BACKOFF_MIN, capped, jittered."""
    return float(min(BACKOFF_MAX, BACKOFF_MIN * 2 ** min(failures - 1, 10)) * random.uniform(0.5, 1.0))


class ReaderThread(threading.Thread):
    """Runs ``reader.step(client)`` until the stop event is set, as redis-py's PubSubWorkerThread runs its pubsub.

    Handed what it drives: the reader, how to get and give back a Redis
    client, the stop event (set when a shutdown begins: no new round) and
    the closing event (set at the step's stop: clean up and end). Errors Redis will keep refusing (permissions,
    a key of the wrong type: connection.ERRORS) stop the reader; anything else
    is retried with capped, jittered backoff, the reader told to forget what
    the error made uncertain.
    """

    def __init__(
        self, reader: Reader, *, connect: Callable[[], Client], release: Callable[[Client], None],
        stop_event: threading.Event, closing: threading.Event | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name=f"redis-stream {reader.label}", daemon=True)
        self.reader = reader
        self.label = reader.label
        self._connect = connect
        self._release = release
        self.stop_event = stop_event
        # None: clean up as soon as reading stops (a thread run without a Service).
        self.closing = closing
        self.client: Client | None = None
        self.failures = 0

    @property
    def streams(self) -> list[str]:
        """The streams the reader reads now (for metrics' reader state)."""
        return [stats.stream for stats in self.reader.stats()]

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    if self.client is None:
                        self.client = self._connect()
                    self.reader.step(self.client)
                    if self.failures:
                        self._recovered()
                except Exception as exc:
                    if classify(exc) == "fatal":
                        self._give_up(exc)
                        return
                    self._retry_later(exc)
            self._halted()
        finally:
            self.cleanup()

    def _halted(self) -> None:
        # Reading stopped when the shutdown began; the group consumer and the
        # lease are let go at the step's stop, after the worker drained.
        if self.closing is not None and not self.closing.is_set():
            logger.info("redis-stream: %s stopped reading: the worker is shutting down", self.label)
            self.closing.wait()

    def _recovered(self) -> None:
        logger.info("redis-stream: %s recovered after %d failed attempt(s)", self.label, self.failures)
        self.failures = 0
        for stats in self.reader.stats():
            stats.last_error = None

    def _give_up(self, exc: BaseException) -> None:
        error = describe(exc)
        stats = self.reader.stats()
        for one in stats:
            one.last_error, one.reading = error, False
        logger.error(
            "redis-stream: %s stopped reading %s: %s (not retried: fix the Redis permissions or the key, "
            "then restart the worker)",
            self.label, ",".join(s.stream for s in stats), error,
        )  # fmt: skip

    def _retry_later(self, exc: BaseException) -> None:
        self.failures += 1
        error = describe(exc)
        for stats in self.reader.stats():
            stats.last_error = error
        delay = backoff(self.failures)
        log = logger.warning if self.failures == 1 else logger.debug
        if isinstance(exc, BrokerUnavailable):
            for stats in self.reader.stats():
                stats.broker_retries += 1
            log("redis-stream: %s: broker unavailable, position kept, retrying: %s", self.label, error)
        elif isinstance(exc, LeaseLost):
            log("redis-stream: %s: %s", self.label, error)
        else:
            log("redis-stream: %s: %s; retrying in %.1fs", self.label, error, delay, exc_info=self.failures == 1)
        self.reader.on_error(exc)
        self.stop_event.wait(delay)

    def cleanup(self) -> None:
        self.reader.close(self.client, warm=self.stopping and not self.failures)
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail; it is discarded anyway
                self._release(client)

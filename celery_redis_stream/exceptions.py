"""Exceptions raised by celery-redis-stream."""

from __future__ import annotations

from celery.exceptions import ImproperlyConfigured

__all__ = [
    "BrokerUnavailable",
    "EmptyEntryError",
    "EntryError",
    "LeaseLost",
    "NotConfirmed",
    "StreamConfigError",
    "StreamError",
]


class StreamError(Exception):
    """Base class of every error raised by celery-redis-stream."""


class StreamConfigError(StreamError, ImproperlyConfigured):  # type: ignore[misc]
    """A ``stream_*`` setting is invalid; the message names the setting and the stream.

    The parts are attributes, so that code never parses the message: ``setting``
    as the user wrote it (``stream_batch_size``, ``stream_tasks 'queue'``,
    ``CELERY_STREAM_BATCHSIZE``), ``stream`` (None for a global setting, whose
    ``affects`` then lists the mapped streams) and ``problem``. Given only a
    message, ``setting`` and ``stream`` are None and ``problem`` is the message.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        setting: str | None = None,
        stream: str | None = None,
        problem: str | None = None,
        affects: tuple[object, ...] = (),
    ) -> None:
        if message is None:
            where = f" for stream {stream!r}" if stream is not None else ""
            message = f"celery-redis-stream: setting {setting}{where}: {problem}"
        super().__init__(message)
        self.setting = setting
        self.stream = stream
        self.problem = message if problem is None else problem
        self.affects = affects

    def affecting(self, streams: tuple[object, ...]) -> StreamConfigError:
        """This error of a global setting, naming the ``streams`` it affects."""
        names = ", ".join(map(repr, streams))
        return StreamConfigError(
            f"{self} (affects streams {names})", setting=self.setting, problem=self.problem, affects=streams
        )


class EntryError(StreamError):
    """A stream entry cannot become a task; it goes to the dead-letter stream."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class EmptyEntryError(StreamError, ValueError):
    """produce() was given no field: Redis has no empty stream entries."""


class BrokerUnavailable(StreamError):
    """The broker did not accept a publish; the batch is retried, nothing is acknowledged."""


class LeaseLost(StreamError):
    """Another worker holds the tracker lease now; this worker must stop reading the stream."""


class NotConfirmed(StreamError):
    """RabbitMQ did not confirm every message of a batch; none of it may be acknowledged."""

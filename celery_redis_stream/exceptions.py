"""Exceptions raised by celery-redis-stream."""

from __future__ import annotations

from celery.exceptions import ImproperlyConfigured

__all__ = ["EmptyEntryError", "EntryError", "StreamConfigError", "StreamError"]


class StreamError(Exception):
    """Base class of every error raised by celery-redis-stream."""


class StreamConfigError(StreamError, ImproperlyConfigured):  # type: ignore[misc]
    """A ``stream_*`` setting is invalid; the message names the setting and the stream."""


class EntryError(StreamError):
    """A stream entry cannot become a task; it goes to the dead-letter stream."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class EmptyEntryError(StreamError, ValueError):
    """produce() was given no field: Redis has no empty stream entries."""

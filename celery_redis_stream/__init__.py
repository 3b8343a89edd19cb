"""celery-redis-stream: Redis Streams entries become Celery tasks, at least once."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .bootstep import RedisStreamStep, install
from .entry import StreamEntry
from .exceptions import EmptyEntryError, EntryError, StreamConfigError, StreamError
from .producer import produce

try:
    __version__ = version("celery-redis-stream")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "EmptyEntryError",
    "EntryError",
    "RedisStreamStep",
    "StreamConfigError",
    "StreamEntry",
    "StreamError",
    "__version__",
    "install",
    "produce",
]

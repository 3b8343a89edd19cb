"""celery-redis-stream: Redis Streams entries become Celery tasks, at least once.

The modules, in the order an entry travels through them (the folder is flat;
this is its map):

1. In the worker: ``bootstep`` (the step, ``install``), ``config`` (settings
   as data, read once), ``service`` (one worker's readers), ``loops``
   (``ReaderThread``: runs a reader, backs off, cleans up).
2. Reading: ``connection`` (the Redis seam: raw replies, decoding, the error
   table) with ``resp`` (its reply parser) and ``slots`` (one client for a
   cluster), ``keys`` (the key layout), ``reader`` (the stream commands),
   ``readers`` with ``reader_group`` / ``reader_tracker`` (one round per
   ``step(client)``), ``lease``, ``backpressure``, ``pacing``, ``signals``.
3. One batch, ``batch``: prepare (``deliveries``: the in-flight record and
   failure counts; ``entry``: decoding, call shapes; ``deadletters``: the
   format and reasons) -> publish (``dispatch``; Redis: ``fastpath``,
   ``envelope``, ``atomic`` for exactly once; RabbitMQ: ``amqpfast``,
   ``amqpframes``, ``confirms``; ``tracing`` for trace headers) -> commit
   (``position`` with ``position_group`` / ``position_tracker``).
4. After the task: ``failed`` (dead letters for tasks that fail for good).
5. Keeping Redis tidy: ``upkeep``, ``hygiene``, ``retention``.
6. Operating it: ``status`` with ``rows`` and ``lag``, ``stats``, ``metrics``,
   ``cli`` with ``cli_common`` / ``cli_reset`` / ``cli_deadletters``,
   ``terminal``, ``redact``.
7. For users' code and tests: ``producer`` (``produce()``), ``testing``,
   ``pytest_plugin``, ``harness``, ``exceptions``.
"""

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

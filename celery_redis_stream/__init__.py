"""celery-redis-stream: Redis Streams entries become Celery tasks, at least once (exactly once on one server).

The package, in the order an entry travels through it:

1. In the worker: ``bootstep`` (the step, ``install``, the inspect command), ``config`` (settings as data,
   read once), ``service`` (one worker's readers), ``thread`` (``ReaderThread``: runs a reader, backs off,
   cleans up).
2. ``read/``: one round of reading per ``step(client)``: ``base`` (what readers share, pattern discovery),
   ``group`` and ``tracker`` (the two modes), ``backpressure``.
3. ``batch/``: prepare -> publish -> commit (``batches``), the in-flight record and failure counts
   (``deliveries``), ``pacing``. Entries are decoded by ``entry`` (call shapes, ``StreamEntry``); bad ones
   become ``deadletters``.
4. ``publish/``: ``dispatch`` (which path, bad entries apart from retryable failures); Redis: ``redis_fast``,
   ``redis_envelope``, ``exactly_once``; RabbitMQ: ``amqp_fast``, ``amqp_frames``, ``amqp_confirms``; what
   both fast paths share: ``template``; trace headers: ``tracing``.
5. ``position/``: THE DELIVERY RULE (``rule``: commit only after publish), one type per mode (``group``,
   ``tracker``), the tracker ``lease``, the ``lag`` of a position.
6. ``client/``: the Redis seam: ``connection`` (clients, replies, the error table), ``streams`` (the stream
   commands), ``cluster`` (many slots from one thread), ``parser`` (the reader's RESP2 parser); ``keys``
   holds the key layout.
7. ``upkeep/``: ``cadence``, ``consumers`` (hygiene), ``retention``. After the task: ``failed_tasks``.
8. Operating it: ``status`` with ``rows``, ``stats``, ``metrics``, ``cli/`` (``celery redis-stream``),
   ``redact``, ``signals``.
9. For users' code and tests: ``producer`` (``produce()``), ``testing/`` (``preview``/``run``, and
   ``processes``: private servers and workers), ``pytest_plugin``, ``exceptions``.
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

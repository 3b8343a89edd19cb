"""StreamEntry -> broker message, in batches; separates bad entries from retryable failures."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from celery.worker import state as worker_state
from kombu import exceptions as kombu_exceptions
from kombu.exceptions import OperationalError

from .config import StreamConfig
from .entry import RawEntry, build_call, decode
from .exceptions import EntryError, StreamError
from .fastpath import FastPath
from .position import DeadLetter

__all__ = ["BrokerUnavailable", "Dispatcher", "task_id_for"]

TASK_ID_NAMESPACE = uuid.UUID("6f1c5c2e-52d3-4b7e-9a55-0c6a2f3e1d10")

# kombu >= 5.7 raises this when a batched publish failed with an uncertain
# outcome (a timeout, a reset): retry the batch, never dead-letter its entries.
BATCH_PUBLISH_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(kombu_exceptions, name) for name in ("BatchPublishError",) if hasattr(kombu_exceptions, name)
)

# While the worker runs tasks of its own, a batch that took at least
# YIELD_MIN_SECONDS, or held at least YIELD_MIN_ENTRIES entries (a backlog:
# the fast path sends 100 in about 4 ms), is followed by a pause of its time
# x YIELD_SHARE, capped.
YIELD_MIN_SECONDS = 0.005
YIELD_MIN_ENTRIES = 50
YIELD_SHARE = 4.0
YIELD_MAX_SECONDS = 0.5

# Seconds; kombu's Redis transport options for the publishing connection only.
PUBLISH_TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}


class BrokerUnavailable(StreamError):
    """The broker did not accept a publish; the batch is retried, nothing is acknowledged."""


def task_id_for(sc: StreamConfig, entry_id: str) -> str:
    """The task id of an entry: the same whichever worker sends it, different per group or tracker."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{sc.stream}\x00{sc.position_name}\x00{entry_id}"))


def task_ids_for(sc: StreamConfig, entry_ids: Sequence[str]) -> list[str]:
    """``[task_id_for(sc, i) for i in entry_ids]``, hashing the shared prefix once per batch."""
    # uuid5 is SHA-1 over namespace + name, truncated, with version bits set.
    name = f"{sc.stream}\x00{sc.position_name}\x00".encode()
    prefix = hashlib.sha1(TASK_ID_NAMESPACE.bytes + name, usedforsecurity=False)
    out = []
    variant = _VARIANT
    for entry_id in entry_ids:
        digest = prefix.copy()
        digest.update(entry_id.encode())
        # str(uuid.UUID(bytes=digest[:16], version=5)), formatted from the hex digest directly
        h = digest.hexdigest()
        out.append(f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}")
    return out


# The RFC 4122 variant bits (10xx) set in a uuid's 17th hex digit.
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


class Dispatcher:
    """Publishes batches of entries as Celery tasks through one reused producer."""

    def __init__(self, app: Any, *, max_entry_bytes: int) -> None:
        self.app = app
        self.max_entry_bytes = max_entry_bytes
        self._connection: Any = None
        self._producer: Any = None
        self.fast_path = FastPath(app)
        self._bound: dict[str, Any] = {}
        self._executed = worker_state.all_total_count[0]
        self._retryable: tuple[type[BaseException], ...] = (OperationalError, OSError, *BATCH_PUBLISH_ERRORS)

    @property
    def producer(self) -> Any:
        if self._producer is None:
            # A broker that accepts connections but never answers would block
            # the publish, and so the reader, forever: kombu's Redis transport
            # waits without limit by default. The user's own values win.
            configured = self.app.conf.broker_transport_options or {}
            timeouts = {k: v for k, v in PUBLISH_TIMEOUTS.items() if k not in configured}
            connection = self.app.connection_for_write(transport_options=timeouts)
            self._retryable = (OperationalError, OSError, *BATCH_PUBLISH_ERRORS, *connection.connection_errors)
            self._connection = connection
            self._producer = self.app.amqp.Producer(connection, auto_declare=False)
        return self._producer

    def _bound_queue(self, producer: Any, name: str | None) -> Any:
        """The app's queue ``name`` bound to the producer's channel once, or ``name`` itself.

        Given a queue name, kombu copies and binds the queue and its exchange
        on every publish (~12% of a send_task); a bound queue skips that and
        the message is the same. Unknown names are left to send_task, which
        fails or creates them as it always does.
        """
        if name is None:
            return None
        queue = self._bound.get(name)
        if queue is None:
            try:
                queue = self._bound[name] = self.app.amqp.queues[name].bind(producer.channel)
            except KeyError:
                return name
        return queue

    def close(self) -> None:
        """Drop the broker connection; the next batch opens a new one."""
        connection, self._connection, self._producer = self._connection, None, None
        self._bound = {}
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is dropped anyway
                connection.release()

    def send(
        self, sc: StreamConfig, entries: Sequence[RawEntry], counts: dict[str, int] | None = None
    ) -> list[DeadLetter]:
        """Publish one task per entry and return the entries that must be dead-lettered.

        Raises :class:`BrokerUnavailable` when the broker did not take the batch;
        nothing of it may then be acknowledged.
        """
        return self._send(sc, entries, counts)

    def pace(self, elapsed: float, wait: Callable[[float], Any], entries: int = 0) -> None:
        """After a large batch, pause for four times its time if this worker runs tasks of its own.

        The reader thread and the worker's consumer share one GIL; a reader
        bridging a backlog flat out would otherwise leave the worker a fifth
        of it. While the worker holds or has just run tasks, the reader takes
        about a fifth; an idle worker's reader never waits, and small batches
        (a steady trickle, where latency matters) never wait either. Called
        after the batch was acknowledged, so a pause never holds a position.
        """
        executed = worker_state.all_total_count[0]
        busy = bool(worker_state.reserved_requests) or executed != self._executed
        self._executed = executed
        if busy and (elapsed >= YIELD_MIN_SECONDS or entries >= YIELD_MIN_ENTRIES):
            wait(min(elapsed * YIELD_SHARE, YIELD_MAX_SECONDS))

    def _send(self, sc: StreamConfig, entries: Sequence[RawEntry], counts: dict[str, int] | None) -> list[DeadLetter]:
        dead: list[DeadLetter] = []
        calls = []
        for raw in entries:
            try:
                entry = decode(raw, max_bytes=self.max_entry_bytes, delivery_count=(counts or {}).get(raw.id, 1))
                calls.append((raw.id, *build_call(entry, sc.call, sc.converter)))
            except EntryError as exc:
                dead.append(DeadLetter(raw, exc.reason, exc.error))
        if not calls:
            return dead
        send_task = self.app.send_task
        options = dict(sc.options)
        extra_headers = options.pop("headers", None) or {}
        # The reader retries whole batches with its own backoff; kombu's
        # per-publish retries would only stack timeouts in front of it.
        options.setdefault("retry", False)
        by_id = {raw.id: raw for raw in entries}
        task_ids = task_ids_for(sc, [call[0] for call in calls])
        try:
            producer = self.producer
            if sc.fast_path:
                failed = self.fast_path.publish(
                    producer,
                    sc,
                    [(call[0], task_id, *call[1:]) for call, task_id in zip(calls, task_ids, strict=True)],
                    extra_headers=extra_headers,
                    options=options,
                )
                if failed is not None:  # None: this batch needs the standard path
                    dead.extend(DeadLetter(by_id[entry_id], "publish_error", error) for entry_id, error in failed)
                    return dead
            batch = producer.batch(max_size=len(calls)) if hasattr(producer, "batch") else contextlib.nullcontext()
            queue = self._bound_queue(producer, sc.queue)
            with batch:
                for (entry_id, args, kwargs), task_id in zip(calls, task_ids, strict=True):
                    try:
                        send_task(
                            sc.task,
                            args=args,
                            kwargs=kwargs,
                            task_id=task_id,
                            producer=producer,
                            queue=queue,
                            headers={**extra_headers, "redis_stream": sc.stream, "redis_stream_id": entry_id},
                            **options,
                        )
                    except self._retryable:
                        raise
                    except Exception as exc:  # this entry cannot be encoded or routed; the rest can
                        dead.append(DeadLetter(by_id[entry_id], "publish_error", f"{type(exc).__name__}: {exc}"))
        except self._retryable as exc:
            self.close()
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return dead

"""StreamEntry -> broker message, in batches; separates bad entries from retryable failures."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import Any

from kombu.exceptions import OperationalError

from .config import StreamConfig
from .entry import RawEntry, build_call, decode
from .exceptions import EntryError
from .position import DeadLetter

__all__ = ["Dispatcher", "task_id_for", "BrokerUnavailable"]

TASK_ID_NAMESPACE = uuid.UUID("6f1c5c2e-52d3-4b7e-9a55-0c6a2f3e1d10")


class BrokerUnavailable(Exception):
    """The broker did not accept a publish; the batch is retried, nothing is acknowledged."""


def task_id_for(sc: StreamConfig, entry_id: str) -> str:
    """The task id of an entry: the same whichever worker sends it, different per group or tracker."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{sc.stream}\x00{sc.position_name}\x00{entry_id}"))


class Dispatcher:
    """Publishes batches of entries as Celery tasks through one reused producer."""

    def __init__(self, app: Any, *, max_entry_bytes: int) -> None:
        self.app = app
        self.max_entry_bytes = max_entry_bytes
        self._connection: Any = None
        self._producer: Any = None
        self._retryable: tuple[type[BaseException], ...] = (OperationalError, OSError)

    @property
    def producer(self) -> Any:
        if self._producer is None:
            connection = self.app.connection_for_write()
            self._retryable = (OperationalError, OSError, *connection.connection_errors)
            self._connection = connection
            self._producer = self.app.amqp.Producer(connection, auto_declare=False)
        return self._producer

    def close(self) -> None:
        """Drop the broker connection; the next batch opens a new one."""
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is dropped anyway
                connection.release()

    def send(self, sc: StreamConfig, entries: Sequence[RawEntry], counts: dict[str, int] | None = None) -> list[DeadLetter]:
        """Publish one task per entry and return the entries that must be dead-lettered.

        Raises :class:`BrokerUnavailable` when the broker did not take the batch;
        nothing of it may then be acknowledged.
        """
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
        by_id = {raw.id: raw for raw in entries}
        try:
            producer = self.producer
            batch = producer.batch(max_size=len(calls)) if hasattr(producer, "batch") else contextlib.nullcontext()
            with batch:
                for entry_id, args, kwargs in calls:
                    try:
                        send_task(
                            sc.task,
                            args=args,
                            kwargs=kwargs,
                            task_id=task_id_for(sc, entry_id),
                            producer=producer,
                            queue=sc.queue,
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

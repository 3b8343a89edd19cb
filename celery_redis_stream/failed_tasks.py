"""Dead letters for tasks that failed for good (stream_dead_letter_failed_tasks): the signal receivers.

The receivers run wherever the task runs (a prefork pool child included),
so each process makes its own Redis client, lazily, after the fork.
Celery fires ``task_failure`` in the process that ran the task for an
exception with no retry left (``self.retry()`` and ``autoretry_for`` fire
``task_retry`` while retries are still to come), and ``task_postrun`` with
state ``REJECTED`` for ``Reject``; Celery 5.7 also fires ``task_failure``
for ``Reject(requeue=False)``, but in the worker's main process, where the
task's request (and so its stream) is not known: that one is left to the
``task_postrun`` receiver. A lost pool child is reported by the main
process too, which (Celery 5.7) pushes the task's request for the receivers;
a hard time limit is reported without it and is not seen here.
"""

from __future__ import annotations

import fnmatch
import os
import threading
from typing import TYPE_CHECKING

from celery import signals
from celery.exceptions import Reject
from celery.utils.log import get_logger

from .client.connection import connect
from .config import BridgeConfig, StreamConfig, load_config
from .deadletters import DeadLetter
from .entry import RawEntry, parse_entries
from .redact import redact

if TYPE_CHECKING:
    from celery import Celery, Task
    from celery.app.task import Context

    from .deadletters import DeadLetterClient

__all__ = ["connect_receivers", "dead_letter_task"]

logger = get_logger(__name__)

REASON = "task_failed"


class _Sink:
    """One app's dead-letter writer in one process: the configuration and a client made after the fork."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.pid: int | None = None
        self.config: BridgeConfig | None = None
        self.client: DeadLetterClient | None = None
        self.broken = False
        self.lock = threading.Lock()

    def _stream(self, name: str) -> StreamConfig | None:
        if self.config is None:
            self.config = load_config(self.app, check_registered=False)
        for sc in self.config.streams:
            if sc.stream == name:
                return sc
        for sc in self.config.streams:
            if sc.is_pattern and fnmatch.fnmatchcase(name, sc.stream):
                return sc.for_stream(name, cluster=self.config.cluster)
        return None

    def _client(self) -> DeadLetterClient:
        if self.pid != os.getpid():  # forked: the parent's connections are not ours
            self.pid, self.client = os.getpid(), None
        if self.client is None:
            assert self.config is not None
            self.client = connect(self.config)
        return self.client

    def write(self, request: Context, error: str) -> None:
        stream = getattr(request, "redis_stream", None)
        entry_id = getattr(request, "redis_stream_id", None)
        if not stream or not entry_id or self.broken or getattr(request, "is_eager", False):
            return  # eager runs (tests, task_always_eager) have no stream to write to
        with self.lock:
            try:
                sc = self._stream(str(stream))
            except Exception as exc:  # a worker that cannot read the settings still runs its tasks
                self.broken = True
                logger.error("redis-stream: cannot dead-letter failed tasks: %s", redact(str(exc)))
                return
            if sc is None or not sc.dead_letter_failed_tasks:
                return
            try:
                dead_letter_task(self._client(), sc, str(entry_id), str(request.id), error)
            except Exception as exc:
                self.client = None
                logger.error(
                    "redis-stream: could not dead-letter the failed task %s of stream=%s id=%s: %s",
                    request.id, sc.stream, entry_id, redact(f"{type(exc).__name__}: {exc}"),
                )  # fmt: skip


def dead_letter_task(client: DeadLetterClient, sc: StreamConfig, entry_id: str, task_id: str, error: str) -> None:
    """XADD the entry (its fields byte for byte, read again with XRANGE) to the dead-letter stream.

    An entry trimmed from the stream meanwhile is dead-lettered without
    fields of its own (the error says so); ``dead-letters --requeue`` keeps
    such a dead letter where it is.
    """
    reply = client.execute_command("XRANGE", sc.stream, entry_id, entry_id)
    found = parse_entries(sc.stream, reply if isinstance(reply, (list, tuple)) else None)
    if found and found[0].pairs is not None:
        raw = found[0]
    else:
        raw = RawEntry(sc.stream, entry_id, None)
        error = f"{error} (the entry is no longer in the stream: trimmed before its task failed; fields not kept)"
    letter = DeadLetter(raw, REASON, error)
    client.execute_command("XADD", sc.dead_letter, "*", *letter.pairs(), "dlq_task_id", task_id)
    logger.error(
        "redis-stream: dead-lettered stream=%s id=%s reason=%s to=%s task=%s: %s",
        sc.stream, entry_id, REASON, sc.dead_letter, task_id, error[:200],
    )  # fmt: skip


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


def connect_receivers(app: Celery) -> None:
    """Wire the receivers for the tasks of ``app`` (idempotent: one pair per app)."""
    sink = _Sink(app)

    def ours(sender: Task) -> bool:
        return getattr(sender, "_app", None) is app or getattr(sender, "app", None) is app

    def on_failure(sender: Task | None = None, exception: BaseException | None = None, **kwargs: object) -> None:
        if sender is None or isinstance(exception, Reject) or not ours(sender):
            return  # Reject: see task_postrun below
        sink.write(sender.request, _describe(exception) if exception is not None else "task failed")

    def on_postrun(
        sender: Task | None = None, state: str | None = None, retval: object = None, **kwargs: object
    ) -> None:
        if state != "REJECTED" or sender is None or not ours(sender):
            return
        if isinstance(retval, Reject) and retval.requeue:
            return  # back in the queue: not failed for good
        reason = retval.reason if isinstance(retval, Reject) else retval
        sink.write(sender.request, f"Reject: {redact(str(reason))}")

    uid = f"celery-redis-stream-failed-{id(app)}"
    signals.task_failure.connect(on_failure, weak=False, dispatch_uid=uid)
    signals.task_postrun.connect(on_postrun, weak=False, dispatch_uid=uid)

"""StreamEntry -> broker message, in batches; separates bad entries from retryable failures."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery
from kombu import exceptions as kombu_exceptions
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.exceptions import OperationalError
from kombu.messaging import Producer

from ..config import PUBLISH_TIMEOUTS, StreamConfig
from ..deadletters import DeadLetter
from ..entry import BODY_DECODERS, RawEntry, build_call, decode, decode_as
from ..exceptions import BrokerUnavailable, EntryError, NotConfirmed
from ..tracing import NO_TRACE, attach_trace, detach_trace, producer_headers, split_trace
from . import amqp_confirms
from .amqp_fast import AmqpFastPath
from .exactly_once import Step
from .redis_fast import FastPath
from .template import Call, argument_repr, repr_limits

__all__ = ["Dispatcher", "message_headers", "prepare", "send_options", "task_id_for"]

TASK_ID_NAMESPACE = uuid.UUID("6f1c5c2e-52d3-4b7e-9a55-0c6a2f3e1d10")

# kombu >= 5.7 raises this when a batched publish failed with an uncertain
# outcome (a timeout, a reset): retry the batch, never dead-letter its entries.
BATCH_PUBLISH_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(kombu_exceptions, name) for name in ("BatchPublishError",) if hasattr(kombu_exceptions, name)
)


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


def prepare(
    sc: StreamConfig, raw: RawEntry, *, max_entry_bytes: int, delivery_count: int = 1
) -> tuple[list[Any], dict[str, Any], dict[str, str]]:
    """One entry -> the task's ``(args, kwargs)`` and its trace headers; raises :class:`EntryError`.

    The worker and ``celery_redis_stream.testing`` both call this, so a preview
    cannot disagree with what a worker sends.
    """
    if sc.decode != "utf-8":
        return prepare_decoded(sc, raw, max_entry_bytes=max_entry_bytes, delivery_count=delivery_count)
    return prepare_text(sc, raw, max_entry_bytes=max_entry_bytes, delivery_count=delivery_count)


def prepare_text(
    sc: StreamConfig, raw: RawEntry, *, max_entry_bytes: int, delivery_count: int = 1
) -> tuple[list[Any], dict[str, Any], dict[str, str]]:
    """``prepare`` for a stream of ``decode: "utf-8"`` (the default): the batch loop calls it directly."""
    entry = decode(raw, max_bytes=max_entry_bytes, delivery_count=delivery_count)
    trace = split_trace(entry, sc.trace_fields)
    args, kwargs = build_call(entry, sc.call, sc.converter)
    return args, kwargs, trace


def prepare_decoded(
    sc: StreamConfig, raw: RawEntry, *, max_entry_bytes: int, delivery_count: int = 1
) -> tuple[list[Any], dict[str, Any], dict[str, str]]:
    """``prepare`` for a stream whose ``decode`` is ``raw``, ``json:<field>`` or ``faststream``."""
    entry = decode_as(sc.decode, raw, max_bytes=max_entry_bytes, delivery_count=delivery_count)
    trace = NO_TRACE if entry.fields is None else split_trace(entry, sc.trace_fields)  # None: raw, undecoded
    if entry.headers:  # FastStream's message headers: its correlation id and trace context
        trace = producer_headers(entry.headers, sc.trace_fields, trace)
    args, kwargs = build_call(entry, sc.call, sc.converter, body=sc.decode_kind in BODY_DECODERS)
    return args, kwargs, trace


def send_options(sc: StreamConfig) -> tuple[dict[str, object], dict[str, object]]:
    """The ``send_task`` options of a stream, and the extra headers its ``options`` name."""
    options = dict(sc.options)
    extra_headers = options.pop("headers", None) or {}
    # The reader retries whole batches with its own backoff; kombu's
    # per-publish retries would only stack timeouts in front of it.
    options.setdefault("retry", False)
    return options, extra_headers


def message_headers(
    sc: StreamConfig, entry_id: str, extra_headers: Mapping[str, object], trace: Mapping[str, str]
) -> dict[str, object]:
    """The headers the bridge adds to a task message (the fast path writes them in the same order)."""
    return {**extra_headers, "redis_stream": sc.stream, "redis_stream_id": entry_id, **trace}


# The RFC 4122 variant bits (10xx) set in a uuid's 17th hex digit.
_VARIANT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


class Dispatcher:
    """Publishes batches of entries as Celery tasks through one reused producer."""

    def __init__(self, app: Celery, *, max_entry_bytes: int) -> None:
        self.app = app
        self.max_entry_bytes = max_entry_bytes
        self._connection: Connection | None = None
        self._producer: Any = None  # a kombu Producer, or testing/preview.py's stand-in for one
        self.fast_path = FastPath(app)
        self.amqp_fast_path = AmqpFastPath(app)
        self._bound: dict[str, Queue] = {}
        self._retryable: tuple[type[BaseException], ...] = (OperationalError, OSError, *BATCH_PUBLISH_ERRORS)
        self._confirms: amqp_confirms.Confirms | None = None
        self._amqp = False
        # Task ids RabbitMQ confirmed in a batch that was then retried as a
        # whole: a retry sends only the rest, so a queue that rejects publishes
        # when full does not receive the confirmed part again and again.
        self._confirmed: set[str] = set()

    @property
    def producer(self) -> Any:
        if self._producer is None:
            # A broker that accepts connections but never answers would block
            # the publish, and so the reader, forever: kombu's Redis transport
            # waits without limit by default. The user's own values win.
            configured = self.app.conf.broker_transport_options or {}
            timeouts = {k: v for k, v in PUBLISH_TIMEOUTS.items() if k not in configured}
            connection = self.app.connection_for_write(transport_options=timeouts)
            amqp = amqp_confirms.is_py_amqp(connection)
            if amqp:  # RabbitMQ: publisher confirms and socket timeouts of the bridge's own
                connection = self.app.connection_for_write(
                    transport_options=amqp_confirms.transport_options(configured)
                )
            self._retryable = (OperationalError, OSError, *BATCH_PUBLISH_ERRORS, *connection.connection_errors)
            self._connection = connection
            producer = self.app.amqp.Producer(connection, auto_declare=False)
            if amqp:
                # A channel error closes the channel: nothing after it is published.
                self._retryable = (*self._retryable, *connection.channel_errors, NotConfirmed)
                self._amqp = True
                self._confirms = amqp_confirms.Confirms(producer.channel, key_header="redis_stream_id")
            self._producer = producer
        return self._producer

    def _bound_queue(self, producer: Producer, name: str | None) -> Queue | str | None:
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

    def close(self, *, failed: bool = False) -> None:
        """Drop the broker connection; the next batch opens a new one."""
        connection, self._connection, self._producer = self._connection, None, None
        abandon, self._amqp, self._confirms = failed and self._amqp, False, None
        self._bound = {}
        if connection is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is dropped anyway
                if abandon:  # AMQP's close handshake would wait for a broker that stopped answering
                    connection.collect()  # type: ignore[no-untyped-call]
                else:
                    connection.release()  # type: ignore[no-untyped-call]

    def send(
        self,
        sc: StreamConfig,
        entries: Sequence[RawEntry],
        counts: dict[str, int] | None = None,
        *,
        step: Step | None = None,
    ) -> list[DeadLetter]:
        """Publish one task per entry and return the entries that must be dead-lettered.

        Raises :class:`BrokerUnavailable` when the broker did not take the batch;
        nothing of it may then be acknowledged. ``step`` (atomic.Step) may take
        the fast path's built messages instead: it then sends them itself,
        together with the position move.
        """
        return self._send(sc, entries, counts, step)

    def _send(
        self, sc: StreamConfig, entries: Sequence[RawEntry], counts: dict[str, int] | None, step: Step | None = None
    ) -> list[DeadLetter]:
        dead, calls, traces = self._prepare_all(sc, entries, counts)
        if not calls:
            return dead
        batch_ids = [task_id for _, task_id, _, _ in calls]
        if self._confirmed:  # a retried batch: RabbitMQ already holds part of it
            calls = [call for call in calls if call[1] not in self._confirmed]
            if not calls:
                self._confirmed.difference_update(batch_ids)
                return dead
        by_id = {raw.id: raw for raw in entries}
        try:
            producer = self.producer
            confirms = self._confirms
            if confirms is not None:
                confirms.begin()
            failed = self._publish(producer, sc, calls, traces, step)
            dead.extend(DeadLetter(by_id[entry_id], "publish_error", error) for entry_id, error in failed)
            if confirms is not None:
                self._settle(confirms, sc, calls)
                self._confirmed.difference_update(batch_ids)
        except self._retryable as exc:
            self.close(failed=True)
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return dead

    def _prepare_all(
        self, sc: StreamConfig, entries: Sequence[RawEntry], counts: dict[str, int] | None
    ) -> tuple[list[DeadLetter], list[Call], dict[str, dict[str, str]]]:
        """The batch's calls ``(entry id, task id, args, kwargs)``, its trace headers, and the entries that are bad."""
        dead: list[DeadLetter] = []
        prepared = []
        traces: dict[str, dict[str, str]] = {}
        prep = prepare_text if sc.decode == "utf-8" else prepare_decoded  # chosen once per batch
        for raw in entries:
            try:
                count = (counts or {}).get(raw.id, 1)
                args, kwargs, trace = prep(sc, raw, max_entry_bytes=self.max_entry_bytes, delivery_count=count)
            except EntryError as exc:
                dead.append(DeadLetter(raw, exc.reason, exc.error))
                continue
            prepared.append((raw.id, args, kwargs))
            if trace:
                traces[raw.id] = trace
        task_ids = task_ids_for(sc, [entry_id for entry_id, _, _ in prepared])
        pairs = zip(prepared, task_ids, strict=True)
        calls = [(entry_id, task_id, args, kwargs) for (entry_id, args, kwargs), task_id in pairs]
        return dead, calls, traces

    def _publish(
        self,
        producer: Producer,
        sc: StreamConfig,
        calls: Sequence[Call],
        traces: dict[str, dict[str, str]],
        step: Step | None,
    ) -> list[tuple[str, str]]:
        """Publish the calls by a fast path, else by ``send_task``; the ``(entry id, error)`` that could not be."""
        options, extra_headers = send_options(sc)
        if sc.fast_path and self._amqp:
            # What an exactly-once step would say of this broker (exactly_once.py shows it).
            self.fast_path.reason = self.fast_path.unsupported(producer)
            failed = self.amqp_fast_path.publish(
                producer,
                sc,
                calls,
                queue=self._bound_queue(producer, sc.queue),
                extra_headers=extra_headers,
                options=options,
                trace=traces,
                confirms=self._confirms,
            )
            if failed is not None:  # None: this batch needs send_task
                return failed
        elif sc.fast_path:
            built = self.fast_path.build(
                producer, sc, calls, extra_headers=extra_headers, options=options, trace=traces
            )
            if built is not None:  # None: this batch needs send_task
                if step is None or not step.take(producer, built):
                    self.fast_path.push(producer, built)
                return built.failed
        return self._send_tasks(producer, sc, calls, traces, options, extra_headers)

    def _send_tasks(
        self,
        producer: Producer,
        sc: StreamConfig,
        calls: Sequence[Call],
        traces: dict[str, dict[str, str]],
        options: dict[str, object],
        extra_headers: dict[str, object],
    ) -> list[tuple[str, str]]:
        """The standard path: one ``send_task`` per call, in a kombu publish batch where the transport has one."""
        send_task = self.app.send_task
        failed = []
        batch = (
            producer.batch(max_size=len(calls))  # type: ignore[no-untyped-call]
            if hasattr(producer, "batch")
            else contextlib.nullcontext()
        )
        queue = self._bound_queue(producer, sc.queue)
        reprs = self._confirms is not None and not {"argsrepr", "kwargsrepr"} & set(options)
        shown: dict[str, str] = {}
        limits = repr_limits(self.app) if reprs else (0, 0, 0)
        with batch:
            for entry_id, task_id, args, kwargs in calls:
                trace = traces.get(entry_id, NO_TRACE)
                token = attach_trace(trace)
                if reprs:  # the same message; Celery's saferepr is about a third of a send_task on AMQP
                    shown = self._reprs(args, kwargs, limits)
                try:
                    send_task(
                        sc.task,
                        args=args,
                        kwargs=kwargs,
                        task_id=task_id,
                        producer=producer,
                        queue=queue,
                        headers=message_headers(sc, entry_id, extra_headers, trace),
                        **shown,
                        **options,
                    )
                except self._retryable:
                    raise
                except Exception as exc:  # this entry cannot be encoded or routed; the rest can
                    failed.append((entry_id, f"{type(exc).__name__}: {exc}"))
                finally:
                    detach_trace(token)
        return failed

    @staticmethod
    def _reprs(args: object, kwargs: object, limits: tuple[int, int, int]) -> dict[str, str]:
        """The ``argsrepr``/``kwargsrepr`` that Celery's ``as_task_v2`` would compute, faster (template.argument_repr).

        Passed to ``send_task`` as its own options; on AMQP they only fill
        those two headers (a Redis-broker message would also keep them as
        properties, so the Redis standard path leaves them to Celery).
        """
        args_max, kwargs_max, maxlevels = limits
        return {
            "argsrepr": argument_repr(args or (), args_max, maxlevels),
            "kwargsrepr": argument_repr(kwargs or {}, kwargs_max, maxlevels),
        }

    def _settle(self, confirms: amqp_confirms.Confirms, sc: StreamConfig, calls: Sequence[Call]) -> None:
        """Wait once for RabbitMQ's confirms of the batch; raise NotConfirmed unless every message is in a queue.

        A nack (a queue that rejects publishes when full, a broker error), a
        message returned as unroutable (no queue bound to its routing key) and
        a confirm that does not come within the timeout all mean the same: the
        batch is not dispatched, its position stays, the reader retries it
        with backoff. The messages confirmed meanwhile are not sent again.
        """
        configured = self.app.conf.broker_transport_options or {}
        timeout = amqp_confirms.confirm_timeout(configured, sc.options)
        outcome = confirms.settle(timeout)
        if outcome.complete:
            return
        confirmed = set(outcome.confirmed)
        if len(self._confirmed) > 100_000:  # never an unbounded set; forgetting only costs duplicates
            self._confirmed.clear()
        self._confirmed.update(task_id for entry_id, task_id, _, _ in calls if entry_id in confirmed)
        raise NotConfirmed(outcome.describe(timeout))

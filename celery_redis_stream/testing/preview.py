"""The testing kit: what the bridge makes of an entry (preview) and its task run eagerly (run), without Redis.

Both go through the worker's own code: the app's configuration is read by
``load_config``, the entry is turned into a task call by the same
``Dispatcher`` a worker uses, and ``send_task`` routes it; only the producer
is swapped for one that keeps the message instead of publishing it. The
standard path's message is what is shown: the fast path writes the same one
(tests/e2e/test_fastpath.py compares them field by field).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from celery import Celery
from celery.app.task import Context, Task
from celery.exceptions import AlwaysEagerIgnored
from celery.result import EagerResult
from kombu import serialization
from kombu.connection import Connection
from kombu.messaging import Producer

from ..batch.dedupe import business_key, record_key
from ..client.connection import Client
from ..config import BridgeConfig, StreamConfig, load_config
from ..entry import RawEntry
from ..exceptions import EntryError, StreamError
from ..publish.dispatch import Dispatcher, task_id_for

__all__ = ["DeadLetterPreview", "DeadLettered", "Preview", "preview", "run", "to_raw"]

Fields = Mapping[str, object] | Mapping[bytes, object] | Sequence[tuple[bytes | str, bytes | str]]

# What a worker leaves out of request.headers: Celery's own request and
# protocol keys (celery.app.task.Context._get_custom_headers, Celery >= 5.3).
CELERY_REQUEST_KEYS = frozenset({*vars(Context), "lang", "task", "argsrepr", "kwargsrepr", "compression"})
_patch_lock = threading.Lock()
_imported: weakref.WeakSet[Celery] = weakref.WeakSet()
dumps: Callable[..., tuple[str, str, bytes | str]] = serialization.dumps
loads: Callable[..., object] = serialization.loads


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetterPreview:
    """Why the bridge would dead-letter the entry: ``reason`` (``dlq_reason``) and ``error`` (``dlq_error``)."""

    reason: str
    error: str


@dataclasses.dataclass(frozen=True, slots=True)
class Preview:
    """What the bridge would do with one entry.

    ``args``/``kwargs`` are what the task receives (after the task
    serializer's round trip); ``headers`` are the task message's headers
    (Celery's protocol headers, ``redis_stream``, ``redis_stream_id``, the
    trace headers and the stream's ``options['headers']``); ``queue`` is the
    queue the message is routed to; ``options`` the stream's ``send_task``
    options as configured (their ``headers`` are in ``headers``). For an entry
    that would be dead-lettered, ``dead_letter`` says why and ``args``,
    ``kwargs``, ``headers`` and ``queue`` are empty.

    With the stream's ``dedupe``: ``dedupe_key`` is the entry's business key,
    and ``deduplicated`` says whether the bridge would pass the entry over
    (another entry's dispatch of that key is on record in the given Redis),
    or is None when no Redis was given (the record decides, and only Redis has
    it). Without ``dedupe`` it is False.
    """

    task: str
    args: list[object]
    kwargs: dict[str, object]
    headers: dict[str, object]
    task_id: str
    queue: str | None
    options: dict[str, object]
    dead_letter: DeadLetterPreview | None = None
    dedupe_key: str | None = None
    deduplicated: bool | None = False


class DeadLettered(StreamError):
    """``run()`` was given an entry that the bridge would dead-letter instead of running a task."""

    def __init__(self, stream: str, entry_id: str, dead_letter: DeadLetterPreview) -> None:
        super().__init__(
            f"entry {entry_id} of stream {stream!r} would be dead-lettered "
            f"({dead_letter.reason}: {dead_letter.error}), not run"
        )
        self.dead_letter = dead_letter


def _bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value).encode()  # as redis-py sends them
    raise TypeError(f"stream field names and values are str, bytes, int or float, got {value!r}")


def to_raw(stream: str, fields: Fields, *, entry_id: str = "1-0") -> RawEntry:
    """``fields`` as the entry Redis would return: a dict, or (name, value) pairs kept in order and as given."""
    items = fields.items() if isinstance(fields, Mapping) else fields
    pairs: list[bytes] = []
    for name, value in items:
        pairs += [_bytes(name), _bytes(value)]
    return RawEntry(stream, entry_id, tuple(pairs))


def stream_config(app: Celery, stream: str) -> tuple[BridgeConfig, StreamConfig]:
    """The app's configuration (checked as a worker checks it at start-up) and the mapping of ``stream``."""
    if app not in _imported:
        # What a worker does before its steps start: imports (and
        # autodiscover_tasks) register the tasks the mapping names.
        app.loader.import_default_modules()
        _imported.add(app)
    config = load_config(app)
    for sc in config.streams:
        if sc.stream == stream:
            return config, sc
    for sc in config.streams:  # as discovery applies patterns: the first that matches
        if sc.is_pattern and fnmatch.fnmatchcase(stream, sc.stream):
            return config, sc.for_stream(stream, cluster=config.cluster)
    mapped = ", ".join(repr(sc.stream) for sc in config.streams) or "none"
    raise StreamError(f"stream {stream!r} is not mapped by stream_tasks (mapped: {mapped})")


class _Keeper:
    """Stands in for the bridge's producer: keeps each message ``send_task`` publishes.

    The body is encoded as kombu's ``Producer.publish`` encodes it, so an
    argument that does not serialize fails here as it would in the worker.
    """

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.published: list[tuple[object, dict[str, object]]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._producer, name)

    def publish(self, body: object, **kwargs: object) -> None:
        content_type, content_encoding, data = dumps(body, serializer=kwargs.get("serializer"))
        decoded = loads(data, content_type, content_encoding, accept=[content_type])
        self.published.append((decoded, kwargs))


@contextmanager
def _no_result_subscription(app: Celery) -> Iterator[None]:
    # In a worker, task_join_will_block() is true and a result backend never
    # subscribes to the task ids the bridge sends; outside one it would
    # connect to the backend (Redis pub/sub). The kit has no server.
    backend = app.backend
    had = "on_task_call" in vars(backend)
    saved = vars(backend).get("on_task_call")
    backend.on_task_call = lambda producer, task_id: None
    try:
        yield
    finally:
        if had:
            backend.on_task_call = saved
        else:
            del backend.on_task_call


def preview(app: Celery, stream: str, fields: Fields, *, entry_id: str = "1-0", redis: Client | None = None) -> Preview:
    """What the bridge would do with an entry of ``stream``, under ``app``'s configuration, without Redis.

    ``fields`` is a dict of str (or bytes/int/float, as ``XADD`` takes them),
    or a list of ``(name, value)`` pairs as Redis returns them, so that
    duplicate names and non-UTF-8 bytes preview as the dead letters they
    become. Raises ``StreamConfigError`` where a worker would refuse to start.

    ``redis``: a client of the streams' Redis, for a stream with ``dedupe``:
    ``Preview.deduplicated`` then says whether the entry would be passed over
    now (one GET of the key's record; nothing is written). Without it,
    ``deduplicated`` is None for such a stream.
    """
    config, sc = stream_config(app, stream)
    raw = to_raw(stream, fields, entry_id=entry_id)
    options = {k: v for k, v in sc.options.items() if k != "headers"}
    if sc.dedupe is None:
        return _converted(app, config, sc, raw, entry_id, options)
    # As the worker does: the business key before the conversion (a missing field is a dead letter).
    try:
        record = record_key(sc, sc.dedupe, raw)
    except EntryError as exc:
        return _dead(sc, entry_id, options, DeadLetterPreview(exc.reason, exc.error))
    deduplicated = None if redis is None else _held_by_another(redis, record, entry_id)
    shown = _converted(app, config, sc, raw, entry_id, options)
    if shown.dead_letter is not None:
        return shown
    return dataclasses.replace(shown, dedupe_key=business_key(sc, sc.dedupe, raw), deduplicated=deduplicated)


def _held_by_another(client: Client, record: str, entry_id: str) -> bool:
    """The bridge passes an entry over when its key's record names another entry (batch/dedupe.py CLAIM)."""
    held = client.get(record)
    if held is None:
        return False
    return (held.decode() if isinstance(held, bytes) else str(held)) != entry_id


def _dead(sc: StreamConfig, entry_id: str, options: dict[str, object], letter: DeadLetterPreview) -> Preview:
    return Preview(
        task=sc.task, args=[], kwargs={}, headers={}, task_id=task_id_for(sc, entry_id), queue=None, options=options,
        dead_letter=letter,
    )  # fmt: skip


def _converted(
    app: Celery, config: BridgeConfig, sc: StreamConfig, raw: RawEntry, entry_id: str, options: dict[str, object]
) -> Preview:
    """The entry through the worker's Dispatcher, with a producer that keeps the message."""
    connection = Connection("memory://")  # type: ignore[no-untyped-call]
    keeper = _Keeper(Producer(connection, auto_declare=False))  # type: ignore[no-untyped-call]
    dispatcher = Dispatcher(app, max_entry_bytes=config.max_entry_bytes)
    dispatcher._producer = keeper  # the worker's dispatch code, with a producer that keeps the message
    try:
        with _no_result_subscription(app), warnings.catch_warnings():
            warnings.simplefilter("ignore", AlwaysEagerIgnored)  # the worker's send_task ignores it too
            dead = dispatcher.send(dataclasses.replace(sc, fast_path=False), [raw])
    finally:
        dispatcher.close()
        connection.release()  # type: ignore[no-untyped-call]
    if dead:
        (letter,) = dead
        return _dead(sc, entry_id, options, DeadLetterPreview(letter.reason, letter.error))
    (body, published), *_events = keeper.published  # task_send_sent_event publishes an event after it
    return _from_message(sc, body, published, options)


def _from_message(sc: StreamConfig, body: object, published: dict[str, object], options: dict[str, object]) -> Preview:
    """The preview of the one task message the dispatcher published: its body, headers and queue."""
    headers = dict(_mapping(published.get("headers")))
    declare = published.get("declare")
    queues = declare if isinstance(declare, (list, tuple)) else ()
    routing_key = published.get("routing_key")
    named = next((str(q.name) for q in queues if getattr(q, "name", None)), None)
    queue = named or (str(routing_key) if routing_key is not None else None)
    if not isinstance(body, (list, tuple)):  # Celery's protocol 2 body: (args, kwargs, embed)
        raise TypeError(f"not a task message body: {body!r}")
    args, kwargs, _embed = body
    return Preview(
        task=sc.task,
        args=list(args),
        kwargs=dict(_mapping(kwargs)),
        headers=headers,
        task_id=str(headers["id"]),
        queue=queue,
        options=options,
    )


def _mapping(value: object) -> Mapping[str, object]:
    return {str(k): v for k, v in value.items()} if isinstance(value, Mapping) else {}


def run(app: Celery, stream: str, fields: Fields, *, entry_id: str = "1-0") -> EagerResult:
    """Run the task an entry of ``stream`` becomes, eagerly (``Task.apply``), and return its ``EagerResult``.

    The task gets the arguments and task id of :func:`preview` and the
    request a worker gives it: ``self.request.redis_stream``,
    ``self.request.redis_stream_id``, the trace headers and any per-stream
    headers as request attributes and in ``self.request.headers``. Exceptions
    propagate as ``task_eager_propagates`` says. Raises :class:`DeadLettered`
    for an entry the bridge would dead-letter.
    """
    shown = preview(app, stream, fields, entry_id=entry_id)
    if shown.dead_letter is not None:
        raise DeadLettered(stream, entry_id, shown.dead_letter)
    try:
        task = app.tasks[shown.task]
    except KeyError:
        raise StreamError(
            f"task {shown.task!r} of stream {stream!r} is not registered in this app: run() cannot run it"
        ) from None
    custom = {k: v for k, v in shown.headers.items() if k not in CELERY_REQUEST_KEYS}
    with _request_headers(task, custom):
        result: EagerResult = task.apply(shown.args, shown.kwargs, task_id=shown.task_id, headers=custom)
    return result


@contextmanager
def _request_headers(task: Task, headers: dict[str, object]) -> Iterator[None]:
    # A worker's request has every message header as an attribute
    # (request.redis_stream_id); Task.apply keeps them only in
    # request.headers. Celery's tracer pushes the request on the task's
    # request stack before task_prerun: add them there, so that prerun
    # receivers (tracing) see what they see in a worker.
    stack = task.request_stack
    push = type(stack).push

    def push_request(request: Context) -> None:
        request.update(headers)
        push(stack, request)

    with _patch_lock:
        stack.push = push_request
        try:
            yield
        finally:
            del stack.push

"""The Redis-broker fast path: protocol-2 task messages built from a per-batch template, pushed in one pipeline."""

from __future__ import annotations

import binascii
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import redis
from celery import Celery
from celery.utils.log import get_logger
from kombu.messaging import Producer

from ..config import StreamConfig
from .redis_envelope import Envelope, uuid4_strings
from .redis_envelope import build as build_envelope
from .template import (
    TEMPLATE_ID,
    TEMPLATE_MAX_AGE,
    Call,
    Recorder,
    Unsupported,
    argument_repr,
    batch_encoder,
    celery_reason,
    encode_body,
    json_dumps,
    repr_limits,
    serialize,
)

__all__ = ["LPUSH_CHUNK", "Built", "FastPath"]

logger = get_logger(__name__)

KOMBU_PRIORITY_STEPS = [0, 3, 6, 9]
LPUSH_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Built:
    """One batch's task messages as kombu's Redis transport would LPUSH them, and the calls that failed to encode."""

    key: str  # the broker list (the queue, or its priority list), without the global key prefix
    payloads: list[str]  # oldest first: LPUSHed in this order
    failed: list[tuple[str, str]]  # (entry id, error)


@dataclass(frozen=True, slots=True)
class _Template:
    """One batch's message skeleton: everything but the ids, the body and the argument reprs."""

    key: str
    headers: dict[str, object]
    properties: dict[str, object]
    content_type: str
    content_encoding: str
    serializer: str
    ignore_result: bool
    id_header_keys: tuple[str, ...]
    id_property_keys: tuple[str, ...]
    embed: object


class FastPath:
    """Builds Celery protocol-2 messages for the Redis broker and LPUSHes a batch in one pipeline.

    On by default (``stream_fast_path``). The messages are what ``send_task`` and
    kombu's Redis transport would write; whenever that cannot be guaranteed
    (another broker, publish signal receivers, non-JSON serializer, compression,
    protocol 1, exchange routing, custom priority steps, queue expiry) the
    batch goes through the standard path instead, and the reason is logged once.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._told: set[str] = set()
        self._uuid4 = uuid.uuid4
        self.reason: str | None = None  # why the last batch needed the standard path; None when it did not
        self._client: tuple[object, redis.Redis] | None = None
        self._templates: dict[str, _Cached] = {}
        # The envelope each template's batches last got (envelope.build): made once per template, not per batch.
        self._envelopes: dict[str, tuple[_Template, Envelope]] = {}

    def _skip(self, reason: str) -> None:
        if reason not in self._told and len(self._told) < 32:  # once per reason, and never an unbounded set
            self._told.add(reason)
            logger.info("redis-stream: fast path not used (%s); publishing through send_task", reason)

    def _static_reason(self, producer: Producer) -> str | None:
        reason = celery_reason(self.app)
        if reason is not None:
            return reason
        channel = producer.channel
        transport = type(producer.connection.transport)
        if transport.__module__ != "kombu.transport.redis" or not hasattr(channel, "_q_for_pri"):
            return f"the broker transport is {transport.__module__}.{transport.__name__}, not kombu's Redis transport"
        if list(getattr(channel, "priority_steps", ())) != KOMBU_PRIORITY_STEPS:
            return "broker priority_steps are customised"
        if getattr(channel, "_expires", None):
            return "a queue declares x-expires"
        return None

    def template(
        self, producer: Producer, sc: StreamConfig, extra_headers: Mapping[str, object], options: Mapping[str, object]
    ) -> _Template:
        """Run ``send_task`` once against a recorder and turn what it published into a template.

        Raises :class:`Unsupported` when the message would need anything the
        fast path does not reproduce.
        """
        recorder = Recorder(producer)
        self.app.send_task(
            sc.task,
            args=[],
            kwargs={},
            task_id=TEMPLATE_ID,
            producer=recorder,
            queue=sc.queue,
            headers={**extra_headers, "redis_stream": sc.stream, "redis_stream_id": TEMPLATE_ID},
            **options,
        )
        if recorder.published is None:
            raise Unsupported("send_task published nothing")
        body, kw = recorder.published
        return _from_published(producer, body, dict(kw))

    def unsupported(self, producer: Producer) -> str | None:
        """Why no batch of this app can take the fast path on ``producer``'s broker, or None."""
        return self._static_reason(producer)

    def _client_for(self, channel: object) -> contextlib.nullcontext[redis.Redis]:
        """``channel.conn_or_acquire()``, whose new Redis client per call (~0.4 ms) is made once per channel."""
        cached = self._client
        if cached is None or cached[0] is not channel:
            with channel.conn_or_acquire() as client:  # type: ignore[attr-defined]  # kombu's Redis Channel
                self._client = cached = (channel, client)
        return contextlib.nullcontext(cached[1])

    def _recent_template(
        self, producer: Producer, sc: StreamConfig, extra_headers: Mapping[str, object], options: Mapping[str, object]
    ) -> _Template:
        """:meth:`template`, reused for the stream's next batches for up to ``TEMPLATE_MAX_AGE`` seconds.

        Building it runs ``send_task`` (about a millisecond), which at batch
        100 was a sixth of a batch's time. A template is not kept when it
        holds a time (``expires``, ``eta``: computed from "now" at each send),
        and never outlives the producer (a reconnect builds a new one) or a
        change of the stream's options.
        """
        now = time.monotonic()
        cached = self._templates.get(sc.stream)
        if cached is not None and now - cached.born < TEMPLATE_MAX_AGE:
            if cached.producer is producer and cached.sc is sc:
                if cached.headers == extra_headers and cached.options == options:
                    return cached.template
        tpl = self.template(producer, sc, extra_headers, options)
        if tpl.headers.get("expires") is None and tpl.headers.get("eta") is None:
            if len(self._templates) >= 1024:  # streams found by patterns come and go: never an unbounded cache
                self._templates.clear()
                self._envelopes.clear()
            self._templates[sc.stream] = _Cached(now, producer, sc, dict(extra_headers), dict(options), tpl)
        return tpl

    def build(
        self,
        producer: Producer,
        sc: StreamConfig,
        calls: Sequence[Call],
        *,
        extra_headers: Mapping[str, object],
        options: Mapping[str, object],
        trace: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Built | None:
        """The batch's messages, built but not sent; ``None`` means "use the standard path" (see ``reason``).

        ``trace`` maps entry ids to their trace headers (``stream_trace_fields``): such
        an entry's headers differ from the batch's envelope, so its message is encoded whole.
        """
        tpl = self._batch_template(producer, sc, extra_headers, options)
        if tpl is None:
            return None
        on_task_call = None if tpl.ignore_result else self.app.backend.on_task_call
        uuid4 = self._uuid4
        # Per batch, once: the delivery tags, the body's constant tail and the
        # envelope text around the per-entry values (redis_envelope.py).
        tags = uuid4_strings(len(calls)) if uuid4 is uuid.uuid4 else [str(uuid4()) for _ in calls]
        kept = self._envelopes.get(sc.stream)
        batch = _Batch(tpl, repr_limits(self.app), kept[1] if kept is not None and kept[0] is tpl else None)
        payloads: list[str] = []
        failed: list[tuple[str, str]] = []
        message = batch.message
        for (entry_id, task_id, args, kwargs), tag in zip(calls, tags, strict=True):
            try:
                payloads.append(message(entry_id, task_id, args, kwargs, tag, trace.get(entry_id) if trace else None))
            except Exception as exc:  # this entry cannot be encoded; the rest can
                failed.append((entry_id, f"{type(exc).__name__}: {exc}"))
                continue
            if on_task_call is not None:
                on_task_call(producer, task_id)
        if batch.envelope is not None:
            if len(self._envelopes) >= 1024:  # never an unbounded cache
                self._envelopes.clear()
            self._envelopes[sc.stream] = (tpl, batch.envelope)
        return Built(tpl.key, payloads, failed)

    def _batch_template(
        self, producer: Producer, sc: StreamConfig, extra_headers: Mapping[str, object], options: Mapping[str, object]
    ) -> _Template | None:
        """The batch's template, or None (``reason`` set and logged once) when it needs the standard path."""
        reason = self.reason = self._static_reason(producer)
        if reason is None:
            try:
                return self._recent_template(producer, sc, extra_headers, options)
            except Unsupported as exc:
                reason = str(exc)
            except producer.connection.connection_errors:
                raise
            except Exception as exc:  # the standard path will dead-letter or retry as it always does
                reason = f"building the message template failed: {type(exc).__name__}: {exc}"
        self.reason = reason
        self._skip(reason)
        return None

    def push(self, producer: Producer, built: Built) -> None:
        """LPUSH the built messages in one pipeline on the broker connection."""
        if built.payloads:
            with self._client_for(producer.channel) as client:
                pipe = client.pipeline(transaction=False)
                # LPUSH k a b c leaves the list exactly as LPUSH k a; LPUSH k b;
                # LPUSH k c would (consumers pop from the other end: a first),
                # so FIFO order and per-message semantics are kombu's.
                for i in range(0, len(built.payloads), LPUSH_CHUNK):
                    pipe.lpush(built.key, *built.payloads[i : i + LPUSH_CHUNK])
                pipe.execute()


class _Cached(NamedTuple):
    """A template kept for a stream's next batches, with what it was built for."""

    born: float
    producer: Producer
    sc: StreamConfig
    headers: dict[str, object]
    options: dict[str, object]
    template: _Template


def _from_published(producer: Producer, body: object, kw: dict[str, object]) -> _Template:
    """The template of the message ``send_task`` published (``body``, publish keywords ``kw``)."""
    exchange = kw.pop("exchange", None)
    exchange_name = getattr(exchange, "name", exchange)
    if exchange_name:
        raise Unsupported(f"the task is routed through exchange {exchange_name!r}")
    if kw.pop("compression", None):
        raise Unsupported("task_compression is set")
    serializer = kw.pop("serializer", None) or producer.serializer
    if serializer != "json":
        raise Unsupported(f"the task serializer is {serializer!r}")
    if not isinstance(body, tuple) or len(body) != 3:
        raise Unsupported("the task body is not protocol 2")
    routing_key = kw.pop("routing_key")
    headers = dict(kw.pop("headers", None) or {})  # type: ignore[call-overload]  # send_task's headers dict
    priority = kw.pop("priority", 0)
    for entity in kw.pop("declare", None) or ():  # type: ignore[attr-defined]  # send_task's declare list
        producer.maybe_declare(entity)  # type: ignore[no-untyped-call]
    for unused in ("retry", "retry_policy", "timeout", "confirm_timeout", "mandatory", "immediate"):
        kw.pop(unused, None)
    expiration = kw.pop("expiration", None)
    properties = kw  # correlation_id, reply_to and any other message property, as kombu keeps them
    delivery_mode = kw.pop("delivery_mode", None)
    _, properties["delivery_mode"] = producer._delivery_details(producer.exchange, delivery_mode)  # type: ignore[no-untyped-call]
    if expiration is not None:
        properties["expiration"] = str(int(expiration * 1000))  # type: ignore[operator]  # seconds, a number
    content_type, content_encoding, _ = serialize(body, serializer=serializer)
    channel = producer.channel
    message = channel.prepare_message(b"", priority, content_type, content_encoding, headers, properties)
    channel._inplace_augment_message(message, "", routing_key)
    props = message["properties"]
    if props.get("body_encoding") != "base64":
        raise Unsupported(f"the channel body encoding is {props.get('body_encoding')!r}")
    key = channel._q_for_pri(routing_key, channel._get_message_priority(message, reverse=False))
    props.pop("delivery_tag", None)
    return _Template(
        key=key,
        headers=message["headers"],
        properties=props,
        content_type=message["content-type"],
        content_encoding=message["content-encoding"],
        serializer=str(serializer),
        ignore_result=bool(message["headers"].get("ignore_result")),
        id_header_keys=tuple(k for k, v in message["headers"].items() if v == TEMPLATE_ID),
        id_property_keys=tuple(k for k, v in props.items() if v == TEMPLATE_ID),
        embed=body[2],
    )


class _Batch:
    """One batch's encoding state: the template, the repr limits, and what its first message decided."""

    __slots__ = (
        "args_max",
        "checked",
        "encode",
        "envelope",
        "kwargs_max",
        "maxlevels",
        "spliced",
        "tail",
        "tpl",
        "tried",
    )

    def __init__(self, tpl: _Template, limits: tuple[int, int, int], envelope: Envelope | None = None) -> None:
        self.tpl = tpl
        self.args_max, self.kwargs_max, self.maxlevels = limits
        self.tail = ", " + json_dumps(tpl.embed) + "]"  # the body's constant tail
        # kombu's dumps makes an encoder per call; one per batch encodes the same (checked on the first entry)
        self.encode = batch_encoder()
        self.envelope = envelope  # given: an earlier batch of the same template built and checked it
        self.spliced, self.checked = True, False  # the batch's first message decides how the others are made
        self.tried = False  # whether this batch built an envelope (once, on its first message)

    def message(
        self, entry_id: str, task_id: str, args: list[object], kwargs: dict[str, object], tag: str,
        traced: Mapping[str, str] | None,
    ) -> str:  # fmt: skip
        """One message's JSON text, as kombu's Redis transport would LPUSH it."""
        tpl = self.tpl
        # as as_task_v2 does: an empty argument list is shown as "()"
        shown_args: list[object] | tuple[()] = args or ()
        kwargs = kwargs or {}
        if self.checked:
            body = encode_body(
                shown_args, kwargs, tpl.embed, tpl.serializer, self.tail if self.spliced else None, self.encode
            )
        else:
            body = serialize((shown_args, kwargs, tpl.embed), serializer=tpl.serializer)[2]
            self.spliced = encode_body(shown_args, kwargs, tpl.embed, tpl.serializer, self.tail, self.encode) == body
        raw = body if isinstance(body, bytes) else body.encode(tpl.content_encoding)
        body64 = binascii.b2a_base64(raw, newline=False).decode()  # base64.b64encode's text, one call less
        argsrepr = argument_repr(shown_args, self.args_max, self.maxlevels)
        kwargsrepr = argument_repr(kwargs, self.kwargs_max, self.maxlevels)
        if not self.checked:
            self.checked = True
        if self.envelope is None and not self.tried:
            self.tried = True
            self.envelope = build_envelope(
                json_dumps, content_type=tpl.content_type, content_encoding=tpl.content_encoding,
                headers=tpl.headers, properties=tpl.properties, id_header_keys=tpl.id_header_keys,
                id_property_keys=tpl.id_property_keys, sample=(body64, task_id, entry_id, argsrepr, kwargsrepr, tag),
            )  # fmt: skip
        if self.envelope is not None and traced is None:
            return self.envelope.fill(body64, task_id, entry_id, argsrepr, kwargsrepr, tag)
        return self._whole(body64, task_id, entry_id, argsrepr, kwargsrepr, tag, traced)

    def _whole(
        self, body64: str, task_id: str, entry_id: str, argsrepr: str, kwargsrepr: str, tag: str,
        traced: Mapping[str, str] | None,
    ) -> str:  # fmt: skip
        """The message encoded whole (a traced entry, or an encoder the envelope could not split)."""
        tpl = self.tpl
        headers = dict(tpl.headers)
        for k in tpl.id_header_keys:
            headers[k] = task_id
        headers["redis_stream_id"] = entry_id
        if traced:
            headers.update(traced)  # after redis_stream_id, as message_headers() orders them
        headers["argsrepr"] = argsrepr
        headers["kwargsrepr"] = kwargsrepr
        props = dict(tpl.properties)
        for k in tpl.id_property_keys:
            props[k] = task_id
        props["delivery_tag"] = tag
        return json_dumps(
            {
                "body": body64,
                "content-encoding": tpl.content_encoding,
                "content-type": tpl.content_type,
                "headers": headers,
                "properties": props,
            }
        )

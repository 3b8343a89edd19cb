"""The RabbitMQ fast path: task messages from a per-batch template, published on the bridge's confirmed channel."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from amqp import Channel, Message
from celery import Celery
from celery.utils.log import get_logger
from kombu.entity import Queue
from kombu.messaging import Producer

from ..config import StreamConfig
from . import amqp_frames
from .amqp_confirms import Confirms
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

__all__ = ["AmqpFastPath"]

logger = get_logger(__name__)

# Producer.publish's own arguments that are no message property and that the fast path leaves out:
# its publish is always mandatory, the confirm wait is per batch, retries are the reader's.
# Bytes of frames per socket write: a batch goes out in a few writes, not one per message.
WRITE_CHUNK = 256 * 1024
_PUBLISH_ONLY = ("retry", "retry_policy", "confirm_timeout", "mandatory", "immediate")


@dataclass(frozen=True, slots=True)
class _Template:
    """One batch's message as kombu's py-amqp transport would publish it, but for the per-entry values."""

    exchange: str
    routing_key: str
    timeout: float | None
    declare: tuple[object, ...]
    headers: dict[str, object]
    properties: dict[str, object]  # the amqp.Message properties, application_headers aside
    ignore_result: bool
    id_header_keys: tuple[str, ...]
    id_property_keys: tuple[str, ...]
    embed: object


def template(
    app: Celery,
    producer: Producer,
    sc: StreamConfig,
    queue: Queue | str | None,
    extra_headers: Mapping[str, object],
    options: Mapping[str, object],
) -> _Template:
    """Run ``send_task`` once against a recorder, and do to what it would publish what Producer.publish does.

    ``queue`` is what the standard path passes to ``send_task``. Raises
    :class:`Unsupported` for a message the template cannot reproduce.
    """
    body, kw = _recorded(app, producer, sc, queue, extra_headers, options)
    # As Producer.publish and kombu's pyamqp Channel.prepare_message do, in that order.
    routing_key = kw.pop("routing_key", None)
    exchange, delivery_mode = producer._delivery_details(  # type: ignore[no-untyped-call]
        kw.pop("exchange", None) or producer.exchange, kw.pop("delivery_mode", None)
    )
    given_headers, given_declare = kw.pop("headers", None), kw.pop("declare", None)
    headers = dict(given_headers) if isinstance(given_headers, Mapping) else {}
    declare = tuple(given_declare) if isinstance(given_declare, (list, tuple)) else ()
    timeout = kw.pop("timeout", None)
    for unused in _PUBLISH_ONLY:
        kw.pop(unused, None)
    expiration = kw.pop("expiration", None)
    properties: dict[str, object] = {"priority": kw.pop("priority", 0), **kw, "delivery_mode": delivery_mode}
    if isinstance(expiration, (int, float)):
        properties["expiration"] = str(int(expiration * 1000))
    elif expiration is not None:
        raise Unsupported(f"expiration is {expiration!r}")
    if not isinstance(properties.get("reply_to", ""), str):
        raise Unsupported("reply_to is a queue object")
    properties["content_type"], properties["content_encoding"], _ = serialize(body, serializer="json")
    return _Template(
        exchange=str(exchange or ""),
        routing_key=str(producer.routing_key if routing_key is None else routing_key),
        timeout=float(timeout) if isinstance(timeout, (int, float)) else None,
        declare=declare,
        headers=headers,
        properties=properties,
        ignore_result=bool(headers.get("ignore_result")),
        id_header_keys=tuple(k for k, v in headers.items() if v == TEMPLATE_ID),
        id_property_keys=tuple(k for k, v in properties.items() if v == TEMPLATE_ID),
        embed=body[2],
    )


def _recorded(
    app: Celery,
    producer: Producer,
    sc: StreamConfig,
    queue: Queue | str | None,
    extra_headers: Mapping[str, object],
    options: Mapping[str, object],
) -> tuple[tuple[object, object, object], dict[str, object]]:
    """The body and ``Producer.publish`` arguments of one ``send_task`` of the stream, if the fast path can follow."""
    recorder = Recorder(producer)
    app.send_task(
        sc.task,
        args=[],
        kwargs={},
        task_id=TEMPLATE_ID,
        producer=recorder,
        queue=queue,
        headers={**extra_headers, "redis_stream": sc.stream, "redis_stream_id": TEMPLATE_ID},
        **options,
    )
    if recorder.published is None:
        raise Unsupported("send_task published nothing")
    body, kw = recorder.published
    kw = dict(kw)
    if kw.pop("compression", None):
        raise Unsupported("task_compression is set")
    serializer = kw.pop("serializer", None) or producer.serializer
    if serializer != "json":
        raise Unsupported(f"the task serializer is {serializer!r}")
    if kw.get("content_type") or kw.get("content_encoding"):
        raise Unsupported("send_task was given a content type")
    if kw.get("immediate"):
        raise Unsupported("immediate is set")
    if not isinstance(body, tuple) or len(body) != 3:
        raise Unsupported("the task body is not protocol 2")
    return body, kw


class AmqpFastPath:
    """Publishes a batch of task messages on a py-amqp channel without ``send_task`` for each.

    The same rule as the Redis fast path (redis_fast.py): each message is what
    ``send_task`` would publish on this channel (routing, properties, headers,
    body), and whenever that cannot be guaranteed (publish-signal receivers,
    ``task_send_sent_event``, protocol 1, another serializer, compression) the
    batch goes through ``send_task``, and the reason is logged once. The
    channel is the bridge's confirmed one (amqp_confirms.py): every publish is
    mandatory and is settled with the batch.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.reason: str | None = None  # why the last batch needed the standard path; None when it did not
        self._told: set[str] = set()
        self._templates: dict[str, tuple[float, object, StreamConfig, dict[str, object], dict[str, object], _Template]]
        self._templates = {}

    def _skip(self, reason: str) -> None:
        if reason not in self._told and len(self._told) < 32:  # once per reason, and never an unbounded set
            self._told.add(reason)
            logger.info("redis-stream: fast path not used (%s); publishing through send_task", reason)

    def _static_reason(self) -> str | None:
        return celery_reason(self.app)

    def _recent_template(
        self,
        producer: Producer,
        sc: StreamConfig,
        queue: Queue | str | None,
        extra_headers: Mapping[str, object],
        options: Mapping[str, object],
    ) -> _Template:
        """:func:`template`, reused for the stream's next batches for up to ``TEMPLATE_MAX_AGE`` seconds.

        As on the Redis path: never when it holds a time (``expires``,
        ``eta``), never past the producer (a reconnect builds a new one) or a
        change of the stream's options.
        """
        now = time.monotonic()
        cached = self._templates.get(sc.stream)
        if cached is not None:
            born, c_producer, c_sc, c_headers, c_options, tpl = cached
            if now - born < TEMPLATE_MAX_AGE and c_producer is producer and c_sc is sc:
                if c_headers == extra_headers and c_options == options:
                    return tpl
        tpl = template(self.app, producer, sc, queue, extra_headers, options)
        if tpl.headers.get("expires") is None and tpl.headers.get("eta") is None:
            if len(self._templates) >= 1024:  # streams found by patterns come and go: never an unbounded cache
                self._templates.clear()
            self._templates[sc.stream] = (now, producer, sc, dict(extra_headers), dict(options), tpl)
        return tpl

    def _template_or_none(
        self,
        producer: Producer,
        sc: StreamConfig,
        queue: Queue | str | None,
        extra_headers: Mapping[str, object],
        options: Mapping[str, object],
    ) -> _Template | None:
        reason = self.reason = self._static_reason()
        tpl = None
        if reason is None:
            try:
                tpl = self._recent_template(producer, sc, queue, extra_headers, options)
            except Unsupported as exc:
                reason = str(exc)
            except producer.connection.connection_errors:
                raise
            except Exception as exc:  # the standard path will dead-letter or retry as it always does
                reason = f"building the message template failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            self.reason = reason
            self._skip(reason)
        return tpl

    def publish(
        self,
        producer: Producer,
        sc: StreamConfig,
        calls: Sequence[Call],
        *,
        queue: Queue | str | None,
        extra_headers: Mapping[str, object],
        options: Mapping[str, object],
        trace: Mapping[str, Mapping[str, str]] | None = None,
        confirms: Confirms | None = None,
    ) -> list[tuple[str, str]] | None:
        """Publish one message per call on ``producer``'s channel; ``None`` means "use the standard path".

        Returns ``(entry id, error)`` for the calls whose arguments could not
        be encoded (dead-lettered by the caller, like a failed ``send_task``).
        Broker errors propagate. The confirms are the caller's to settle.
        """
        tpl = self._template_or_none(producer, sc, queue, extra_headers, options)
        if tpl is None:
            return None
        for entity in tpl.declare:  # as send_task's publish does; kombu remembers what it declared
            producer.maybe_declare(entity)  # type: ignore[no-untyped-call]
        reprs = not {"argsrepr", "kwargsrepr"} & set(options)
        failed: list[tuple[str, str]] = []
        messages = self._messages(tpl, calls, trace, failed, reprs)
        on_task_call = None if tpl.ignore_result else self.app.backend.on_task_call
        if on_task_call is not None:  # before the publish, as send_task calls it
            for task_id, _ in messages:
                on_task_call(producer, task_id)
        self._send(producer.channel, tpl, [m for _, m in messages], confirms)
        return failed

    @staticmethod
    def _send(channel: Channel, tpl: _Template, messages: Sequence[Message], confirms: Confirms | None) -> None:
        """Publish ``messages``: with ``confirms``, as frames written a chunk at a time, else one basic_publish each."""
        exchange, routing_key, timeout = tpl.exchange, tpl.routing_key, tpl.timeout
        made = None
        if confirms is not None and messages:
            frame_max = channel.connection.frame_max
            made = amqp_frames.publisher(channel.channel_id, frame_max, exchange, routing_key, messages[0])
        if made is None:
            for message in messages:
                channel.basic_publish(
                    message, exchange=exchange, routing_key=routing_key, mandatory=True, timeout=timeout
                )
            return
        assert confirms is not None
        frames: list[bytes] = []
        keys: list[str] = []
        size = 0
        for message in messages:
            frames.append(made.frames(message._serialize_properties(), message.body))
            keys.append(str(message.properties["application_headers"][confirms.key_header]))
            size += len(frames[-1])
            if size >= WRITE_CHUNK:
                confirms.write(frames, keys, timeout)
                frames, keys, size = [], [], 0
        if frames:
            confirms.write(frames, keys, timeout)

    def _messages(
        self,
        tpl: _Template,
        calls: Sequence[Call],
        trace: Mapping[str, Mapping[str, str]] | None,
        failed: list[tuple[str, str]],
        reprs: bool,
    ) -> list[tuple[str, Message]]:
        """The batch's messages and their task ids; a call that cannot be encoded goes to ``failed`` instead.

        The batch's first untraced message is built whole, as kombu would;
        its encoded properties give the others' (amqp_frames.py). A traced
        entry's headers differ from the batch's, so its message is built whole.
        """
        args_max, kwargs_max, maxlevels = repr_limits(self.app)
        embed = tpl.embed
        # kombu's dumps makes an encoder per call; the Redis path's one per batch encodes the same
        # (checked on the first entry)
        encode = batch_encoder()
        tail = ", " + json_dumps(embed) + "]"
        cenc = str(tpl.properties["content_encoding"])
        spliced: bool | None = None  # the batch's first body decides how the others are made
        header: amqp_frames.Header | bool | None = False  # False: not built yet
        out = []
        for entry_id, task_id, args, kwargs in calls:
            shown_args: list[object] | tuple[()] = args or ()  # as as_task_v2 does
            kwargs = kwargs or {}
            try:
                if spliced is None:
                    text = serialize((shown_args, kwargs, embed), serializer="json")[2]
                    spliced = encode_body(shown_args, kwargs, embed, "json", tail, encode) == text
                else:
                    text = encode_body(shown_args, kwargs, embed, "json", tail if spliced else None, encode)
                body = text.encode(cenc) if isinstance(text, str) else text
                shown = (
                    argument_repr(shown_args, args_max, maxlevels) if reprs else "",
                    argument_repr(kwargs, kwargs_max, maxlevels) if reprs else "",
                )
                traced = trace.get(entry_id) if trace else None
                if isinstance(header, amqp_frames.Header) and not traced:
                    properties = header.fill(task_id, entry_id, *shown)
                    message = amqp_frames.PrebuiltMessage(body, properties, {"redis_stream_id": entry_id})
                else:
                    message = self._whole(tpl, body, task_id, entry_id, shown if reprs else None, traced)
                    if header is False and not traced:
                        props = dict(message.properties)
                        headers = props.pop("application_headers")
                        header = amqp_frames.build(headers, props, _kinds(tpl, reprs), (task_id, entry_id, *shown))
                out.append((task_id, message))
            except Exception as exc:  # this entry cannot be encoded; the rest can
                failed.append((entry_id, f"{type(exc).__name__}: {exc}"))
        return out

    @staticmethod
    def _whole(
        tpl: _Template,
        body: bytes,
        task_id: str,
        entry_id: str,
        shown: tuple[str, str] | None,
        traced: Mapping[str, str] | None,
    ) -> Message:
        """One message built from the template's headers and properties, as kombu's prepare_message builds it."""
        headers = tpl.headers.copy()
        for k in tpl.id_header_keys:
            headers[k] = task_id
        headers["redis_stream_id"] = entry_id
        if traced:
            headers.update(traced)  # after redis_stream_id, as message_headers() orders them
        if shown is not None:
            headers["argsrepr"], headers["kwargsrepr"] = shown
        props = tpl.properties.copy()
        for k in tpl.id_property_keys:
            props[k] = task_id
        return Message(body, application_headers=headers, **props)


def _kinds(tpl: _Template, reprs: bool) -> dict[tuple[str, str], int]:
    """Where the per-entry values are in a message of ``tpl`` (amqp_frames.build's ``kinds``)."""
    kinds = {("headers", k): amqp_frames.TASK_ID for k in tpl.id_header_keys}
    kinds.update({("properties", k): amqp_frames.TASK_ID for k in tpl.id_property_keys})
    kinds["headers", "redis_stream_id"] = amqp_frames.ENTRY_ID
    if reprs:
        kinds["headers", "argsrepr"] = amqp_frames.ARGSREPR
        kinds["headers", "kwargsrepr"] = amqp_frames.KWARGSREPR
    return kinds

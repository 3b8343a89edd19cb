"""The Redis-broker fast path: protocol-2 task messages built from a per-batch template, pushed in one pipeline."""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.utils.log import get_logger
from celery.utils.saferepr import saferepr
from kombu import serialization
from kombu.utils import json as kombu_json

from .envelope import Envelope, uuid4_strings
from .envelope import build as build_envelope
from .exceptions import StreamError

__all__ = ["Built", "Call", "FastPath"]

logger = get_logger(__name__)

# kombu's own encoders: the body as Producer.publish serializes it, the
# envelope as the Redis transport's _put dumps it.
serialize: Callable[..., tuple[str, str, Any]] = serialization.dumps
json_dumps: Callable[[Any], str] = kombu_json.dumps

Call = tuple[str, str, list[Any], dict[str, Any]]  # entry id, task id, args, kwargs

KOMBU_PRIORITY_STEPS = [0, 3, 6, 9]
LPUSH_CHUNK = 500
TEMPLATE_ID = "00000000-0000-4000-8000-000000000000"
TEMPLATE_MAX_AGE = 1.0  # seconds a batch template is reused for the same stream's next batches
PUBLISH_SIGNALS = (signals.before_task_publish, signals.after_task_publish, signals.task_sent)


def _plain(s: Any) -> bool:
    return type(s) is str and s.isprintable() and "'" not in s and "\\" not in s


def _plain_dict(d: dict[Any, Any]) -> bool:
    """``all(_plain(k) and _plain(v) for k, v in d.items())``, checked on all its strings at once."""
    parts = [*d, *d.values()]
    if not parts:
        return True
    if set(map(type, parts)) != {str}:
        return False
    text = "".join(parts)
    return text.isprintable() and "'" not in text and "\\" not in text


def repr_limits(app: Any) -> tuple[int, int, int]:
    """``(argsrepr maxsize, kwargsrepr maxsize, maxlevels)`` as Celery's ``as_task_v2`` applies them; once per batch."""
    # Celery < 5.5 has no task_repr_maxlevels; its saferepr default is 3 levels.
    return app.amqp.argsrepr_maxsize, app.amqp.kwargsrepr_maxsize, app.conf.get("task_repr_maxlevels") or 3


def argument_repr(value: Any, maxsize: int, maxlevels: int) -> str:
    """``saferepr(value, maxsize, maxlevels=maxlevels)``, faster for flat lists and dicts of plain strings.

    Celery's saferepr costs ~25 µs per entry; for printable strings without
    quotes or backslashes, nested at most two levels and shorter than
    ``maxsize``, it is exactly ``repr()``. Anything else goes to saferepr.
    """
    t = type(value)
    if maxlevels >= 3 and not value and t in (dict, list, tuple):
        return repr(value)  # "{}", "[]", "()": what saferepr shows for any maxsize
    if maxlevels >= 3 and value:
        if t is dict:
            simple = _plain_dict(value)
        elif t is list:
            simple = all(_plain_dict(x) if type(x) is dict else _plain(x) for x in value)
        else:
            simple = False
        if simple:
            text = repr(value)
            if len(text) <= maxsize:
                return text
    return str(saferepr(value, maxsize, maxlevels=maxlevels))


def _body(
    args: Any, kwargs: Any, embed: Any, serializer: str, tail: str | None, encode: Callable[[Any], str] = json_dumps
) -> str | bytes:
    """The serialized body ``(args, kwargs, embed)``; with ``tail`` (``", <embed>]"``), spliced from its parts.

    JSON joins array items with ", ", so encoding ``(args, kwargs)`` and
    appending the batch's pre-encoded embed gives the same text. Anything the
    splice cannot encode goes to kombu, which raises its own error for it.
    """
    if tail is not None:
        try:
            return encode((args, kwargs))[:-1] + tail
        except Exception:  # noqa: S110 - kombu's serializer below reports it the way send_task would
            pass
    payload: str | bytes = serialize((args, kwargs, embed), serializer=serializer)[2]
    return payload


class Unsupported(StreamError):
    """This app or stream needs something only the standard path does; the reason is the message."""


class _Recorder:
    """Stands in for the producer in one ``send_task`` call and keeps what would have been published.

    Running Celery's own ``send_task`` for the template means routing
    (``task_routes``, ``queue``), task-level options (``expires``, time limits,
    ``priority``) and header defaults come out exactly as Celery makes them.
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self.published: tuple[Any, dict[str, Any]] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(self, body: Any, **kwargs: Any) -> None:
        self.published = (body, kwargs)


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
    headers: dict[str, Any]
    properties: dict[str, Any]
    content_type: str
    content_encoding: str
    serializer: str
    ignore_result: bool
    id_header_keys: tuple[str, ...]
    id_property_keys: tuple[str, ...]
    embed: Any


class FastPath:
    """Builds Celery protocol-2 messages for the Redis broker and LPUSHes a batch in one pipeline.

    On by default (``stream_fast_path``). The messages are what ``send_task`` and
    kombu's Redis transport would write; whenever that cannot be guaranteed
    (another broker, publish signal receivers, non-JSON serializer, compression,
    protocol 1, exchange routing, custom priority steps, queue expiry) the
    batch goes through the standard path instead, and the reason is logged once.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._told: set[str] = set()
        self._uuid4 = uuid.uuid4
        self.reason: str | None = None  # why the last batch needed the standard path; None when it did not
        self._client: tuple[Any, Any] | None = None
        self._templates: dict[str, tuple[float, Any, Any, dict[str, Any], dict[str, Any], _Template]] = {}

    def _skip(self, reason: str) -> None:
        if reason not in self._told and len(self._told) < 32:  # once per reason, and never an unbounded set
            self._told.add(reason)
            logger.info("redis-stream: fast path not used (%s); publishing through send_task", reason)

    def _static_reason(self, producer: Any) -> str | None:
        conf = self.app.conf
        if conf.task_protocol != 2:
            return f"task_protocol is {conf.task_protocol}, the fast path writes protocol 2"
        if conf.task_send_sent_event:
            return "task_send_sent_event is on"
        for signal in PUBLISH_SIGNALS:
            if signal.receivers:
                return f"a {signal.name} receiver is connected"
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
        self, producer: Any, sc: Any, extra_headers: Mapping[str, Any], options: Mapping[str, Any]
    ) -> _Template:
        """Run ``send_task`` once against a recorder and turn what it published into a template.

        Raises :class:`Unsupported` when the message would need anything the
        fast path does not reproduce.
        """
        recorder = _Recorder(producer)
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
        kw = dict(kw)
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
        headers = dict(kw.pop("headers", None) or {})
        priority = kw.pop("priority", 0)
        for entity in kw.pop("declare", None) or ():
            producer.maybe_declare(entity)
        for unused in ("retry", "retry_policy", "timeout", "confirm_timeout", "mandatory", "immediate"):
            kw.pop(unused, None)
        expiration = kw.pop("expiration", None)
        properties = kw  # correlation_id, reply_to and any other message property, as kombu keeps them
        _, properties["delivery_mode"] = producer._delivery_details(producer.exchange, kw.pop("delivery_mode", None))
        if expiration is not None:
            properties["expiration"] = str(int(expiration * 1000))
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
            serializer=serializer,
            ignore_result=bool(message["headers"].get("ignore_result")),
            id_header_keys=tuple(k for k, v in message["headers"].items() if v == TEMPLATE_ID),
            id_property_keys=tuple(k for k, v in props.items() if v == TEMPLATE_ID),
            embed=body[2],
        )

    def unsupported(self, producer: Any) -> str | None:
        """Why no batch of this app can take the fast path on ``producer``'s broker, or None."""
        return self._static_reason(producer)

    def _client_for(self, channel: Any) -> Any:
        """``channel.conn_or_acquire()``, whose new Redis client per call (~0.4 ms) is made once per channel."""
        cached = self._client
        if cached is None or cached[0] is not channel:
            with channel.conn_or_acquire() as client:
                self._client = cached = (channel, client)
        return contextlib.nullcontext(cached[1])

    def _recent_template(
        self, producer: Any, sc: Any, extra_headers: Mapping[str, Any], options: Mapping[str, Any]
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
        if cached is not None:
            born, c_producer, c_sc, c_headers, c_options, tpl = cached
            if now - born < TEMPLATE_MAX_AGE and c_producer is producer and c_sc is sc:
                if c_headers == extra_headers and c_options == options:
                    return tpl
        tpl = self.template(producer, sc, extra_headers, options)
        if tpl.headers.get("expires") is None and tpl.headers.get("eta") is None:
            if len(self._templates) >= 1024:  # streams found by patterns come and go: never an unbounded cache
                self._templates.clear()
            self._templates[sc.stream] = (now, producer, sc, dict(extra_headers), dict(options), tpl)
        return tpl

    def publish(
        self,
        producer: Any,
        sc: Any,
        calls: Sequence[Call],
        *,
        extra_headers: Mapping[str, Any],
        options: Mapping[str, Any],
        trace: Mapping[str, Mapping[str, str]] | None = None,
    ) -> list[tuple[str, str]] | None:
        """LPUSH one message per call in one pipeline; ``None`` means "use the standard path".

        Returns ``(entry id, error)`` for the calls whose arguments could not be
        encoded (they are dead-lettered by the caller, like a failed ``send_task``).
        Broker errors propagate: the caller treats the batch as not dispatched.
        ``trace`` maps entry ids to their trace headers (``stream_trace_fields``).
        """
        built = self.build(producer, sc, calls, extra_headers=extra_headers, options=options, trace=trace)
        if built is None:
            return None
        self.push(producer, built)
        return built.failed

    def build(  # noqa: C901 -- every case where the template cannot give send_task's bytes steps aside here
        self,
        producer: Any,
        sc: Any,
        calls: Sequence[Call],
        *,
        extra_headers: Mapping[str, Any],
        options: Mapping[str, Any],
        trace: Mapping[str, Mapping[str, str]] | None = None,
    ) -> Built | None:
        """The batch's messages, built but not sent; ``None`` means "use the standard path" (see ``reason``).

        ``trace`` maps entry ids to their trace headers (``stream_trace_fields``): such
        an entry's headers differ from the batch's envelope, so its message is encoded whole.
        """
        reason = self.reason = self._static_reason(producer)
        if reason is None:
            try:
                tpl = self._recent_template(producer, sc, extra_headers, options)
            except Unsupported as exc:
                reason = str(exc)
            except producer.connection.connection_errors:
                raise
            except Exception as exc:  # the standard path will dead-letter or retry as it always does
                reason = f"building the message template failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            self.reason = reason
            self._skip(reason)
            return None
        failed: list[tuple[str, str]] = []
        args_max, kwargs_max, maxlevels = repr_limits(self.app)
        on_task_call = None if tpl.ignore_result else self.app.backend.on_task_call
        headers_tpl, props_tpl, embed = tpl.headers, tpl.properties, tpl.embed
        id_headers, id_props = tpl.id_header_keys, tpl.id_property_keys
        ctype, cenc, serializer = tpl.content_type, tpl.content_encoding, tpl.serializer
        uuid4, b64encode = self._uuid4, base64.b64encode
        payloads = []
        # Per batch, once: the delivery tags, the body's constant tail and the
        # envelope text around the per-entry values (envelope.py).
        tags = uuid4_strings(len(calls)) if uuid4 is uuid.uuid4 else [str(uuid4()) for _ in calls]
        body_tail = ", " + json_dumps(embed) + "]"
        # kombu's dumps makes an encoder per call; one per batch encodes the same (checked on the first entry)
        encode = kombu_json.JSONEncoder().encode
        envelope: Envelope | None = None
        spliced, checked = True, False  # the batch's first message decides how the others are made
        for i, (entry_id, task_id, args, kwargs) in enumerate(calls):
            # as as_task_v2 does: an empty argument list is shown as "()"
            shown_args: list[Any] | tuple[()] = args or ()
            kwargs = kwargs or {}
            try:
                if checked:
                    body = _body(shown_args, kwargs, embed, serializer, body_tail if spliced else None, encode)
                else:
                    body = serialize((shown_args, kwargs, embed), serializer=serializer)[2]
                    spliced = _body(shown_args, kwargs, embed, serializer, body_tail, encode) == body
                body64 = b64encode(body if isinstance(body, bytes) else body.encode(cenc)).decode()
                argsrepr = argument_repr(shown_args, args_max, maxlevels)
                kwargsrepr = argument_repr(kwargs, kwargs_max, maxlevels)
                if not checked:
                    checked = True
                    envelope = build_envelope(
                        json_dumps, content_type=ctype, content_encoding=cenc, headers=headers_tpl,
                        properties=props_tpl, id_header_keys=id_headers, id_property_keys=id_props,
                        sample=(body64, task_id, entry_id, argsrepr, kwargsrepr, tags[i]),
                    )  # fmt: skip
                traced = trace.get(entry_id) if trace else None
                if envelope is not None and traced is None:
                    payloads.append(envelope.fill(body64, task_id, entry_id, argsrepr, kwargsrepr, tags[i]))
                    if on_task_call is not None:
                        on_task_call(producer, task_id)
                    continue
                headers = dict(headers_tpl)
                for k in id_headers:
                    headers[k] = task_id
                headers["redis_stream_id"] = entry_id
                if traced:
                    headers.update(traced)  # after redis_stream_id, as message_headers() orders them
                headers["argsrepr"] = argsrepr
                headers["kwargsrepr"] = kwargsrepr
                props = dict(props_tpl)
                for k in id_props:
                    props[k] = task_id
                props["delivery_tag"] = tags[i]
                payloads.append(
                    json_dumps(
                        {
                            "body": body64,
                            "content-encoding": cenc,
                            "content-type": ctype,
                            "headers": headers,
                            "properties": props,
                        }
                    )
                )
            except Exception as exc:  # this entry cannot be encoded; the rest can
                failed.append((entry_id, f"{type(exc).__name__}: {exc}"))
                continue
            if on_task_call is not None:
                on_task_call(producer, task_id)
        return Built(tpl.key, payloads, failed)

    def push(self, producer: Any, built: Built) -> None:
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

"""What both fast paths share: the template's id, the checks that send Celery back to send_task, the body
encoding, the argument reprs, and the recorder that captures one ``send_task`` call as the batch's template."""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import cast

from celery import Celery, signals
from celery.utils.saferepr import saferepr
from kombu import serialization
from kombu.messaging import Producer
from kombu.utils import json as kombu_json

from ..exceptions import StreamError

__all__ = [
    "PUBLISH_SIGNALS",
    "TEMPLATE_ID",
    "TEMPLATE_MAX_AGE",
    "Call",
    "Recorder",
    "Unsupported",
    "argument_repr",
    "batch_encoder",
    "celery_reason",
    "encode_body",
    "json_dumps",
    "repr_limits",
    "serialize",
]

# kombu's own encoders: the body as Producer.publish serializes it, the
# envelope as the Redis transport's _put dumps it.
serialize: Callable[..., tuple[str, str, str | bytes]] = serialization.dumps
json_dumps: Callable[[object], str] = kombu_json.dumps

Call = tuple[str, str, list[object], dict[str, object]]  # entry id, task id, args, kwargs


TEMPLATE_ID = "00000000-0000-4000-8000-000000000000"
TEMPLATE_MAX_AGE = 1.0  # seconds a batch template is reused for the same stream's next batches
PUBLISH_SIGNALS = (signals.before_task_publish, signals.after_task_publish, signals.task_sent)


def celery_reason(app: Celery) -> str | None:
    """Why the app's own settings or signal receivers need ``send_task`` for every message (both fast paths)."""
    conf = app.conf
    if conf.task_protocol != 2:
        return f"task_protocol is {conf.task_protocol}, the fast path writes protocol 2"
    if conf.task_send_sent_event:
        return "task_send_sent_event is on"
    for signal in PUBLISH_SIGNALS:
        if signal.receivers:
            return f"a {signal.name} receiver is connected"
    return None


def _plain(s: object) -> bool:
    return type(s) is str and s.isprintable() and "'" not in s and "\\" not in s


def _plain_dict(d: dict[object, object]) -> bool:
    """``all(_plain(k) and _plain(v) for k, v in d.items())``, checked on all its strings at once."""
    parts = [*d, *d.values()]
    if not parts:
        return True
    if set(map(type, parts)) != {str}:
        return False
    text = "".join(cast("list[str]", parts))  # every part is a str (just checked)
    return text.isprintable() and "'" not in text and "\\" not in text


def repr_limits(app: Celery) -> tuple[int, int, int]:
    """``(argsrepr maxsize, kwargsrepr maxsize, maxlevels)`` as Celery's ``as_task_v2`` applies them; once per batch."""
    # Celery < 5.5 has no task_repr_maxlevels; its saferepr default is 3 levels.
    return app.amqp.argsrepr_maxsize, app.amqp.kwargsrepr_maxsize, app.conf.get("task_repr_maxlevels") or 3


def argument_repr(value: object, maxsize: int, maxlevels: int) -> str:
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
            simple = _plain_dict(cast("dict[object, object]", value))
        elif t is list:
            items = cast("list[object]", value)
            if len(items) == 1 and type(items[0]) is dict:  # call: fields, the common case
                simple = _plain_dict(cast("dict[object, object]", items[0]))
            else:
                simple = all(_plain_dict(x) if type(x) is dict else _plain(x) for x in items)
        else:
            simple = False
        if simple:
            text = repr(value)
            if len(text) <= maxsize:
                return text
    return str(saferepr(value, maxsize, maxlevels=maxlevels))


def encode_body(
    args: object,
    kwargs: object,
    embed: object,
    serializer: str,
    tail: str | None,
    encode: Callable[[object], str] = json_dumps,
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


class Recorder:
    """Stands in for the producer in one ``send_task`` call and keeps what would have been published.

    Running Celery's own ``send_task`` for the template means routing
    (``task_routes``, ``queue``), task-level options (``expires``, time limits,
    ``priority``) and header defaults come out exactly as Celery makes them.
    """

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.published: tuple[object, dict[str, object]] | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self._producer, name)

    def publish(self, body: object, **kwargs: object) -> None:
        self.published = (body, kwargs)


def batch_encoder() -> Callable[[object], str]:
    """kombu's ``JSONEncoder().encode``, without its per-call set-up where CPython's C encoder is there.

    ``JSONEncoder.encode`` rebuilds the C encoder and looks up its options on
    every call (a micro-second of the ~3 it takes for an entry's arguments);
    this builds it from the same options directly. The batch's first body is
    compared with kombu's own, so an encoder that differed would only cost
    the splice for that batch.
    """
    encoder = kombu_json.JSONEncoder()
    make = c_make_encoder
    if make is None or encoder.indent is not None:
        return cast("Callable[[object], str]", encoder.encode)
    quote = encode_basestring_ascii if encoder.ensure_ascii else encode_basestring
    default, key_sep, item_sep = encoder.default, encoder.key_separator, encoder.item_separator
    sort_keys, skipkeys, allow_nan, circular = (
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
        encoder.check_circular,
    )

    def encode(value: object) -> str:
        if isinstance(value, str):
            return quote(value)
        markers: dict[int, object] | None = {} if circular else None
        run = make(markers, default, quote, None, key_sep, item_sep, sort_keys, skipkeys, allow_nan)
        return "".join(run(value, 0))

    return encode

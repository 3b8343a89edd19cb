"""StreamEntry, decoding raw entries (utf-8, raw, json:<field>, faststream) and the call shapes; no Redis, no Celery.

Also an entry's business key under a stream's ``dedupe`` (DedupeRule): a template over its fields.
"""

from __future__ import annotations

import json
import string
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, cast

from .client import faststream
from .exceptions import EntryError

__all__ = [
    "BODY_DECODERS", "DECODE_ERROR", "DEDUPE_KEY", "CallShape", "DecodeKind", "DecodedEntry", "DedupeRule",
    "RawEntry", "StreamEntry", "build_call", "decode", "decode_as", "parse_dedupe", "parse_read_reply",
]  # fmt: skip

CallShape = Literal["fields", "kwargs", "entry"]
#: ``dlq_reason`` of an entry that its ``decode`` setting (``json:<field>``, ``faststream``) cannot read.
DECODE_ERROR = "decode"
Converter = Callable[["StreamEntry"], tuple[Sequence[object], Mapping[str, object]]]


@dataclass(frozen=True, slots=True)
class RawEntry:
    """An entry as Redis returned it: field/value pairs kept as bytes and in order.

    ``pairs`` is ``None`` for a pending entry whose data was trimmed away.
    """

    stream: str
    id: str
    pairs: tuple[bytes, ...] | None

    @property
    def size(self) -> int:
        return sum(map(len, self.pairs)) if self.pairs else 0


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """What a converter receives: one stream entry, decoded as the stream's ``decode`` setting says.

    ``fields`` is the entry's field/value pairs as text (``None`` under
    ``decode: "raw"``; under ``"faststream"`` the fields besides ``__data__``,
    usually none). ``raw_fields`` is always there: the ``(name, value)`` byte
    pairs as Redis returned them, in order, duplicates kept. ``body`` is the
    decoded value under ``"json:<field>"`` and ``"faststream"`` (else None),
    ``headers`` FastStream's message headers (else None).
    """

    stream: str
    id: str
    fields: dict[str, str] | None
    delivery_count: int = 1
    # The flat pairs as Redis returned them; raw_fields pairs them up only when asked (most converters never do).
    pairs: tuple[bytes, ...] = field(default=(), repr=False, compare=False)

    @property
    def raw_fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """The entry's ``(name, value)`` pairs as bytes, as XREAD returned them: in order, duplicates kept."""
        it = iter(self.pairs)
        return tuple(zip(it, it, strict=False))

    # Properties here, fields of DecodedEntry: a text entry (the default) sets no more attributes than it needs.
    @property
    def body(self) -> object:
        """The decoded value under ``decode: "json:<field>"`` and ``"faststream"``; None otherwise."""
        return None

    @property
    def headers(self) -> Mapping[str, str] | None:
        """FastStream's message headers under ``decode: "faststream"``; None otherwise."""
        return None


@dataclass(frozen=True, slots=True)
class DecodedEntry(StreamEntry):
    """A :class:`StreamEntry` whose ``body`` (and, from FastStream, ``headers``) a decoder read."""

    body: object = None
    headers: Mapping[str, str] | None = None


#: How entries are decoded (``stream_decode``, per stream ``decode``): "utf-8", "raw", "json", "faststream".
DecodeKind = Literal["utf-8", "raw", "json", "faststream"]
#: The decoders whose entries carry a ``body`` that is the task's argument instead of the fields.
BODY_DECODERS = frozenset({"json", "faststream"})


def decode(raw: RawEntry, *, max_bytes: int, delivery_count: int = 1) -> StreamEntry:
    """Decode ``raw`` as UTF-8 text (``decode: "utf-8"``, the default), or raise :class:`EntryError`.

    The other decoders are :func:`decode_as`'s.
    """
    pairs = raw.pairs or ()
    if raw.size > max_bytes:
        raise EntryError("too_large", f"entry is {raw.size} bytes, stream_max_entry_bytes is {max_bytes}")
    try:  # the common case in one pass; any problem is found and reported by the loop below
        it = iter(pairs)
        # zip(it, it) pairs names with values; an odd count fails the length check below
        fields = {name.decode(): value.decode() for name, value in zip(it, it, strict=False)}
        if 2 * len(fields) == len(pairs):
            return StreamEntry(raw.stream, raw.id, fields, delivery_count, pairs)
    except UnicodeDecodeError:
        pass
    # Duplicate field names are legal in XADD but would be silently merged by a
    # dict, so they are refused rather than half-delivered.
    fields = {}
    try:
        for i in range(0, len(pairs), 2):
            name = pairs[i].decode("utf-8")
            if name in fields:
                raise EntryError("duplicate_field", f"field {name!r} appears more than once")
            fields[name] = pairs[i + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryError("not_utf8", str(exc)) from None
    return StreamEntry(raw.stream, raw.id, fields, delivery_count, pairs)


def decode_as(decoder: str, raw: RawEntry, *, max_bytes: int, delivery_count: int = 1) -> StreamEntry:
    """Decode ``raw`` as ``decoder`` (a stream's ``decode``: ``"utf-8"``, ``"raw"``, ``"json:<field>"``,
    ``"faststream"``) says, or raise :class:`EntryError` (``reason`` ``decode`` when the decoder cannot read it)."""
    if decoder == "utf-8":
        return decode(raw, max_bytes=max_bytes, delivery_count=delivery_count)
    if raw.size > max_bytes:
        raise EntryError("too_large", f"entry is {raw.size} bytes, stream_max_entry_bytes is {max_bytes}")
    kind, _, json_field = decoder.partition(":")
    if kind == "raw":
        return StreamEntry(raw.stream, raw.id, None, delivery_count, raw.pairs or ())
    if kind == "json":
        try:
            text = decode(raw, max_bytes=sys.maxsize, delivery_count=delivery_count)
        except EntryError as exc:  # the JSON field itself unreadable is the decoder's failure: reason decode
            raise (_json_field_error(raw, json_field) or exc) from None
        return _with_json(text, json_field)
    if kind == "faststream":
        return _faststream(raw, delivery_count)
    raise ValueError(f"unknown decoder {decoder!r}")  # config.py checked it; a caller's mistake


def _with_json(entry: StreamEntry, name: str) -> StreamEntry:
    """``decode: "json:<name>"``: the field's JSON value becomes the entry's body (and leaves its fields)."""
    fields = cast("dict[str, str]", entry.fields)
    if name not in fields:
        raise EntryError(DECODE_ERROR, f"field {name!r} (decode 'json:{name}') is missing")
    try:
        body = json.loads(fields.pop(name))
    except (ValueError, RecursionError) as exc:  # RecursionError: valid JSON nested deeper than Python's limit
        raise EntryError(DECODE_ERROR, f"field {name!r} is not JSON: {exc}") from None
    return DecodedEntry(entry.stream, entry.id, fields, entry.delivery_count, entry.pairs, body)


def _json_field_error(raw: RawEntry, name: str) -> EntryError | None:
    """The ``decode`` error of the ``json:<name>`` field itself (repeated, or not UTF-8 and so not JSON), if any."""
    pairs, key = raw.pairs or (), name.encode()
    values = [pairs[i + 1] for i in range(0, len(pairs) - 1, 2) if pairs[i] == key]
    if len(values) > 1:
        return EntryError(DECODE_ERROR, f"field {name!r} (decode 'json:{name}') appears more than once")
    for value in values:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return EntryError(DECODE_ERROR, f"field {name!r} is not JSON: it is not UTF-8: {exc}")
    return None


def _faststream(raw: RawEntry, delivery_count: int) -> StreamEntry:
    """``decode: "faststream"``: the body and headers of the message FastStream wrote in ``__data__``."""
    pairs = raw.pairs or ()
    data: bytes | None = None
    rest = []
    for i in range(0, len(pairs) - 1, 2):
        if pairs[i] == faststream.DATA_FIELD:
            if data is not None:
                raise EntryError(DECODE_ERROR, "field '__data__' appears more than once")
            data = pairs[i + 1]
        else:
            rest += [pairs[i], pairs[i + 1]]
    if data is None:
        raise EntryError(DECODE_ERROR, "no '__data__' field: not a message FastStream's Redis publisher wrote")
    try:
        body, headers = faststream.parse(data)
        value = faststream.body_value(body, headers)
    # FormatError, UnicodeDecodeError and JSONDecodeError are all ValueErrors; RecursionError: JSON nested too deep
    except (ValueError, RecursionError) as exc:
        raise EntryError(DECODE_ERROR, f"{type(exc).__name__}: {exc}") from None
    try:  # fields besides __data__ (FastStream writes none): whatever is wrong with them is a decode failure too
        fields = decode(RawEntry(raw.stream, raw.id, tuple(rest)), max_bytes=sys.maxsize).fields
    except EntryError as exc:
        raise EntryError(DECODE_ERROR, f"{exc.reason}: {exc.error}") from None
    return DecodedEntry(raw.stream, raw.id, fields, delivery_count, pairs, value, MappingProxyType(headers))


def build_call(
    entry: StreamEntry, call: CallShape, converter: Converter | None, *, body: bool = False
) -> tuple[list[object], dict[str, object]]:
    """Turn ``entry`` into the ``(args, kwargs)`` of the mapped task.

    ``body``: the entry's decoded ``body`` (``json:``, ``faststream``) is the
    argument instead of its fields: ``[body]``, its keys as keyword arguments,
    or ``[stream, id, body]``.
    """
    if converter is not None:
        try:
            result = converter(entry)
            args, kwargs = result
            if not isinstance(kwargs, dict):
                raise TypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
            return list(args), kwargs
        except Exception as exc:  # any converter failure is the entry's, not the worker's
            raise EntryError("converter_error", f"{type(exc).__name__}: {exc}") from None
    value: object = entry.body if body else entry.fields
    if call == "fields":
        return [value], {}
    if call == "kwargs":
        return [], _keywords(value)
    return [entry.stream, entry.id, value], {}


def _keywords(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise EntryError(DECODE_ERROR, f"call 'kwargs' needs a JSON object, got {type(value).__name__}")
    return dict(value)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entries(stream: str, items: Iterable[object] | None) -> list[RawEntry]:
    """Parse the ``[[id, [f, v, ...]], ...]`` part of an XREAD/XRANGE/XAUTOCLAIM reply."""
    entries = []
    for item in items or ():
        if not isinstance(item, (list, tuple)):
            continue  # nil: an entry trimmed away (Redis 6.2's XAUTOCLAIM)
        entry_id, pairs = item[0], item[1]
        fields = tuple(cast("Sequence[bytes]", pairs)) if pairs is not None else None
        entries.append(RawEntry(stream, _text(entry_id), fields))
    return entries


def parse_read_reply(reply: object) -> dict[str, list[RawEntry]]:
    """Parse an XREAD/XREADGROUP reply in either RESP2 (list) or RESP3 (map) shape."""
    if not reply:
        return {}
    items = reply.items() if isinstance(reply, dict) else cast("Iterable[tuple[object, object]]", reply)
    out: dict[str, list[RawEntry]] = {}
    for key, entries in items:
        stream = _text(key)
        out[stream] = parse_entries(stream, cast("Iterable[object] | None", entries))
    return out


#: dlq_reason of an entry that lacks a field of its stream's dedupe key template.
DEDUPE_KEY = "dedupe_key"

#: The record of a business key is kept this long when ``dedupe`` gives no ``ttl_ms`` (one day, as produce()'s key).
DEFAULT_DEDUPE_TTL_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class DedupeRule:
    """A stream's business key: ``template`` over the entry's fields, remembered ``ttl_ms`` once dispatched.

    ``parts`` is the template taken apart: (literal text, field name or None).
    """

    template: str
    ttl_ms: int
    parts: tuple[tuple[str, str | None], ...]
    #: The template's field names, worked out once: as text, and as the bytes Redis returns them in.
    fields: tuple[str, ...] = field(init=False)
    _wanted: dict[bytes, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = tuple(name for _, name in self.parts if name is not None)
        object.__setattr__(self, "fields", names)
        object.__setattr__(self, "_wanted", {name.encode(): name for name in names})

    def key(self, pairs: tuple[bytes, ...]) -> str:
        """The business key of an entry's own fields, given as Redis returned them (name, value, ...).

        Only the template's fields are decoded (UTF-8), the first occurrence of a name counting; one that is
        missing or not UTF-8 raises EntryError ``dedupe_key`` (the entry is dead-lettered).
        """
        found: dict[str, str] = {}
        for i in range(0, len(pairs) - 1, 2):
            name = self._wanted.get(pairs[i])
            if name is not None and name not in found:
                try:
                    found[name] = pairs[i + 1].decode()
                except UnicodeDecodeError:
                    raise EntryError(DEDUPE_KEY, f"field {name!r} of the dedupe key is not UTF-8") from None
        return self._render(found)

    def key_in(self, body: Mapping[str, object]) -> str:
        """The business key of a decoded JSON object (``decode: "json:<field>"``, ``"faststream"``).

        A string value is taken as it is, any other as compact JSON (``42``, ``true``, ``{"a":1}``, keys in the
        order the producer wrote them).
        """
        found: dict[str, str] = {}
        for name in self.fields:
            if name in body:
                value = body[name]
                found[name] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return self._render(found)

    def _render(self, found: Mapping[str, str]) -> str:
        missing = [name for name in self.fields if name not in found]
        if missing:
            raise EntryError(
                DEDUPE_KEY,
                f"the entry has no field {', '.join(map(repr, missing))} for the dedupe key {self.template!r}",
            )
        return "".join(text + (found[name] if name is not None else "") for text, name in self.parts)


def parse_dedupe(value: object) -> DedupeRule:
    """``{"key": "{tenant}:{order_id}", "ttl_ms": 3600000}``; raises ValueError with the reason."""
    if not isinstance(value, Mapping):
        raise ValueError(f'expected a dict like {{"key": "{{order_id}}", "ttl_ms": 3600000}}, got {value!r}')
    unknown = sorted(map(str, set(value) - {"key", "ttl_ms"}))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: 'key', 'ttl_ms'")
    template = value.get("key")
    if not isinstance(template, str) or not template:
        raise ValueError(f"'key' must be a template over the entry's fields like '{{order_id}}', got {template!r}")
    ttl = value.get("ttl_ms", DEFAULT_DEDUPE_TTL_MS)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
        raise ValueError(f"'ttl_ms' must be an integer of at least 1 (milliseconds), got {ttl!r}")
    return DedupeRule(template, ttl, _parts(template))


def _parts(template: str) -> tuple[tuple[str, str | None], ...]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"'key' {template!r} is not a valid template: {exc}") from None
    parts: list[tuple[str, str | None]] = []
    for text, name, spec, conversion in parsed:
        if name is not None and (not name or spec or conversion):
            raise ValueError(
                f"'key' {template!r}: a field is written '{{name}}', without format spec, conversion or position"
            )
        if name is not None and ("[" in name or "." in name):
            raise ValueError(f"'key' {template!r}: {name!r} is not a plain field name")
        parts.append((text, name))
    if not any(name is not None for _, name in parts):
        raise ValueError(f"'key' {template!r} names no field: write the fields in braces, like '{{order_id}}'")
    return tuple(parts)

"""StreamEntry, decoding of raw entries, the call shapes and an entry's business key (dedupe); no Redis, no Celery."""

from __future__ import annotations

import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from .exceptions import EntryError

__all__ = [
    "DEDUPE_KEY", "CallShape", "DedupeRule", "RawEntry", "StreamEntry", "build_call", "decode", "parse_dedupe",
    "parse_read_reply",
]  # fmt: skip

CallShape = Literal["fields", "kwargs", "entry"]
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
    """What a converter receives: one decoded stream entry."""

    stream: str
    id: str
    fields: dict[str, str]
    delivery_count: int = 1


def decode(raw: RawEntry, *, max_bytes: int, delivery_count: int = 1) -> StreamEntry:
    """Decode ``raw`` into a :class:`StreamEntry`, or raise :class:`EntryError`.

    Duplicate field names are legal in XADD but would be silently merged by a
    dict, so they are refused rather than half-delivered.
    """
    pairs = raw.pairs or ()
    if raw.size > max_bytes:
        raise EntryError("too_large", f"entry is {raw.size} bytes, stream_max_entry_bytes is {max_bytes}")
    try:  # the common case in one pass; any problem is found and reported by the loop below
        it = iter(pairs)
        # zip(it, it) pairs names with values; an odd count fails the length check below
        fields = {name.decode(): value.decode() for name, value in zip(it, it, strict=False)}
        if 2 * len(fields) == len(pairs):
            return StreamEntry(raw.stream, raw.id, fields, delivery_count)
    except UnicodeDecodeError:
        pass
    fields = {}
    try:
        for i in range(0, len(pairs), 2):
            name = pairs[i].decode("utf-8")
            if name in fields:
                raise EntryError("duplicate_field", f"field {name!r} appears more than once")
            fields[name] = pairs[i + 1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryError("not_utf8", str(exc)) from None
    return StreamEntry(raw.stream, raw.id, fields, delivery_count)


def build_call(
    entry: StreamEntry, call: CallShape, converter: Converter | None
) -> tuple[list[object], dict[str, object]]:
    """Turn ``entry`` into the ``(args, kwargs)`` of the mapped task."""
    if converter is not None:
        try:
            result = converter(entry)
            args, kwargs = result
            if not isinstance(kwargs, dict):
                raise TypeError(f"kwargs must be a dict, got {type(kwargs).__name__}")
            return list(args), kwargs
        except Exception as exc:  # any converter failure is the entry's, not the worker's
            raise EntryError("converter_error", f"{type(exc).__name__}: {exc}") from None
    if call == "fields":
        return [entry.fields], {}
    if call == "kwargs":
        return [], dict(entry.fields)
    return [entry.stream, entry.id, entry.fields], {}


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

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.parts if name is not None)

    def key(self, pairs: tuple[bytes, ...]) -> str:
        """The business key of an entry given as Redis returned it (name, value, ...).

        Only the template's fields are decoded (UTF-8), the first occurrence of a name counting; one that is
        missing or not UTF-8 raises EntryError ``dedupe_key`` (the entry is dead-lettered).
        """
        wanted = self.fields
        found: dict[str, str] = {}
        for i in range(0, len(pairs) - 1, 2):
            try:
                name = pairs[i].decode()
            except UnicodeDecodeError:
                continue
            if name in wanted and name not in found:
                try:
                    found[name] = pairs[i + 1].decode()
                except UnicodeDecodeError:
                    raise EntryError(DEDUPE_KEY, f"field {name!r} of the dedupe key is not UTF-8") from None
        missing = [name for name in wanted if name not in found]
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

"""StreamEntry, decoding of raw entries and the call shapes; no Redis, no Celery."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from .exceptions import EntryError

__all__ = ["CallShape", "RawEntry", "StreamEntry", "build_call", "decode", "parse_read_reply"]

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

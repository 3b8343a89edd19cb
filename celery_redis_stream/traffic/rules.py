"""The traffic settings as values: a Rate (``"100/s"``) and a DedupeRule (``{"key": "{order_id}", "ttl_ms": ...}``).

Pure parsing, no Redis: config.py checks the settings with these, and the
readers (limit.py, dedupe.py) act on them.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BURST_MS", "DEFAULT_DEDUPE_TTL_MS", "DedupeRule", "MissingKeyField", "Rate", "parse_dedupe", "parse_rate"]

#: Celery's rate notation (celery.utils.time.rate): the unit after the slash, in milliseconds.
UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}

#: The bucket holds what this many milliseconds of the rate bring (at least one token, at most one interval's
#: worth): an even flow as Celery's own rate_limit gives (a bucket of one), in batches a busy stream can use.
BURST_MS = 100

#: The record of a business key is kept this long when ``dedupe`` gives no ``ttl_ms`` (one day, as produce()'s key).
DEFAULT_DEDUPE_TTL_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` entries per ``interval_ms``, for the whole fleet; ``text`` as configured.

    The bucket refills ``count / interval_ms`` tokens per millisecond and holds
    ``capacity``: a tenth of a second's worth (BURST_MS), never more than one
    interval's worth, at least one token (so ``"0.5/s"`` still lets an entry
    through every two seconds). However long the stream was idle, any window
    of T ms then sees at most ``per_ms * T + capacity`` entries.
    """

    count: float
    interval_ms: int
    text: str

    @property
    def capacity(self) -> int:
        return max(1, math.floor(min(self.count, self.per_ms * BURST_MS)))

    @property
    def per_ms(self) -> float:
        return self.count / self.interval_ms

    def __str__(self) -> str:
        return self.text


def parse_rate(value: object) -> Rate:
    """``"100/s"``, ``"600/m"``, ``"1000/h"``, ``"5"`` or a number (per second), as Celery's ``rate_limit``.

    Raises ValueError with the reason; zero or less is refused (no limit is None, not 0).
    A Rate is returned as it is (a stream's ``rate_limit`` inherits the checked ``stream_rate_limit``).
    """
    if isinstance(value, Rate):
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a rate like '100/s', '600/m', '1000/h' or a number per second, got {value!r}")
    if isinstance(value, str):
        amount, _, unit = value.strip().partition("/")
        unit = unit.strip() or "s"
        if unit not in UNITS_MS:
            raise ValueError(f"the unit after '/' must be s, m or h, got {value!r}")
        try:
            count = float(amount)
        except ValueError:
            raise ValueError(f"expected a number before '/', got {value!r}") from None
        interval = UNITS_MS[unit]
        text = f"{amount.strip()}/{unit}"
    else:
        count, interval, text = float(value), 1000, f"{value}/s"
    if not math.isfinite(count) or count <= 0:
        raise ValueError(f"must be more than zero (None means no limit), got {value!r}")
    return Rate(count, interval, text)


class MissingKeyField(Exception):
    """An entry lacks a field of the dedupe key template (or its value is not UTF-8): dead letter ``dedupe_key``."""


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
        """The business key of an entry given as Redis returned it (name, value, ...); raises MissingKeyField.

        Only the template's fields are decoded (UTF-8): the first occurrence of a name counts.
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
                    raise MissingKeyField(f"field {name!r} of the dedupe key is not UTF-8") from None
        missing = [name for name in wanted if name not in found]
        if missing:
            raise MissingKeyField(
                f"the entry has no field {', '.join(map(repr, missing))} for the dedupe key {self.template!r}"
            )
        return "".join(text + (found[name] if name is not None else "") for text, name in self.parts)

    def key_of(self, fields: Mapping[str, str]) -> str:
        """The business key of decoded fields; raises MissingKeyField."""
        pairs: list[bytes] = []
        for name, value in fields.items():
            pairs += [name.encode(), value.encode()]
        return self.key(tuple(pairs))


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

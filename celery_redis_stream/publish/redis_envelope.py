"""The fast path's per-batch message text: the JSON envelope encoded once, split around its per-entry values.

kombu's Redis transport stores a message as ``json.dumps`` of a dict
(body, content type and encoding, headers, properties). Within one batch only
six values differ between messages: the base64 body, the task id (in several
headers and properties), the entry id, ``argsrepr``, ``kwargsrepr`` and the
delivery tag. JSON encodes a dict as the concatenation of its keys and values,
each encoded on its own, so the batch's dict is encoded once with placeholder
strings, cut at the placeholders, and each message is the pieces joined with
its own encoded values: the same text ``json.dumps`` of the whole dict gives,
for a fraction of the cost. :func:`build` checks that on the batch's first
message and returns ``None`` (encode every message whole, as before) if the
encoder were ever to disagree.
"""

from __future__ import annotations

import binascii
import operator
import os
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import NamedTuple

__all__ = ["Envelope", "build", "uuid4_strings"]

# The per-entry values, by position in Envelope.fill's arguments.
BODY, TASK_ID, ENTRY_ID, ARGSREPR, KWARGSREPR, DELIVERY_TAG = range(6)
_MARK = "\x00crs-envelope-%d\x00"  # never in a header: a NUL would have to be in the app's own options


class Envelope:
    """``fill(body, task_id, entry_id, argsrepr, kwargsrepr, delivery_tag)`` is one message's JSON text."""

    __slots__ = ("_format", "_order", "_pick", "quote")

    def __init__(self, fmt: str, order: tuple[int, ...], quote: Callable[[str], str]) -> None:
        self._format = fmt
        self._order = order
        self.quote = quote
        # the values in the text's order, as one tuple (itemgetter of one index gives the value itself)
        pick = operator.itemgetter(*order) if len(order) > 1 else None
        self._pick: Callable[[tuple[str, ...]], tuple[str, ...]] | None = pick

    def fill(self, body: str, task_id: str, entry_id: str, argsrepr: str, kwargsrepr: str, tag: str) -> str:
        quote = self.quote
        values = (quote(body), quote(task_id), quote(entry_id), quote(argsrepr), quote(kwargsrepr), quote(tag))
        pick = self._pick
        return self._format % (pick(values) if pick is not None else tuple([values[i] for i in self._order]))


def _quote_for(json_dumps: Callable[[object], str]) -> Callable[[str], str]:
    """How ``json_dumps`` encodes a string: the C ASCII encoder itself when they agree, else ``json_dumps``."""
    probe = "é\"\\\n\u2028\x00\U0001f600/<>&'"
    return encode_basestring_ascii if json_dumps(probe) == encode_basestring_ascii(probe) else json_dumps


def build(
    json_dumps: Callable[[object], str],
    *,
    content_type: str,
    content_encoding: str,
    headers: Mapping[str, object],
    properties: Mapping[str, object],
    id_header_keys: tuple[str, ...],
    id_property_keys: tuple[str, ...],
    sample: tuple[str, str, str, str, str, str],
) -> Envelope | None:
    """The batch's envelope, or ``None`` when its pieces would not give ``json_dumps``'s exact text.

    ``headers`` and ``properties`` are the template's (``delivery_tag``
    absent); the per-entry keys are set in the order the message dict gets
    them. ``sample`` is the first message's values, used for the check.
    """
    shape = _Shape(content_type, content_encoding, headers, properties, id_header_keys, id_property_keys)
    try:
        quote = _quote_for(json_dumps)
        kinds: dict[str, int] = {}
        text = json_dumps(shape.message(lambda kind: _mark(kinds, kind)))
        envelope = _cut(text, kinds, quote)
        if envelope is None or envelope.fill(*sample) != json_dumps(shape.message(lambda kind: sample[kind])):
            return None
    except Exception:  # an encoder that cannot do this; the caller encodes each message whole
        return None
    return envelope


class _Shape(NamedTuple):
    """The batch's message dict, with the per-entry values given by a function of their kind."""

    content_type: str
    content_encoding: str
    headers: Mapping[str, object]
    properties: Mapping[str, object]
    id_header_keys: tuple[str, ...]
    id_property_keys: tuple[str, ...]

    def message(self, v: Callable[[int], str]) -> dict[str, object]:
        h = dict(self.headers)
        for k in self.id_header_keys:
            h[k] = v(TASK_ID)
        h["redis_stream_id"] = v(ENTRY_ID)
        h["argsrepr"] = v(ARGSREPR)
        h["kwargsrepr"] = v(KWARGSREPR)
        p = dict(self.properties)
        for k in self.id_property_keys:
            p[k] = v(TASK_ID)
        p["delivery_tag"] = v(DELIVERY_TAG)
        return {
            "body": v(BODY),
            "content-encoding": self.content_encoding,
            "content-type": self.content_type,
            "headers": h,
            "properties": p,
        }


def _mark(kinds: dict[str, int], kind: int) -> str:
    """A placeholder for one occurrence of a per-entry value (the task id appears several times)."""
    text = _MARK % kind + str(len(kinds))
    kinds[text] = kind
    return text


def _cut(text: str, kinds: dict[str, int], quote: Callable[[str], str]) -> Envelope | None:
    """The envelope of ``text`` cut at its placeholders, or None if one is not there exactly once."""
    # A placeholder that was overwritten (redis_stream_id first gets the
    # task id like every header the template held it in) is not in the text.
    found = sorted((text.find(quote(m)), m) for m in kinds if quote(m) in text)
    if any(text.count(quote(m)) != 1 for _, m in found):
        return None
    pieces, order, at = [], [], 0
    for pos, m in found:
        pieces.append(text[at:pos].replace("%", "%%"))
        order.append(kinds[m])
        at = pos + len(quote(m))
    pieces.append(text[at:].replace("%", "%%"))
    return Envelope("%s".join(pieces), tuple(order), quote)


def uuid4_strings(n: int) -> list[str]:
    """``[str(uuid.uuid4()) for _ in range(n)]`` from one ``os.urandom`` call."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])  # version 4
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])  # RFC 4122 variant
    text = binascii.hexlify(raw).decode()
    out = []
    for i in range(0, 32 * n, 32):
        h = text[i : i + 32]
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out

"""The RabbitMQ fast path's bytes: a batch's content header encoded once and split around its per-entry values.

py-amqp encodes a message's properties (the content header: content type,
headers table, delivery mode, priority, correlation id, ...) in Python, field
by field, for every publish: with Celery's twenty-odd headers that was more
than half of the fast path's time. Within one batch only four values differ
between messages: the task id (in several headers and the correlation id),
the entry id, ``argsrepr`` and ``kwargsrepr``. AMQP writes a string as its
length then its bytes, and the headers table as its length then its items,
so the batch's properties are encoded once by py-amqp itself with
placeholder strings, cut around them, and each message's properties are the
pieces joined with its own values and the table's new length.
:func:`build` checks that against py-amqp's own encoding of the batch's first
message and returns ``None`` (let py-amqp encode every message) if they were
ever to differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from struct import pack

from amqp import Message, spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps as amqp_dumps

__all__ = ["Header", "PrebuiltMessage", "Publisher", "build", "publisher"]

# The per-entry values, by position in Header.fill's arguments.
TASK_ID, ENTRY_ID, ARGSREPR, KWARGSREPR = range(4)
_MARK = "\x00crs-amqp-%d-%d\x00"  # never in a header: a NUL would have to be in the app's own options
_TABLE_LENGTH = -1


class Header:
    """``fill(task_id, entry_id, argsrepr, kwargsrepr)`` is one message's encoded properties."""

    __slots__ = ("_pieces", "_slots", "_table_base")

    def __init__(self, pieces: list[bytes], slots: list[tuple[int, bool]], table_base: int) -> None:
        self._pieces = pieces  # len(slots) + 1 constant byte strings
        self._slots = slots  # (value kind or _TABLE_LENGTH, in the headers table: 4-byte length, else 1-byte)
        self._table_base = table_base  # the table's length without its per-entry strings

    def fill(self, task_id: str, entry_id: str, argsrepr: str, kwargsrepr: str) -> bytes:
        values = [v.encode("utf-8", "surrogatepass") for v in (task_id, entry_id, argsrepr, kwargsrepr)]
        pieces = self._pieces
        table = self._table_base
        out = [pieces[0]]
        for i, (kind, wide) in enumerate(self._slots, 1):
            if kind == _TABLE_LENGTH:
                out.append(b"")  # filled in below, once the table's strings are known
            else:
                value = values[kind]
                if wide:
                    table += len(value)
                    out.append(pack(">I", len(value)) + value)
                else:
                    out.append(pack("B", len(value)) + value)
            out.append(pieces[i])
        for i, (kind, _) in enumerate(self._slots):
            if kind == _TABLE_LENGTH:
                out[2 * i + 1] = pack(">I", table)
        return b"".join(out)


class PrebuiltMessage(Message):  # type: ignore[misc]
    """An ``amqp.Message`` whose content header is already encoded (``Header.fill``).

    py-amqp's frame writer asks every message for its encoded properties;
    this one answers with the bytes it was given. Its ``properties`` hold
    only the headers the bridge's confirms read (the entry id).
    """

    __slots__ = ("_header",)

    def __init__(self, body: bytes, header: bytes, headers: dict[str, object]) -> None:
        super().__init__(body, application_headers=headers)
        self._header = header

    def _serialize_properties(self) -> bytes:
        return self._header


def _encoded(headers: Mapping[str, object], properties: Mapping[str, object]) -> bytes:
    properties_bytes: bytes = Message(b"", application_headers=dict(headers), **properties)._serialize_properties()
    return properties_bytes


def build(
    headers: Mapping[str, object],
    properties: Mapping[str, object],
    kinds: Mapping[tuple[str, str], int],
    sample: tuple[str, str, str, str],
) -> Header | None:
    """The batch's content header, or ``None`` when its pieces would not give py-amqp's exact bytes.

    ``headers``/``properties`` are the first message's, ``kinds`` names the
    per-entry values in them: ``("headers", "id") -> TASK_ID``, ...
    ``sample`` is the first message's values, used for the check.
    """
    try:
        marked_headers, marked_properties = dict(headers), dict(properties)
        marks: dict[bytes, int] = {}
        for n, ((where, key), kind) in enumerate(kinds.items()):
            mark = _MARK % (kind, n)
            marks[mark.encode()] = kind
            (marked_headers if where == "headers" else marked_properties)[key] = mark
        text = _encoded(marked_headers, marked_properties)
        table = amqp_dumps("F", [marked_headers])
        table_at = text.find(table)
        if table_at < 0 or text.count(table) != 1:
            return None
        # position, bytes cut, kind, in the table
        cuts: list[tuple[int, int, int, bool]] = [(table_at, 4, _TABLE_LENGTH, True)]
        table_end = table_at + len(table)
        marked_bytes = 0  # of the placeholders in the table
        for marked, kind in marks.items():
            at = text.find(marked)
            if at < 0 or text.count(marked) != 1:
                return None
            wide = table_at < at < table_end
            prefix = b"S" + pack(">I", len(marked)) if wide else pack("B", len(marked))
            if text[at - len(prefix) : at] != prefix:
                return None
            width = 4 if wide else 1
            marked_bytes += len(marked) if wide else 0
            cuts.append((at - width, width + len(marked), kind, wide))
        cuts.sort()
        pieces: list[bytes] = []
        slots: list[tuple[int, bool]] = []
        cursor = 0
        for at, size, kind, wide in cuts:
            pieces.append(text[cursor:at])
            slots.append((kind, wide))
            cursor = at + size
        pieces.append(text[cursor:])
        header = Header(pieces, slots, len(table) - 4 - marked_bytes)
        real_headers, real_properties = dict(headers), dict(properties)
        for (where, key), kind in kinds.items():
            (real_headers if where == "headers" else real_properties)[key] = sample[kind]
        if header.fill(*sample) != _encoded(real_headers, real_properties):
            return None
    except Exception:  # an encoding this cannot follow; py-amqp encodes each message itself
        return None
    return header


class Publisher:
    """``frames(header, body)``: the AMQP frames of one mandatory ``basic.publish``, as py-amqp writes them.

    A method frame (exchange, routing key, the mandatory bit), a content
    header frame (the encoded properties and the body size) and the body in
    frames of at most ``frame_max - 8`` bytes: what py-amqp's frame writer
    sends for a ``basic_publish``, made without its per-message work
    (argument encoding, a promise, a write) so that a batch goes out in a few
    writes. :func:`publisher` checks it against py-amqp's own frame writer.
    """

    __slots__ = ("_channel_id", "_chunk", "_method")

    def __init__(self, channel_id: int, frame_max: int, exchange: str, routing_key: str) -> None:
        args = amqp_dumps("Bssbb", (0, exchange, routing_key, True, False))
        method = pack(">HH", *spec.Basic.Publish) + args
        self._method = pack(">BHI", 1, channel_id, len(method)) + method + b"\xce"
        self._channel_id = channel_id
        self._chunk = frame_max - 8

    def frames(self, header: bytes, body: bytes) -> bytes:
        channel_id, chunk = self._channel_id, self._chunk
        content = pack(">HHQ", spec.Basic.CLASS_ID, 0, len(body)) + header
        out = [self._method, pack(">BHI", 2, channel_id, len(content)), content, b"\xce"]
        for i in range(0, len(body), chunk):
            part = body[i : i + chunk]
            out += (pack(">BHI", 3, channel_id, len(part)), part, b"\xce")
        return b"".join(out)


class _Capture:
    """Stands in for py-amqp's connection and transport to keep what its frame writer writes."""

    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))


def publisher(channel_id: int, frame_max: int, exchange: str, routing_key: str, sample: Message) -> Publisher | None:
    """The batch's :class:`Publisher`, or ``None`` if its frames of ``sample`` are not py-amqp's."""
    try:
        made = Publisher(channel_id, frame_max, exchange, routing_key)
        capture = _Capture(frame_max)
        args = amqp_dumps("Bssbb", (0, exchange, routing_key, True, False))
        frame_writer(capture, capture)(1, channel_id, spec.Basic.Publish, args, sample)
        body = sample.body
        if made.frames(sample._serialize_properties(), body) != b"".join(capture.written):
            return None
    except Exception:  # a py-amqp this cannot follow; basic_publish writes each message
        return None
    return made

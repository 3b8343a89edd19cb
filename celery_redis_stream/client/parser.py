"""A RESP2 reply parser for the reader's client: redis-py's own, with a one-pass read of arrays.

redis-py's pure-Python RESP2 parser reads a reply one element at a time
(a ``readline`` and a ``read`` on its socket buffer per bulk string, through
a recursive call): for an XREADGROUP reply of 100 entries of three fields,
some 1,100 elements, that is about a third of the bridge's time. This parser
splits the bytes already in the buffer at CRLF (in C) and walks the lines,
building the same values (bytes, ints, ``None`` and nested lists). Whatever
it does not read itself (an error reply, anything with ``decode_responses``,
a reply still arriving after a few socket reads) goes to redis-py's parser
from the reply's first byte, so the result is always redis-py's.

Used only where redis-py would use its own Python RESP2 parser (no hiredis,
protocol 2): with hiredis installed, hiredis's C parser stays.
"""

from __future__ import annotations

from io import SEEK_END

from redis._parsers import _RESP2Parser
from redis.utils import HIREDIS_AVAILABLE, SENTINEL

__all__ = ["StreamReplyParser", "parser_options"]

# Socket reads before a reply that keeps arriving is left to redis-py's
# parser (each attempt walks the reply from its start again), and the most
# unread bytes this parser takes on at once (a long pipeline's replies are
# redis-py's to read, one by one).
ATTEMPTS = 4
MAX_UNREAD = 1 << 20

_DOLLAR, _STAR, _COLON, _PLUS = b"$*:+"


class _Incomplete(Exception):
    """The buffer ends before the reply does."""


class _Other(Exception):
    """A reply this parser leaves to redis-py's (an error element)."""


def _walk(lines: list[bytes], k: int, n: int, last: int) -> tuple[list[object], int]:
    """``n`` elements from line ``k`` of the buffer split at CRLF: the values and the next line.

    A bulk string holding CRLF is split too: its length tells, and the reply
    is left to redis-py's parser (``_Other``). ``last`` is the index of the
    text after the buffer's last CRLF (an element there has not all arrived).
    """
    out: list[object] = []
    append = out.append
    for _ in range(n):
        if k >= last:
            raise _Incomplete
        head = lines[k]
        kind = head[0] if head else 0
        if kind == _DOLLAR:
            size = int(head[1:])
            if size < 0:
                append(None)
                k += 1
                continue
            if k + 1 >= last:
                raise _Incomplete  # the value, or the CRLF after it, has not all arrived
            value = lines[k + 1]
            if len(value) != size:
                raise _Other  # a value holding CRLF: redis-py's parser reads it
            append(value)
            k += 2
        elif kind == _STAR:
            size = int(head[1:])
            if size < 0:
                append(None)
                k += 1
            else:
                items, k = _walk(lines, k + 1, size, last)
                append(items)
        elif kind == _COLON:
            append(int(head[1:]))
            k += 1
        elif kind == _PLUS:
            append(head[1:])
            k += 1
        else:
            raise _Other
    return out, k


def _one(data: bytes) -> tuple[object, int]:
    """The reply at the start of ``data`` and its length in bytes."""
    if data[:1] == b"*":
        lines = data.split(b"\r\n")
        values, k = _walk(lines, 0, 1, len(lines) - 1)
        return values[0], sum(map(len, lines[:k])) + 2 * k
    # One line (and a bulk string's value): no split of what follows, which may be a pipeline's other replies.
    j = data.find(b"\r\n")
    if j < 0:
        raise _Incomplete
    if data[:1] == b"$":
        size = int(data[1:j])
        if size < 0:
            return None, j + 2
        if j + 4 + size > len(data):
            raise _Incomplete
        return data[j + 2 : j + 2 + size], j + 4 + size
    values, _ = _walk([data[:j], b""], 0, 1, 1)
    return values[0], j + 2


class StreamReplyParser(_RESP2Parser):
    """redis-py's RESP2 parser; arrays (stream reads, script replies) are read in one pass."""

    _fallback = False  # True while redis-py's parser reads a reply: its nested elements are its own

    def _read_response(self, disable_decoding: bool = False, timeout: float | object = SENTINEL) -> object:
        socket_buffer, encoder = self._buffer, self.encoder
        buffer = getattr(socket_buffer, "_buffer", None)
        if (
            self._fallback
            or socket_buffer is None
            or buffer is None
            or encoder is None
            or (encoder.decode_responses and not disable_decoding)
        ):
            return super()._read_response(disable_decoding=disable_decoding, timeout=timeout)
        start = buffer.tell()
        for _ in range(ATTEMPTS):
            end = buffer.seek(0, SEEK_END)
            buffer.seek(start)
            if end - start > MAX_UNREAD:
                break
            if end > start:
                data = buffer.getvalue()
                try:
                    value, size = _one(data[start:] if start else data)
                except _Other:
                    break
                except (_Incomplete, ValueError, IndexError):
                    pass
                else:
                    buffer.seek(start + size)
                    return value
            socket_buffer._read_from_socket(timeout=timeout)  # raises on a timeout or a closed connection
        # redis-py's parser from the reply's first byte; it calls _read_response for each nested
        # element, which must not walk the buffer again (quadratic on a large reply).
        self._fallback = True
        try:
            return super()._read_response(disable_decoding=disable_decoding, timeout=timeout)
        finally:
            self._fallback = False


def parser_options() -> dict[str, object]:
    """The client options that select :class:`StreamReplyParser` where redis-py would parse in Python."""
    return {} if HIREDIS_AVAILABLE else {"parser_class": StreamReplyParser}

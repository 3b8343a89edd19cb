"""FastStream's Redis message formats (0.5's JSON envelope, 0.6+'s binary format), read without FastStream.

FastStream's Redis publisher writes one stream field, ``__data__``. FastStream
0.5 puts ``{"data": "<body as text>", "headers": {...}}`` in it; 0.6 and later
write a binary frame::

    8 bytes  identity  b"\\x89BIN\\r\\n\\x1a\\n"
    u16      version   (1)
    u32      offset of the headers block
    u32      offset of the body
    at the headers offset: u16 count, then count x (u16 length, UTF-8 key, u16 length, UTF-8 value)
    at the body offset: the body bytes, to the end

(all integers big-endian). The header ``content-type`` says how the body was
encoded: FastStream writes ``application/json`` for dicts, lists, numbers and
pydantic models, ``text/plain`` for strings.
"""

from __future__ import annotations

import json
import struct

__all__ = ["DATA_FIELD", "IDENTITY", "FormatError", "body_value", "parse"]

DATA_FIELD = b"__data__"
IDENTITY = b"\x89BIN\r\n\x1a\n"
_HEAD = struct.Struct(">HII")  # version, headers offset, body offset
_U16 = struct.Struct(">H")


class FormatError(ValueError):
    """The value is not a FastStream message (or a damaged one)."""


def parse(value: bytes) -> tuple[bytes, dict[str, str]]:
    """The body and the headers of one ``__data__`` value, in either format; raises :class:`FormatError`."""
    if value.startswith(IDENTITY):
        return _binary(value)
    return _envelope(value)


def _binary(value: bytes) -> tuple[bytes, dict[str, str]]:
    start = len(IDENTITY)
    try:
        version, headers_at, body_at = _HEAD.unpack_from(value, start)
        if version != 1:
            raise FormatError(f"FastStream binary format version {version} is not known (1 is)")
        if not start + _HEAD.size <= headers_at <= body_at <= len(value):
            raise FormatError("FastStream binary message with offsets outside the value")
        (count,) = _U16.unpack_from(value, headers_at)
        at = headers_at + _U16.size
        headers: dict[str, str] = {}
        for _ in range(count):
            key, at = _text(value, at, body_at)
            headers[key], at = _text(value, at, body_at)
    except (struct.error, UnicodeDecodeError) as exc:
        raise FormatError(f"damaged FastStream binary message: {exc}") from None
    return value[body_at:], headers


def _text(value: bytes, at: int, end: int) -> tuple[str, int]:
    (size,) = _U16.unpack_from(value, at)
    at += _U16.size
    if at + size > end:
        raise FormatError("FastStream binary message with a header past its body offset")
    return value[at : at + size].decode("utf-8"), at + size


def _envelope(value: bytes) -> tuple[bytes, dict[str, str]]:
    try:
        envelope = json.loads(value)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; RecursionError: too deep
        raise FormatError(f"neither FastStream's binary format nor its JSON envelope: {exc}") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("data"), str):
        raise FormatError("a JSON value without FastStream's envelope keys ('data' text, 'headers' object)")
    headers = envelope.get("headers") or {}
    if not isinstance(headers, dict):
        raise FormatError(f"FastStream envelope headers must be an object, got {type(headers).__name__}")
    return envelope["data"].encode("utf-8"), {str(k): str(v) for k, v in headers.items()}


def body_value(body: bytes, headers: dict[str, str]) -> object:
    """The body as the task gets it: JSON-decoded when the content type says JSON, else text.

    Raises ``ValueError`` (``UnicodeDecodeError``, ``JSONDecodeError``) for a body that is neither.
    """
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return json.loads(body)
    return body.decode("utf-8")

"""FastStream's Redis message formats, parsed without FastStream.

The values are bytes FastStream itself wrote (0.5.48 and 0.7.8 publishing to a
stream, copied from XRANGE); tests/e2e/test_decode.py runs those releases as
producer processes against real workers.
"""

from __future__ import annotations

import struct

import pytest

from celery_redis_stream.client import faststream

FS05_DICT = b'{"data": "{\\"a\\": 1}", "headers": {"correlation_id": "c1", "content-type": "application/json"}}'
FS05_TEXT = b'{"data": "hello", "headers": {"correlation_id": "c3", "content-type": "text/plain"}}'
FS07_DICT = (
    b"\x89BIN\r\n\x1a\n\x00\x01\x00\x00\x00\x12\x00\x00\x00H\x00\x02\x00\x0ecorrelation_id\x00\x02c1"
    b"\x00\x0ccontent-type\x00\x10application/json" + b'{"a":1}'
)
FS07_TEXT = (
    b"\x89BIN\r\n\x1a\n\x00\x01\x00\x00\x00\x12\x00\x00\x00B\x00\x02\x00\x0ecorrelation_id\x00\x02c3"
    b"\x00\x0ccontent-type\x00\ntext/plain" + b"hello"
)


def binary_message(headers: list[tuple[bytes, bytes]], body: bytes, version: int = 1) -> bytes:
    """A message in FastStream's binary format, as its BinaryMessageFormatV1.encode lays it out."""
    block = b"".join(struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v for k, v in headers)
    start = len(faststream.IDENTITY) + 10
    head = struct.pack(">HIIH", version, start, start + 2 + len(block), len(headers))
    return faststream.IDENTITY + head + block + body


@pytest.mark.parametrize(
    ("value", "body", "headers"),
    [
        (FS05_DICT, b'{"a": 1}', {"correlation_id": "c1", "content-type": "application/json"}),
        (FS05_TEXT, b"hello", {"correlation_id": "c3", "content-type": "text/plain"}),
        (FS07_DICT, b'{"a":1}', {"correlation_id": "c1", "content-type": "application/json"}),
        (FS07_TEXT, b"hello", {"correlation_id": "c3", "content-type": "text/plain"}),
    ],
    ids=["0.5-json", "0.5-text", "0.7-json", "0.7-text"],
)
def test_both_formats_give_the_body_bytes_and_the_headers(value: bytes, body: bytes, headers: dict[str, str]) -> None:
    assert faststream.parse(value) == (body, headers)


def test_our_binary_builder_matches_faststreams_layout() -> None:
    built = binary_message([(b"correlation_id", b"c1"), (b"content-type", b"application/json")], b'{"a":1}')
    assert built == FS07_DICT


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"plain text", "neither FastStream's binary format nor its JSON envelope"),
        (b'{"other": 1}', "without FastStream's envelope keys"),
        (b'{"data": "x", "headers": [1]}', "headers must be an object"),
        (b"\x89BIN\r\n\x1a\n\x00", "damaged FastStream binary message"),
        (FS07_DICT[:30], "FastStream binary message"),
    ],
)
def test_values_faststream_did_not_write_raise_format_error(value: bytes, error: str) -> None:
    with pytest.raises(faststream.FormatError, match=error):
        faststream.parse(value)


def test_version_and_offsets_are_checked() -> None:
    with pytest.raises(faststream.FormatError, match="version 2 is not known"):
        faststream.parse(binary_message([], b"x", version=2))
    bad = bytearray(binary_message([(b"k", b"v")], b"x"))
    bad[14:18] = struct.pack(">I", 10_000)  # the body offset past the end
    with pytest.raises(faststream.FormatError, match="offsets outside the value"):
        faststream.parse(bytes(bad))


@pytest.mark.parametrize(
    ("headers", "body", "value"),
    [
        ({"content-type": "application/json"}, b'{"a": [1]}', {"a": [1]}),
        ({"content-type": "application/vnd.x+json; charset=utf-8"}, b"3", 3),
        ({"content-type": "text/plain"}, "é".encode(), "é"),
        ({}, b"bytes", "bytes"),
    ],
)
def test_the_body_is_json_when_its_content_type_says_so_else_text(
    headers: dict[str, str], body: bytes, value: object
) -> None:
    assert faststream.body_value(body, headers) == value

"""Decoding entries and building task calls, without Redis."""

from __future__ import annotations

import pytest

from celery_redis_stream import EntryError, StreamEntry
from celery_redis_stream.entry import RawEntry, build_call, decode, parse_read_reply


def raw(*pairs: bytes) -> RawEntry:
    return RawEntry("orders", "1-0", tuple(pairs))


def test_fields_decode_as_utf8_text() -> None:
    entry = decode(raw(b"order_id", b"42", "näme".encode(), "wert €".encode()), max_bytes=100)
    assert entry == StreamEntry("orders", "1-0", {"order_id": "42", "näme": "wert €"}, 1)


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ((b"a", b"\xff"), "not_utf8"),
        ((b"\xfe", b"v"), "not_utf8"),
        ((b"a", b"1", b"a", b"2"), "duplicate_field"),
        ((b"a", b"x" * 200), "too_large"),
    ],
)
def test_bad_entries_raise_entry_error_with_a_reason(pairs: tuple[bytes, ...], reason: str) -> None:
    with pytest.raises(EntryError) as info:
        decode(raw(*pairs), max_bytes=100)
    assert info.value.reason == reason


def test_call_shapes() -> None:
    entry = StreamEntry("orders", "1-0", {"a": "1"})
    assert build_call(entry, "fields", None) == ([{"a": "1"}], {})
    assert build_call(entry, "kwargs", None) == ([], {"a": "1"})
    assert build_call(entry, "entry", None) == (["orders", "1-0", {"a": "1"}], {})


def test_a_converter_overrides_the_call_shape_and_its_failures_are_entry_errors() -> None:
    entry = StreamEntry("orders", "1-0", {"a": "1"}, 3)
    assert build_call(entry, "kwargs", lambda e: ((e.delivery_count,), {"x": 1})) == ([3], {"x": 1})
    with pytest.raises(EntryError) as info:
        build_call(entry, "fields", lambda e: 1 / 0)
    assert info.value.reason == "converter_error" and "ZeroDivisionError" in info.value.error
    with pytest.raises(EntryError):
        build_call(entry, "fields", lambda e: ([], "not a dict"))


def test_read_replies_parse_in_both_resp2_and_resp3_shapes() -> None:
    entries = [[b"1-0", [b"a", b"1", b"a", b"2"]], [b"2-0", None]]
    for reply in ([[b"s", entries]], {b"s": entries}):
        parsed = parse_read_reply(reply)
        assert parsed["s"][0] == RawEntry("s", "1-0", (b"a", b"1", b"a", b"2"))
        assert parsed["s"][1].pairs is None
    assert parse_read_reply(None) == {}

"""terminal.safe: what an operator's terminal may receive from entry bytes (no server needed)."""

from __future__ import annotations

import pytest

from celery_redis_stream.cli.terminal import safe


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),
        ("\x1b]0;title\x07", r"\x1b]0;title\x07"),
        ("line\rover", r"line\x0dover"),
        ("a\nb\tc", r"a\x0ab\x09c"),
        ("nul\x00", r"nul\x00"),
        ("del\x7f", r"del\x7f"),
        ("c1\x9b", r"c1\x9b"),
        ("\u202eabc\u2066x\u2069", r"\u202eabc\u2066x\u2069"),
        ("\u200fmark\u061c", r"\u200fmark\u061c"),
        ("row\u2028break", r"row\u2028break"),
        ("\ufeffbom", r"\ufeffbom"),
    ],
)
def test_control_and_bidi_characters_are_escaped(raw: str, shown: str) -> None:
    assert safe(raw) == shown


@pytest.mark.parametrize("text", ["order_id=42", "café", "日本語", "emoji 👩‍💻", "a\\x1b literal"])
def test_printable_text_is_left_alone(text: str) -> None:
    assert safe(text) == text

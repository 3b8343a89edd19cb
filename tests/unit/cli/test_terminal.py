"""cli/terminal.py: text from entries and Redis shown with every control character escaped, the rest as it is."""

from __future__ import annotations

import pytest

from celery_redis_stream.cli.terminal import safe


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # no recolouring, no cursor moves
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # no retitling the terminal
        ("a\rb\x00c\x7fd\x9be", "a\\x0db\\x00c\\x7fd\\x9be"),  # CR overwrites a line; C1 CSI
        ("one\ttwo\nthree", "one\\x09two\\x0athree"),  # a table row stays one row
        ("id\u202eevil\u2066x\u2069", "id\\u202eevil\\u2066x\\u2069"),  # bidi overrides and isolates
        ("a\u2028b\ufeffc", "a\\u2028b\\ufeffc"),
    ],
)
def test_control_characters_are_escaped(raw: str, shown: str) -> None:
    assert safe(raw) == shown


def test_printable_text_is_unchanged() -> None:
    for value in ("orders:eu", "évian 日本 🙂", "\u00a0spaced", ""):
        assert safe(value) == value

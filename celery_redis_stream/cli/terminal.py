"""Terminal-safe text: bytes from entries and Redis shown with their control characters escaped."""

from __future__ import annotations

import re

__all__ = ["safe"]

# C0 and C1 controls and DEL; bidi marks, embeddings, overrides and isolates,
# which reorder what follows them on screen ("Trojan Source"); line and
# paragraph separators, which break a table row; the zero-width no-break space.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]")


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(value: str) -> str:
    """``value`` with every C0/C1 control character (ESC, CR, NUL, ...), DEL and Unicode bidi control escaped.

    ``"\\x1b[31m"`` is shown as the eight characters ``\\x1b[31m``, so no entry
    can move the cursor, recolour or retitle the terminal, or reorder a line.
    """
    if value.isprintable() or not _CONTROL.search(value):
        return value
    return _CONTROL.sub(_escape, value)

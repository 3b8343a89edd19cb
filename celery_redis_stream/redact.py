"""redact(): mask the password of every URL inside a free-text message (errors, logs, CLI output)."""

from __future__ import annotations

import re

__all__ = ["redact"]

# scheme://user: then the password up to its '@': the last '@' before a '/' or, when the password has an
# unencoded '/' (which ends a URL's authority, so the URL is broken but its text still holds the secret),
# the last '@' before a space or the next URL; a port (digits then '/') is not a password.
CREDENTIALS_RE = re.compile(
    r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)"
    r"(?:[^\s/]*|(?:(?<=//:)|(?!\d*/))(?:(?!://)\S)*)@"
)


def redact(message: str) -> str:
    """``message`` with the password of every URL in it masked as ``**``.

    kombu's ``maybe_sanitize_url`` parses a whole string as one URL, which
    garbles a sentence and keeps a password embedded in it.
    """
    return CREDENTIALS_RE.sub(r"\1**@", message)

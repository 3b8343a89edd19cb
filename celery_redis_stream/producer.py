"""produce(): append an entry to a stream (Redix.Stream's ``produce``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .exceptions import EmptyEntryError

__all__ = ["produce"]

FieldValue = str | bytes | int | float


def produce(
    client: Any,
    stream: str,
    fields: Mapping[str | bytes, FieldValue],
    *,
    maxlen: int | None = None,
    approximate: bool = True,
) -> str:
    """Append ``fields`` to ``stream`` with XADD and return the new entry id.

    ``maxlen`` trims the stream (``MAXLEN ~ n`` when ``approximate``). Trimming
    drops the oldest entries whether or not a worker has dispatched them yet.
    """
    if not fields:
        raise EmptyEntryError("produce() needs at least one field: Redis rejects an empty entry")
    entry_id = client.xadd(stream, dict(fields), maxlen=maxlen, approximate=approximate)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

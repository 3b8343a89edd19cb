"""produce(): append an entry to a stream (Redix.Stream's ``produce``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .exceptions import EmptyEntryError
from .tracing import inject_current

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster
    from redis.typing import EncodableT

__all__ = ["produce"]

FieldValue = str | bytes | int | float


def produce(
    client: redis.Redis | RedisCluster,
    stream: str,
    fields: Mapping[str | bytes, FieldValue],
    *,
    maxlen: int | None = None,
    approximate: bool = True,
) -> str:
    """Append ``fields`` to ``stream`` with XADD and return the new entry id.

    ``maxlen`` trims the stream (``MAXLEN ~ n`` when ``approximate``). Trimming
    drops the oldest entries whether or not a worker has dispatched them yet.

    When OpenTelemetry is installed and a span is active, the current trace
    context is added as ``traceparent``/``tracestate`` fields (unless
    ``fields`` has them), so the task continues the caller's trace.
    """
    if not fields:
        raise EmptyEntryError("produce() needs at least one field: Redis rejects an empty entry")
    entry: dict[EncodableT, EncodableT] = {name: value for name, value in fields.items()}
    inject_current(entry)
    entry_id = client.xadd(stream, entry, maxlen=maxlen, approximate=approximate)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

"""produce(): append an entry to a stream (Redix.Stream's ``produce``), once per idempotency key."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from redis.exceptions import NoScriptError

from . import keys as _keys
from .exceptions import EmptyEntryError
from .tracing import inject_current

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster
    from redis.typing import EncodableT

__all__ = ["IDEMPOTENT_XADD", "MAX_IDEMPOTENT_FIELDS", "idempotent_xadd_command", "produce"]

FieldValue = str | bytes | int | float

# KEYS[1] the stream, KEYS[2] its idempotency record (same slot: keys.idempotency).
# ARGV: record TTL in ms, MAXLEN threshold ("" for none), "~" or "=", then the field/value pairs.
# One script, so the check and the XADD are one atomic step: two producers racing
# with one key add one entry, and the second gets the first one's id.
IDEMPOTENT_XADD = """
local first = redis.call('GET', KEYS[2])
if first then return first end
local command = {'XADD', KEYS[1]}
if ARGV[2] ~= '' then
  command[#command + 1] = 'MAXLEN'
  command[#command + 1] = ARGV[3]
  command[#command + 1] = ARGV[2]
end
command[#command + 1] = '*'
for i = 4, #ARGV do command[#command + 1] = ARGV[i] end
local id = redis.call(unpack(command))
redis.call('SET', KEYS[2], id, 'PX', ARGV[1])
return id
"""
#: The most fields an entry produced with an idempotency key can have: the script hands them to XADD with
#: Lua's unpack(), which Redis and Valkey cap at 8,000 values (the XADD and MAXLEN arguments included).
MAX_IDEMPOTENT_FIELDS = 3996
_SHA = hashlib.sha1(IDEMPOTENT_XADD.encode(), usedforsecurity=False).hexdigest()


def produce(
    client: redis.Redis | RedisCluster,
    stream: str,
    fields: Mapping[str | bytes, FieldValue],
    *,
    maxlen: int | None = None,
    approximate: bool = True,
    idempotency_key: str | None = None,
    idempotency_ttl_s: float = 86400,
) -> str:
    """Append ``fields`` to ``stream`` with XADD and return the new entry id.

    ``maxlen`` trims the stream (``MAXLEN ~ n`` when ``approximate``). Trimming
    drops the oldest entries whether or not a worker has dispatched them yet.

    With an ``idempotency_key``, producing the same key to the same stream
    again within ``idempotency_ttl_s`` seconds adds nothing and returns the
    first entry's id: a producer that retries an XADD whose reply it lost
    does not write the entry twice. The check and the XADD run in one Lua
    script (EVALSHA), atomic however many producers race with one key; the
    record ``stream_idempotency:{<stream>}:<key>`` lives in the stream's
    cluster slot, so it works on Redis Cluster too. (Redis 8.6's own
    ``XADD ... IDMP`` keeps its ids for a per-stream duration of at most a day,
    set by XCFGSET, which clears the ids already kept, and for at most 10,000
    ids per producer: it cannot promise a caller's TTL, so it is not used.)

    When OpenTelemetry is installed and a span is active, the current trace
    context is added as ``traceparent``/``tracestate`` fields (unless
    ``fields`` has them), so the task continues the caller's trace.
    """
    if not fields:
        raise EmptyEntryError("produce() needs at least one field: Redis rejects an empty entry")
    entry: dict[EncodableT, EncodableT] = {name: value for name, value in fields.items()}
    inject_current(entry)
    if idempotency_key is None:
        entry_id = client.xadd(stream, entry, maxlen=maxlen, approximate=approximate)
    else:
        pairs = [part for pair in entry.items() for part in pair]
        command = idempotent_xadd_command(
            stream, pairs, idempotency_key, idempotency_ttl_s, maxlen=maxlen, approximate=approximate
        )
        _check_slot(client, stream, command[4])
        try:
            entry_id = client.execute_command("EVALSHA", _SHA, *command[2:])  # type: ignore[no-untyped-call]
        except NoScriptError:  # first use on this server (or after SCRIPT FLUSH): send the script itself
            entry_id = client.execute_command(*command)  # type: ignore[no-untyped-call]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _check_slot(client: redis.Redis | RedisCluster, stream: str, record: object) -> None:
    """On Redis Cluster, refuse a stream whose idempotency record cannot share its slot (a ``}`` without a hash tag)."""
    from redis.cluster import RedisCluster
    from redis.crc import key_slot

    if isinstance(client, RedisCluster) and key_slot(str(record).encode()) != key_slot(stream.encode()):
        raise ValueError(
            f"on Redis Cluster, produce(..., idempotency_key=...) to {stream!r} needs its record "
            f"{record!r} in the stream's slot, and a name with '}}' but no hash tag has none to share: "
            "give the stream a hash tag (e.g. '{orders}' or '{t1}:orders')"
        )


def idempotent_xadd_command(
    stream: str,
    pairs: Sequence[EncodableT],
    idempotency_key: str,
    idempotency_ttl_s: float,
    *,
    maxlen: int | None = None,
    approximate: bool = True,
) -> list[EncodableT]:
    """The ``EVAL`` command that adds ``pairs`` to ``stream`` once per ``idempotency_key`` (see :func:`produce`).

    For a pipeline (``dead-letters --requeue``); the reply is the entry id, new or first.
    """
    if not isinstance(idempotency_key, str) or not idempotency_key:
        raise ValueError(f"idempotency_key must be a non-empty string, got {idempotency_key!r}")
    if isinstance(idempotency_ttl_s, bool) or not isinstance(idempotency_ttl_s, (int, float)):
        raise TypeError(f"idempotency_ttl_s must be a number of seconds, got {idempotency_ttl_s!r}")
    if len(pairs) > 2 * MAX_IDEMPOTENT_FIELDS:  # the script would fail on the server ("too many results to unpack")
        raise ValueError(
            f"an entry produced with an idempotency_key has at most {MAX_IDEMPOTENT_FIELDS} fields, "
            f"this one has {len(pairs) // 2}"
        )
    ttl_ms = math.ceil(idempotency_ttl_s * 1000) if math.isfinite(idempotency_ttl_s) else 0
    if not 0 < ttl_ms < 2**62:
        raise ValueError(f"idempotency_ttl_s must be a positive, finite number of seconds, got {idempotency_ttl_s!r}")
    record = _keys.idempotency(stream, idempotency_key)
    threshold: EncodableT = "" if maxlen is None else maxlen
    return ["EVAL", IDEMPOTENT_XADD, 2, stream, record, ttl_ms, threshold, "~" if approximate else "=", *pairs]

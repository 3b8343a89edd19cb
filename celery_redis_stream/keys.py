"""The key layout: every key the bridge derives from a stream's name, and the hash tags that keep them in its slot.

A stream ``orders`` (group ``celery``) has::

    orders:dead                                   dead letters (stream_dead_letter, "{stream}:dead")
    stream_tracker:{orders}                       tracker position (tracker mode; stream_tracker_prefix)
    stream_tracker:{orders}:lease                 the tracker's lease
    stream_tracker:{orders}:retention             retention state, both modes
    stream_deliveries:{orders}:celery:inflight    in-flight records (group mode; tracker: <tracker>:inflight)
    stream_deliveries:{orders}:celery:failures    failed-delivery counts (group mode; tracker: <tracker>:failures)
    stream_idempotency:{orders}:<key>             produce(..., idempotency_key=key): the entry id it added
    stream_rate:{orders}                          the fleet-wide rate limit's token bucket (rate_limit)
    stream_dedupe:{orders}:group:celery:<key>     a business key dispatched (dedupe; tracker: tracker:<tracker>)
    stream_dedupe:{orders}:group:celery           the deduplicated count (dedupe)

A stream that has a hash tag (``{t1}:orders``) keeps its own name in every
key, so all of them hash to its cluster slot.
"""

from __future__ import annotations

import re

__all__ = [
    "DEAD_LETTER_TEMPLATE", "TRACKER_PREFIX", "dead_letter", "dead_letter_pattern", "dedupe_count", "dedupe_record",
    "failures", "hash_tag", "idempotency", "inflight", "lease", "rate_bucket", "requeue_idempotency_key", "retention",
    "slot_name", "tracker",
]  # fmt: skip

TRACKER_PREFIX = "stream_tracker:"
DEAD_LETTER_TEMPLATE = "{stream}:dead"
DELIVERIES_PREFIX = "stream_deliveries:"
IDEMPOTENCY_PREFIX = "stream_idempotency:"
RATE_PREFIX = "stream_rate:"
DEDUPE_PREFIX = "stream_dedupe:"


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes (``{...}``), or None when it has no hash tag."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if start >= 0 and end > start + 1 else None


def slot_name(stream: str) -> str:
    """``{orders}`` for ``orders``: the stream's name as a hash tag, unless it has one already."""
    return stream if hash_tag(stream) is not None else f"{{{stream}}}"


def tracker(stream: str, prefix: str = TRACKER_PREFIX, option: str | None = None) -> str:
    """``stream_tracker:{orders}`` for ``orders``; a stream that has a hash tag keeps its own name."""
    if option is not None:
        return f"{prefix}{option}"
    return f"{prefix}{slot_name(stream)}"


def lease(tracker_key: str) -> str:
    """The lease that lets one worker at a time read a tracked stream, beside its tracker."""
    return f"{tracker_key}:lease"


def retention(tracker_key: str) -> str:
    """The hash holding the stream's retention state and its trimmed total, beside the tracker (same slot)."""
    return f"{tracker_key}:retention"


def dead_letter(stream: str, template: str = DEAD_LETTER_TEMPLATE, *, cluster: bool = False) -> str:
    """The dead-letter stream of ``stream``; on a cluster it shares the stream's slot when it can."""
    if cluster and hash_tag(stream) is None and hash_tag(template.replace("{stream}", "")) is None:
        return template.replace("{stream}", f"{{{stream}}}")
    return template.replace("{stream}", stream)


def dead_letter_pattern(template: str) -> re.Pattern[str]:
    """Matches the dead-letter streams a template makes; group 1 is the source stream (hash tag braces dropped)."""
    return re.compile(re.escape(template).replace(re.escape("{stream}"), r"\{?(.+?)\}?") + "$")


def inflight(stream: str, group: str | None, tracker_key: str) -> str:
    """Hash consumer -> in-flight record: ``stream_deliveries:{orders}:celery:inflight``, or the tracker's."""
    if group is None:
        return f"{tracker_key}:inflight"
    return f"{DELIVERIES_PREFIX}{slot_name(stream)}:{group}:inflight"


def failures(stream: str, group: str | None, tracker_key: str) -> str:
    """Hash entry id -> failed deliveries: ``stream_deliveries:{orders}:celery:failures``, or the tracker's."""
    if group is None:
        return f"{tracker_key}:failures"
    return f"{DELIVERIES_PREFIX}{slot_name(stream)}:{group}:failures"


def idempotency(stream: str, key: str) -> str:
    """The id ``produce(..., idempotency_key=key)`` added: ``stream_idempotency:{orders}:<key>``, in the slot."""
    return f"{IDEMPOTENCY_PREFIX}{slot_name(stream)}:{key}"


def requeue_idempotency_key(source_stream: str, source_id: str) -> str:
    """The idempotency key ``dead-letters --requeue`` produces a dead letter back with: its source stream and id."""
    return f"requeue:{source_stream}:{source_id}"


def rate_bucket(stream: str) -> str:
    """The token bucket of the stream's fleet-wide rate limit: ``stream_rate:{orders}`` (one per stream, all groups)."""
    return f"{RATE_PREFIX}{slot_name(stream)}"


def dedupe_count(stream: str, position_name: str) -> str:
    """Hash of the deduplicated count of one group or tracker: ``stream_dedupe:{orders}:group:celery``."""
    return f"{DEDUPE_PREFIX}{slot_name(stream)}:{position_name}"


def dedupe_record(stream: str, position_name: str, business_key: str) -> str:
    """The record that ``business_key`` was dispatched: ``stream_dedupe:{orders}:group:celery:<key>``.

    The stream's hash tag comes first, so any braces in the business key leave the slot alone.
    """
    return f"{dedupe_count(stream, position_name)}:{business_key}"

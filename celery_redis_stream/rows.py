"""The shapes of what status reports (TypedDicts): one stream's XINFO summary, its lag, its status row."""

from __future__ import annotations

from typing import TypedDict

__all__ = ["Collected", "ConsumerRow", "LagFields", "StreamInfo", "StreamRow", "put_lag"]


class StreamInfo(TypedDict, total=False):
    """XINFO STREAM, as position/lag.py reads it; the Redis 7 fields are None on Redis 6.2."""

    exists: bool
    length: int
    last_id: str | None
    first_id: str | None
    last_entry_id: str | None
    entries_added: int | None
    max_deleted_id: str | None


class LagFields(TypedDict):
    """``lag`` only when exact (None otherwise); ``lag_at_least`` always a true lower bound."""

    lag: int | None
    lag_exact: bool
    lag_at_least: int | None
    lag_seconds: float | None


class ConsumerRow(TypedDict):
    name: str
    pending: int
    idle_ms: int


class StreamRow(TypedDict, total=False):
    """One mapped stream in ``status --json``: the group fields in group mode, the tracker fields in tracker mode."""

    stream: str
    mode: str
    task: str
    server: str | None  # "redis 7.0.15", "valkey 9.1.2" (INFO server); None where INFO is denied
    exists: bool
    length: int
    last_id: str | None
    # group mode
    group: str
    group_exists: bool
    last_delivered_id: str | None
    pending: int
    consumers: list[ConsumerRow]
    # tracker mode
    tracker_key: str
    position: str | None
    lease_key: str
    lease_holder: str | None
    # both
    lag: int | None
    lag_exact: bool
    lag_at_least: int | None
    lag_seconds: float | None
    ahead: bool  # the position lies after the stream's last id: nothing is read until ids pass it
    error: str
    dead_letter: str
    dead_letter_length: int
    retention_ms: int | None
    retention_trimmed: int
    retention_last_run_ms: int | None
    retention_last_trim_ms: int | None
    retention_minid: str | None
    capabilities: list[str]
    # traffic control (read/limit.py, batch/dedupe.py)
    rate_limit: str | None
    rate_limited: bool
    dedupe_key: str | None
    deduplicated: int


class Collected(TypedDict):
    """``status --json``: every mapped stream, and whether all lags are within ``max_lag``."""

    url: str
    max_lag: int | None
    ok: bool
    over_max_lag: list[str]
    streams: list[StreamRow]


def put_lag(row: StreamRow, lag: LagFields) -> None:
    """Copy the lag fields into a status row (TypedDict.update takes only rows of the same shape)."""
    row["lag"], row["lag_exact"] = lag["lag"], lag["lag_exact"]
    row["lag_at_least"], row["lag_seconds"] = lag["lag_at_least"], lag["lag_seconds"]

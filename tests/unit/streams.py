"""Stream mappings for the unit tests of the reading side, built without an app."""

from __future__ import annotations

from celery_redis_stream import keys
from celery_redis_stream.client.connection import Client, connect
from celery_redis_stream.config import BridgeConfig, Mode, StreamConfig


def stream_config(stream: str = "orders", mode: Mode = "group", **overrides: object) -> StreamConfig:
    """``stream`` -> task ``t``, group ``celery``, from ``0``, with the default key layout."""
    options: dict[str, object] = {
        "stream": stream, "task": "t", "mode": mode, "group": "celery", "start": "0",
        "tracker_key": keys.tracker(stream), "batch_size": 10, "dead_letter": keys.dead_letter(stream),
    }  # fmt: skip
    options.update(overrides)
    return StreamConfig(**options)  # type: ignore[arg-type]


def bridge_config(url: str, *streams: StreamConfig, block_ms: int = 50, claim_idle_ms: int = 100) -> BridgeConfig:
    return BridgeConfig(
        url=url, consumer="c1", block_ms=block_ms, claim_idle_ms=claim_idle_ms, max_entry_bytes=1 << 20,
        streams=streams or (stream_config(),),
    )  # fmt: skip


def raw_client(url: str) -> Client:
    """The bridge's own client (stream replies kept raw), as readers are handed it."""
    return connect(bridge_config(url))

"""position/lease.py: one holder at a time, renewed by its holder, released only by it, expiring by itself."""

from __future__ import annotations

import time

from celery_redis_stream.client.connection import Client
from celery_redis_stream.position.lease import Lease

from ..streams import stream_config


def test_lease_is_renewed_by_its_holder_and_released(client: Client) -> None:
    sc = stream_config(mode="tracker")
    mine, theirs = Lease(client, "me", 10_000), Lease(client, "them", 10_000)
    assert mine.acquire(sc) and mine.acquire(sc) and not theirs.acquire(sc)
    mine.release(sc)
    assert theirs.acquire(sc)


def test_only_the_holder_releases_and_the_lease_expires_after_its_ttl(client: Client) -> None:
    sc = stream_config(mode="tracker")
    mine, theirs = Lease(client, "me", 10_000), Lease(client, "them", 10_000)
    assert mine.acquire(sc)
    assert 9_000 < client.pttl(sc.lease_key) <= 10_000  # a holder that dies frees it by itself
    theirs.release(sc)
    assert client.get(sc.lease_key) == b"me"
    client.pexpire(sc.lease_key, 1)
    time.sleep(0.005)
    assert theirs.acquire(sc) and not mine.acquire(sc)

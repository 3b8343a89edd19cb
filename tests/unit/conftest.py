"""Fixtures of the unit tier: one redis-server per session, a flushed database of it per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from celery_redis_stream.client.connection import Client

from ..support import RedisServer, server_fixture
from .streams import raw_client

# Database 0 is left alone; each test gets the next of 1..15, flushed first, so a
# reader thread a test failed to stop cannot write into the next test's keys.
_DBS = itertools.cycle(range(1, 16))


@dataclass(frozen=True)
class UnitDB:
    """One test's database on the session's redis-server."""

    server: RedisServer
    db: int
    url: str
    client: redis.Redis


unit_redis = server_fixture(scope="session", doc="The unit tier's redis-server, one per session (per xdist worker).")


@pytest.fixture
def unit_db(unit_redis: RedisServer) -> Iterator[UnitDB]:
    """A flushed database of the session's server, with a client on it (closed afterwards)."""
    db = next(_DBS)
    client = unit_redis.client(db)
    client.flushdb()
    try:
        yield UnitDB(unit_redis, db, unit_redis.url_db(db), client)
    finally:
        client.close()


@pytest.fixture
def client(unit_db: UnitDB) -> Iterator[Client]:
    """The bridge's own client on the test's database (stream replies kept raw), as readers are handed it.

    Where a module needs a plain redis-py client or a prepared stream, it defines ``client`` itself.
    """
    client = raw_client(unit_db.url)
    yield client
    client.close()

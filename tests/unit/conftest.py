"""The unit tier's one redis-server, started once per session (each test uses its own keys or database)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..support import RedisServer


@pytest.fixture(scope="session")
def unit_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()

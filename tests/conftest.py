from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for one test (streams on db 0, broker on db 1, ledger on db 2)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .support import RedisServer, Worker


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for one test (streams on db 0, broker on db 1, ledger on db 2)."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Collects the Worker processes a test starts; any still running at the end are killed."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()

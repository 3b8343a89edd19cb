from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest

from .support import Worker, server_binary, server_fixture, server_version, worker_pool


def pytest_report_header() -> list[str]:
    # Which server the tests start (CRS_SERVER) and the pool of the workers that take the default (CRS_POOL):
    # a matrix cell's log says what it proved.
    try:
        server = server_binary()
        line = f"stream server: {server} {server_version(server)}"
    except RuntimeError as exc:
        line = f"stream server: {exc}"
    return [line, f"worker pool: {worker_pool()}"]


redis_server = server_fixture(doc="A private redis-server for one test (streams db 0, broker db 1, ledger db 2).")


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Collects the Worker processes a test starts; any still running at the end are killed."""
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.kill()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Worker]]:
    """Makes bridge workers (tests/ledger.py); any still running at the end, paused ones too, are killed."""
    from .ledger import bridge_worker

    started: list[Worker] = []

    def make(*args: str, **kwargs: object) -> Worker:
        worker = bridge_worker(*args, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield make
    for worker in started:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGCONT)
        worker.kill()

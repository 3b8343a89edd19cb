"""Pacing: a reader bridging a backlog leaves the worker's own tasks their share of the GIL."""

from __future__ import annotations

from collections.abc import Callable

from celery.worker import state as worker_state

__all__ = ["Pacer"]

# While the worker runs tasks of its own, a batch that took at least
# YIELD_MIN_SECONDS, or held at least YIELD_MIN_ENTRIES entries (a backlog:
# the fast path sends 100 in about 4 ms), is followed by a pause of its time
# x YIELD_SHARE, capped.
YIELD_MIN_SECONDS = 0.005
YIELD_MIN_ENTRIES = 50
YIELD_SHARE = 4.0
YIELD_MAX_SECONDS = 0.5


class Pacer:
    """After a large batch, pause for four times its time if this worker runs tasks of its own.

    The reader thread and the worker's consumer share one GIL; a reader
    bridging a backlog flat out would otherwise leave the worker a fifth
    of it. While the worker holds or has just run tasks, the reader takes
    about a fifth; an idle worker's reader never waits, and small batches
    (a steady trickle, where latency matters) never wait either. Called
    after the batch was acknowledged, so a pause never holds a position.
    """

    def __init__(self, wait: Callable[[float], object]) -> None:
        self.wait = wait
        self._executed = worker_state.all_total_count[0]

    def pace(self, elapsed: float, entries: int = 0) -> None:
        executed = worker_state.all_total_count[0]
        busy = bool(worker_state.reserved_requests) or executed != self._executed
        self._executed = executed
        if busy and (elapsed >= YIELD_MIN_SECONDS or entries >= YIELD_MIN_ENTRIES):
            self.wait(min(elapsed * YIELD_SHARE, YIELD_MAX_SECONDS))

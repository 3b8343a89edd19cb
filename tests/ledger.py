"""The loss ledger of the fault tests: what was produced, what was dispatched, what is missing or doubled.

Dispatch is measured on the broker side: the bridge worker runs with
``-Q`` another queue, so every task it publishes stays in the Redis-broker
list ``celery``, where it can be counted (stream id and task id from the
message headers). Executions would be confounded by the Redis broker's
visibility timeout.

Loss that Redis itself causes (a restart without persistence, a trim) is
recorded with :meth:`Ledger.lost_by_redis` and counted apart: it is the
only loss allowed.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from .support import FAST as SUPPORT_FAST
from .support import ProducerThread, Worker, produce_many, queued_messages, wait_for, worker_env


@dataclass
class Report:
    produced: int
    dispatched: int
    missing: list[str]
    redis_lost: int
    duplicates: dict[str, int] = field(default_factory=dict)  # stream id -> extra copies
    inconsistent_task_ids: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def extra_copies(self) -> int:
        return sum(self.duplicates.values())

    def __str__(self) -> str:
        return (
            f"produced={self.produced} dispatched={self.dispatched} missing={len(self.missing)} "
            f"redis_lost={self.redis_lost} duplicated_ids={len(self.duplicates)} extra_copies={self.extra_copies} "
            f"inconsistent_task_ids={len(self.inconsistent_task_ids)} unexpected={len(self.unexpected)} "
            f"first_missing={self.missing[:5]}"
        )


class Ledger:
    """Produced stream ids of one stream, and the broker queue that dispatches land in."""

    def __init__(self, stream: str, broker: redis.Redis, queue: str = "celery") -> None:
        self.stream = stream
        self.broker = broker
        self.queue = queue
        self.produced: list[str] = []
        self.redis_lost: set[str] = set()

    def produce(self, client: redis.Redis, n: int, *, atomic: bool = False, **fields: str) -> list[str]:
        """XADD ``n`` entries; ``atomic`` writes them in one MULTI, so a blocked reader gets a full batch."""
        if atomic:
            pipe = client.pipeline(transaction=True)
            for i in range(len(self.produced), len(self.produced) + n):
                pipe.xadd(self.stream, {"n": str(i), **fields})
            ids = [x.decode() for x in pipe.execute()]
        else:
            ids = produce_many(client, self.stream, n, start=len(self.produced), **fields)
        self.produced.extend(ids)
        return ids

    def lost_by_redis(self, ids: Iterable[str]) -> None:
        """Entries Redis itself dropped (restart without persistence, trim): allowed to be missing."""
        self.redis_lost.update(ids)

    def dispatches(self) -> list[tuple[str, str]]:
        """(stream id, task id) of every task message of this stream waiting in the broker queue."""
        return [
            (h["redis_stream_id"], h["id"])
            for h in queued_messages(self.broker, self.queue)
            if h.get("redis_stream") == self.stream
        ]

    def dispatched_ids(self) -> set[str]:
        return {sid for sid, _ in self.dispatches()}

    def count_dispatched(self) -> int:
        return len(self.dispatched_ids())

    def all_dispatched(self) -> bool:
        return set(self.produced) - self.redis_lost <= self.dispatched_ids()

    def report(self) -> Report:
        dispatches = self.dispatches()
        copies = Counter(sid for sid, _ in dispatches)
        task_ids: dict[str, set[str]] = defaultdict(set)
        for sid, tid in dispatches:
            task_ids[sid].add(tid)
        produced = set(self.produced)
        return Report(
            produced=len(self.produced),
            dispatched=len(dispatches),
            missing=sorted(produced - self.redis_lost - set(copies), key=id_key),
            redis_lost=len(self.redis_lost),
            duplicates={sid: n - 1 for sid, n in copies.items() if n > 1},
            inconsistent_task_ids=sorted(sid for sid, tids in task_ids.items() if len(tids) > 1),
            unexpected=sorted(set(copies) - produced),
        )


def id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# -- the bridge under test ----------------------------------------------------

STREAM = "orders"
GROUP = "celery"
# The -Q of bridge workers: they never consume the target queue "celery", so
# every dispatched task stays there to be counted.
BRIDGE_ONLY_QUEUE = "bridge-only"
# support.FAST (short reads from the start) with quick claims and small batches: the fault tests' bridge.
FAST = {**SUPPORT_FAST, "stream_claim_idle_ms": 2000, "stream_batch_size": 50}


def bridge_worker(
    stream_url: str, broker_url: str, ledger_url: str, *, name: str = "w1", mode: str = "group", **conf: Any
) -> Worker:
    """A real worker that reads STREAM into tests.record with short block/claim times (not started)."""
    tasks = {STREAM: {"task": "tests.record", "mode": mode}}
    return Worker(
        worker_env(stream_url, broker_url, ledger_url, tasks, **{**FAST, **conf}), name, queues=BRIDGE_ONLY_QUEUE
    )


def acked_ids(client: redis.Redis, produced: Iterable[str], group: str = GROUP) -> set[str]:
    """Produced ids that the group has moved past: delivered and no longer pending."""
    info = {g["name"].decode(): g for g in client.xinfo_groups(STREAM)}
    last = id_key(info[group]["last-delivered-id"].decode())
    pending = {p["message_id"].decode() for p in client.xpending_range(STREAM, group, "-", "+", 100_000)}
    return {i for i in produced if id_key(i) <= last and i not in pending}


def pending_of(client: redis.Redis, consumer_prefix: str, group: str = GROUP) -> int:
    """Pending entries of the consumers whose name starts with ``consumer_prefix``."""
    return sum(
        int(c["pending"])
        for c in client.xinfo_consumers(STREAM, group)
        if c["name"].decode().startswith(consumer_prefix)
    )


def reader_blocked(client: redis.Redis, command: str) -> bool:
    """Whether a bridge reader (client name celery-redis-stream) is blocked in ``command`` right now."""
    return any(
        c.get("name") == "celery-redis-stream" and "b" in c.get("flags", "") and c.get("cmd") == command
        for c in client.client_list()
    )


#: How a tracker-mode holder paused past its lease learns of the loss, in its log: its paused read returned
#: entries and the fenced commit refused them (LOST), or the read had timed out first and it held nothing.
LOST, STANDING_BY = "lost the lease", "taken by another worker; standing by"


def pause_the_holder(
    client: redis.Redis, ledger: Ledger, holder: Worker, standby: Worker, *, entries: int = 50,
    meanwhile: Callable[[], None] | None = None,
) -> str:  # fmt: skip
    """SIGSTOP ``holder`` inside its blocking XREAD, add ``entries``, let ``standby`` take the stream over
    (and run ``meanwhile``), resume the holder and return LOST or STANDING_BY."""
    before = {text: holder.output().count(text) for text in (LOST, STANDING_BY)}
    readings = standby.output().count("reading tracked stream")
    for _ in range(50):
        holder.signal(signal.SIGSTOP)
        if reader_blocked(client, "xread"):
            break
        holder.signal(signal.SIGCONT)
        time.sleep(random.uniform(0.01, 0.1))
    else:
        pytest.fail(f"{holder.name} was never caught blocked in XREAD")
    ledger.produce(client, entries, atomic=True)  # the paused holder's read returns these unless it timed out
    standby.wait_log("reading tracked stream", 30, count=readings + 1)
    wait_for(ledger.all_dispatched, 30, f"{standby.name} to dispatch what the paused {holder.name} held")
    if meanwhile is not None:
        meanwhile()
    holder.signal(signal.SIGCONT)
    return wait_for(
        lambda: next((text for text in before if holder.output().count(text) > before[text]), None),
        30, f"{holder.name} to notice the lost lease",
    )  # fmt: skip


def pause_the_holder_until_refused(
    client: redis.Redis, ledger: Ledger, owner: Worker, standby: Worker, **how: Any
) -> list[str]:
    """:func:`pause_the_holder` until a paused holder's read held entries that its commit was refused.

    The paused read can time out on the server between the check and the XADD; then the holder held
    nothing, and the roles swap for another try (a few in a row are rare). Returns the outcomes.
    """
    outcomes: list[str] = []
    for _ in range(4):
        outcomes.append(pause_the_holder(client, ledger, owner, standby, **how))
        if outcomes[-1] == LOST:
            return outcomes
        owner, standby = standby, owner
    pytest.fail(f"no paused holder's read returned the entries in {len(outcomes)} tries: {outcomes}")


class Producer(ProducerThread):
    """XADDs entries in small pipelined chunks, a short pause between chunks, until
    ``total`` are written or :meth:`finish` is called."""

    def __init__(self, ledger: Ledger, client: redis.Redis, total: int, *, chunk: int = 10, pause: float = 0.005):
        super().__init__(total, pause)
        self.ledger, self.client, self.chunk = ledger, client, chunk

    def step(self, written: int) -> int:
        n = min(self.chunk, self.total - written)
        self.ledger.produce(self.client, n)
        return n

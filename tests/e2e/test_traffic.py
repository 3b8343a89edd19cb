"""Traffic control with real `celery worker` processes: the fleet-wide rate limit and business-key deduplication.

Dispatch is measured in the broker queue, which the workers do not consume
(they listen on ``other``): a sampler records when each message arrived, so a
burst above the limit shows as a window holding more messages than it may.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import pytest

from ..support import RedisServer, Worker, celery, fast_env, queued_messages, wait_for
from .test_cli import status_json


class Arrivals(threading.Thread):
    """Samples the length of a broker queue every few milliseconds: (time before, time after, length).

    A sample's length counts every message that arrived before its LLEN returned and none that arrived
    after it was sent; a stalled sampler (a loaded machine) widens the times, never the counts.
    """

    def __init__(self, server: RedisServer, queue: str = "celery") -> None:
        super().__init__(name="arrivals", daemon=True)
        self.client, self.queue = server.client(1), queue
        self.samples: list[tuple[float, float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens to the test
        while not self.done.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            length = int(self.client.llen(self.queue))
            self.samples.append((sent, time.monotonic(), length))
            time.sleep(0.005)

    def finish(self) -> None:
        self.done.set()
        self.join(10)

    def most_in(self, seconds: float) -> int:
        """The most messages seen to arrive within ``seconds``: between the LLEN sent before the first of them
        and the LLEN that returned after the last, so a late sample never squeezes more into a window."""
        samples = [(0.0, 0.0, 0), *self.samples]
        most, j = 0, 0
        for i in range(1, len(samples)):
            opened, _, before = samples[i - 1]
            opened = opened if i > 1 else samples[i][0]
            j = max(j, i)
            while j + 1 < len(samples) and samples[j + 1][1] - opened <= seconds:
                j += 1
            if samples[j][1] - opened <= seconds:
                most = max(most, samples[j][2] - before)
        return most

    def span(self, first: int, last: int) -> float:
        """Seconds from the last sample showing fewer than ``first`` messages to the first showing ``last``."""
        k = next(i for i, (_, _, n) in enumerate(self.samples) if n >= first)
        start = self.samples[k - 1][0] if k else self.samples[k][0]
        end = next(after for _, after, n in self.samples if n >= last)
        return end - start


def inspect_streams(env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """``inspect redis_stream``: per stream, the stats every worker reported."""
    result = celery(env, "inspect", "redis_stream", "--json", "-t", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, list[dict[str, Any]]] = {}
    for reply in json.loads(result.stdout).values():
        for stats in reply["streams"]:
            out.setdefault(stats["stream"], []).append(stats)
    return out


def produce(server: RedisServer, stream: str, rows: list[dict[str, str]]) -> list[str]:
    pipe = server.client().pipeline(transaction=False)
    for fields in rows:
        pipe.xadd(stream, fields)
    return [i.decode() for i in pipe.execute()]


def test_two_workers_sharing_a_20_per_second_stream_dispatch_at_most_20_a_second_together(
    redis_server: RedisServer,
) -> None:
    env = fast_env(redis_server, {"orders": {"task": "tests.record", "rate_limit": "20/s"}})
    produced = produce(redis_server, "orders", [{"n": str(i)} for i in range(300)])
    arrivals = Arrivals(redis_server)
    arrivals.start()
    a = Worker(env, "a", queues="other").start()
    b = Worker(env, "b", queues="other").start()
    try:
        wait_for(lambda: redis_server.client(1).llen("celery") >= 60, 30, "60 dispatched")
        # While the backlog waits for tokens: both the fleet's view and each worker's say so.
        row = status_json(env)[1]["orders"]
        assert row["rate_limit"] == "20/s" and row["rate_limited"] is True, row
        readers = inspect_streams(env)["orders"]
        assert len(readers) == 2 and all(r["rate_limit"] == "20/s" for r in readers), readers
        assert sum(r["rate_limit_waits"] for r in readers) > 0, readers
        assert any(r["rate_limited"] for r in readers), readers  # the backlog keeps them waiting for tokens
        wait_for(lambda: redis_server.client(1).llen("celery") >= 300, 40, "300 dispatched")
        time.sleep(0.5)
    finally:
        arrivals.finish()
        a.stop(), b.stop()
    ids = [m["redis_stream_id"] for m in queued_messages(redis_server.client(1))]
    assert sorted(ids) == sorted(produced)  # nothing dropped, nothing twice
    print(f"20/s, 2 workers: span {arrivals.span(1, 300):.2f} s, most in 1 s {arrivals.most_in(1.0)}, in 5 s "
          f"{arrivals.most_in(5.0)}")  # fmt: skip
    # 300 entries at 20 a second from an empty bucket: 15 s; the first to the last at least 14 s.
    assert arrivals.span(1, 300) >= 14.0, arrivals.span(1, 300)
    # Never a burst: the bucket holds a tenth of a second's worth (2), so any second sees at most 22; one
    # more for the publish's own time and the sampling edge.
    assert arrivals.most_in(1.0) <= 23, arrivals.most_in(1.0)
    assert arrivals.most_in(5.0) <= 103, arrivals.most_in(5.0)
    assert redis_server.client().xlen("orders:dead") == 0


def test_a_global_numeric_limit_holds_for_each_stream_in_tracker_mode_across_a_killed_worker(
    redis_server: RedisServer,
) -> None:
    env = fast_env(
        redis_server,
        {"a": {"task": "tests.record", "queue": "qa"}, "b": {"task": "tests.record", "queue": "qb"}},
        stream_rate_limit=40, stream_mode="tracker", stream_claim_idle_ms=1000,
    )  # fmt: skip
    produced = {s: produce(redis_server, s, [{"n": str(i)} for i in range(200)]) for s in ("a", "b")}
    arrivals = {s: Arrivals(redis_server, f"q{s}") for s in ("a", "b")}
    for sampler in arrivals.values():
        sampler.start()
    first = Worker(env, "w1", queues="other").start()
    second = Worker(env, "w2", queues="other").start(wait="ready.")
    try:
        wait_for(lambda: redis_server.client(1).llen("qa") >= 60, 30, "60 of a dispatched")
        holder = redis_server.client().get("stream_tracker:{a}:lease").decode()
        (first if holder.startswith("w1@") else second).kill()  # the other takes the lease over
        for s in ("a", "b"):
            wait_for(lambda s=s: redis_server.client(1).llen(f"q{s}") >= 200, 40, f"200 of {s} dispatched")
        time.sleep(0.5)
    finally:
        for sampler in arrivals.values():
            sampler.finish()
        first.stop(), second.stop()
    for s in ("a", "b"):
        ids = [m["redis_stream_id"] for m in queued_messages(redis_server.client(1), f"q{s}")]
        # Tracker mode is exactly once here (one server): a kill repeats nothing.
        assert sorted(ids) == sorted(produced[s])
        # Even across the take-over, when the bucket had time to fill: it holds 4 (a tenth of a second's worth).
        assert arrivals[s].most_in(1.0) <= 45, (s, arrivals[s].most_in(1.0))
        assert arrivals[s].span(1, 200) >= 4.5, (s, arrivals[s].span(1, 200))


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"stream_tasks": {"orders": {"task": "tests.record", "rate_limit": "fast"}}}, "stream_tasks 'rate_limit'"),
        ({"stream_tasks": {"orders": "tests.record"}, "stream_rate_limit": "10/d"}, "stream_rate_limit"),
        (
            {"stream_tasks": {"orders": {"task": "tests.record", "dedupe": {"key": "order_id"}}}},
            "stream_tasks 'dedupe'",
        ),
    ],
    ids=["rate_limit", "stream_rate_limit", "dedupe"],
)
def test_a_bad_limit_or_dedupe_stops_the_worker_at_start_up_naming_the_setting(
    redis_server: RedisServer, conf: dict[str, Any], words: str
) -> None:
    redis_server.client().xadd("orders", {"n": "1"})
    tasks = conf.pop("stream_tasks")
    worker = Worker(fast_env(redis_server, tasks, **conf)).start(wait=None)
    assert worker.wait(60) != 0
    output = worker.output()
    assert f"CRITICAL/MainProcess] redis-stream: setting {words}" in output, output[-3000:]
    assert not redis_server.client().xinfo_groups("orders")  # nothing was read


def orders(copies: int, ids: int, seed: int) -> list[dict[str, str]]:
    rows = [{"order_id": f"o{i}", "copy": str(c)} for c in range(copies) for i in range(ids)]
    random.Random(seed).shuffle(rows)  # copies land in one batch as well as in different ones
    return rows


@pytest.mark.parametrize(
    ("mode", "exact"), [("group", True), ("tracker", True), ("group", False)],
    ids=["group", "tracker", "group-at-least-once"],
)  # fmt: skip
def test_600_entries_of_200_orders_with_a_worker_killed_midway_make_exactly_200_tasks(
    redis_server: RedisServer, mode: str, exact: bool
) -> None:
    # Streams on db 0 and the broker on db 1 of one server: the exactly-once condition, unless the fast path
    # is off (the batch is then at least once: a kill may send the batch in flight again, never a second entry
    # of an order).
    env = fast_env(
        redis_server, {"orders": {"task": "tests.record", "dedupe": {"key": "{order_id}", "ttl_ms": 600_000},
                                  "batch_size": 10, "rate_limit": "300/s"}},
        stream_mode=mode, stream_claim_idle_ms=1000, stream_fast_path=exact,
    )  # fmt: skip
    rows = orders(3, 200, seed=20)
    a = Worker(env, "a", queues="other").start()
    b = Worker(env, "b", queues="other")
    b.start(wait="ready.") if mode == "tracker" else b.start()  # a second tracker reader stands by
    client = redis_server.client()
    produced = produce(redis_server, "orders", rows)
    try:
        # Midway, batches in flight (the rate limit keeps a backlog): kill the reader (tracker) or either (group).
        wait_for(lambda: redis_server.client(1).llen("celery") >= 70, 30, "70 tasks")
        holder = client.get("stream_tracker:{orders}:lease") if mode == "tracker" else None
        victim = b if holder is not None and holder.decode().startswith("b@") else a
        victim.kill()
        assert redis_server.client(1).llen("celery") < 200

        def settled() -> bool:
            if mode == "group":
                return (
                    int(client.xpending("orders", "celery")["pending"]) == 0
                    and client.xinfo_groups("orders")[0]["last-delivered-id"].decode() == produced[-1]
                )
            return (client.get("stream_tracker:{orders}") or b"").decode() == produced[-1]

        wait_for(settled, 60, "every entry passed")
        time.sleep(0.5)
        row = status_json(env)[1]["orders"]
    finally:
        a.stop(), b.stop()
    guarantee = "exactly-once: the streams and the broker share one Redis server" if exact else "at-least-once"
    assert guarantee in (a.output() + b.output())
    messages = queued_messages(redis_server.client(1))
    by_id = dict(zip(produced, rows, strict=True))
    sent: dict[str, set[str]] = {}
    for m in messages:
        sent.setdefault(by_id[m["redis_stream_id"]]["order_id"], set()).add(m["redis_stream_id"])
    assert sorted(sent) == sorted(f"o{i}" for i in range(200))  # every order
    assert all(len(ids) == 1 for ids in sent.values()), sent  # one entry per order, whatever was killed
    assert client.xlen("orders:dead") == 0
    assert row["dedupe_key"] == "{order_id}", row
    if exact:
        assert len(messages) == 200 and row["deduplicated"] == 400, (len(messages), row)
    else:  # at most the batch in flight (10) again; a count lost with it
        assert 200 <= len(messages) <= 210 and 390 <= row["deduplicated"] <= 400, (len(messages), row)


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_a_template_key_is_deduplicated_within_its_ttl_and_a_missing_field_is_dead_lettered(
    redis_server: RedisServer, mode: str
) -> None:
    env = fast_env(
        redis_server, {"orders": {"task": "tests.record", "dedupe": {"key": "{tenant}:{order_id}", "ttl_ms": 1500}}},
        stream_mode=mode,
    )  # fmt: skip
    first = produce(
        redis_server, "orders",
        [{"tenant": "t1", "order_id": "1"}, {"tenant": "t2", "order_id": "1"}, {"order_id": "1", "tenant": "t1"},
         {"order_id": "2"}],
    )  # fmt: skip
    worker = Worker(env, queues="other").start()
    try:
        wait_for(lambda: redis_server.client().xlen("orders:dead") >= 1, 30, "the dead letter")
        wait_for(lambda: redis_server.client(1).llen("celery") >= 2, 30, "two tasks")
        time.sleep(0.5)
        assert redis_server.client(1).llen("celery") == 2  # t1:1 once, t2:1 once
        seen = inspect_streams(env)["orders"][0]
        assert (seen["deduplicated"], seen["dispatched"], seen["dead_lettered"]) == (1, 2, 1), seen
        time.sleep(1.5)  # the TTL of t1:1 runs out: the same business key is dispatched again
        again = produce(redis_server, "orders", [{"tenant": "t1", "order_id": "1"}, {"tenant": "t1", "order_id": "1"}])
        wait_for(lambda: redis_server.client(1).llen("celery") >= 3, 30, "the third task")
        time.sleep(0.5)
        row = status_json(env)[1]["orders"]
    finally:
        assert worker.stop() == 0
    ids = [m["redis_stream_id"] for m in queued_messages(redis_server.client(1))]
    assert ids == [first[0], first[1], again[0]]
    ((_, letter),) = redis_server.client().xrange("orders:dead")
    assert letter[b"dlq_reason"] == b"dedupe_key" and letter[b"dlq_source_id"].decode() == first[3]
    assert b"tenant" in letter[b"dlq_error"]
    assert row["deduplicated"] == 2 and row["rate_limited"] is False, row

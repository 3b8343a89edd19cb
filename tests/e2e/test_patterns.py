"""Stream patterns: ``stream_tasks={"orders:*": ...}`` reads every matching stream, found by SCAN, old and new."""

from __future__ import annotations

import time

import pytest

from ..cluster import wait_logged
from ..support import RedisServer, Worker, executed, produce_many, worker_env


@pytest.mark.parametrize("mode", ["group", "tracker"])
def test_pattern_reads_existing_and_new_matching_streams_but_not_dead_letters(
    redis_server: RedisServer, workers: list[Worker], mode: str
) -> None:
    c = redis_server.client()
    expected = {(s, i) for s in ("orders:1", "orders:2") for i in produce_many(c, s, 5)}
    old_dead = produce_many(c, "orders:1:dead", 3, bad="old dead letter")
    produce_many(c, "payments:1", 3)  # does not match
    c.set("orders:not-a-stream", "x")  # matches, but SCAN TYPE stream skips it
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2),
        {"orders:*": {"task": "tests.record", "mode": mode}},
        stream_start="0", stream_discovery_interval=0.5, stream_block_ms=200,
    )  # fmt: skip
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    ledger = redis_server.client(2)

    def dispatched() -> list[tuple[str, str]]:
        return [(r["stream"], r["stream_id"]) for r in executed(ledger)]

    wait_logged(workers, lambda: set(dispatched()) >= expected, 60, "entries of streams that existed at start")
    # Streams created after start are found by the next scan and read from their first entry.
    for s in ("orders:3", "orders:{4}"):
        expected |= {(s, i) for i in produce_many(c, s, 4)}
    bad = c.execute_command("XADD", "orders:3", "*", "n", b"\xff not utf-8").decode()
    wait_logged(workers, lambda: set(dispatched()) >= expected, 60, "entries of streams created after start")
    expected |= {("orders:2", i) for i in produce_many(c, "orders:2", 3, start=5)}
    wait_logged(workers, lambda: set(dispatched()) >= expected and c.exists("orders:3:dead"), 60, "later entries")
    # Let a few more discovery rounds run: the dead-letter stream created by the bridge is not a source.
    worker.wait_log("redis-stream: found stream=orders:3 ", 10)
    wait_logged(workers, lambda: worker.output().count("found stream=") >= 4, 10, "discovery log lines")
    time.sleep(1.5)

    got = dispatched()
    assert set(got) == expected
    assert len(got) == len(expected), "each entry dispatched once"
    assert not {s for s, _ in got} & {"orders:1:dead", "orders:3:dead", "payments:1"}
    assert c.xlen("orders:1:dead") == len(old_dead)
    [(_, letter)] = c.xrange("orders:3:dead")
    assert letter[b"dlq_source_id"] == bad.encode()
    assert "found stream=orders:1:dead" not in worker.output()
    assert "found stream=orders:3:dead" not in worker.output()
    assert worker.output().count("found stream=") == 4

"""stream_dead_letter_failed_tasks: a task that fails for good adds its entry to the dead-letter stream.

Real `celery worker` processes run the tasks (tests/workerapp.py: tests.fail, tests.flaky, tests.reject),
in a prefork pool child or the solo pool; retries still to come never dead-letter.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from celery_redis_stream import deadletters, keys
from celery_redis_stream.client.connection import connect
from celery_redis_stream.config import BridgeConfig, StreamConfig
from celery_redis_stream.failed_tasks import dead_letter_task
from celery_redis_stream.publish.dispatch import task_id_for

from ..support import FAST, ROOT, RedisServer, Worker, executed, wait_for, worker_env


def task_worker(server: RedisServer, tasks: dict[str, Any], *, pool: str = "solo", **conf: Any) -> Worker:
    """A worker that reads the streams and runs their tasks too (it consumes the default queue)."""
    env = worker_env(server.url, server.url_db(1), server.url_db(2), tasks, **{**FAST, **conf})
    return Worker(env, "w1", pool=pool, concurrency=2 if pool == "prefork" else 1)


def sc_for(stream: str, task: str) -> StreamConfig:
    return StreamConfig(
        stream=stream, task=task, mode="group", group="celery", start="0",
        tracker_key=keys.tracker(stream), batch_size=100, dead_letter=keys.dead_letter(stream),
    )  # fmt: skip


def raw_client(server: RedisServer, sc: StreamConfig) -> Any:
    """A client that keeps stream replies as Redis sent them (pairs in order, bytes)."""
    config = BridgeConfig(
        url=server.url, consumer=None, block_ms=200, claim_idle_ms=1000, max_entry_bytes=1000, streams=(sc,)
    )
    return connect(config)


def letters(client: Any, stream: str) -> list[dict[bytes, bytes]]:
    return [pairs for _, pairs in client.xrange(f"{stream}:dead")]


def runs(server: RedisServer, stream: str) -> list[dict[str, Any]]:
    return [r for r in executed(server.client(2)) if r["stream"] == stream]


def test_a_task_that_fails_in_a_prefork_child_dead_letters_its_entry_byte_for_byte(
    redis_server: RedisServer, workers: list[Worker]
) -> None:
    tasks = {
        "fails": {"task": "tests.fail", "dead_letter_failed_tasks": True},
        "quiet": {"task": "tests.fail"},  # the option is off by default
    }
    worker = task_worker(redis_server, tasks, pool="prefork")
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    ids = [client.xadd("fails", {"n": str(i), "name": "café ☕", "raw": b"\x00\xc3\xa9"}).decode() for i in range(3)]
    client.xadd("quiet", {"n": "q"})
    wait_for(lambda: len(letters(client, "fails")) == 3, 60, "three task_failed dead letters")
    wait_for(lambda: len(runs(redis_server, "quiet")) == 1, 30, "the quiet stream's task to run")

    assert worker.proc is not None
    raw = raw_client(redis_server, sc_for("fails", "tests.fail"))
    by_source = {pairs[b"dlq_source_id"].decode(): pairs for pairs in letters(client, "fails")}
    assert sorted(by_source) == ids
    ran = {r["stream_id"]: r for r in runs(redis_server, "fails")}
    for entry_id, pairs in by_source.items():
        assert ran[entry_id]["pid"] != worker.proc.pid  # it ran in a pool child, and was dead-lettered there
        assert pairs[b"dlq_reason"] == b"task_failed"
        assert pairs[b"dlq_source_stream"] == b"fails"
        assert (
            pairs[b"dlq_task_id"].decode()
            == ran[entry_id]["task_id"]
            == task_id_for(sc_for("fails", "tests.fail"), entry_id)
        )
        n = pairs[b"n"].decode()
        assert pairs[b"dlq_error"].decode() == f"ValueError: boom {n}"
        # The original fields, byte for byte and in order, before the dlq_* ones.
        ((_, original),) = raw.execute_command("XRANGE", "fails", entry_id, entry_id)
        ((_, dead),) = [
            e for e in raw.execute_command("XRANGE", "fails:dead", "-", "+")
            if e[1][e[1].index(b"dlq_source_id") + 1].decode() == entry_id
        ]  # fmt: skip
        assert dead[: len(original)] == original
        assert dead[len(original) :: 2] == [b"dlq_source_stream", b"dlq_source_id", b"dlq_reason", b"dlq_error",
                                            b"dlq_task_id"]  # fmt: skip
    assert client.xlen("quiet:dead") == 0
    assert "reason=task_failed" in worker.output()

    # dead-letters --requeue brings them back like any other dead letter: they run (and fail) again.
    cli = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.workerapp", "redis-stream", "dead-letters", "fails", "--requeue",
         "--yes"],
        cwd=ROOT, env=worker.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert "requeued 3 entries" in cli.stdout
    wait_for(lambda: len(runs(redis_server, "fails")) == 6, 60, "the requeued entries to run")
    wait_for(lambda: len(letters(client, "fails")) == 3, 60, "the requeued entries dead-lettered again")
    assert client.xlen("fails") == 6
    assert all(pairs[b"dlq_source_id"].decode() not in ids for pairs in letters(client, "fails"))


def test_only_the_last_retry_and_a_rejection_dead_letter(redis_server: RedisServer, workers: list[Worker]) -> None:
    tasks = {
        "flaky": {"task": "tests.flaky", "dead_letter_failed_tasks": True},
        "rejects": {"task": "tests.reject"},
    }
    worker = task_worker(redis_server, tasks, stream_dead_letter_failed_tasks=True)  # the global setting
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    recovers = client.xadd("flaky", {"n": "1", "fail_times": "1"}).decode()  # fails once, the retry succeeds
    exhausts = client.xadd("flaky", {"n": "2", "fail_times": "9"}).decode()  # max_retries=2: fails for good
    rejected = client.xadd("rejects", {"n": "3"}).decode()
    wait_for(lambda: len(letters(client, "flaky")) == 1, 60, "the exhausted task dead-lettered")
    wait_for(lambda: len(letters(client, "rejects")) == 1, 60, "the rejected task dead-lettered")
    wait_for(lambda: len(runs(redis_server, "flaky")) == 5, 30, "every run of the flaky tasks")

    retries = sorted((r["stream_id"], r["kwargs"]["retries"]) for r in runs(redis_server, "flaky"))
    assert retries == [(recovers, 0), (recovers, 1), (exhausts, 0), (exhausts, 1), (exhausts, 2)]
    ((flaky,),) = [letters(client, "flaky")]
    assert flaky[b"dlq_source_id"].decode() == exhausts  # not the one whose retry succeeded
    assert flaky[b"dlq_reason"] == b"task_failed" and flaky[b"dlq_error"] == b"RuntimeError: flaky 2"
    ((reject,),) = [letters(client, "rejects")]
    assert reject[b"dlq_source_id"].decode() == rejected and reject[b"n"] == b"3"
    assert reject[b"dlq_error"] == b"Reject: refused 3"
    assert worker.output().count("reason=task_failed") == 2


def test_a_failed_task_whose_entry_was_trimmed_is_dead_lettered_without_fields_and_requeue_keeps_it(
    redis_server: RedisServer,
) -> None:
    client = redis_server.client()
    sc = sc_for("orders", "tests.fail")
    entry_id = client.xadd("orders", {"n": "1"}).decode()
    client.xtrim("orders", maxlen=0)
    raw = raw_client(redis_server, sc)
    dead_letter_task(raw, sc, entry_id, "tid-1", "ValueError: boom")
    ((pairs,),) = [letters(client, "orders")]
    assert pairs[b"dlq_reason"] == b"task_failed" and pairs[b"dlq_task_id"] == b"tid-1"
    assert b"trimmed" in pairs[b"dlq_error"] and pairs[b"dlq_error"].startswith(b"ValueError: boom")
    assert set(pairs) == {b"dlq_source_stream", b"dlq_source_id", b"dlq_reason", b"dlq_error", b"dlq_task_id"}
    assert deadletters.requeue(raw, sc, 10) == (0, 1)
    assert client.xlen("orders:dead") == 1 and client.xlen("orders") == 0


def test_a_task_whose_pool_child_dies_is_dead_lettered_by_the_main_process(
    redis_server: RedisServer, workers: list[Worker]
) -> None:
    tasks = {"dies": {"task": "tests.die", "dead_letter_failed_tasks": True}}
    worker = task_worker(redis_server, tasks, pool="prefork")
    workers.append(worker)
    worker.start()
    client = redis_server.client()
    entry_id = client.xadd("dies", {"n": "1"}).decode()
    wait_for(lambda: letters(client, "dies"), 60, "the dead letter of the task whose child died")
    ((pairs,),) = [letters(client, "dies")]
    assert pairs[b"dlq_source_id"].decode() == entry_id and pairs[b"n"] == b"1"
    assert pairs[b"dlq_reason"] == b"task_failed" and pairs[b"dlq_error"].startswith(b"WorkerLostError")

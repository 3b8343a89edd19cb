"""testing.processes: private redis-server processes on free ports, stopped by pid; waiting with a deadline."""

from __future__ import annotations

import os
import socket
import time

import pytest
import redis

from celery_redis_stream.testing.processes import Ready, RedisServer, free_port, wait_for


def test_a_private_server_answers_on_its_own_port_and_is_gone_after_stop() -> None:
    server = RedisServer().start()
    try:
        assert server.port != 6379 and server.client().ping()
        pid = server.proc.pid if server.proc else 0
        server.client(3).set("k", "v")
        assert server.url_db(3).endswith(f":{server.port}/3")
    finally:
        server.stop(remove=True)
    assert server.proc is None and not os.path.exists(server.dir)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=server.port, socket_timeout=1).ping()


def test_a_server_that_cannot_start_says_why() -> None:
    with pytest.raises(RuntimeError, match="redis-server exited"):
        RedisServer("--no-such-option", "yes").start(timeout=5)


def test_a_missing_binary_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="redis-server"):
        RedisServer()


def test_free_ports_are_free() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nobody holds it


def test_wait_for_returns_the_first_true_value_and_fails_at_its_deadline() -> None:
    values = iter([None, 0, "ready"])
    assert wait_for(lambda: next(values), 5, "a value", interval=0.001) == "ready"
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.2s waiting for nothing"):
        wait_for(lambda: None, 0.2, "nothing", interval=0.01, error=AssertionError)
    assert 0.2 <= time.monotonic() - started < 2


def test_the_readiness_events_a_worker_writes_have_stable_names() -> None:
    assert {r.value for r in Ready} >= {"started", "reader_ready"}

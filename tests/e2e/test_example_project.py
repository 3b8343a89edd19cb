"""The example Django project: its demo runs a real `celery -A shop worker` configured by Django settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from ..support import ROOT, RedisServer

DEMO = ROOT / "example_project" / "demo.py"


def run_demo(env: dict[str, str], timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def last_id(client: redis.Redis, stream: str) -> str:
    return client.xrevrange(stream, count=1)[0][0].decode()


def test_demo_executes_every_entry_through_django_settings(redis_server: RedisServer) -> None:
    env = {**os.environ, "REDIS_URL": redis_server.url}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = run_demo(env)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert "OK: 7 entries produced, 7 tasks executed" in out
    # The mapping, with each stream's call shape and the call an example entry becomes (before the worker starts).
    for line in (
        "    orders -> orders.tasks.handle_order (group celery, queue celery): handle_order(fields)",
        "    payments -> orders.tasks.capture_payment (group celery, queue billing): capture_payment(**fields)",
        "    shipments -> orders.tasks.ship_order (group celery, queue celery): converter "
        "orders.converters:to_shipment -> ship_order(*args, **kwargs)",
        "    audit -> orders.tasks.audit_event (tracker stream_tracker:{audit}, queue celery): "
        "audit_event(stream, entry_id, fields)",
        "        e.g. XADD payments * {'order_id': '42', 'amount': '9.90', 'method': 'card'} -> "
        "capture_payment(order_id='42', amount='9.90', method='card')",
        "        e.g. XADD shipments * {'order_id': '42', 'carrier': 'ups'} -> ship_order(42, carrier='ups')",
    ):
        assert line in out.splitlines(), (line, out)
    # The worker's own line with each stream's delivery guarantee (one Redis for streams and broker: exactly once).
    (started,) = [line for line in out.splitlines() if line.startswith("    redis-stream: reading ")]
    for stream in ("orders", "payments", "shipments", "audit"):
        assert f"{stream}->orders.tasks." in started
    assert started.count("exactly-once: ") == 4, started
    # A digest of status --json is not shown as if it were its output.
    assert "(a digest of `celery -A shop redis-stream status --json`)" in out
    assert "(celery redis-stream status --json):" not in out

    client = redis_server.client()
    ids = {s: [i.decode() for i, _ in client.xrange(s)] for s in ("orders", "payments", "shipments", "audit")}
    assert [len(ids[s]) for s in ids] == [3, 2, 1, 1]
    # One task log line per entry, each in the call shape CELERY_STREAM_TASKS gives its stream.
    executed = [line.strip() for line in out.splitlines() if " stream=" in line and " received " in line]
    assert len(executed) == 7
    first_order = next(line for line in executed if f"stream=orders id={ids['orders'][0]} " in line)
    assert first_order.startswith("handle_order ")
    assert first_order.endswith("received {'order_id': '42', 'amount': '9.90'}")
    payment = next(line for line in executed if f"stream=payments id={ids['payments'][0]} " in line)
    assert payment.startswith("capture_payment ")
    assert payment.endswith("received {'order_id': '42', 'amount': '9.90', 'method': 'card'}")
    shipment = next(line for line in executed if f"stream=shipments id={ids['shipments'][0]} " in line)
    assert shipment.endswith("received {'order_id': 42, 'carrier': 'ups'}")  # the converter made it an int
    audit_id = ids["audit"][0]
    audit = next(line for line in executed if f"stream=audit id={audit_id} " in line)
    assert audit.endswith(f"received ['audit', '{audit_id}', {{'event': 'order_created', 'order_id': '44'}}]")

    # The positions moved past everything (group mode: acked; tracker mode: the key),
    # and the "billing" queue of the payments stream was consumed by the same worker.
    for stream in ("orders", "payments", "shipments"):
        (group,) = client.xinfo_groups(stream)
        assert group["name"] == b"celery"
        assert group["pending"] == 0
        assert group["last-delivered-id"].decode() == last_id(client, stream)
    assert client.get("stream_tracker:{audit}").decode() == audit_id
    broker = redis_server.client(0)
    assert broker.llen("celery") == 0
    assert broker.llen("billing") == 0
    assert "worker stopped by SIGTERM (warm shutdown), exit code 0" in out


def test_demo_without_redis_server_binary_says_so_and_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PATH"] = str(tmp_path)  # no redis-server here
    result = run_demo(env, timeout=30)
    assert result.returncode != 0
    assert "no redis-server binary on PATH" in result.stderr
    assert "REDIS_URL" in result.stderr

"""A clean install runs a worker: run with the python of a venv that has only `pip install <checkout>`.

    python -m venv /tmp/clean && /tmp/clean/bin/pip install . && /tmp/clean/bin/python .ci/clean_install_check.py

Uses only the standard library and what the package's runtime dependencies
install. For each broker (a private redis-server on a free port, then the
machine's RabbitMQ at CRS_AMQP_URL, default amqp://guest:guest@127.0.0.1:5672//,
with a queue of its own that is deleted afterwards) it starts a real
`celery worker` with the plugin, XADDs one entry and waits until the task made
from it has run. Exits 0 when both worked, 1 with the reason and the worker's
log otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

AMQP_URL = os.environ.get("CRS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
TIMEOUT = 45.0

APP = """
import os

import redis
from celery import Celery

import celery_redis_stream

app = Celery("checkapp", broker=os.environ["CHECK_BROKER_URL"])
app.conf.update(
    stream_url=os.environ["CHECK_STREAM_URL"],
    stream_start="0",
    stream_tasks={"orders": {"task": "checkapp.record", "queue": os.environ["CHECK_QUEUE"]}},
    broker_connection_retry_on_startup=True,
)


@app.task(name="checkapp.record", bind=True)
def record(self, fields):
    client = redis.Redis.from_url(os.environ["CHECK_STREAM_URL"])
    client.rpush("executed", f"{self.request.redis_stream_id} {fields['order']}")


celery_redis_stream.install(app)
"""


class CheckFailed(Exception):
    """The clean install cannot do what a user would do; the message says what and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise CheckFailed("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
         str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise CheckFailed(f"redis-server did not start on port {port}")


def run_worker(directory: Path, broker_url: str, stream_url: str, queue: str, label: str) -> None:
    import redis  # a runtime dependency: importing it is part of the check

    client = redis.Redis.from_url(stream_url)
    client.delete("orders", "executed")
    log = directory / f"worker-{label}.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(directory),
        "CHECK_BROKER_URL": broker_url,
        "CHECK_STREAM_URL": stream_url,
        "CHECK_QUEUE": queue,
    }
    cmd = [sys.executable, "-m", "celery", "-A", "checkapp", "worker", "--pool", "solo", "-Q", queue,
           "-n", f"clean-{label}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
           "--without-heartbeat"]  # fmt: skip
    with open(log, "wb") as out:
        worker = subprocess.Popen(cmd, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            entry_id = client.xadd("orders", {"order": "42"}).decode()
            deadline = time.monotonic() + TIMEOUT
            while True:
                done = client.lrange("executed", 0, -1)
                if done:
                    break
                if worker.poll() is not None:
                    raise CheckFailed(
                        f"{label} broker: the worker exited with {worker.returncode} before running the task"
                    )
                if time.monotonic() > deadline:
                    raise CheckFailed(f"{label} broker: no task ran within {TIMEOUT:.0f}s for stream entry {entry_id}")
                time.sleep(0.2)
            if done != [f"{entry_id} 42".encode()]:
                raise CheckFailed(
                    f"{label} broker: expected one task for entry {entry_id}, the tasks recorded {done!r}"
                )
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(30)
            if code != 0:
                raise CheckFailed(f"{label} broker: the worker exited with {code} after a warm shutdown")
        except CheckFailed as exc:
            tail = log.read_text(errors="replace")[-4000:]
            last = [line for line in tail.splitlines() if line.strip()][-1:] or ["(empty)"]
            raise CheckFailed(f"{exc}; its last log line: {last[0]}\n--- worker log ({log}) ---\n{tail}") from None
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    text = log.read_text(errors="replace")
    if "redis-stream: reading orders" not in text:
        raise CheckFailed(f"{label} broker: the worker never logged its reader start:\n{text[-4000:]}")
    print(f"clean install: {label} broker: entry {entry_id} ran as a task in a real worker", flush=True)


def run_status(directory: Path, broker_url: str, stream_url: str) -> None:
    """The operator CLI of a plain install (rich is a dependency): ``celery redis-stream status --json``."""
    env = {**os.environ, "PYTHONPATH": str(directory), "CHECK_BROKER_URL": broker_url,
           "CHECK_STREAM_URL": stream_url, "CHECK_QUEUE": "clean-check"}  # fmt: skip
    cmd = [sys.executable, "-m", "celery", "-A", "checkapp", "redis-stream", "status", "--json"]
    done = subprocess.run(cmd, cwd=directory, env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise CheckFailed(f"redis-stream status exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    streams = {row["stream"]: row for row in json.loads(done.stdout)["streams"]}
    if streams.get("orders", {}).get("exists") is not True:
        raise CheckFailed(f"redis-stream status did not show the stream orders: {done.stdout[-2000:]}")
    print("clean install: `celery redis-stream status --json` showed the stream", flush=True)


def delete_queue(queue: str) -> None:
    from kombu import Connection

    with Connection(AMQP_URL, connect_timeout=5) as connection:
        connection.channel().queue_delete(queue)


def main() -> int:
    directory = Path(tempfile.mkdtemp(prefix="crs-clean-"))
    (directory / "checkapp.py").write_text(textwrap.dedent(APP))
    redis_proc = None
    try:
        redis_proc, port = start_redis(directory)
        stream_url = f"redis://127.0.0.1:{port}/0"
        run_worker(directory, f"redis://127.0.0.1:{port}/1", stream_url, "clean-check", "redis")
        run_status(directory, f"redis://127.0.0.1:{port}/1", stream_url)
        queue = f"crs-clean-{uuid.uuid4().hex[:8]}"
        try:
            run_worker(directory, AMQP_URL, stream_url, queue, "rabbitmq")
        finally:
            try:
                delete_queue(queue)
            except Exception as exc:
                print(f"clean install: could not delete RabbitMQ queue {queue}: {exc}", file=sys.stderr)
    except CheckFailed as exc:
        print(f"clean install check FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

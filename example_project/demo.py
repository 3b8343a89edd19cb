#!/usr/bin/env python
"""End-to-end demo: a real `celery -A shop worker` turns stream entries into tasks.

    python example_project/demo.py          # or: make demo

Uses REDIS_URL when it is set; otherwise starts a private redis-server on a
free loopback port in a temporary directory (and stops it afterwards). Then
it prints the stream -> task mapping of the example Django project with the
call each stream's entries become, starts its worker, waits for its readers
(the ``reader_ready`` signal), prints the worker's own start-up line that
names each stream's delivery guarantee, XADDs a few entries (``produce``),
waits until the worker has executed a task for each of them, prints those
task log lines, stops the worker with SIGTERM (warm shutdown) and prints a
digest of the stream positions read from ``celery redis-stream status --json``.
Exits 0 on success, non-zero with a message otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import redis
from kombu.utils.url import maybe_sanitize_url

from celery_redis_stream.testing.processes import Ready, RedisServer, WorkerProcess, wait_for

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from produce import EXAMPLES, produce_examples  # noqa: E402

STARTUP_TIMEOUT = 60.0
EXECUTE_TIMEOUT = 60.0
ENV = {"DJANGO_SETTINGS_MODULE": "shop.settings", "PYTHONPATH": os.pathsep.join(filter(None, (str(HERE),
       os.environ.get("PYTHONPATH"))))}  # fmt: skip
NO_SERVER = (
    "no redis-server binary on PATH. Install Redis (Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: "
    "`brew install redis`) or point the demo at a running Redis with REDIS_URL=redis://host:port/db"
)


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def operator(url: str, *args: str) -> dict[str, object]:
    """``celery -A shop redis-stream ARGS --json``, as an operator runs it."""
    command = [sys.executable, "-m", "celery", "-A", "shop", "redis-stream", *args, "--json"]
    done = subprocess.run(command, cwd=HERE, env={**os.environ, **ENV, "REDIS_URL": url}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    if not done.stdout.strip():
        raise DemoError(f"`celery redis-stream {' '.join(args)}` failed ({done.returncode}): {done.stderr}")
    data: dict[str, object] = json.loads(done.stdout)
    return data


def executed_lines(output: str, produced: list[tuple[str, str, dict[str, str]]]) -> dict[tuple[str, str], str]:
    """The worker's task log line of each produced (stream, entry id) that was executed."""
    found: dict[tuple[str, str], str] = {}
    for line in output.splitlines():
        for stream, entry_id, _ in produced:
            if "shop: " in line and f" stream={stream} id={entry_id} " in line:
                found[stream, entry_id] = line[line.index("shop: ") + len("shop: ") :]
    return found


#: What the task is called with, per ``call`` (the shape) of a stream without a converter.
SHAPES = {"fields": "{task}(fields)", "kwargs": "{task}(**fields)", "entry": "{task}(stream, entry_id, fields)"}


def call_text(task: str, args: list[object], kwargs: dict[str, object]) -> str:
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"{task.rsplit('.', 1)[-1]}({', '.join(shown)})"


def mapping_lines() -> list[str]:
    """Each mapped stream: its task, mode, queue and call shape, and the call its first example entry becomes.

    The call is what the worker would send (``celery_redis_stream.testing.preview`` runs its code path).
    """
    from shop.celery import app

    from celery_redis_stream.config import load_config
    from celery_redis_stream.testing import preview

    lines = []
    for sc in load_config(app, check_registered=False).streams:
        short = sc.task.rsplit(".", 1)[-1]
        shape = f"converter {sc.converter_path} -> {short}(*args, **kwargs)" if sc.converter_path else (
            SHAPES[sc.call].format(task=short)
        )  # fmt: skip
        where = f"group {sc.group}" if sc.mode == "group" else f"tracker {sc.tracker_key}"
        fields = next(f for stream, f in EXAMPLES if stream == sc.stream)
        seen = preview(app, sc.stream, fields, entry_id="1700000000000-0")
        lines.append(f"    {sc.stream} -> {sc.task} ({where}, queue {seen.queue}): {shape}")
        lines.append(f"        e.g. XADD {sc.stream} * {fields} -> {call_text(seen.task, seen.args, seen.kwargs)}")
    return lines


def guarantee_line(output: str) -> str:
    """The worker's start-up log line naming each stream, its task and its delivery guarantee."""
    for line in output.splitlines():
        if "redis-stream: reading " in line:
            return line[line.index("redis-stream: reading ") :]
    raise DemoError(f"the worker did not log its redis-stream start-up line:\n{output[-3000:]}")


def position(s: dict[str, object]) -> str:
    if s["mode"] == "tracker":
        return f"{s['stream']}: tracker {s['tracker_key']} = {s['position']}"
    return f"{s['stream']}: group {s['group']} last-delivered-id={s['last_delivered_id']} pending={s['pending']}"


def run() -> int:
    url = os.environ.get("REDIS_URL")
    server = None
    if url:
        say(f"using REDIS_URL={maybe_sanitize_url(url)}")
    else:
        try:
            server = RedisServer().start(15)
        except FileNotFoundError:
            raise DemoError(NO_SERVER) from None
        url = server.url_db(0)
        say(f"started a private redis-server on {url} (dir {server.dir})")
    os.environ["REDIS_URL"] = url
    worker = WorkerProcess("shop", "shop-demo", env={**ENV, "REDIS_URL": url}, cwd=HERE, new_session=True, args=[
        "-Q", "celery,billing", "-c", "2", "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ])  # fmt: skip
    try:
        client = redis.Redis.from_url(url, socket_timeout=10)
        client.ping()
        from shop import settings  # reads REDIS_URL

        streams = list(settings.CELERY_STREAM_TASKS)
        say("streams mapped to tasks (CELERY_STREAM_TASKS in shop/settings.py), each with its call shape:")
        for line in mapping_lines():
            print(line, flush=True)
        say("starting: celery -A shop worker " + " ".join(worker.cmd[worker.cmd.index("worker") + 1 :]))
        worker.start(wait=None)
        worker.wait_ready(Ready.READERS, STARTUP_TIMEOUT, streams=streams)
        say(f"worker pid {worker.pid} is reading streams {', '.join(streams)} (reader_ready)")
        say("the worker's start-up line, with the delivery guarantee of each stream:")
        print(f"    {guarantee_line(worker.output())}", flush=True)

        produced = produce_examples(client)
        for stream, entry_id, fields in produced:
            say(f"XADD {stream} {entry_id} {fields}")

        def all_executed() -> bool:
            worker.check_alive()
            return len(executed_lines(worker.output(), produced)) == len(produced)

        try:
            wait_for(all_executed, EXECUTE_TIMEOUT, f"{len(produced)} tasks to be executed", interval=0.1)
        except TimeoutError:
            done = executed_lines(worker.output(), produced)
            missing = [f"{s} {e}" for s, e, _ in produced if (s, e) not in done]
            log = worker.output()[-3000:]
            raise DemoError(f"entries not executed: {', '.join(missing)}\nworker log:\n{log}") from None
        found = executed_lines(worker.output(), produced)
        say("executed by the worker (its task log lines):")
        for stream, entry_id, _ in produced:
            print(f"    {found[stream, entry_id]}", flush=True)

        code = worker.stop()
        say(f"worker stopped by SIGTERM (warm shutdown), exit code {code}")
        if code != 0:
            raise DemoError(f"the worker exited with code {code}:\n{worker.output()[-3000:]}")
        say("stream positions after the run (a digest of `celery -A shop redis-stream status --json`):")
        status = operator(url, "status")["streams"]
        for s in status if isinstance(status, list) else ():
            print(f"    {position(s)}", flush=True)
        say(f"OK: {len(produced)} entries produced, {len(found)} tasks executed")
        shutil.rmtree(worker.dir, ignore_errors=True)
        return 0
    except (AssertionError, RuntimeError) as exc:  # the worker exited or did not get ready
        raise DemoError(f"{exc}\nworker log:\n{worker.output()[-3000:]}") from None
    finally:
        worker.stop()
        if worker.log.exists():
            print(f"demo: the worker log is kept in {worker.log}", file=sys.stderr, flush=True)
        if server is not None:
            server.stop(remove=True)
            say("stopped the private redis-server")


def main() -> int:
    # SIGTERM to the demo runs the same clean-up as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run()
    except (DemoError, redis.RedisError) as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())

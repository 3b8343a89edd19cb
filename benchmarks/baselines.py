"""The baselines the bridge is measured against, run in the benchmark process on the same redis-server.

- ``send_task_loop``: Celery's own loop, ``app.send_task(...)`` with one reused producer, optionally inside
  kombu's ``Producer.batch()``;
- ``naive_bridge``: what one writes first: XREAD COUNT 1, ``send_task``, SET a tracker, per entry;
- ``minimal_bridge``: the practical limit of a Python bridge: XREADGROUP, protocol-2 messages filled into
  a string template, one LPUSH pipeline and one XACK per batch; no Celery in its loop. Its messages are
  checked against a ``send_task`` message of the same entry (same envelope, headers and properties keys,
  same body) before it is timed.

    .venv/bin/python benchmarks/baselines.py [--entries 10000] [--batch 100]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
from celery import Celery

from benchmarks.common import FIELDS, STREAM, Bench, fill_stream, log

TASK = "bench.noop"


def client_app(bench: Bench) -> Celery:
    app = Celery("bench-client", broker=bench.server.url_db(1), set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    return app


def send_task_loop(bench: Bench, app: Celery, n: int, batch: int | None = None) -> float:
    """``send_task`` n times with one reused producer (inside ``Producer.batch(max_size=batch)`` if given)."""
    bench.reset()
    calls = [{**FIELDS, "n": str(i)} for i in range(n)]
    send_task = app.send_task
    with app.producer_or_acquire() as producer:
        send_task(TASK, args=[calls[0]], producer=producer, queue="warmup")
        started = time.perf_counter()
        if batch:
            with producer.batch(max_size=batch):
                for fields in calls:
                    send_task(TASK, args=[fields], producer=producer, queue="sink")
        else:
            for fields in calls:
                send_task(TASK, args=[fields], producer=producer, queue="sink")
        elapsed = time.perf_counter() - started
    assert bench.broker.llen("sink") == n
    return n / elapsed


def naive_bridge(bench: Bench, app: Celery, n: int) -> float:
    """XREAD COUNT 1, ``send_task`` (pool producer), SET the tracker, per entry."""
    bench.reset()
    fill_stream(bench.streams, STREAM, n)
    client = redis.Redis.from_url(bench.server.url_db(0), decode_responses=True)
    send_task = app.send_task
    send_task(TASK, args=[FIELDS], queue="warmup")
    last = "0"
    started = time.perf_counter()
    for _ in range(n + 1):
        reply = client.xread({STREAM: last}, count=1)
        if not reply:
            break
        for entry_id, fields in reply[0][1]:
            send_task(TASK, args=[fields], queue="sink")
            client.set(f"stream_tracker:{STREAM}", entry_id)
            last = entry_id
    elapsed = time.perf_counter() - started
    client.close()
    assert bench.broker.llen("sink") == n
    return n / elapsed


# The envelope kombu's Redis transport writes for a protocol-2 task message, as one string.
ENVELOPE = (
    '{"body": "%s", "content-encoding": "utf-8", "content-type": "application/json", "headers": '
    '{"lang": "py", "task": "' + TASK + '", "id": "%s", "shadow": null, "eta": null, "expires": null, '
    '"group": null, "group_index": null, "retries": 0, "timelimit": [null, null], "root_id": "%s", '
    '"parent_id": null, "argsrepr": %s, "kwargsrepr": "{}", "origin": "%s", "ignore_result": false, '
    '"replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}, "redis_stream": "' + STREAM + '", '
    '"redis_stream_id": "%s"}, "properties": {"correlation_id": "%s", "reply_to": "%s", "delivery_mode": 2, '
    '"delivery_info": {"exchange": "", "routing_key": "sink"}, "priority": 0, "body_encoding": "base64", '
    '"delivery_tag": "%s"}}'
)
BODY = '[[%s], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'


def check_minimal_message(bench: Bench, app: Celery) -> None:
    """The template's message has the keys and body of ``send_task``'s message for the same entry."""
    bench.reset()
    bench.streams.xadd(STREAM, FIELDS)
    bench.streams.xgroup_create(STREAM, "check", id="0")
    _minimal_batch(bench.streams, bench.broker, "check", 10, "gen@bench", str(uuid.uuid4()))
    mine = json.loads(bench.broker.rpop("sink") or b"{}")
    with app.producer_or_acquire() as producer:
        app.send_task(TASK, args=[FIELDS], producer=producer, queue="sink",
                      headers={"redis_stream": STREAM, "redis_stream_id": "1-0"})  # fmt: skip
    theirs = json.loads(bench.broker.rpop("sink") or b"{}")
    for part in ("headers", "properties"):
        if set(mine[part]) != set(theirs[part]):
            raise RuntimeError(f"the minimal bridge's message {part} differ: {set(mine[part]) ^ set(theirs[part])}")
    if base64.b64decode(mine["body"]) != base64.b64decode(theirs["body"]):
        raise RuntimeError("the minimal bridge's message body differs from send_task's")


def minimal_bridge(bench: Bench, n: int, batch: int) -> float:
    """Drain n entries through the hand-written bridge; entries per second from the first read to the last ack."""
    bench.reset()
    fill_stream(bench.streams, STREAM, n)
    bench.streams.xgroup_create(STREAM, "g", id="0")
    client = redis.Redis.from_url(bench.server.url_db(0))
    # The broker is db 1 of the same server: one client per database, as a bridge would have.
    broker = redis.Redis.from_url(bench.server.url_db(1))
    origin, reply_to = "gen1@bench", str(uuid.uuid4())
    done = 0
    started = time.perf_counter()
    while done < n:
        done += _minimal_batch(client, broker, "g", batch, origin, reply_to)
    elapsed = time.perf_counter() - started
    client.close()
    broker.close()
    assert bench.broker.llen("sink") == n
    return n / elapsed


def _minimal_batch(client: redis.Redis, broker: redis.Redis, group: str, batch: int, origin: str, reply_to: str) -> int:
    """One batch: XREADGROUP, build, LPUSH pipeline to the broker db, then one XACK."""
    reply = client.xreadgroup(group, "c", {STREAM: ">"}, count=batch)
    if not reply:
        return 0
    entries = reply[0][1]
    dumps, b64, uuid4, envelope, body = json.dumps, base64.b64encode, uuid.uuid4, ENVELOPE, BODY
    payloads = []
    for entry_id, raw in entries:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        task_id = str(uuid4())
        payloads.append(
            envelope % (
                b64((body % dumps(fields)).encode()).decode(), task_id, task_id, dumps(repr([fields])), origin,
                entry_id.decode(), task_id, reply_to, uuid4(),
            )
        )  # fmt: skip
    pipe = broker.pipeline(transaction=False)
    pipe.lpush("sink", *payloads)
    pipe.execute()
    client.xack(STREAM, group, *[e for e, _ in entries])
    return len(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    bench = Bench()
    try:
        app = client_app(bench)
        check_minimal_message(bench, app)
        out: dict[str, Any] = {
            "send_task_loop": send_task_loop(bench, app, args.entries),
            "send_task_batch": send_task_loop(bench, app, args.entries, batch=args.batch),
            "naive_bridge": naive_bridge(bench, app, min(args.entries, 3000)),
            "minimal_bridge": minimal_bridge(bench, args.entries * 3, args.batch),
        }
        for name, value in out.items():
            log(f"{name}: {value:,.0f} entries/s")
    finally:
        bench.close()


if __name__ == "__main__":
    main()

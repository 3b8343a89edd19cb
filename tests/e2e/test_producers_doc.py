"""docs/producers.md's FastStream and Node.js blocks, which the docs snippet runner cannot run (neither
FastStream nor Node.js is a dependency).

Each runs here as written, with only the Redis URL replaced: the FastStream block in the FastStream 0.7
venv of tests/producers.py, the Node.js block with the ioredis that tests/producers.py installs. What they
wrote is what the page says the task gets. The page's other blocks are run by
tests/e2e/test_docs_snippets.py.
"""

from __future__ import annotations

import subprocess
from typing import Any

from celery import Celery

from celery_redis_stream.testing import preview

from ..producers import faststream_python, run_node
from ..support import ROOT, RedisServer
from .test_docs_snippets import SHOWN_URL, blocks

DOC = ROOT / "docs" / "producers.md"


def test_the_faststream_block_publishes_what_the_page_says_the_task_gets(redis_server: RedisServer) -> None:
    (block,) = [b for b in blocks(DOC) if b.lang == "python" and "from faststream" in b.text]
    assert block.not_run is not None and "test_producers_doc.py" in block.not_run
    source = block.text.replace(SHOWN_URL, redis_server.url_db(0))
    python = faststream_python("0.7")
    done = subprocess.run([str(python), "-c", source], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    ((_, event),) = redis_server.client().xrange("events")
    app = Celery("doc", broker="memory://", set_as_current=False)
    app.task(name="shop.tasks.event", bind=True, shared=False)(_event)
    app.conf.stream_tasks = {"events": {"task": "shop.tasks.event", "decode": "faststream"}}
    shown = preview(app, "events", list(event.items()))
    assert shown.args == [{"order_id": 42}]
    assert shown.headers["faststream_correlation_id"] == "order-42"
    assert 'args=[{"order_id": 42}]' in DOC.read_text() and '== "order-42"' in DOC.read_text()


def test_the_node_block_writes_what_the_table_says_each_decoder_hands_the_task(redis_server: RedisServer) -> None:
    (block,) = [b for b in blocks(DOC) if b.lang == "javascript"]
    assert block.not_run is not None and "test_producers_doc.py" in block.not_run
    source = block.text.replace(SHOWN_URL, redis_server.url_db(0))
    # The page shows the body of an async function (its awaits); it runs as one, then closes the connection.
    wrapped = (
        f"(async () => {{\n{source}\nredis.disconnect();\n}})().catch((e) => {{ console.error(e); process.exit(1); }});"
    )
    done = run_node(["-e", wrapped])
    assert done.returncode == 0, done.stderr
    client = redis_server.client()
    ((_, order),) = client.xrange("orders")
    ((_, webhook),) = client.xrange("webhooks")
    app = Celery("doc", broker="memory://", set_as_current=False)
    for name in ("shop.tasks.handle_order", "shop.tasks.webhook"):
        app.task(name=name, bind=True, shared=False)(_event)
    app.conf.stream_tasks = {
        "orders": "shop.tasks.handle_order",
        "webhooks": {"task": "shop.tasks.webhook", "decode": "json:payload"},
    }
    assert preview(app, "orders", list(order.items())).args == [{"order_id": "42", "amount": "9.90"}]
    assert preview(app, "webhooks", list(webhook.items())).args == [{"order_id": 42, "items": ["a", "b"]}]
    table = DOC.read_text()
    assert '`{"order_id": "42", "amount": "9.90"}`' in table and '`{"order_id": 42}` (JSON types kept)' in table


def _event(self: Any, *args: Any) -> None:
    """The task the block's stream maps to (never run)."""

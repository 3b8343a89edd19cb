"""The metric names, JSON fields and KEDA metadata that the docs quote exist in what the code (and KEDA) expose."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..support import ROOT, RedisServer, Worker, free_port, produce_many, wait_for, worker_env
from .test_cli import cli

DOCS = [ROOT / "docs" / "operations.md", ROOT / "docs" / "scaling.md"]

# Trigger metadata as KEDA's scaler documentation lists it (keda.sh/docs/<version>/scalers/redis-streams,
# redis-lists, prometheus). The docs may use only these names.
KEDA_METADATA = {
    "redis-streams": {
        "address", "host", "port", "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup",
        "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl",
        "databaseIndex", "addressFromEnv", "hostFromEnv", "portFromEnv",
    },
    "redis": {
        "address", "host", "port", "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
        "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex", "addressFromEnv", "hostFromEnv",
        "portFromEnv",
    },
    "prometheus": {
        "serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
        "customHeaders", "ignoreNullValues", "unsafeSsl",
    },
}  # fmt: skip


def code_blocks(text: str, *languages: str) -> list[str]:
    return [m.group(2) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S) if m.group(1) in languages]


def keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys(v)}
    return set()


def doc_metric_names() -> set[str]:
    return {name for doc in DOCS for name in re.findall(r"\bredis_stream_[a-z_]+\b", doc.read_text())}


def doc_json_fields() -> set[str]:
    """Keys of the JSON samples, and the jq-style `.field` paths that the prose names."""
    names: set[str] = set()
    for doc in DOCS:
        text = doc.read_text()
        for block in code_blocks(text, "console", "json"):
            names |= set(re.findall(r'^\s*"([^"@]+)":', block, re.M))
        names |= set(re.findall(r"`\.([a-z_]+)`", text))
    return names


def keda_triggers(text: str) -> list[tuple[str, set[str]]]:
    """(type, metadata keys) of every trigger in the docs' YAML blocks."""
    found = []
    for block in code_blocks(text, "yaml"):
        kind, meta_indent, meta = None, None, set()
        for line in block.splitlines():
            indent = len(line) - len(line.lstrip())
            stripped = line.strip()
            if stripped.startswith("- type:"):
                if kind is not None:
                    found.append((kind, meta))
                kind, meta_indent, meta = stripped.split(":", 1)[1].split("#")[0].strip(), None, set()
            elif kind is not None and stripped == "metadata:":
                meta_indent = indent
            elif meta_indent is not None and stripped and indent > meta_indent:
                meta.add(stripped.split(":", 1)[0])
            elif meta_indent is not None and stripped and indent <= meta_indent:
                meta_indent = None
        if kind is not None:
            found.append((kind, meta))
    return found


def test_docs_quote_only_metric_names_and_json_fields_that_the_code_exposes(
    redis_server: RedisServer, workers: list[Worker]
) -> None:
    port = free_port()
    tasks = {"orders": "tests.record", "events": {"task": "tests.record", "mode": "tracker"}}
    env = worker_env(
        redis_server.url_db(0), redis_server.url_db(1), redis_server.url_db(2), tasks, stream_start="0",
        stream_block_ms=200, stream_metrics_port=port,
    )  # fmt: skip
    client = redis_server.client()
    produce_many(client, "orders", 3)
    produce_many(client, "events", 3)
    client.xadd("orders", {"order_id": b"\xff"})  # a dead letter, so reasons are exposed
    worker = Worker(env)
    workers.append(worker)
    worker.start()
    wait_for(lambda: client.xlen("orders:dead") == 1 and redis_server.client(2).llen("executed") == 6, 30, "done")

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    exposed_metrics = {s.name for f in text_string_to_metric_families(body) for s in f.samples}
    outputs = [
        cli(env, "status", "--json").stdout,
        cli(env, "dead-letters", "orders", "--json").stdout,
        cli(env, "inspect", "--json", "-t", "5").stdout,
    ]
    stats = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.workerapp", "inspect", "stats", "--json", "-t", "5"],
        cwd=ROOT, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    outputs += [stats.stdout, cli(env, "dead-letters", "orders", "--requeue", "--json", "--yes").stdout]
    exposed_fields = set().union(*(keys(json.loads(out)) for out in outputs))
    assert worker.stop() == 0

    documented = doc_metric_names()
    assert documented - exposed_metrics == set(), "docs name metrics the code does not expose"
    ours = {m for m in exposed_metrics if m.startswith("redis_stream_")}
    undocumented = ours - set(re.findall(r"\bredis_stream_[a-z_]+\b", DOCS[0].read_text()))
    assert undocumented == set(), "metrics missing from docs/operations.md"
    fields = doc_json_fields()
    assert {"lag", "lag_at_least", "lag_exact", "lag_seconds", "dead_lettered_by_reason", "base64"} <= fields
    assert fields - exposed_fields == set(), "docs quote JSON fields the code does not produce"


def test_the_keda_examples_use_only_the_scalers_documented_metadata() -> None:
    triggers = keda_triggers((ROOT / "docs" / "scaling.md").read_text())
    assert {kind for kind, _ in triggers} == {"redis-streams", "redis", "prometheus"}
    for kind, metadata in triggers:
        assert metadata and metadata <= KEDA_METADATA[kind], (kind, metadata - KEDA_METADATA[kind])
    streams = next(meta for kind, meta in triggers if kind == "redis-streams")
    assert {"stream", "consumerGroup", "lagCount", "activationLagCount"} <= streams  # lag, not pending entries
    for kind, metadata in triggers:
        if kind == "prometheus":
            assert {"serverAddress", "query", "threshold"} <= metadata
    queries = re.findall(r"query: (.*)", (ROOT / "docs" / "scaling.md").read_text())
    assert queries and all(re.search(r"redis_stream_[a-z_]+", q) for q in queries)


def test_the_documented_django_settings_run_in_a_new_django_5_project(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "getting-started.md").read_text()
    snippet = next(b for b in code_blocks(guide, "python") if b.startswith("# shop/settings.py"))
    made = subprocess.run(
        [sys.executable, "-m", "django", "startproject", "shop", str(tmp_path)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    settings = tmp_path / "shop" / "settings.py"
    assert "import os" not in settings.read_text()  # what a new project gives you: only pathlib
    settings.write_text(settings.read_text() + "\n" + snippet)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    loaded = subprocess.run(
        [sys.executable, "-c", "import shop.settings as s; print(s.CELERY_STREAM_URL, *sorted(s.CELERY_STREAM_TASKS))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["redis://localhost:6379/0", "audit", "orders", "payments", "shipments"]

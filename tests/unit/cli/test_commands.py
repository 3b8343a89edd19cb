"""`redis-stream status|reset|dead-letters` in-process (click's CliRunner) against one redis-server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from celery_redis_stream.cli.commands import redis_stream

from ...support import RedisServer, free_port, make_app, produce_many


@pytest.fixture
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"orders-{suffix}", f"audit-{suffix}"


@pytest.fixture
def app(unit_redis: RedisServer, names: tuple[str, str]) -> Celery:
    orders, audit = names
    tasks = {orders: {"task": "shop.handle", "start": "0"}, audit: {"task": "shop.handle", "mode": "tracker"}}
    return make_app("cli", stream_url=unit_redis.url_db(8), stream_tasks=tasks)


@pytest.fixture
def client(unit_redis: RedisServer) -> Iterator[redis.Redis]:
    client = unit_redis.client(8)
    yield client
    client.flushdb()


def run(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(redis_stream, list(args), obj=SimpleNamespace(app=app), catch_exceptions=False)


def test_status_json_reports_every_mapped_stream(app: Celery, client: redis.Redis, names: tuple[str, str]) -> None:
    orders, audit = names
    ids = produce_many(client, orders, 3)
    client.xgroup_create(orders, "celery", ids[0])
    result = run(app, "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_name = {s["stream"]: s for s in data["streams"]}
    assert by_name[orders]["mode"] == "group" and by_name[orders]["length"] == 3 and by_name[orders]["lag"] == 2
    assert by_name[audit]["mode"] == "tracker" and by_name[audit]["position"] is None
    assert data["ok"] is True


def test_status_max_lag_exits_1_when_over(app: Celery, client: redis.Redis, names: tuple[str, str]) -> None:
    orders, _ = names
    produce_many(client, orders, 3)
    client.xgroup_create(orders, "celery", "0")
    result = run(app, "status", "--json", "--max-lag", "1")
    assert result.exit_code == 1 and orders in json.loads(result.output)["over_max_lag"]
    assert "streams at" in run(app, "status").output  # the tables


def test_reset_moves_a_group_and_a_tracker(app: Celery, client: redis.Redis, names: tuple[str, str]) -> None:
    orders, audit = names
    ids = produce_many(client, orders, 2)
    result = run(app, "reset", orders, "--to", "$", "--yes")
    assert result.exit_code == 0 and f"created group celery at {ids[-1]}" in result.output
    assert run(app, "reset", orders, "--to", "0", "-y").output.strip().endswith(f"moved from {ids[-1]} to 0-0")
    produce_many(client, audit, 1)
    assert run(app, "reset", audit, "--to", "5-0", "-y").exit_code == 0
    assert client.get(f"stream_tracker:{{{audit}}}") == b"5-0"
    client.set(f"stream_tracker:{{{audit}}}:lease", "other@host")
    held = run(app, "reset", audit, "--to", "0", "-y")
    assert held.exit_code == 1 and "holds the lease" in held.output


def test_dead_letters_list_requeue_and_purge(app: Celery, client: redis.Redis, names: tuple[str, str]) -> None:
    orders, _ = names
    dead = f"{orders}:dead"
    for reason in ("not_utf8", "too_large"):
        client.xadd(dead, {"order_id": "42", "dlq_source_stream": orders, "dlq_source_id": "1-0",
                           "dlq_reason": reason, "dlq_error": "why"})  # fmt: skip
    listed = json.loads(run(app, "dead-letters", orders, "--json").output)
    assert [e["reason"] for e in listed["entries"]] == ["not_utf8", "too_large"] and listed["length"] == 2
    assert listed["entries"][0]["fields"] == [["order_id", "42"]]
    unasked = run(app, "dead-letters", orders, "--requeue", "--reason", "too_large")  # stdin is not a terminal
    assert unasked.exit_code == 1 and "--yes" in unasked.output and client.xlen(orders) == 0
    requeued = run(app, "dead-letters", orders, "--requeue", "--reason", "too_large", "--json", "--yes")
    assert json.loads(requeued.output)["requeued"] == 1 and client.xlen(orders) == 1
    unasked = run(app, "dead-letters", orders, "--purge")
    assert unasked.exit_code == 1 and "--yes" in unasked.output and client.xlen(dead) == 1
    purged = run(app, "dead-letters", orders, "--purge", "--yes")
    assert purged.exit_code == 0 and "purged 1 entry" in purged.output and client.xlen(dead) == 0
    missing = run(app, "dead-letters", orders, "--id", "1-1")
    assert missing.exit_code == 1 and "not found: 1-1" in missing.output


def test_usage_errors_name_the_problem(app: Celery, names: tuple[str, str]) -> None:
    orders, _ = names
    assert "is not mapped in stream_tasks" in run(app, "reset", "nope", "--to", "0").output
    assert "exclude each other" in run(app, "dead-letters", orders, "--requeue", "--purge").output
    assert "not a full entry id" in run(app, "dead-letters", orders, "--id", "12").output
    assert run(app, "reset", orders, "--to", "yesterday").exit_code == 2
    unknown = run(app, "dead-letters", orders, "--reason", "converter")
    assert unknown.exit_code == 2 and "not_utf8" in unknown.output  # the choices are listed


@pytest.mark.parametrize("tasks", [{}, None])
def test_every_command_refuses_an_app_that_maps_no_stream(tasks: dict[str, str] | None) -> None:
    app = make_app("empty", stream_url=f"redis://127.0.0.1:{free_port()}/0", stream_tasks=tasks)
    for args in (["status"], ["status", "--json"], ["reset", "orders", "--to", "0", "-y"], ["dead-letters", "orders"],
                 ["inspect"]):  # fmt: skip
        result = run(app, *args)
        assert result.exit_code == 2, (args, result.output)
        assert "no stream is mapped" in result.output and "-A" in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_reset_past_the_last_entry_is_refused_unless_forced(
    app: Celery, client: redis.Redis, names: tuple[str, str]
) -> None:
    orders, audit = names
    ids = produce_many(client, orders, 2)
    client.xgroup_create(orders, "celery", ids[0])
    refused = run(app, "reset", orders, "--to", "99999999999999-0", "-y")
    assert refused.exit_code == 2 and "after the last entry id" in refused.output and ids[-1] in refused.output
    assert client.xinfo_groups(orders)[0]["last-delivered-id"].decode() == ids[0]
    assert run(app, "reset", orders, "--to", ids[-1], "-y").exit_code == 0  # the last entry itself is fine
    assert run(app, "reset", audit, "--to", "2999-01-01T00:00:00Z", "-y").exit_code == 2  # no entry yet: 0-0
    assert client.get(f"stream_tracker:{{{audit}}}") is None
    forced = run(app, "reset", orders, "--to", "99999999999999-0", "-y", "--force")
    assert forced.exit_code == 0, forced.output
    data = json.loads(run(app, "status", "--json").output)
    row = next(s for s in data["streams"] if s["stream"] == orders)
    assert (row["ahead"], row["lag"]) == (True, 0)
    assert run(app, "status", "--max-lag", "100").exit_code == 1
    assert " ahead " in run(app, "status").output


def test_an_unreachable_redis_is_one_line_without_the_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    app = make_app("down", stream_url=url, stream_tasks={"orders": "shop.handle"})
    result = run(app, "status")
    assert result.exit_code == 1 and "redis at redis://:**@127.0.0.1" in result.output
    assert "s3cret" not in result.output and "Traceback" not in result.output


def test_status_shows_a_dead_letter_key_of_the_wrong_type_as_an_error_on_its_stream(
    app: Celery, client: redis.Redis, names: tuple[str, str]
) -> None:
    orders, audit = names
    produce_many(client, orders, 1)
    produce_many(client, audit, 1)
    client.set(f"{orders}:dead", "not a stream")
    client.set(f"{audit}:dead", "not a stream")
    result = CliRunner().invoke(redis_stream, ["status", "--max-lag", "10"], obj=SimpleNamespace(app=app))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1 and "WRONGTYPE" in result.output, result.output
    assert "Traceback" not in result.output

"""Operator commands never say OK when it isn't: the real `celery` command line against a private redis-server.

No mapped stream, a position past the stream's end, a script without a terminal, a broker or Redis that
cannot be reached or refuses the password: each is one line on stderr and a non-zero exit, and nothing
is changed; `status --json` names the server each stream lives on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from celery import __version__ as celery_version

from ..support import ROOT, RedisServer, celery, expected_server, free_port
from .conftest import AMQP_URL
from .test_cli import PasswordRedisServer, cli, dead_letter, env_for, group_info, status_json

COMMANDS = (
    ("status",),
    ("status", "--json"),
    ("status", "--max-lag", "0"),
    ("reset", "orders", "--to", "0", "--yes"),
    ("dead-letters", "orders"),
    ("dead-letters", "orders", "--purge", "--yes"),
    ("inspect",),
)
OLD_CELERY_CLI = tuple(int(x) for x in celery_version.split(".")[:2]) < (5, 4)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command wrote on stderr (nothing on stdout, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stdout + result.stderr
    return lines[0]


def test_without_dash_a_every_command_exits_2_naming_it(tmp_path: Path) -> None:
    # Celery's default app: no stream_tasks. Were it read anyway, its broker (and so the streams) would be a
    # port where nothing listens, never a Redis someone else uses.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CRS_"))}
    env |= {"PYTHONPATH": str(ROOT), "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in COMMANDS:
        result = subprocess.run(
            [sys.executable, "-m", "celery", "redis-stream", *args], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = one_line_error(result)
        assert "no stream is mapped" in line and "-A" in line, line


def test_an_app_with_an_empty_mapping_exits_2_for_every_command(server: RedisServer) -> None:
    env = env_for(server.url)
    env["CRS_CONF"] = json.dumps({"stream_tasks": {}})
    for args in COMMANDS:
        result = cli(env, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        line = one_line_error(result)
        assert "no stream is mapped in app 'workerapp'" in line and "-A" in line, line


def test_reset_past_the_last_entry_is_refused_and_status_flags_a_position_ahead(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    orders = [c.xadd("orders", {"n": str(i)}).decode() for i in range(3)]
    events = [c.xadd("events", {"n": str(i)}).decode() for i in range(3)]
    c.xgroup_create("orders", "celery", id="0")
    c.set("stream_tracker:{events}", events[0])
    future = "99999999999999-0"

    for stream in ("orders", "events"):
        refused = cli(env, "reset", stream, "--to", future, "--yes")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        line = one_line_error(refused)
        assert "after the last entry id" in line and "--force" in line, line
    assert group_info(c, "orders")["last-delivered-id"] == b"0-0"
    assert c.get("stream_tracker:{events}").decode() == events[0]
    code, s = status_json(env, "--max-lag", "3")
    assert code == 0 and (s["orders"]["ahead"], s["events"]["ahead"]) == (False, False)

    # The last entry itself, and --force, are accepted.
    assert cli(env, "reset", "orders", "--to", orders[-1], "--yes").returncode == 0
    for stream in ("orders", "events"):
        forced = cli(env, "reset", stream, "--to", future, "--yes", "--force")
        assert forced.returncode == 0, forced.stderr
    assert group_info(c, "orders")["last-delivered-id"].decode() == future
    assert c.get("stream_tracker:{events}").decode() == future

    code, s = status_json(env)
    assert code == 0 and (s["orders"]["ahead"], s["events"]["ahead"]) == (True, True)
    code, s = status_json(env, "--max-lag", "1000")
    assert code == 1 and sorted(s["_"]["over_max_lag"]) == ["events", "orders"] and s["_"]["ok"] is False
    table = cli(env, "status", "--max-lag", "1000")
    assert table.returncode == 1 and "OK" not in table.stdout
    assert table.stdout.count(" ahead ") >= 2 and "AHEAD: orders, events" in table.stdout, table.stdout

    # Back at the end: healthy again.
    assert cli(env, "reset", "orders", "--to", "$", "--yes").returncode == 0
    assert cli(env, "reset", "events", "--to", "$", "--yes").returncode == 0
    code, s = status_json(env, "--max-lag", "0")
    assert code == 0 and not s["orders"]["ahead"] and not s["events"]["ahead"]


def test_without_a_terminal_and_without_yes_nothing_is_changed(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    ids = [c.xadd("orders", {"n": str(i)}).decode() for i in range(3)]
    c.xgroup_create("orders", "celery", id=ids[1])
    c.set("stream_tracker:{events}", "0-0")
    c.xadd("events", {"n": "1"})
    for i in range(2):
        dead_letter(c, "n", str(i), source_id=f"{i}-1", reason="converter_error", error="boom")

    for args in (
        ("reset", "orders", "--to", "0"),
        ("reset", "events", "--to", "$"),
        ("dead-letters", "orders", "--purge"),
        ("dead-letters", "orders", "--requeue"),
        ("dead-letters", "orders", "--requeue", "--reason", "converter_error"),
    ):
        result = cli(env, *args)  # stdin is /dev/null, as under ssh, cron or a pipe
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "--yes" in one_line_error(result)
        assert group_info(c, "orders")["last-delivered-id"].decode() == ids[1]
        assert c.get("stream_tracker:{events}") == b"0-0"
        assert (c.xlen("orders:dead"), c.xlen("orders")) == (2, 3)

    assert cli(env, "dead-letters", "orders", "--requeue", "--limit", "1", "--yes").returncode == 0
    assert (c.xlen("orders:dead"), c.xlen("orders")) == (1, 4)
    assert cli(env, "dead-letters", "orders", "--purge", "-y").returncode == 0
    assert c.xlen("orders:dead") == 0


def test_a_broker_that_cannot_be_reached_is_one_line_and_exit_69(server: RedisServer) -> None:
    env = env_for(server.url)
    env["CRS_BROKER_URL"] = f"redis://127.0.0.1:{free_port()}/1"
    started = time.monotonic()
    result = celery(env, "redis-stream", "inspect", "-t", "1")
    took = time.monotonic() - started
    assert result.returncode == 69, result.stdout + result.stderr
    line = one_line_error(result)
    assert "cannot reach the broker" in line and env["CRS_BROKER_URL"] in line, line
    # One connection attempt, not a loop of retries; the command itself starts in about 1 s (more when loaded).
    assert took < 15, f"took {took:.1f}s"
    assert celery(env, "redis-stream", "inspect", "--json").returncode == 69

    ours = celery(env, "inspect", "redis_stream", "-t", "1")
    if OLD_CELERY_CLI:  # Celery 5.3's inspect knows only its own commands
        assert ours.returncode == 2
        return
    assert ours.returncode == 69, ours.stdout + ours.stderr
    assert "Could not connect to the message broker" in one_line_error(ours)


def test_a_streams_redis_that_cannot_be_reached_is_one_line_and_non_zero() -> None:
    port = free_port()
    env = env_for(f"redis://127.0.0.1:{port}/0")
    for args in COMMANDS[:-1]:  # inspect asks the workers through the broker, not the streams' Redis
        result = cli(env, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        line = one_line_error(result)
        assert f"redis at redis://127.0.0.1:{port}/0" in line and "onnect" in line, line


def test_a_wrong_password_is_one_line_and_no_password_is_printed() -> None:
    password = "pw-" + os.urandom(8).hex()
    wrong = "wrong-" + os.urandom(8).hex()
    server = PasswordRedisServer(password)
    try:
        server.start()
        base = f"redis://:{wrong}@127.0.0.1:{server.port}"
        env = env_for(f"{base}/0")
        env["CRS_BROKER_URL"] = f"{base}/1"
        runs = {args: cli(env, *args) for args in COMMANDS}
        runs[("celery inspect",)] = celery(env, "inspect", "redis_stream", "-t", "1")
        for args, result in runs.items():
            out = result.stdout + result.stderr
            assert password not in out and wrong not in out, (args, out)
            if args == ("celery inspect",):
                assert result.returncode == (2 if OLD_CELERY_CLI else 69), out
                continue
            assert result.returncode == (69 if args == ("inspect",) else 1), (args, out)
            line = one_line_error(result)
            assert "invalid username-password pair" in line and f"redis://:**@127.0.0.1:{server.port}/" in line, line
    finally:
        server.stop()


def test_status_names_the_server_each_stream_lives_on(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    c.xadd("orders", {"n": "1"})
    code, s = status_json(env)
    assert code == 0
    assert {s[name]["server"] for name in ("orders", "events", "missing")} == {expected_server()}
    assert expected_server() in cli(env, "status").stdout


def test_a_table_title_is_never_wrapped(server: RedisServer) -> None:
    # The title is longer than the table under it: the table is made as wide as its title.
    c, env = server.client(), env_for(server.url)
    entry = dead_letter(c, "a", "b", source_id="1-0", reason="max_deliveries", error="x")
    result = cli(env, "dead-letters", "orders", "--reason", "max_deliveries", "--id", entry)
    assert result.returncode == 0, result.stderr
    title = "orders:dead: 1 dead letter(s), showing 1 (reason max_deliveries, 1 id(s))"
    assert any(line.strip() == title for line in result.stdout.splitlines()), result.stdout


def test_unknown_dead_letter_reason_is_a_usage_error(server: RedisServer) -> None:
    result = cli(env_for(server.url), "dead-letters", "orders", "--reason", "converter")
    assert result.returncode == 2 and "'converter' is not one of" in result.stderr, result.stderr
    assert "not_utf8" in result.stderr and "task_failed" in result.stderr


@pytest.mark.rabbitmq
def test_a_rabbitmq_broker_refusing_the_login_is_one_line_and_exit_69(server: RedisServer, amqp: Any) -> None:
    # The `amqp` fixture checks that RabbitMQ answers with the right credentials; here the password is wrong.
    wrong = "wrong-" + os.urandom(8).hex()
    parsed = urlsplit(AMQP_URL)
    env = env_for(server.url)
    env["CRS_BROKER_URL"] = urlunsplit(
        parsed._replace(netloc=f"{parsed.username}:{wrong}@{parsed.hostname}:{parsed.port}")
    )
    result = celery(env, "redis-stream", "inspect", "-t", "1")
    assert result.returncode == 69, result.stdout + result.stderr
    line = one_line_error(result)
    assert "ACCESS_REFUSED" in line and wrong not in line, line


def test_bytes_that_are_not_utf8_are_shown_escaped(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    c.xadd("orders", {"n": "1"})
    c.xgroup_create("orders", "celery", id="0")
    c.xreadgroup("celery", b"w\xffx@host", {"orders": ">"})
    c.xadd("events", {"n": "1"})
    c.set("stream_tracker:{events}:lease", b"w\xfe@host", px=60_000)
    dead_letter(c, b"k\xff", b"v\xfe", source_id="1-0", reason="not_utf8", error="bad")
    status = cli(env, "status")
    listing = cli(env, "dead-letters", "orders")
    assert status.returncode == listing.returncode == 0, status.stderr + listing.stderr
    assert "w\\xffx@host" in status.stdout and "w\\xfe@host" in status.stdout, status.stdout
    assert "k\\xff=v\\xfe" in listing.stdout, listing.stdout
    assert "\ufffd" not in status.stdout + listing.stdout

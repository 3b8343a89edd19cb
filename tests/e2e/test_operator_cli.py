"""Operator commands as a person at a terminal meets them: hostile entry bytes, dead-letter selection, defaults."""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time

import redis

from ..support import ROOT, RedisServer, Worker, celery_args, celery_env, produce_many
from .test_cli import cli, dead_letter, env_for

# Each would act on a terminal if printed raw: recolour, retitle, overwrite the line, cut it, reorder it.
HOSTILE = {
    "sgr": "\x1b[31mRED\x1b[0m",
    "osc": "\x1b]0;pwned\x07",
    "cr": "ab\rXY",
    "nul": "nul\x00byte",
    "bidi": "\u202eevil",
    "c1": "csi\x9b31m",
}


def at_terminal(env: dict[str, str], *args: str) -> bytes:
    """The command with a pseudo-terminal as stdout and stderr (so rich renders for a terminal); all it wrote."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            celery_args("redis-stream", *args),
            cwd=ROOT,
            env=celery_env(env, COLUMNS="250", LINES="50", TERM="xterm"),
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 0, out.decode(errors="replace")
        return out
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def test_no_command_passes_control_characters_from_entries_to_the_terminal(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    pairs: list[str] = []
    for name, value in HOSTILE.items():
        pairs += [f"k{name}", value]
    dead_letter(c, *pairs, source_id="1-1", reason="converter", error="boom " + HOSTILE["sgr"])
    c.xadd("orders", {"n": "1"})
    c.xgroup_create("orders", "celery", id="0")
    c.xreadgroup("celery", "w\x1b[2Jwiped", {"orders": ">"})  # a consumer name that clears the screen
    c.xadd("events", {"n": "1"})
    c.set("stream_tracker:{events}", "0-0\x1b]0;tracker\x07")
    c.set("stream_tracker:{events}:lease", HOSTILE["sgr"])

    shown = {
        "dead-letters": at_terminal(env, "dead-letters", "orders"),
        "status": at_terminal(env, "status"),
        "reset": at_terminal(env, "reset", "events", "--to", "0", "--yes", "--force"),
    }
    raw = [v.encode() for v in HOSTILE.values()] + [b"\x1b[2Jwiped", b"\x1b]0;tracker"]
    for command, out in shown.items():
        for sequence in raw:
            assert sequence not in out, (command, sequence, out)
        assert b"\x00" not in out and b"\xe2\x80\xae" not in out and b"\xc2\x9b" not in out, command
    listing = shown["dead-letters"].decode()
    for escaped in (
        r"\x1b[31mRED\x1b[0m",
        r"\x1b]0;pwned\x07",
        r"ab\x0dXY",
        r"nul\x00byte",
        r"\u202eevil",
        r"csi\x9b31m",
    ):
        assert escaped in listing, (escaped, listing)
    assert r"w\x1b[2Jwiped" in shown["status"].decode()
    assert r"\x1b[31mRED" in shown["status"].decode()  # the lease holder
    assert r"0-0\x1b]0;tracker\x07" in shown["reset"].decode()

    # --json stays exact: JSON escapes by itself, and the values come back byte for byte.
    result = cli(env, "dead-letters", "orders", "--json")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    entry = json.loads(result.stdout)["entries"][0]
    assert entry["fields"] == [[f"k{name}", value] for name, value in HOSTILE.items()]
    assert entry["error"] == "boom " + HOSTILE["sgr"]


def test_dead_letters_json_reason_and_id_choose_what_is_listed_requeued_and_purged(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    conv = [
        dead_letter(c, "order_id", str(i), source_id=f"{i}-0", reason="converter_error", error="E") for i in range(3)
    ]
    utf = [
        dead_letter(c, b"n", b"\xff\xfe" + bytes([i]), source_id=f"{10 + i}-0", reason="not_utf8", error="bad")
        for i in range(2)
    ]
    maxd = dead_letter(c, "order_id", "99", source_id="99-0", reason="max_deliveries", error="read 5 times")

    listed = cli(env, "dead-letters", "orders", "--json")
    data = json.loads(listed.stdout)
    assert (data["stream"], data["dead_letter"], data["length"]) == ("orders", "orders:dead", 6)
    assert [e["id"] for e in data["entries"]] == [*conv, *utf, maxd]
    first = data["entries"][3]
    assert first["reason"] == "not_utf8" and first["source_id"] == "10-0" and first["source_stream"] == "orders"
    assert first["fields"] == [["n", {"base64": base64.b64encode(b"\xff\xfe\x00").decode()}]]  # exact, not replaced

    by_reason = json.loads(cli(env, "dead-letters", "orders", "--json", "--reason", "not_utf8").stdout)
    assert [e["id"] for e in by_reason["entries"]] == utf
    table = cli(env, "dead-letters", "orders", "--reason", "converter_error", "--limit", "2").stdout
    assert conv[0] in table and conv[1] in table and conv[2] not in table and utf[0] not in table
    by_id = json.loads(cli(env, "dead-letters", "orders", "--json", "--id", maxd, "--id", conv[1]).stdout)
    assert [e["id"] for e in by_id["entries"]] == [maxd, conv[1]]

    # Requeue only the ids given: the others stay.
    requeued = cli(env, "dead-letters", "orders", "--requeue", "--id", conv[2], "--id", conv[0], "--yes")
    assert requeued.returncode == 0, requeued.stderr
    assert "requeued 2 entries to orders" in requeued.stdout
    assert [f for _, f in c.xrange("orders")] == [{b"order_id": b"2"}, {b"order_id": b"0"}]
    assert [i.decode() for i, _ in c.xrange("orders:dead")] == [conv[1], *utf, maxd]

    # Requeue by reason: the bytes come back exactly.
    by_reason_requeue = cli(env, "dead-letters", "orders", "--requeue", "--reason", "not_utf8", "--json", "--yes")
    assert json.loads(by_reason_requeue.stdout)["requeued"] == 2
    assert [f for _, f in c.xrange("orders")][2:] == [{b"n": b"\xff\xfe\x00"}, {b"n": b"\xff\xfe\x01"}]

    purged = cli(env, "dead-letters", "orders", "--purge", "--reason", "max_deliveries", "--yes")
    assert purged.returncode == 0 and "purged 1 entry" in purged.stdout
    assert [i.decode() for i, _ in c.xrange("orders:dead")] == [conv[1]]

    # An id that is not there: the others are still done, the missing one named, exit 1.
    missing = cli(env, "dead-letters", "orders", "--requeue", "--id", conv[1], "--id", "1-1", "--yes")
    assert missing.returncode == 1
    assert "requeued 1 entry" in missing.stdout and "not found: 1-1" in missing.stderr
    assert c.xlen("orders:dead") == 0
    bad = cli(env, "dead-letters", "orders", "--id", "yesterday")
    assert bad.returncode == 2 and "not a full entry id" in bad.stderr


def test_redis_stream_inspect_waits_one_second_by_default_like_celery_inspect() -> None:
    from celery.bin.control import inspect as celery_inspect

    from celery_redis_stream.cli.commands import inspect_readers

    ours = next(p for p in inspect_readers.params if p.name == "timeout")
    celerys = next(p for p in celery_inspect.params if p.name == "timeout")
    assert ours.default == celerys.default == 1.0
    help_text = cli({}, "inspect", "--help").stdout
    assert "default: 1.0" in help_text


def test_a_bad_setting_is_one_readable_error_line_not_a_traceback(server: RedisServer) -> None:
    produce_many(server.client(), "orders", 3)
    env = env_for(server.url)
    env["CRS_CONF"] = json.dumps({"stream_tasks": {"orders": {"task": "tests.record", "batch_size": "lots"}}})
    logfile = os.path.join(server.dir, "worker.log")
    worker = Worker(env, extra=["--logfile", logfile]).start(wait=None)
    assert worker.wait(60) == 1
    seen = worker.output()  # the console: stdout and stderr
    assert "Traceback" not in seen, seen
    message = "setting stream_tasks 'batch_size' for stream 'orders': expected an integer, got 'lots'"
    lines = [line for line in seen.splitlines() if "redis-stream" in line]
    # Celery's own warnings (running as root) may come first; ours is the first line about the bridge.
    assert lines[0] == f"Error: celery-redis-stream: {message}", seen
    with open(logfile) as log:  # the log file has it too
        assert "CRITICAL/MainProcess] redis-stream: " + message in log.read()
    assert not redis.Redis(port=server.port).xinfo_groups("orders")  # nothing was read

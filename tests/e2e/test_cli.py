"""`celery -A app redis-stream status|reset|dead-letters`, run as the real command line against real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime, timezone
from typing import Any

import pytest
import redis

from ..support import ROOT, RedisServer, celery, celery_args, celery_env, free_port, worker_env

TASKS = {
    "orders": "tests.record",
    "events": {"task": "tests.record", "mode": "tracker"},
    "missing": {"task": "tests.record", "start": "0"},
}


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command line, run as a script would (stdin is not a terminal)."""
    return celery(env, "redis-stream", *args, timeout=timeout)


def cli_at_terminal(env: dict[str, str], *args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """The command line with a terminal as stdin, where an operator types ``answer``."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            celery_args("redis-stream", *args),
            cwd=ROOT,
            env=celery_env(env),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.write(master, answer.encode())
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def env_for(url: str, **conf: Any) -> dict[str, str]:
    return worker_env(url, url.rsplit("/", 1)[0] + "/1", url.rsplit("/", 1)[0] + "/2", TASKS, **conf)


def status_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = cli(env, "status", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    return result.returncode, {s["stream"]: s for s in data["streams"]} | {"_": data}


def group_info(client: redis.Redis, stream: str, group: str = "celery") -> dict[str, Any]:
    return next(g for g in client.xinfo_groups(stream) if g["name"] == group.encode())


@pytest.fixture
def state(server: RedisServer) -> dict[str, Any]:
    """orders: group at 0 with 2 of 5 entries pending on c1; events: tracker after entry 2 of 5, lease held."""
    c = server.client()
    orders = [c.xadd("orders", {"n": str(i)}).decode() for i in range(5)]
    events = [c.xadd("events", {"n": str(i)}).decode() for i in range(5)]
    c.xgroup_create("orders", "celery", id="0")
    c.xreadgroup("celery", "c1", {"orders": ">"}, count=2)
    c.set("stream_tracker:{events}", events[1])
    c.set("stream_tracker:{events}:lease", "w9@elsewhere", px=120_000)
    c.xadd("orders:dead", {"n": "x", "dlq_reason": "converter", "dlq_source_id": "1-1", "dlq_error": "boom"})
    return {"client": c, "orders": orders, "events": events, "env": env_for(server.url)}


def test_status_json_reports_length_lag_pending_consumers_lease_and_dead_letters(state: dict[str, Any]) -> None:
    code, s = status_json(state["env"])
    assert code == 0
    orders, events, missing = s["orders"], s["events"], s["missing"]
    assert (orders["mode"], orders["length"], orders["last_id"]) == ("group", 5, state["orders"][-1])
    assert (orders["group_exists"], orders["lag"], orders["pending"]) == (True, 3, 2)
    assert orders["last_delivered_id"] == state["orders"][1]
    assert [(c["name"], c["pending"]) for c in orders["consumers"]] == [("c1", 2)]
    assert orders["consumers"][0]["idle_ms"] >= 0
    assert (orders["dead_letter"], orders["dead_letter_length"]) == ("orders:dead", 1)
    assert (events["mode"], events["length"], events["position"]) == ("tracker", 5, state["events"][1])
    assert (events["lag"], events["lag_exact"], events["lease_holder"]) == (3, True, "w9@elsewhere")
    assert events["tracker_key"] == "stream_tracker:{events}"
    # A stream that does not exist yet is shown, not a crash; its group starts at "0", so lag 0 of 0.
    assert (missing["exists"], missing["group_exists"], missing["length"], missing["lag"]) == (False, False, 0, 0)
    assert s["_"]["url"] == state["env"]["CRS_STREAM_URL"]


def test_status_table_shows_each_stream_its_consumers_and_lease(state: dict[str, Any]) -> None:
    result = cli(state["env"], "status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    cell = r"\s*[│|]\s*"
    # stream, mode, length, lag, time lag, pending, dead letters
    assert re.search(rf"orders{cell}group{cell}5{cell}3{cell}\d+\.\ds{cell}2{cell}1{cell}", out), out
    assert re.search(rf"events{cell}tracker{cell}5{cell}3{cell}\d+\.\ds{cell}{cell}0{cell}w9@elsewhere", out), out
    assert re.search(rf"orders{cell}celery{cell}c1{cell}2{cell}\d+\.\ds", out), out
    assert "missing (missing)" in out
    assert state["events"][1] in out and "stream_tracker:{events}" in out


def test_status_max_lag_exits_1_only_when_a_lag_exceeds_it(state: dict[str, Any]) -> None:
    ok = cli(state["env"], "status", "--max-lag", "3")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    code, s = status_json(state["env"], "--max-lag", "2")
    assert code == 1
    assert (s["_"]["ok"], sorted(s["_"]["over_max_lag"])) == (False, ["events", "orders"])
    # Catching up brings it back to healthy.
    state["client"].xreadgroup("celery", "c1", {"orders": ">"}, count=10)
    state["client"].set("stream_tracker:{events}", state["events"][-1])
    assert cli(state["env"], "status", "--max-lag", "0").returncode == 0


def test_reset_group_asks_then_moves_it_and_lag_is_recomputed(state: dict[str, Any]) -> None:
    c, env = state["client"], state["env"]
    refused = cli_at_terminal(env, "reset", "orders", "--to", "0", answer="n\n")
    assert refused.returncode == 1 and "Aborted" in refused.stderr
    assert "Move group 'celery' of stream 'orders'" in refused.stdout
    assert group_info(c, "orders")["last-delivered-id"].decode() == state["orders"][1]
    # A script has nobody to ask: without --yes it changes nothing and exits 1.
    scripted = cli(env, "reset", "orders", "--to", "0")
    assert scripted.returncode == 1 and "--yes" in scripted.stderr, scripted.stderr
    assert group_info(c, "orders")["last-delivered-id"].decode() == state["orders"][1]
    scripted = cli(env, "reset", "orders", "--to", "0", "--yes")
    assert scripted.returncode == 0, scripted.stderr
    assert group_info(c, "orders")["last-delivered-id"].decode() == "0-0"
    accepted = cli_at_terminal(env, "reset", "orders", "--to", state["orders"][1], answer="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert group_info(c, "orders")["last-delivered-id"].decode() == state["orders"][1]

    moved = cli(env, "reset", "orders", "--to", state["orders"][0], "--yes")
    assert moved.returncode == 0, moved.stderr
    assert group_info(c, "orders")["last-delivered-id"].decode() == state["orders"][0]
    _, s = status_json(env)
    assert (s["orders"]["lag"], s["orders"]["lag_exact"], s["orders"]["pending"]) == (4, True, 2)
    # After a deletion Redis reports the lag as nil (6.2 has none at all): status counts it instead.
    c.xdel("orders", state["orders"][3])
    assert group_info(c, "orders")["lag"] is None
    _, s = status_json(env)
    assert (s["orders"]["lag"], s["orders"]["lag_exact"], s["orders"]["length"]) == (3, True, 4)

    to_end = cli(env, "reset", "orders", "--to", "$", "-y")
    assert to_end.returncode == 0 and f"to {state['orders'][-1]}" in to_end.stdout
    assert group_info(c, "orders")["last-delivered-id"].decode() == state["orders"][-1]


def test_reset_to_an_iso_time_uses_its_millisecond(state: dict[str, Any]) -> None:
    c, env = state["client"], state["env"]
    assert cli(env, "reset", "orders", "--to", "2026-01-31T12:00:00.250+01:00", "--yes").returncode == 0
    ms = int(datetime(2026, 1, 31, 11, 0, 0, 250000, tzinfo=timezone.utc).timestamp() * 1000)
    assert group_info(c, "orders")["last-delivered-id"].decode() == f"{ms}-0"
    # Without an offset the time is UTC.
    assert cli(env, "reset", "orders", "--to", "2026-01-31T11:00:00", "--yes").returncode == 0
    assert group_info(c, "orders")["last-delivered-id"].decode() == f"{ms - 250}-0"


def test_reset_creates_a_missing_group_at_the_target(state: dict[str, Any]) -> None:
    c = state["client"]
    result = cli(state["env"], "reset", "missing", "--to", "0", "--yes")
    assert result.returncode == 0, result.stderr
    assert group_info(c, "missing")["last-delivered-id"] == b"0-0"


def test_reset_tracker_refuses_while_the_lease_is_held_unless_forced(state: dict[str, Any]) -> None:
    c, env = state["client"], state["env"]
    refused = cli(env, "reset", "events", "--to", "0", "--yes")
    assert refused.returncode == 1
    assert "w9@elsewhere" in refused.stderr and "--force" in refused.stderr
    assert c.get("stream_tracker:{events}").decode() == state["events"][1]

    forced = cli(env, "reset", "events", "--to", "0", "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert c.get("stream_tracker:{events}") == b"0-0"

    c.delete("stream_tracker:{events}:lease")
    asked = cli_at_terminal(env, "reset", "events", "--to", "$", answer="n\n")
    assert asked.returncode == 1 and c.get("stream_tracker:{events}") == b"0-0"
    assert cli(env, "reset", "events", "--to", "$", "--yes").returncode == 0
    assert c.get("stream_tracker:{events}").decode() == state["events"][-1]
    _, s = status_json(env)
    assert (s["events"]["lag"], s["events"]["lease_holder"]) == (0, None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reset", "nope", "--to", "0", "--yes"], "not mapped"),
        (["reset", "orders", "--to", "yesterday", "--yes"], "--to"),
        (["reset", "orders", "--to", "12-ab", "--yes"], "--to"),
        (["dead-letters", "nope"], "not mapped"),
        (["dead-letters", "orders", "--requeue", "--purge"], "exclude"),
    ],
)
def test_unmapped_stream_or_bad_value_is_a_usage_error(state: dict[str, Any], args: list[str], message: str) -> None:
    before = group_info(state["client"], "orders")["last-delivered-id"]
    result = cli(state["env"], *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert group_info(state["client"], "orders")["last-delivered-id"] == before


def dead_letter(c: redis.Redis, *pairs: bytes | str, source_id: str, reason: str, error: str) -> str:
    meta = ["dlq_source_stream", "orders", "dlq_source_id", source_id, "dlq_reason", reason, "dlq_error", error]
    return c.execute_command("XADD", "orders:dead", "*", *pairs, *meta).decode()


def test_dead_letters_lists_requeues_original_bytes_and_purges(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    src = ["1700000000005-0", "1700000000006-0", "1700000000007-0"]
    dead_letter(c, b"n", b"\xff\xfe-not-utf8", b"[bold]k", b"v", source_id=src[0], reason="decode", error="bad utf-8")
    dead_letter(c, "order_id", "7", source_id=src[1], reason="converter", error="ValueError: bad entry")
    dead_letter(c, "order_id", "8", source_id=src[2], reason="too-large", error="entry has 2000000 bytes")

    listed = cli(env, "dead-letters", "orders")
    assert listed.returncode == 0, listed.stderr
    for text in (*src, "3 dead letter(s)", "decode", "bad utf-8", "converter", "ValueError: bad entry",
                 "too-large", "n=\\xff\\xfe-not-utf8", "[bold]k=v", "order_id=7"):  # fmt: skip
        assert text in listed.stdout, (text, listed.stdout)
    limited = cli(env, "dead-letters", "orders", "--limit", "1").stdout
    assert "showing 1" in limited and "bad utf-8" in limited and "converter" not in limited

    requeued = cli(env, "dead-letters", "orders", "--requeue", "--limit", "2", "--yes")
    assert requeued.returncode == 0, requeued.stderr
    assert "requeued 2 entries to orders" in requeued.stdout
    back = c.xrange("orders")
    # The entry's own fields come back byte for byte, without the dlq_* fields, oldest first.
    assert [fields for _, fields in back] == [{b"n": b"\xff\xfe-not-utf8", b"[bold]k": b"v"}, {b"order_id": b"7"}]
    left = c.xrange("orders:dead")
    assert [f[b"dlq_source_id"] for _, f in left] == [src[2].encode()]

    refused = cli_at_terminal(env, "dead-letters", "orders", "--purge", answer="n\n")
    assert refused.returncode == 1 and c.xlen("orders:dead") == 1
    purged = cli(env, "dead-letters", "orders", "--purge", "--yes")
    assert purged.returncode == 0 and "purged 1 entry" in purged.stdout
    assert c.xlen("orders:dead") == 0 and c.xlen("orders") == 2


def test_dead_letters_requeue_of_a_large_set_runs_in_batches_with_progress(server: RedisServer) -> None:
    c, env = server.client(), env_for(server.url)
    pipe = c.pipeline(transaction=False)
    for i in range(1234):
        pipe.xadd("orders:dead", {"n": str(i), "dlq_reason": "converter", "dlq_source_id": f"{i}-0", "dlq_error": "x"})
    pipe.execute()
    result = cli(env, "dead-letters", "orders", "--requeue", "--yes")
    assert result.returncode == 0, result.stderr
    assert "requeued 1234 entries" in result.stdout
    assert "1234/1234" in result.stderr  # the rich progress bar, on stderr
    assert c.xlen("orders:dead") == 0
    assert [f[b"n"] for _, f in c.xrange("orders")] == [str(i).encode() for i in range(1234)]


class PasswordRedisServer(RedisServer):
    """RedisServer whose readiness probe authenticates (redis-py reports NOAUTH as a connection error)."""

    def __init__(self, password: str) -> None:
        super().__init__("--requirepass", password)
        self.password = password

    def _ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            return bool(redis.Redis(port=self.port, password=self.password, socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False


def test_no_password_appears_in_any_output() -> None:
    password = "pw-" + os.urandom(8).hex()
    server = PasswordRedisServer(password)
    try:
        server.start()
        c = server.client(password=password)
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        env = env_for(url)
        c.xadd("orders", {"n": "1"})
        c.xgroup_create("orders", "celery", id="0")
        c.set("stream_tracker:{events}:lease", "w9@elsewhere", px=120_000)
        c.xadd("orders:dead", {"n": "2", "dlq_reason": "converter", "dlq_source_id": "1-0", "dlq_error": url})
        runs = [
            cli(env, "status"),
            cli(env, "status", "--json", "--max-lag", "0"),
            cli(env, "reset", "orders", "--to", "0", "--yes"),
            cli(env, "reset", "events", "--to", "0", "--yes"),
            cli(env, "reset", "nope", "--to", "0"),
            cli(env, "dead-letters", "orders"),
            cli(env, "dead-letters", "orders", "--requeue", "--yes"),
            cli(env_for(f"redis://:{password}x@127.0.0.1:{server.port}/0"), "status"),  # wrong password
            cli(env_for(f"redis://:{password}@127.0.0.1:{free_port()}/0"), "status"),  # nothing listening
        ]
        codes = [r.returncode for r in runs]
        assert codes == [0, 1, 0, 1, 2, 0, 0, 1, 1], [(r.returncode, r.stdout, r.stderr) for r in runs]
        for r in runs:
            assert password not in r.stdout + r.stderr, r.stdout + r.stderr
            assert "Traceback" not in r.stderr
        # The URL is shown, sanitized, and the dead letter's error text with it.
        assert f"redis://:**@127.0.0.1:{server.port}/0" in runs[0].stdout + runs[1].stdout
        assert f"127.0.0.1:{server.port}" in runs[7].stderr
    finally:
        server.stop()


def test_lag_count_reads_a_bounded_number_of_entries_and_says_when_it_stopped(server: RedisServer) -> None:
    from celery_redis_stream.client.connection import connect
    from celery_redis_stream.config import load_config
    from celery_redis_stream.position.lag import count_after
    from celery_redis_stream.status import _stream_info

    class App:
        conf = {"stream_url": server.url, "stream_tasks": {"s": "t"}}

    c = connect(load_config(App(), check_registered=False))
    ids = [c.xadd("s", {"n": str(i)}).decode() for i in range(20)]
    c.xdel("s", ids[0])
    info = _stream_info(c, "s")
    assert count_after(c, "s", ids[2], info, limit=100) == (17, True)
    assert count_after(c, "s", ids[2], info, limit=17) == (17, True)
    assert count_after(c, "s", ids[2], info, limit=5) == (5, False)
    assert count_after(c, "s", ids[0], info, limit=5) == (19, True)  # before the first entry: the length
    assert count_after(c, "s", ids[-1], info, limit=5) == (0, True)

"""Security: no password shown anywhere, TLS that fails closed, least-privilege ACL users.

Real redis-server processes (with --requirepass, TLS, ACL users) and real
`celery worker` subprocesses.
"""

from __future__ import annotations

import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_redis_stream.config import load_config
from celery_redis_stream.service import Service

from ..certs import TLSRedisServer, make_certs
from ..support import ROOT, Ready, RedisServer, Worker, celery, executed, free_port, produce_many, wait_for, worker_env

PASSWORD = "Pw-7f3kq9-secret"  # the default user's (--requirepass)
USER_PASSWORD = "Us3r-pw-x8d2"  # the ACL user "bridge"
WRONG_PASSWORD = "Wr0ng-pw-z4c1"
SECRETS = (PASSWORD, USER_PASSWORD, WRONG_PASSWORD)


def celery_cli(env: dict[str, str], *args: str) -> str:
    """Run `celery -A tests.workerapp ...` and return everything it printed."""
    result = celery(env, *args)
    return result.stdout + result.stderr


def bridge_lines(worker: Worker) -> list[str]:
    return [line for line in worker.output().splitlines() if "redis-stream:" in line]


@pytest.mark.parametrize("streams_as", ["password", "acl-user"])
def test_passwords_never_appear_in_logs_inspect_output_or_repr(streams_as: str) -> None:
    server = RedisServer("--requirepass", PASSWORD).start()
    workers: list[Worker] = []
    try:
        admin = server.client(password=PASSWORD)
        admin.execute_command("ACL", "SETUSER", "bridge", "on", f">{USER_PASSWORD}", "~*", "&*", "+@all")
        with_password = f"redis://:{PASSWORD}@127.0.0.1:{server.port}"
        with_user = f"redis://bridge:{USER_PASSWORD}@127.0.0.1:{server.port}"
        streams_base, broker_base = (
            (with_password, with_user) if streams_as == "password" else (with_user, with_password)
        )
        conf: dict[str, Any] = {"stream_start": "0", "stream_block_ms": 200}
        env = worker_env(
            f"{streams_base}/0", f"{broker_base}/1", f"{broker_base}/2", {"events": "tests.record"}, **conf
        )
        good = Worker(env, "pw-good").start()
        workers.append(good)
        ids = produce_many(admin, "events", 3)
        wait_for(lambda: len(executed(server.client(2, password=PASSWORD))) == 3, 60, "the entries to run")

        # Failures: the broker refuses connections; the streams password is wrong.
        dead_port = free_port()
        no_broker = Worker(
            worker_env(f"{streams_base}/0", f"{broker_base.rsplit(':', 1)[0]}:{dead_port}/1", f"{broker_base}/2",
                       {"other": "tests.record"}, **conf),
            "pw-no-broker",
        ).start(wait=None)  # fmt: skip
        wrong_url = streams_base.replace(PASSWORD, WRONG_PASSWORD).replace(USER_PASSWORD, WRONG_PASSWORD)
        wrong = Worker(
            worker_env(f"{wrong_url}/0", f"{broker_base}/1", f"{broker_base}/2", {"events": "tests.record"}, **conf),
            "pw-wrong",
        ).start(wait=None)  # fmt: skip
        workers += [no_broker, wrong]
        no_broker.wait_ready(Ready.READERS, 30)  # its group exists: the entry below is read
        produce_many(admin, "other", 1)
        no_broker.wait_log("broker unavailable", 30)
        no_broker.wait_log("Cannot connect to", 30)  # Celery's own consumer, same broker URL
        wrong.wait_log("not retried", 30)

        # Naming the destinations lets inspect return as soon as both answered.
        to = ["-d", f"{good.name}@{socket.gethostname()},{wrong.name}@{socket.gethostname()}", "--timeout", "20"]
        outputs = {
            "inspect redis_stream": celery_cli(good.env, "redis-stream", "inspect", "--json", *to),
            "inspect redis_stream table": celery_cli(good.env, "redis-stream", "inspect", *to),
            "inspect stats": celery_cli(good.env, "inspect", "stats", *to),
            "redis-stream status": celery_cli(good.env, "redis-stream", "status"),
            "redis-stream status --json": celery_cli(good.env, "redis-stream", "status", "--json"),
            "redis-stream status, wrong password": celery_cli(wrong.env, "redis-stream", "status"),
        }
        # Both reachable workers answered, with something worth checking.
        assert ids[-1] in outputs["inspect redis_stream"]
        assert "invalid username-password pair" in outputs["inspect redis_stream"]
        assert "127.0.0.1" in outputs["inspect stats"] and "redis_stream" in outputs["inspect stats"]
        assert "events" in outputs["redis-stream status --json"]
        assert "invalid username-password pair" in outputs["redis-stream status, wrong password"]

        app = Celery("pw", broker=f"{broker_base}/1", set_as_current=False)
        app.conf.update(stream_url=f"{streams_base}/0", stream_tasks={"events": {"task": "x", "registered": False}})
        config = load_config(app)
        outputs["repr(config)"] = f"{config!r} {config!s} {config.safe_url}"
        outputs["Service.info()"] = repr(Service(app, config, consumer="c").info())
        assert ":**@127.0.0.1" in outputs["repr(config)"]
        for worker in workers:
            outputs[f"log {worker.name}"] = worker.output()

        for where, text in outputs.items():
            for secret in SECRETS:
                assert secret not in text, f"a password appears in {where}"
        assert all(w.proc is not None and w.proc.poll() is None for w in workers)
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


def test_tls_dispatches_and_a_wrong_ca_fails_closed_without_a_hot_loop(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    tls = TLSRedisServer(certs).start()
    plain = RedisServer().start()
    workers: list[Worker] = []
    try:
        streams, ledger = tls.client(), plain.client(2)
        conf: dict[str, Any] = {"stream_start": "0", "stream_block_ms": 200}
        good = Worker(worker_env(tls.url, plain.url_db(1), plain.url_db(2), {"events": "tests.record"}, **conf), "tls")
        workers.append(good.start())
        ids = produce_many(streams, "events", 20)
        wait_for(lambda: len(executed(ledger)) == 20, 60, "the entries read over TLS to run")
        assert sorted(r["stream_id"] for r in executed(ledger)) == sorted(ids)
        good.stop()

        wrong_url = tls.url.replace(str(certs.ca), str(certs.other_ca))
        wrong = Worker(worker_env(wrong_url, plain.url_db(1), plain.url_db(2), {"events": "tests.record"}, **conf),
                       "tls-wrong-ca", extra=["--loglevel", "DEBUG"])  # fmt: skip
        workers.append(wrong.start())
        produce_many(streams, "events", 5, start=20)
        wrong.wait_log("certificate verify failed", 30)
        before = wrong.output().count("retrying in")
        time.sleep(5)
        attempts = wrong.output().count("retrying in") - before  # one DEBUG line per failed attempt
        assert 1 <= attempts <= 15, attempts  # still trying, with a capped backoff: not a hot loop

        assert wrong.proc is not None and wrong.proc.poll() is None  # the worker stays up
        errors = [line for line in bridge_lines(wrong) if "certificate verify failed" in line]
        assert "WARNING" in errors[0], errors  # the first failure is logged where operators look ...
        assert all("DEBUG" in line for line in errors[1:]), errors  # ... the retries are not
        # Fails closed: nothing was read or dispatched through the untrusted connection.
        assert len(executed(ledger)) == 20
        assert plain.client(1).llen("celery") == 0
        group = streams.xinfo_groups("events")[0]
        assert group["lag"] == 5 and group["pending"] == 0
    finally:
        for worker in workers:
            worker.stop()
        tls.stop()
        plain.stop()


def documented_acl(user: str) -> list[str]:
    """The `ACL SETUSER <user> ...` line of docs/security.md, as arguments."""
    text = (ROOT / "docs" / "security.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith(f"ACL SETUSER {user} ")]
    assert len(lines) == 1, f"docs/security.md must hold one ACL line for {user}"
    return shlex.split(lines[0])


def acl_denials(admin: redis.Redis, user: str) -> list[dict[str, Any]]:
    # redis-py ignores a refused CLIENT SETINFO (Redis 7.2+), and so does the documented ACL
    return [e for e in admin.acl_log() if e.get("username") == user and e.get("object") != "client|setinfo"]


@pytest.mark.parametrize(("mode", "removed"), [("group", "+xack"), ("tracker", "+evalsha")])
def test_documented_least_privilege_acl_is_enough_and_a_missing_permission_stops_cleanly(
    redis_server: RedisServer, mode: str, removed: str
) -> None:
    admin = redis_server.client()
    user = f"stream-{mode}"
    acl = documented_acl(user)
    admin.execute_command(*acl)
    conf: dict[str, Any] = {"stream_mode": mode, "stream_block_ms": 200, "stream_claim_idle_ms": 300}

    def env_for(name: str) -> dict[str, str]:
        url = f"redis://{name}:CHANGE-ME@127.0.0.1:{redis_server.port}/0"
        return worker_env(url, redis_server.url_db(1), redis_server.url_db(2), {"orders": "tests.record"}, **conf)

    if mode == "group":
        # An entry left pending by a consumer that died: the worker must claim it (XAUTOCLAIM, XPENDING).
        admin.xgroup_create("orders", "celery", id="0", mkstream=True)
        stranded = produce_many(admin, "orders", 1)
        admin.xreadgroup("celery", "ghost", {"orders": ">"})
    else:
        stranded = []
    worker = Worker(env_for(user), f"acl-{mode}").start()
    try:
        if mode == "tracker":
            # stream_start "$" is pinned with XINFO STREAM and SET NX before anything is read
            wait_for(lambda: admin.exists("stream_tracker:{orders}"), 30, "the tracker key")
        ids = produce_many(admin, "orders", 5)
        bad = admin.execute_command("XADD", "orders", "*", "name", b"\xff").decode()
        ids += produce_many(admin, "orders", 1, start=5)
        ledger = redis_server.client(2)
        wait_for(lambda: len(executed(ledger)) == len(stranded) + 6, 60, "the entries to run")
        wait_for(lambda: admin.xlen("orders:dead") == 1, 30, "the dead letter")
        assert sorted(r["stream_id"] for r in executed(ledger)) == sorted(stranded + ids)
        assert admin.xrange("orders:dead")[0][1][b"dlq_source_id"] == bad.encode()
        if mode == "group":
            wait_for(lambda: admin.xinfo_groups("orders")[0]["pending"] == 0, 30, "every entry acknowledged")
        else:
            wait_for(lambda: admin.get("stream_tracker:{orders}") == ids[-1].encode(), 30, "the tracker to move")
        assert acl_denials(admin, user) == []  # the documented ACL is enough: not one denial
        assert "not retried" not in worker.output()
        worker.stop()

        # The same ACL minus one permission: one clear ERROR, no retry, the worker stays up.
        broken = f"{user}-broken"
        assert removed in acl
        admin.execute_command(*[broken if a == user else a for a in acl if a != removed])
        worker = Worker(env_for(broken), f"acl-{mode}-broken").start()
        late = produce_many(admin, "orders", 1, start=6)
        worker.wait_log("not retried", 30)
        time.sleep(3)
        assert worker.proc is not None and worker.proc.poll() is None
        errors = [line for line in bridge_lines(worker) if "stopped reading" in line]
        assert len(errors) == 1, errors
        assert "ERROR" in errors[0] and "NoPermissionError" in errors[0]
        assert re.search(rf"'{removed[1:]}' command", errors[0]), errors[0]
        denials = acl_denials(admin, broken)
        assert len(denials) == 1 and int(denials[0]["count"]) == 1, denials  # tried once, not in a loop
        if mode == "group":
            # dispatched, but the acknowledgement was refused: it stays pending for after the fix
            wait_for(lambda: len(executed(ledger)) == len(stranded) + 7, 60, "the late entry to run")
            assert admin.xinfo_groups("orders")[0]["pending"] == 1
        else:
            # the lease script is refused before anything is read
            time.sleep(1)
            assert len(executed(ledger)) == 6 and admin.get("stream_tracker:{orders}") == ids[-1].encode()
        assert late
    finally:
        worker.stop()


def test_the_documented_traffic_control_acl_is_enough_and_without_its_selector_the_reader_stops(
    redis_server: RedisServer,
) -> None:
    admin = redis_server.client()
    acl = documented_acl("stream-traffic")
    admin.execute_command(*acl)
    tasks = {"orders": {"task": "tests.record", "rate_limit": "200/s", "dedupe": {"key": "{order_id}"}}}

    def env_for(name: str) -> dict[str, str]:
        url = f"redis://{name}:CHANGE-ME@127.0.0.1:{redis_server.port}/0"
        return worker_env(url, redis_server.url_db(1), redis_server.url_db(2), tasks, stream_start="0")

    ids = [admin.xadd("orders", {"order_id": str(n % 5)}).decode() for n in range(10)]  # 5 business keys, twice
    ledger = redis_server.client(2)
    worker = Worker(env_for("stream-traffic"), "acl-traffic").start()
    try:
        wait_for(lambda: admin.xinfo_groups("orders") and admin.xinfo_groups("orders")[0]["pending"] == 0
                 and admin.xinfo_groups("orders")[0]["last-delivered-id"].decode() == ids[-1],
                 30, "every entry read and acknowledged")  # fmt: skip
        assert sorted(r["stream_id"] for r in executed(ledger)) == ids[:5]  # the first of each key, once
        assert admin.exists("stream_rate:{orders}") and admin.keys("stream_dedupe:{orders}:*")
        assert acl_denials(admin, "stream-traffic") == []
        assert "not retried" not in worker.output()
    finally:
        worker.stop()

    # Without the selector: the reader stops with one clear ERROR, and the worker stays up.
    broken = [("stream-traffic-broken" if a == "stream-traffic" else a) for a in acl if "stream_rate:" not in a]
    assert len(broken) == len(acl) - 1
    admin.execute_command(*broken)
    worker = Worker(env_for("stream-traffic-broken"), "acl-traffic-broken").start()
    try:
        admin.xadd("orders", {"order_id": "late"})
        worker.wait_log("not retried", 30)
        assert worker.proc is not None and worker.proc.poll() is None
        errors = [line for line in bridge_lines(worker) if "stopped reading" in line]
        assert len(errors) == 1 and "ERROR" in errors[0] and "NoPermissionError" in errors[0], errors
    finally:
        worker.stop()


def test_inspect_conf_masks_the_stream_url_password() -> None:
    # `celery inspect conf` and `celery report` print app.conf.table(), filtered by celery.app.utils
    from celery.app.utils import filter_hidden_settings

    import celery_redis_stream

    app = Celery("conf", broker=f"redis://:{PASSWORD}@127.0.0.1:1/1", set_as_current=False)
    app.conf.update(stream_url=f"redis://:{PASSWORD}@127.0.0.1:1/0")
    celery_redis_stream.install(app)
    table = repr(filter_hidden_settings(app.conf.table(with_defaults=True)))
    assert "stream_url" in table
    assert PASSWORD not in table

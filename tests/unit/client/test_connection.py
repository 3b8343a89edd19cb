"""client/connection.py, the Redis seam: error classification, reply decoding, raw stream replies."""

from __future__ import annotations

import os

import pytest
from redis.exceptions import AuthenticationError, ConnectionError, NoPermissionError, ResponseError, TimeoutError

from celery_redis_stream.client.connection import (
    classify,
    describe,
    is_busy_group,
    is_missing_key,
    items,
    mapping,
    number,
    optional_text,
    server_name,
    servers,
    text,
)

from ...support import expected_server
from ..conftest import UnitDB
from ..streams import raw_client


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (NoPermissionError("no permissions"), "fatal"),
        (AuthenticationError("invalid password"), "fatal"),
        (ResponseError("NOPERM this user has no permissions"), "fatal"),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "fatal"),
        (ResponseError("WRONGPASS invalid username-password pair"), "fatal"),
        (ResponseError("BUSYGROUP Consumer Group name already exists"), "busy group"),
        (ResponseError("ERR no such key"), "no such key"),
        (ResponseError("LOADING Redis is loading the dataset in memory"), "retry"),
        (ConnectionError("Connection refused"), "retry"),
        (TimeoutError("Timeout reading from socket"), "retry"),
        (RuntimeError("anything else"), "retry"),
    ],
)
def test_errors_are_sorted_by_one_table(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_busy_group_and_missing_key_are_answers() -> None:
    assert is_busy_group(ResponseError("BUSYGROUP Consumer Group name already exists"))
    assert is_missing_key(ResponseError("ERR no such key"))
    assert not is_missing_key(ConnectionError("no such key"))


def test_describe_redacts_passwords_and_bounds_the_text() -> None:
    described = describe(ConnectionError("redis://u:secret@host:6379 refused " + "x" * 1000))
    assert "secret" not in described and described.startswith("ConnectionError: ")
    assert len(described) == 500


def test_reply_helpers_decode_and_narrow() -> None:
    assert text(b"caf\xc3\xa9") == "café" and text(b"\xff") == "\ufffd" and text(5) == "5"
    assert optional_text(None) is None and optional_text(b"x") == "x"
    assert items(None) == [] and items((1, 2)) == [1, 2]
    assert mapping({b"a": 1}) == {"a": 1} and mapping(None) == {}
    assert number(b"12") == 12 and number(None, 3) == 3
    with pytest.raises(TypeError):
        number(object())


def test_stream_replies_stay_raw_so_duplicate_fields_survive(unit_db: UnitDB) -> None:
    unit_db.client.execute_command("XADD", "s", "1-0", "a", "1", "a", "2")
    client = raw_client(unit_db.url)
    try:
        reply = items(client.execute_command("XRANGE", "s", "-", "+"))
        assert items(items(reply[0])[1]) == [b"a", b"1", b"a", b"2"]
    finally:
        client.close()


def test_run_scripts_pipelines_many_calls_loads_a_missing_script_and_returns_refusals_in_place(unit_db: UnitDB) -> None:
    from celery_redis_stream.client.connection import PIPELINE_CHUNK, run_scripts

    client = unit_db.client
    source = (
        "if redis.call('TYPE', KEYS[1])['ok'] == 'string' then return redis.call('INCRBY', KEYS[1], ARGV[1]) end "
        "return redis.error_reply('NOTSTRING ' .. KEYS[1])"
    )
    client.script_flush()
    n = PIPELINE_CHUNK + 3  # two pipelines
    for i in range(n):
        client.set(f"k{i}", i)
    client.hset("h", "f", "v")
    calls = [([f"k{i}"], [1]) for i in range(n)] + [(["h"], [1])]
    replies = run_scripts(client, source, calls)  # NOSCRIPT on the first pipeline: loaded, sent again
    assert replies[:n] == [i + 1 for i in range(n)]
    assert isinstance(replies[-1], ResponseError) and "NOTSTRING h" in str(replies[-1])
    assert run_scripts(client, source, calls[:2]) == [2, 3]


@pytest.mark.parametrize(
    ("info", "name"),
    [
        ({"redis_version": "7.0.15", "redis_mode": "standalone"}, "redis 7.0.15"),
        ({"redis_version": "8.6.3"}, "redis 8.6.3"),
        # Valkey answers redis_version:7.2.4 for compatibility; its own fields name it.
        ({"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "9.1.2"}, "valkey 9.1.2"),
        ({"redis_version": "7.2.4", "valkey_version": "7.2.5"}, "valkey 7.2.5"),
        ({"redis_version": "7.2.4", "server_name": b"valkey", "valkey_version": b"8.1.0"}, "valkey 8.1.0"),
    ],
)
def test_server_name_reads_the_servers_own_fields_not_its_version_string(info: dict[str, object], name: str) -> None:
    assert server_name(info) == name


def test_servers_names_the_server_each_stream_lives_on(unit_db: UnitDB) -> None:
    assert servers(raw_client(unit_db.url), ["a", "b"]) == {"a": expected_server(), "b": expected_server()}


def test_servers_leaves_the_server_unnamed_where_info_is_denied(unit_db: UnitDB) -> None:
    import redis

    user = "no-info-" + os.urandom(4).hex()
    unit_db.client.acl_setuser(user, enabled=True, passwords=["+pw"], commands=["+@all", "-info"], keys=["*"])
    try:
        client = redis.Redis(port=unit_db.server.port, username=user, password="pw")
        assert servers(client, ["a"]) == {"a": None}
    finally:
        unit_db.client.acl_deluser(user)

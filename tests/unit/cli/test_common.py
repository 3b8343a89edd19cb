"""cli/common.py: what the commands share: clean errors without passwords, escaped output, the mapped stream."""

from __future__ import annotations

from types import SimpleNamespace

import click
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from celery_redis_stream.cli.common import cell, client_for, config_of, echo, mapped, redis_errors, rows, seconds
from celery_redis_stream.config import load_config

from ...support import make_app
from ..conftest import UnitDB


def _context(**conf: object) -> click.Context:
    return click.Context(click.Command("test"), obj=SimpleNamespace(app=make_app("cli", **conf)))


def test_a_bad_setting_is_one_clean_error_and_an_unmapped_stream_names_the_mapped_ones() -> None:
    with pytest.raises(click.ClickException, match="stream_block_ms") as bad:
        config_of(_context(stream_url="redis://h/0", stream_tasks={"orders": "t"}, stream_block_ms="soon"))
    assert not isinstance(bad.value, click.UsageError)
    config = config_of(_context(stream_url="redis://h/0", stream_tasks={"orders": "t", "audit": "t"}))
    assert mapped(config, "audit").stream == "audit"
    with pytest.raises(click.UsageError, match=r"'payments' is not mapped in stream_tasks \(mapped: orders, audit\)"):
        mapped(config, "payments")


def test_redis_errors_become_one_line_naming_the_url_without_any_password() -> None:
    config = load_config(make_app(stream_url="redis://:s3cret@db:6379/0", stream_tasks={"orders": "shop.handle"}))
    with pytest.raises(click.ClickException) as caught, redis_errors(config):
        raise RedisConnectionError("Error 111 connecting to redis://:s3cret@db:6379/0.\x1b[2J Connection refused.")
    message = caught.value.format_message()
    assert message.startswith("redis at redis://:**@db:6379/0: Error 111 connecting to redis://:**@db:6379/0.")
    assert "s3cret" not in message and "\x1b" not in message and "\\x1b[2J" in message


def test_output_is_escaped_and_masked(capsys: pytest.CaptureFixture[str]) -> None:
    echo("moved \x1b]0;pwned\x07 on amqp://guest:hunter2@rabbit//")
    assert capsys.readouterr().out == "moved \\x1b]0;pwned\\x07 on amqp://guest:**@rabbit//\n"
    shown = cell(b"[bold red]x[/bold red]\r")
    assert shown.plain == "[bold red]x[/bold red]\\x0d" and not shown.spans  # no rich markup read from data
    assert cell(None).plain == ""
    assert (seconds(1.04), seconds(None)) == ("1.0s", "?")
    assert rows([{b"name": b"celery"}]) == [{"name": b"celery"}] and rows(None) == []


def test_the_cli_client_names_itself_to_redis(unit_db: UnitDB) -> None:
    client = client_for(load_config(make_app(stream_url=unit_db.url, stream_tasks={"orders": "shop.handle"})))
    try:
        assert client.client_getname() in ("celery-redis-stream-cli", b"celery-redis-stream-cli")
    finally:
        client.close()

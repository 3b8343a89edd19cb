"""cli/dead_letters.py: `dead-letters STREAM`: exact JSON, a safe table, and acting only on the chosen letters."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result

from celery_redis_stream.cli.dead_letters import dead_letters

from ...support import make_app
from ..conftest import UnitDB


@pytest.fixture
def app(unit_db: UnitDB) -> Celery:
    return make_app("dead", stream_url=unit_db.url, stream_tasks={"orders": "shop.handle"})


def run(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(dead_letters, list(args), obj=SimpleNamespace(app=app), catch_exceptions=False)


def letter(client: redis.Redis, reason: str, *own: bytes, error: bytes = b"why") -> str:
    meta = [b"dlq_source_stream", b"orders", b"dlq_source_id", b"1-0", b"dlq_reason", reason.encode()]
    meta += [b"dlq_error", error]
    return str(client.execute_command("XADD", "orders:dead", "*", *own, *meta).decode())


def test_json_keeps_every_byte_and_every_pair(app: Celery, unit_db: UnitDB) -> None:
    letter(unit_db.client, "duplicate_field", b"a", b"1", b"a", "\u00e9".encode(), b"bin", b"\xff\x00")
    (entry,) = json.loads(run(app, "orders", "--json").output)["entries"]
    assert entry["fields"] == [["a", "1"], ["a", "\u00e9"], ["bin", {"base64": base64.b64encode(b"\xff\x00").decode()}]]
    assert (entry["reason"], entry["source_id"], entry["error"]) == ("duplicate_field", "1-0", "why")


def test_the_table_escapes_control_characters_and_masks_passwords(app: Celery, unit_db: UnitDB) -> None:
    letter(unit_db.client, "converter_error", b"note", b"\x1b[2Jwiped", error=b"cannot reach redis://:s3cret@db/0")
    letter(unit_db.client, "too_large", b"n", b"2")
    shown = run(app, "orders", "--limit", "1")
    assert shown.exit_code == 0 and "orders:dead: 2 dead letter(s), showing 1" in shown.output
    assert "\\x1b[2Jwiped" in shown.output and "\x1b" not in shown.output
    assert "redis://:**@db/0" in shown.output and "s3cret" not in shown.output
    assert "too_large" not in shown.output  # --limit: the oldest first


def test_purge_by_id_and_reason_deletes_only_the_chosen_letters(app: Celery, unit_db: UnitDB) -> None:
    ids = [letter(unit_db.client, reason, b"n", str(i).encode()) for i, reason in enumerate(
        ["not_utf8", "too_large", "not_utf8", "not_utf8"]
    )]  # fmt: skip
    chosen = f"{ids[0]},{ids[1]} , {ids[0]}"  # commas, spaces and repeats
    purged = run(app, "orders", "--purge", "--yes", "--json", "--reason", "not_utf8", "--id", chosen, "--id", ids[2])
    assert json.loads(purged.output) == {
        "stream": "orders", "dead_letter": "orders:dead", "purged": 2, "kept": 0, "missing": [],
    }  # fmt: skip
    assert [e[0].decode() for e in unit_db.client.xrange("orders:dead")] == [ids[1], ids[3]]
    assert "is not a full entry id" in run(app, "orders", "--id", "1700000000000").output


@pytest.mark.parametrize("reason", ["decode", "dedupe_key"])
def test_the_decoders_and_the_dedupe_keys_reasons_can_be_chosen(app: Celery, unit_db: UnitDB, reason: str) -> None:
    chosen = letter(unit_db.client, reason, b"n", b"1")
    letter(unit_db.client, "not_utf8", b"n", b"2")
    shown = run(app, "orders", "--json", "--reason", reason)
    assert shown.exit_code == 0, shown.output
    assert [entry["id"] for entry in json.loads(shown.output)["entries"]] == [chosen]

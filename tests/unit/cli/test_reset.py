"""cli/reset.py: `reset STREAM --to`: a group moved or created at the target, a tracker set under the lease rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from celery_redis_stream.cli.reset import reset

from ...support import make_app
from ..conftest import UnitDB


@pytest.fixture
def app(unit_db: UnitDB) -> Celery:
    tasks = {"orders": "shop.handle", "audit": {"task": "shop.handle", "mode": "tracker"}}
    return make_app("reset", stream_url=unit_db.url, stream_tasks=tasks)


def run(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(reset, list(args), obj=SimpleNamespace(app=app), catch_exceptions=False)


def test_a_group_goes_to_the_entry_of_a_time_created_there_if_missing(app: Celery, unit_db: UnitDB) -> None:
    for ms in (1000, 2000, 3000):
        unit_db.client.xadd("orders", {"n": ms}, id=f"{ms}-0")
    created = run(app, "orders", "--to", "1970-01-01T00:00:02Z", "--yes")
    assert created.exit_code == 0 and "orders: created group celery at 2000-0" in created.output
    moved = run(app, "orders", "--to", "1970-01-01T01:00:01+01:00", "-y")  # an offset: 00:00:01 UTC
    assert moved.output.strip() == "orders: group celery moved from 2000-0 to 1000-0"
    assert unit_db.client.xinfo_groups("orders")[0]["last-delivered-id"] == b"1000-0"


def test_a_tracker_gets_a_concrete_id_and_force_moves_it_under_a_held_lease(app: Celery, unit_db: UnitDB) -> None:
    for ms in (1000, 2000):
        unit_db.client.xadd("audit", {"n": ms}, id=f"{ms}-0")
    assert run(app, "audit", "--to", "$", "-y").exit_code == 0
    assert unit_db.client.get("stream_tracker:{audit}") == b"2000-0"  # the end now, not "$"
    unit_db.client.set("stream_tracker:{audit}:lease", "w1@host\x1b[2J")
    held = run(app, "audit", "--to", "0", "-y")
    assert held.exit_code == 1 and "worker 'w1@host" in held.output and "\x1b" not in held.output  # escaped
    assert unit_db.client.get("stream_tracker:{audit}") == b"2000-0"
    forced = run(app, "audit", "--to", "0", "-y", "--force")
    assert forced.output.strip() == "audit: tracker stream_tracker:{audit} moved from 2000-0 to 0-0"
    assert unit_db.client.get("stream_tracker:{audit}") == b"0-0"

"""position/rule.py: the position type of each mode, and the commit that does nothing without entries."""

from __future__ import annotations

from celery_redis_stream.client.connection import Client
from celery_redis_stream.deadletters import DeadLetter
from celery_redis_stream.entry import RawEntry
from celery_redis_stream.position.group import GroupPosition
from celery_redis_stream.position.rule import commit, position_of
from celery_redis_stream.position.tracker import TrackerPosition

from ..streams import stream_config


def test_each_mode_has_its_position_type() -> None:
    group, tracker = position_of(stream_config()), position_of(stream_config(mode="tracker"))
    assert isinstance(group, GroupPosition) and (group.mode, group.name, group.shared) == ("group", "celery", True)
    assert isinstance(tracker, TrackerPosition)
    assert (tracker.mode, tracker.name, tracker.shared) == ("tracker", "stream_tracker:{orders}", False)
    assert group.acked(["1-0"], ["0-5"]) == ["1-0", "0-5"] and tracker.acked(["1-0"], ["0-5"]) == ["1-0"]
    assert group.retention() == ([], "celery") and tracker.retention() == (["stream_tracker:{orders}"], "")


def test_nothing_to_commit_writes_nothing(client: Client) -> None:
    commit(client, stream_config(), [], [DeadLetter(RawEntry("orders", "1-0", ()), "x", "y")])
    assert not client.exists("orders:dead")

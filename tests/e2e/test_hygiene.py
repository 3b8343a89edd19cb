"""The consumer-removal and retention scripts, run directly against a private redis-server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_redis_stream.client.capabilities import XACKDEL, XREADGROUP_CLAIM, XTRIM_ACKED, probe
from celery_redis_stream.config import StreamConfig, load_config
from celery_redis_stream.upkeep.consumers import reap_consumers, remove_own_consumer
from celery_redis_stream.upkeep.retention import retention_key, retention_status, trim_passed

from ..support import RedisServer, server_fixture

# Small radix nodes, so that the approximate XTRIM ~ removes whole nodes of a short stream.
server = server_fixture("--stream-node-max-entries", "10", scope="module")


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = server.client()
    c.flushdb()
    yield c
    c.close()


def stream_config(mode: str = "group", **spec: object) -> StreamConfig:
    app = Celery("hyg", broker="memory://", set_as_current=False)
    app.conf.stream_tasks = {"orders": {"task": "t", "registered": False, "mode": mode, **spec}}
    return load_config(app).streams[0]


def consumers(client: redis.Redis, group: str = "celery") -> dict[str, int]:
    return {c["name"].decode(): int(c["pending"]) for c in client.xinfo_consumers("orders", group)}


def read(client: redis.Redis, consumer: str, count: int, group: str = "celery") -> list[str]:
    reply = client.xreadgroup(group, consumer, {"orders": ">"}, count=count)
    return [i.decode() for i, _ in reply[0][1]] if reply else []


def fill(client: redis.Redis, n: int, *, start_ms: int = 1000) -> list[str]:
    """``n`` entries with explicit ids at ``start_ms``-1, -2, ...: long in the past by their millisecond part."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd("orders", {"n": str(i)}, id=f"{start_ms + i}-1")
    return [x.decode() for x in pipe.execute()]


def ids(client: redis.Redis) -> list[str]:
    return [i.decode() for i, _ in client.xrange("orders")]


# -- consumers --------------------------------------------------------------------------------------------


def test_idle_consumers_with_nothing_pending_are_removed_but_never_our_own(client: redis.Redis) -> None:
    sc = stream_config()
    fill(client, 10)
    client.xgroup_create("orders", "celery", id="0")
    for name in ("ghost-a", "ghost-b", "me"):
        for entry_id in read(client, name, 2):
            client.xack("orders", "celery", entry_id)
    held = read(client, "ghost-pending", 2)
    time.sleep(0.05)
    removed = reap_consumers(client, sc, "me", min_idle_ms=20)
    assert sorted(r.name for r in removed) == ["ghost-a", "ghost-b"]
    assert all(r.idle_ms >= 20 for r in removed)
    assert consumers(client) == {"ghost-pending": 2, "me": 0}
    # claimed away, the ghost holds nothing: it goes at the next round
    client.xclaim("orders", "celery", "me", 0, held)
    assert [r.name for r in reap_consumers(client, sc, "me", min_idle_ms=20)] == ["ghost-pending"]
    assert consumers(client) == {"me": 2}


def test_a_consumer_seen_recently_is_kept(client: redis.Redis) -> None:
    sc = stream_config()
    fill(client, 1)
    client.xgroup_create("orders", "celery", id="0")
    client.xack("orders", "celery", *read(client, "fresh", 1))
    assert reap_consumers(client, sc, "me", min_idle_ms=60_000) == []
    assert consumers(client) == {"fresh": 0}


def test_own_consumer_is_removed_only_with_nothing_pending(client: redis.Redis) -> None:
    sc = stream_config()
    fill(client, 3)
    client.xgroup_create("orders", "celery", id="0")
    held = read(client, "me", 3)
    assert remove_own_consumer(client, sc, "me") is False
    assert consumers(client) == {"me": 3}
    client.xack("orders", "celery", *held)
    assert remove_own_consumer(client, sc, "me") is True
    assert consumers(client) == {}


def test_consumer_scripts_tolerate_a_missing_stream_or_group(client: redis.Redis) -> None:
    sc = stream_config()
    assert reap_consumers(client, sc, "me", min_idle_ms=1) == []
    client.xadd("orders", {"n": "1"})
    assert remove_own_consumer(client, sc, "me") is False


# -- retention --------------------------------------------------------------------------------------------


def trim(client: redis.Redis, sc: StreamConfig, retention_ms: int = 1) -> int:
    return trim_passed(client, sc, retention_ms=retention_ms, interval_ms=0).trimmed


def test_entries_every_group_acknowledged_are_trimmed_and_counted(client: redis.Redis) -> None:
    sc = stream_config(retention_ms=1)
    produced = fill(client, 100)
    client.xgroup_create("orders", "celery", id="0")
    client.xack("orders", "celery", *read(client, "me", 100))
    done = trim_passed(client, sc, retention_ms=1, interval_ms=0)
    # the bound is the last-delivered id itself, kept; ~ trims whole nodes of 10 before it
    assert (done.status, done.minid) == ("ran", produced[-1])
    assert done.trimmed == 90 and ids(client) == produced[90:]
    status = retention_status(client, sc)
    assert status["retention_trimmed"] == 90 and status["retention_ms"] == 1
    assert status["retention_minid"] == produced[-1] and status["retention_last_trim_ms"] is not None


def test_a_foreign_group_with_pending_entries_keeps_them_until_it_acknowledges(client: redis.Redis) -> None:
    sc = stream_config()
    produced = fill(client, 100)
    client.xgroup_create("orders", "celery", id="0")
    client.xack("orders", "celery", *read(client, "me", 100))
    client.xgroup_create("orders", "audit", id="0")
    audit = read(client, "auditor", 100, group="audit")
    client.xack("orders", "audit", *audit[:35])
    assert trim(client, sc) == 30  # nodes wholly before the oldest pending id (the 36th entry)
    assert ids(client)[0] <= produced[35] and set(produced[35:]) <= set(ids(client))
    client.xack("orders", "audit", *audit[35:])
    assert trim(client, sc) == 60
    assert ids(client) == produced[90:]


def test_a_group_that_has_not_read_the_entries_holds_them(client: redis.Redis) -> None:
    sc = stream_config()
    produced = fill(client, 50)
    client.xgroup_create("orders", "celery", id="0")
    client.xack("orders", "celery", *read(client, "me", 50))
    client.xgroup_create("orders", "late", id="0")  # last-delivered-id 0-0
    assert trim(client, sc) == 0
    client.xgroup_create("orders", "midway", id=produced[20])  # has passed the first 21 only
    client.xgroup_destroy("orders", "late")
    assert trim(client, sc) == 20
    assert ids(client) == produced[20:]


def test_a_group_with_unknown_entries_read_after_a_deletion_is_judged_by_its_position(client: redis.Redis) -> None:
    sc = stream_config()
    produced = fill(client, 60)
    client.xgroup_create("orders", "celery", id="0")
    client.xack("orders", "celery", *read(client, "me", 60))
    client.xgroup_create("orders", "other", id="0")
    read(client, "o", 25, group="other")
    client.xack("orders", "other", *produced[:25])
    client.xdel("orders", produced[40])
    client.xgroup_setid("orders", "other", produced[24])  # entries-read becomes unknown (nil)
    other = next(g for g in client.xinfo_groups("orders") if g["name"] == b"other")
    assert other["entries-read"] is None
    assert trim(client, sc) == 20
    assert set(produced[24:]) - {produced[40]} <= set(ids(client))


def test_a_group_moved_back_behind_its_pending_entries_holds_from_its_position(client: redis.Redis) -> None:
    sc = stream_config()
    produced = fill(client, 50)
    client.xgroup_create("orders", "celery", id="$")
    client.xgroup_create("orders", "replay", id="0")
    client.xack("orders", "replay", *read(client, "r", 50, group="replay")[:10])
    client.xgroup_setid("orders", "replay", produced[5])  # entries 7 to 10 will be delivered again
    assert trim(client, sc) == 0
    assert ids(client) == produced


def test_young_entries_are_kept_whatever_the_groups_did(client: redis.Redis) -> None:
    sc = stream_config()
    now_ms = int(time.time() * 1000)
    old = fill(client, 30, start_ms=now_ms - 3_600_000)
    young = fill(client, 30, start_ms=now_ms - 1000)
    client.xgroup_create("orders", "celery", id="0")
    client.xack("orders", "celery", *read(client, "me", 60))
    assert trim(client, sc, retention_ms=60_000) == 30
    assert ids(client) == young and not set(old) & set(ids(client))


def test_nothing_is_trimmed_while_our_own_group_is_missing(client: redis.Redis) -> None:
    sc = stream_config()
    fill(client, 50)
    client.xgroup_create("orders", "other", id="$")
    done = trim_passed(client, sc, retention_ms=1, interval_ms=0)
    assert (done.status, done.trimmed, client.xlen("orders")) == ("no group", 0, 50)


def test_a_tracked_stream_is_trimmed_only_before_the_tracker_position(client: redis.Redis) -> None:
    sc = stream_config(mode="tracker")
    produced = fill(client, 100)
    assert trim_passed(client, sc, retention_ms=1, interval_ms=0).status == "no tracker"
    client.set(sc.tracker_key, produced[44])
    assert trim(client, sc) == 40
    assert ids(client) == produced[40:]
    # a foreign group on a tracked stream holds entries too
    client.xgroup_create("orders", "audit", id=produced[49])
    client.set(sc.tracker_key, produced[-1])
    assert trim(client, sc) == 0
    client.set(sc.tracker_key, "not-an-id")
    assert trim_passed(client, sc, retention_ms=1, interval_ms=0).status == "no tracker"


def test_one_caller_per_interval_trims_a_stream(client: redis.Redis) -> None:
    sc = stream_config()
    fill(client, 5)
    client.xgroup_create("orders", "celery", id="$")
    assert trim_passed(client, sc, retention_ms=1, interval_ms=60_000).status == "ran"
    assert trim_passed(client, sc, retention_ms=1, interval_ms=60_000).status == "skipped"
    assert client.hget(retention_key(sc), "next_ms") is not None
    # a due time set by a server whose clock was hours ahead (before a failover) does not stall trimming
    client.hset(retention_key(sc), "next_ms", int(time.time() * 1000) + 3_600_000)
    assert trim_passed(client, sc, retention_ms=1, interval_ms=60_000).status == "ran"


def test_the_approximate_trim_keeps_a_partial_node(client: redis.Redis) -> None:
    sc = stream_config()
    produced = fill(client, 100)
    client.xgroup_create("orders", "celery", id=produced[54])
    assert trim(client, sc) == 50  # 5 whole nodes; the 6th holds the bound entry
    assert ids(client)[0] == produced[50]


def test_acked_trimming_is_found_exactly_where_the_server_takes_it(client: redis.Redis) -> None:
    # Redis 8.2+ takes XTRIM ... ACKED; Redis 7 and Valkey (redis_version 7.2.4) refuse it, and the script
    # judges the groups alone there. Both answers are checked: no server skips this test.
    version = tuple(int(p) for p in client.info("server")["redis_version"].split(".")[:2])
    assert (XTRIM_ACKED in probe(client)) is (version >= (8, 2))
    client.xadd("orders", {"n": "1"})
    if version >= (8, 2):
        assert client.execute_command("XTRIM", "orders", "MINID", "~", "0-1", "ACKED") == 0
    else:
        with pytest.raises(redis.ResponseError):
            client.execute_command("XTRIM", "orders", "MINID", "~", "0-1", "ACKED")


def accepts(client: redis.Redis, *command: object) -> bool:
    try:
        client.execute_command(*command)
    except redis.ResponseError as exc:
        assert "unknown command" in str(exc).lower() or "syntax" in str(exc).lower(), exc
        return False
    return True


def test_the_capabilities_probed_are_exactly_the_commands_this_server_takes(client: redis.Redis) -> None:
    # Whatever the server (Redis 7.0 takes none, 8.6 all three): the probe never claims what the server refuses.
    client.xadd("orders", {"n": "1"})
    client.xgroup_create("orders", "celery", id="0")
    taken = {
        XTRIM_ACKED: accepts(client, "XTRIM", "orders", "MINID", "~", "0-1", "ACKED"),
        XREADGROUP_CLAIM: accepts(
            client, "XREADGROUP", "GROUP", "celery", "c1", "COUNT", "1", "CLAIM", "60000", "STREAMS", "orders", ">"
        ),
        XACKDEL: accepts(client, "XACKDEL", "orders", "celery", "ACKED", "IDS", "1", "0-1"),
    }
    assert probe(client) == {name for name, ok in taken.items() if ok}


def test_a_stream_with_a_retention_shows_xtrim_acked_in_use_where_the_server_takes_it(client: redis.Redis) -> None:
    from celery_redis_stream.stats import StreamStats
    from celery_redis_stream.status import stream_status
    from celery_redis_stream.upkeep.cadence import Upkeep

    kept, trimmed = stream_config(), stream_config(retention_ms=1)
    fill(client, 20)
    client.xgroup_create("orders", "celery", id="$")
    expected = [XTRIM_ACKED] if accepts(client, "XTRIM", "orders", "MINID", "~", "0-1", "ACKED") else []
    stats = {"orders": StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)}
    Upkeep(block_ms=1000, reap_idle_ms=3_600_000).trim(client, [trimmed], stats)
    assert stats["orders"].capabilities == expected  # inspect redis_stream
    assert stream_status(client, trimmed)["capabilities"] == expected  # status --json
    assert stream_status(client, kept)["capabilities"] == []  # no retention: nothing newer in use


def test_a_server_that_refuses_acked_gets_the_same_trim_without_it(client: redis.Redis) -> None:
    sc = stream_config()
    produced = fill(client, 100)
    client.xgroup_create("orders", "celery", id=produced[54])
    client.xgroup_create("orders", "audit", id=produced[80])
    done = trim_passed(client, sc, retention_ms=1, interval_ms=0, acked=True)
    # Refused (Redis 7, Valkey 8): whole nodes, as without ACKED. Taken (Redis 8.2+): the server trims
    # entry by entry up to the same bound. Either way the bound entry and all after it stay.
    trimmed = 54 if XTRIM_ACKED in probe(client) else 50
    assert (done.status, done.trimmed, done.minid) == ("ran", trimmed, produced[54])
    assert ids(client) == produced[trimmed:]


# -- settings, stats and metrics ----------------------------------------------------------------------------


def app_with(**conf: object) -> Celery:
    app = Celery("hyg", broker="memory://", set_as_current=False)
    app.conf.update(conf)
    return app


def test_consumers_are_reaped_after_an_hour_and_nothing_is_trimmed_by_default() -> None:
    config = load_config(app_with(stream_tasks={"orders": {"task": "t", "registered": False}}))
    assert config.reap_idle_ms == 3_600_000
    assert config.streams[0].retention_ms is None


def test_retention_is_set_globally_and_per_stream() -> None:
    tasks = {
        "orders": {"task": "t", "registered": False},
        "audit": {"task": "t", "registered": False, "retention_ms": 5000},
        "keep": {"task": "t", "registered": False, "retention_ms": None},
    }
    config = load_config(app_with(stream_tasks=tasks, stream_retention_ms=86_400_000, stream_reap_idle_ms=60_000))
    assert {sc.stream: sc.retention_ms for sc in config.streams} == {
        "orders": 86_400_000, "audit": 5000, "keep": None,
    }  # fmt: skip
    assert config.reap_idle_ms == 60_000


@pytest.mark.parametrize(
    ("conf", "words"),
    [
        ({"stream_reap_idle_ms": 0}, ["stream_reap_idle_ms", "at least 1"]),
        ({"stream_reap_idle_ms": "1h"}, ["stream_reap_idle_ms", "integer"]),
        ({"stream_reap_idle_ms": True}, ["stream_reap_idle_ms", "integer"]),
        ({"stream_retention_ms": -1}, ["stream_retention_ms", "at least 1"]),
        ({"stream_retention_ms": 1.5}, ["stream_retention_ms", "integer"]),
        ({"stream_retention_ms": "7d"}, ["stream_retention_ms", "integer"]),
        (
            {"stream_tasks": {"orders": {"task": "t", "registered": False, "retention_ms": "1d"}}},
            ["retention_ms", "orders"],
        ),
        (
            {"stream_tasks": {"orders": {"task": "t", "registered": False, "retention_ms": 0}}},
            ["retention_ms", "orders"],
        ),
    ],
)
def test_invalid_hygiene_and_retention_settings_are_refused(conf: dict[str, object], words: list[str]) -> None:
    from celery_redis_stream import StreamConfigError

    conf = {"stream_tasks": {"orders": {"task": "t", "registered": False}}, **conf}
    with pytest.raises(StreamConfigError) as info:
        load_config(app_with(**conf))
    for word in words:
        assert word in str(info.value)


def test_removals_and_trims_are_counted_in_inspect_and_metrics() -> None:
    from prometheus_client.core import Metric

    from celery_redis_stream.metrics import BridgeCollector
    from celery_redis_stream.service import Service

    app = app_with(stream_tasks={"orders": {"task": "t", "registered": False}}, stream_url="redis://127.0.0.1:1/0")
    service = Service(app, load_config(app), consumer="w1@host")
    stats = service.stats["orders"]
    stats.consumers_removed, stats.retention_trimmed = 3, 120
    (shown,) = service.info()["streams"]
    assert (shown["consumers_removed"], shown["retention_trimmed"]) == (3, 120)
    families: dict[str, Metric] = {f.name: f for f in BridgeCollector(service).collect()}
    values = {
        name: [(s.labels, s.value) for s in families[name].samples if s.name.endswith("_total")]
        for name in ("redis_stream_consumers_removed", "redis_stream_retention_trimmed")
    }
    assert values == {
        "redis_stream_consumers_removed": [({"stream": "orders", "mode": "group", "group": "celery"}, 3)],
        "redis_stream_retention_trimmed": [({"stream": "orders", "mode": "group", "group": "celery"}, 120)],
    }


def test_a_retention_round_keeps_trimming_a_large_backlog_past_the_per_call_limit(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_redis_stream.stats import StreamStats
    from celery_redis_stream.upkeep.cadence import Upkeep

    sc = stream_config(retention_ms=1)
    produced = fill(client, 5000)
    client.xgroup_create("orders", "celery", id="$")
    stats = {"orders": StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)}
    upkeep = Upkeep(block_ms=20_000, reap_idle_ms=3_600_000)  # rounds every 20 s (at least a read)
    with caplog.at_level("INFO", logger="celery_redis_stream.upkeep.cadence"):
        upkeep.trim(client, [sc], stats)
    # 500 nodes of 10; XTRIM ~ frees at most 100 nodes a call: one round, several calls, one log line
    # (with ACKED, Redis 8.2+, the server trims entry by entry up to the bound entry, within the same limit)
    trimmed = 4999 if XTRIM_ACKED in probe(client) else 4990
    assert ids(client) == produced[trimmed:]
    assert stats["orders"].retention_trimmed == trimmed
    assert client.hget(retention_key(sc), "trimmed") == str(trimmed).encode()
    lines = [r.getMessage() for r in caplog.records if "trimmed" in r.getMessage()]
    assert lines == [
        f"redis-stream: trimmed {trimmed} entries of stream=orders before {produced[-1]} "
        "(retention 1ms, passed by every group)"
    ]
    # the next round is not due yet, on this worker nor (the token) on any other
    upkeep.trim(client, [sc], stats)
    assert client.hget(retention_key(sc), "trimmed") == str(trimmed).encode()
    assert trim_passed(client, sc, retention_ms=1, interval_ms=60_000).status == "skipped"


def test_thousands_of_ghosts_go_in_short_scripts_and_few_log_lines(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_redis_stream.stats import StreamStats
    from celery_redis_stream.upkeep.cadence import LOG_REMOVALS, Upkeep
    from celery_redis_stream.upkeep.consumers import REAP_BATCH

    sc = stream_config()
    client.xgroup_create("orders", "celery", id="$", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(450):
        pipe.execute_command("XGROUP", "CREATECONSUMER", "orders", "celery", f"ghost-{i}")
    pipe.execute()
    time.sleep(0.01)
    assert len(reap_consumers(client, sc, "me", min_idle_ms=1)) == REAP_BATCH == 200
    stats = {"orders": StreamStats(stream="orders", mode="group", task="t", group="celery", tracker=None)}
    with caplog.at_level("INFO", logger="celery_redis_stream.upkeep.cadence"):
        Upkeep(block_ms=200, reap_idle_ms=1).reap(client, [sc], "me", stats)
    assert consumers(client) == {} and stats["orders"].consumers_removed == 250
    lines = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert len(lines) == LOG_REMOVALS + 1
    assert (
        lines[-1]
        == "redis-stream: removed 230 more idle consumers with nothing pending from group=celery stream=orders"
    )

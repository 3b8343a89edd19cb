"""client/cluster.py: a read over streams of many hash slots, one pipeline per master, redirections followed.

A real Redis Cluster takes seconds to form; here the slot map is a stand-in that
sends every slot's pipeline to the unit tier's redis-server (a standalone server
answers reads of any keys), so what is tested is read_slots' own logic: grouping
by slot and master, following MOVED through the cluster client, the idle wait.
The e2e tier reads real clusters.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, ResponseError

from celery_redis_stream.client import cluster as cluster_module
from celery_redis_stream.client.cluster import IDLE_WAIT_MIN_MS, read_slots

from ..conftest import UnitDB

# Three slots, on two masters: orders:eu and orders:us on "a", orders:asia on "b".
MASTERS = {"orders:eu": "a", "orders:us": "a", "orders:asia": "b"}
POSITIONS = dict.fromkeys(MASTERS, "0")


class Moved:
    """A master's pipeline whose every slot has moved: each command answers MOVED."""

    def __init__(self, transaction: bool = True) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def execute(self, raise_on_error: bool = True) -> list[Exception]:
        return [MovedError("1006 127.0.0.1:7001") for _ in self.commands]


class StandIn:
    """What read_slots uses of a RedisCluster, every master being the unit tier's server."""

    def __init__(self, server: redis.Redis, moved: str = "", down: str = "") -> None:
        slots = {key_slot(stream.encode()): master for stream, master in MASTERS.items()}
        self.nodes_manager = SimpleNamespace(get_node_from_slot=lambda slot: SimpleNamespace(name=slots[slot]))
        self.server, self.moved, self.down = server, moved, down
        self.pipelines: list[str] = []
        self.direct: list[tuple[Any, ...]] = []  # what the cluster client was asked itself

    def get_redis_connection(self, node: SimpleNamespace) -> object:
        self.pipelines.append(node.name)
        if node.name == self.down:
            raise RedisConnectionError("master gone")
        return SimpleNamespace(pipeline=Moved) if node.name == self.moved else self.server

    def execute_command(self, *args: Any) -> object:
        self.direct.append(args)
        if "BLOCK" in args:  # what is asked is recorded; the wait itself is Redis's (and 100 ms at its default hz)
            at = args.index("BLOCK")
            args = args[:at] + args[at + 2 :]
        return self.server.execute_command(*args)


def _ids(items: list[tuple[object, object]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for stream, entries in items:
        out.setdefault(_text(stream), []).extend(_text(e[0]) for e in entries)  # type: ignore[attr-defined, index]
    return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def server(unit_db: UnitDB) -> redis.Redis:
    for i, stream in enumerate(MASTERS, start=1):
        unit_db.client.xadd(stream, {"n": i}, id=f"{i}-0")
    return unit_db.client


def test_a_read_spanning_slots_returns_every_streams_entries_with_one_pipeline_per_master(
    server: redis.Redis,
) -> None:
    cluster = StandIn(server)
    items = read_slots(cluster, ["XREAD", "COUNT", 11], POSITIONS, 1000)  # type: ignore[arg-type]
    assert _ids(items) == {"orders:eu": ["1-0"], "orders:us": ["2-0"], "orders:asia": ["3-0"]}
    assert sorted(cluster.pipelines) == ["a", "b"] and cluster.direct == []  # no blocking read: entries came


@pytest.mark.parametrize("trouble", ["moved", "down"])
def test_a_moved_slot_or_an_unreachable_master_is_read_through_the_cluster_client(
    server: redis.Redis, trouble: str
) -> None:
    cluster = StandIn(server, **{trouble: "a"})
    items = read_slots(cluster, ["XREAD", "COUNT", 12], POSITIONS, None)  # type: ignore[arg-type]
    assert _ids(items) == {"orders:eu": ["1-0"], "orders:us": ["2-0"], "orders:asia": ["3-0"]}
    assert sorted(c[-2] for c in cluster.direct) == ["orders:eu", "orders:us"]  # one read per slot of "a"


def test_any_other_error_of_a_slot_is_raised(server: redis.Redis) -> None:
    server.delete("orders:asia")
    server.set("orders:asia", "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        read_slots(StandIn(server), ["XREAD", "COUNT", 13], POSITIONS, None)  # type: ignore[arg-type]


def test_an_idle_reader_waits_on_the_slot_last_busy_doubling_the_wait_up_to_its_bounds(
    server: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "IDLE_WAIT_MAX_MS", 40)  # 200 ms in production: a shorter test
    head = ["XREAD", "COUNT", 14]
    cluster = StandIn(server)
    after = {"orders:eu": "1-0", "orders:us": "2-0", "orders:asia": "0"}
    assert _ids(read_slots(cluster, head, after, 1000)) == {"orders:asia": ["3-0"]}  # type: ignore[arg-type]
    idle = {**after, "orders:asia": "3-0"}
    waits = []
    for block_ms in (1000, 1000, 1000, 1000, 15):
        cluster.direct.clear()
        assert read_slots(cluster, head, idle, block_ms) == []  # type: ignore[arg-type]
        ((*_, block, wait, streams, key, _),) = cluster.direct  # one blocking read on one slot
        assert (block, streams, key) == ("BLOCK", "STREAMS", "orders:asia")  # where entries came last
        waits.append(wait)
    assert waits == [IDLE_WAIT_MIN_MS, 20, 40, 40, 15]  # doubling, at most the maximum, never above stream_block_ms
    server.xadd("orders:eu", {"n": 4}, id="4-0")
    assert _ids(read_slots(cluster, head, idle, 1000)) == {"orders:eu": ["4-0"]}  # type: ignore[arg-type]
    cluster.direct.clear()
    read_slots(cluster, head, {**idle, "orders:eu": "4-0"}, 1000)  # type: ignore[arg-type]
    assert cluster.direct[0][3:5] == ("BLOCK", IDLE_WAIT_MIN_MS)  # back to the shortest wait after entries
    assert cluster.direct[0][-2] == "orders:eu"  # now the slot last busy


def test_streams_of_one_slot_keep_the_plain_blocking_read(server: redis.Redis) -> None:
    cluster = StandIn(server)
    server.xadd("{orders}:eu", {"n": 1}, id="1-0")
    items = read_slots(cluster, ["XREAD", "COUNT", 15], {"{orders}:eu": "0", "{orders}:us": "0"}, 500)  # type: ignore[arg-type]
    assert _ids(items) == {"{orders}:eu": ["1-0"]} and cluster.pipelines == []
    assert cluster.direct == [("XREAD", "COUNT", 15, "BLOCK", 500, "STREAMS", "{orders}:eu", "{orders}:us", "0", "0")]

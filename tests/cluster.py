"""Test harness: a private Redis Cluster (masters, optional replicas) on free loopback ports.

The lifecycle is celery_redis_stream.testing.processes.Cluster's (the benchmarks use it
too), with tests.support.RedisServer nodes. Helpers here move one slot (with
its keys) to another master and kill a master, as an operator's reshard or a
crash would. Every node is stopped by pid.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from celery_redis_stream.testing import processes as harness

from .support import ProducerThread, RedisServer, server_binary, wait_for

NODE_TIMEOUT_MS = harness.Cluster.NODE_TIMEOUT_MS
admin = harness.cluster_admin


class Cluster(harness.Cluster):
    """harness.Cluster of tests.support.RedisServer nodes (CRS_SERVER's binaries), with an operator's moves."""

    nodes: list[RedisServer]  # type: ignore[assignment]

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        # redis-cli, or valkey-cli with CRS_SERVER=valkey
        super().__init__(masters, replicas, cli=server_binary(1), server=RedisServer)

    def alive(self) -> list[RedisServer]:  # type: ignore[override]
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    @staticmethod
    def _masters_of(c: redis.Redis) -> list[tuple[int, str]]:
        return harness.Cluster.masters_of(c)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def node_id(self, server: RedisServer) -> str:
        return str(admin(server).execute_command("CLUSTER MYID").decode())

    def owner(self, slot: int) -> RedisServer:
        """The master that serves ``slot`` now (asked of a live node)."""
        c = admin(self.alive()[0])
        for start, end, master, *_ in c.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return self.node(int(master[1]))
        raise AssertionError(f"slot {slot} is not served")

    def owner_of(self, key: str) -> RedisServer:
        return self.owner(key_slot(key.encode()))

    def masters_now(self) -> list[RedisServer]:
        c = admin(self.alive()[0])
        return [self.node(port) for port, _ in self._masters_of(c) if any(n.port == port for n in self.alive())]

    def flush(self) -> None:
        for node in self.masters_now():
            node.client().flushall()

    # ------------------------------------------------------------ operations

    def migrate_slot(self, slot: int, target: RedisServer, *, hold: float = 0.0) -> int:
        """Move ``slot`` and its keys to ``target`` (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE).

        ``hold`` keeps the slot half-migrated for that long after the keys
        moved, so clients meet ASK redirections before the final MOVED.
        Returns the number of keys moved.
        """
        source = self.owner(slot)
        if source.port == target.port:
            raise ValueError("the slot is already served by the target")
        src, dst = source.client(), target.client()
        src_id, dst_id = self.node_id(source), self.node_id(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        for _ in range(10_000):
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        if hold:
            time.sleep(hold)
        dst.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        src.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for node in self.masters_now():
            if node.port not in (source.port, target.port):
                node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        self.wait_ok()
        return moved

    def kill(self, server: RedisServer) -> None:
        """kill -9 one node (a crashed master); its replica is promoted after the node timeout."""
        server.stop(signal.SIGKILL)

    def wait_promoted(self, old: RedisServer, slot: int, timeout: float = 30) -> RedisServer:
        """Wait until another node serves ``slot`` after ``old`` died, and the cluster is ok again."""

        def moved() -> RedisServer | None:
            try:
                owner = self.owner(slot)
            except (redis.RedisError, AssertionError):
                return None
            return owner if owner.port != old.port else None

        new = wait_for(moved, timeout, f"a replica to take over slot {slot}", interval=0.2)
        self.wait_ok(timeout)
        return new  # type: ignore[no-any-return]


def wait_logged(workers: list[Any], predicate: Any, timeout: float, what: str) -> Any:
    """wait_for, with the tail of each worker's log in the failure message."""

    def check() -> Any:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise AssertionError(f"worker {w.name} exited ({w.proc.returncode})")
        return predicate()

    try:
        return wait_for(check, timeout, what, interval=0.1)
    except AssertionError as exc:
        logs = "\n".join(f"--- {w.name}:\n{w.output()[-4000:]}" for w in workers)
        raise AssertionError(f"{exc}\n{logs}") from None


class Producer(ProducerThread):
    """XADDs to ``streams`` in turn until stopped; remembers the ids Redis acknowledged."""

    def __init__(self, client: Any, streams: list[str], pause: float = 0.004, limit: int = 5000) -> None:
        super().__init__(limit, pause)
        self.client, self.streams, self.limit = client, streams, limit
        self.acked: list[tuple[str, str]] = []
        self.failed = 0

    def step(self, written: int) -> int:
        stream = self.streams[written % len(self.streams)]
        try:
            self.acked.append((stream, self.client.xadd(stream, {"n": str(written)}).decode()))
        except RedisError:
            self.failed += 1  # the cluster is failing over: this entry was never written
            time.sleep(0.05)
        return 1

    def stop(self) -> None:
        self.finish()

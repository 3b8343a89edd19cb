"""Test harness: a private Redis Cluster (masters, optional replicas) on free loopback ports.

Each node is a tests.support.RedisServer with ``--cluster-enabled yes`` in its
own temporary directory; ``redis-cli --cluster create`` joins them. Helpers
move one slot (with its keys) to another master and kill a master, as an
operator's reshard or a crash would. Every node is stopped by pid.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from .support import RedisServer, free_port, server_binary, wait_for

NODE_TIMEOUT_MS = 2000


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, as Redis requires."""
    for _ in range(200):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _raw(response: Any, **options: Any) -> Any:
    return response


def admin(server: RedisServer, **kwargs: Any) -> redis.Redis:
    """A plain client of one node whose CLUSTER replies are left unparsed (bytes, as redis-cli shows them)."""
    c = server.client(**kwargs)
    for command in ("CLUSTER INFO", "CLUSTER NODES", "CLUSTER SLOTS", "CLUSTER MYID"):
        c.set_response_callback(command, _raw)
    return c


class Cluster:
    """``masters`` masters with ``replicas`` replicas each, all on 127.0.0.1."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.cli = server_binary(1)  # redis-cli, or valkey-cli with CRS_SERVER=valkey
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        try:
            for _ in range(self.masters * (1 + self.replicas)):
                server = RedisServer(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # A replica that never finished its first sync cannot be promoted.
                    "--repl-diskless-sync-delay", "0",
                    port=_cluster_port(),
                )  # fmt: skip
                self.nodes.append(server.start())
            subprocess.run(
                [
                    self.cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_ok()
            self.wait_replicas_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop(signal.SIGKILL)

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Every live node reports cluster_state:ok, all slots assigned, and they agree on the masters."""

        def ok() -> bool:
            views = set()
            for node in self.alive():
                try:
                    c = admin(node, socket_timeout=2)
                    info = c.execute_command("CLUSTER INFO").decode()
                    if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
                        return False
                    views.add(tuple(sorted(self._masters_of(c))))
                except redis.RedisError:
                    return False
            return len(views) == 1

        wait_for(ok, timeout, "cluster_state:ok on every node", interval=0.2)

    def wait_replicas_synced(self, timeout: float = 30) -> None:
        def synced() -> bool:
            for node in self.alive():
                info = node.client().info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
            return True

        wait_for(synced, timeout, "every replica in sync with its master", interval=0.2)

    # ------------------------------------------------------------ clients

    @property
    def url(self) -> str:
        """The stream_url of this cluster: two seed nodes, as a user would write it."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def client(self, **kwargs: Any) -> RedisCluster:
        seeds = [ClusterNode("127.0.0.1", n.port) for n in self.alive()]
        return RedisCluster(startup_nodes=seeds, **kwargs)

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    @staticmethod
    def _masters_of(c: redis.Redis) -> list[tuple[int, str]]:
        out = []
        for line in c.execute_command("CLUSTER NODES").decode().splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2]:
                out.append((int(parts[1].split(":")[1].split("@")[0]), parts[0]))
        return out

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


class Producer(threading.Thread):
    """XADDs to ``streams`` in turn until stopped; remembers the ids Redis acknowledged."""

    def __init__(self, client: Any, streams: list[str], pause: float = 0.004, limit: int = 5000) -> None:
        super().__init__(daemon=True)
        self.client, self.streams, self.pause, self.limit = client, streams, pause, limit
        self.acked: list[tuple[str, str]] = []
        self.failed = 0
        self.done = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.done.is_set() and n < self.limit:
            stream = self.streams[n % len(self.streams)]
            try:
                self.acked.append((stream, self.client.xadd(stream, {"n": str(n)}).decode()))
            except RedisError:
                self.failed += 1  # the cluster is failing over: this entry was never written
                time.sleep(0.05)
            n += 1
            time.sleep(self.pause)

    def stop(self) -> None:
        self.done.set()
        self.join(30)

"""Fixtures of the end-to-end tier: a private redis-server per test, and the machine's RabbitMQ (queues of each
test's own, deleted after)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection

from ..cluster import Cluster
from ..support import server_fixture

AMQP_URL = os.environ.get("CRS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def amqp() -> Iterator[Connection]:
    connection = Connection(AMQP_URL, connect_timeout=5)
    try:
        connection.ensure_connection(max_retries=2)
    except Exception as exc:
        pytest.fail(f"these tests need RabbitMQ at {AMQP_URL} (set CRS_AMQP_URL): {exc}")
    try:
        yield connection
    finally:
        connection.release()


@pytest.fixture
def queue(amqp: Connection) -> Iterator[str]:
    name = f"crs-test-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        channel = amqp.channel()
        for q in (name, f"{name}-other"):
            try:
                channel.queue_delete(q)
            except amqp.channel_errors:
                channel = amqp.channel()
        channel.close()


server = server_fixture(doc="A private redis-server for one test (a module's own ``server`` fixture takes its place).")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three masters, no replicas, one per test module; tests that must not see another's keys flush it."""
    c = Cluster(masters=3).start()
    try:
        yield c
    finally:
        c.stop()

"""Deprecated path, kept for one release: the test processes moved to ``celery_redis_stream.testing.processes``.

``python -m celery_redis_stream.harness -A app worker ...`` still runs a worker that reports its readiness.
"""

from __future__ import annotations

from .testing.processes import (
    Cluster,
    Ready,
    RedisServer,
    WorkerProcess,
    cluster_admin,
    cluster_port,
    free_port,
    main,
    wait_for,
)

__all__ = ["Cluster", "Ready", "RedisServer", "WorkerProcess", "cluster_admin", "cluster_port", "free_port", "wait_for"]

if __name__ == "__main__":
    main()

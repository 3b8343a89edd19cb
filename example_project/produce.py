#!/usr/bin/env python
"""Append a few entries to the example streams with celery_redis_stream.produce (XADD).

    REDIS_URL=redis://localhost:6379/0 python example_project/produce.py

Any Redis client does the same: `XADD orders * order_id 42 amount 9.90`.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import redis

from celery_redis_stream import produce

EXAMPLES: list[tuple[str, dict[str, str]]] = [
    ("orders", {"order_id": "42", "amount": "9.90"}),
    ("orders", {"order_id": "43", "amount": "24.50"}),
    ("orders", {"order_id": "44", "amount": "3.20"}),
    ("payments", {"order_id": "42", "amount": "9.90", "method": "card"}),
    ("payments", {"order_id": "43", "amount": "24.50", "method": "sepa"}),
    ("shipments", {"order_id": "42", "carrier": "ups"}),
    ("audit", {"event": "order_created", "order_id": "44"}),
]


def produce_examples(client: Any) -> list[tuple[str, str, dict[str, str]]]:
    """XADD every example entry; returns (stream, entry id, fields) for each."""
    return [(stream, produce(client, stream, fields, maxlen=10000), fields) for stream, fields in EXAMPLES]


def main() -> int:
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    client = redis.Redis.from_url(url)
    for stream, entry_id, fields in produce_examples(client):
        print(f"XADD {stream} {entry_id} {fields}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

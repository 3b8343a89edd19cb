"""A FastStream producer process: run by the tests with the python of a venv holding one FastStream release.

    python faststream_producer.py REDIS_URL STREAM MESSAGES_JSON

MESSAGES_JSON is a list of ``{"kind": "dict" | "model" | "str", "value": ..., "correlation_id": ...}``;
each is published with ``RedisBroker.publish(..., stream=STREAM)`` as an application would.
Prints the FastStream version. Imports nothing of the project (it is not installed in that venv).
"""

from __future__ import annotations

import asyncio
import json
import sys
from importlib.metadata import version
from typing import Any

from faststream.redis import RedisBroker
from pydantic import BaseModel


class Order(BaseModel):
    order_id: int
    amount: float


def body(message: dict[str, Any]) -> Any:
    if message["kind"] == "model":
        return Order(**message["value"])
    return message["value"]


async def main(url: str, stream: str, messages: list[dict[str, Any]]) -> None:
    async with RedisBroker(url) as broker:
        for message in messages:
            await broker.publish(body(message), stream=stream, correlation_id=message["correlation_id"])
    print(version("faststream"))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))

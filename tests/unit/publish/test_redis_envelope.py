"""The fast path's envelope: one encoding per batch that gives json.dumps's exact text per message."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import cast

from celery_redis_stream.publish.redis_envelope import Envelope, build, uuid4_strings

SAMPLE = ("Ym9keQ==", "tid-1", "1-0", "({'a': '1'},)", "{}", "tag-1")


def envelope_for(dumps: Callable[[object], str], headers: dict[str, object] | None = None) -> Envelope | None:
    return build(
        dumps,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers or {"lang": "py", "task": "shop.handle", "id": "x", "root_id": "x"},
        properties={"correlation_id": "x", "priority": 0},
        id_header_keys=("id", "root_id"),
        id_property_keys=("correlation_id",),
        sample=SAMPLE,
    )


def expected(values: tuple[str, ...]) -> str:
    body, task_id, entry_id, argsrepr, kwargsrepr, tag = values
    headers = {"lang": "py", "task": "shop.handle", "id": task_id, "root_id": task_id,
               "redis_stream_id": entry_id, "argsrepr": argsrepr, "kwargsrepr": kwargsrepr}  # fmt: skip
    properties = {"correlation_id": task_id, "priority": 0, "delivery_tag": tag}
    message = {"body": body, "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
               "properties": properties}  # fmt: skip
    return json.dumps(message)


def test_filled_envelopes_are_exactly_what_json_dumps_gives() -> None:
    envelope = envelope_for(json.dumps)
    assert envelope is not None
    for values in (SAMPLE, ("b", 't\u00e9"\\', "2-1", "%s %d", "{'k': '\\n'}", "t2")):
        assert envelope.fill(*values) == expected(values)
        json.loads(envelope.fill(*values))


def test_an_encoder_that_disagrees_gets_no_envelope() -> None:
    calls = iter(range(1000))

    def unstable(value: object) -> str:
        return json.dumps(value) + (" " * next(calls))  # never the same text twice

    assert envelope_for(unstable) is None
    assert envelope_for(cast(Callable[[object], str], lambda v: 1 / 0)) is None


def test_uuid4_strings_are_random_version_4_uuids() -> None:
    ids = uuid4_strings(50)
    parsed = [uuid.UUID(i) for i in ids]
    assert len(set(ids)) == 50 and all(u.version == 4 and u.variant == uuid.RFC_4122 for u in parsed)
    assert [str(u) for u in parsed] == ids and uuid4_strings(0) == []

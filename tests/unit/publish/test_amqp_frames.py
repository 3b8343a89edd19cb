"""The RabbitMQ fast path's bytes equal py-amqp's own encoding: content headers and publish frames, no broker."""

from __future__ import annotations

from amqp import Message, spec
from amqp.method_framing import frame_writer
from amqp.serialization import dumps as amqp_dumps
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_redis_stream.publish.amqp_frames import (
    ARGSREPR,
    ENTRY_ID,
    KWARGSREPR,
    TASK_ID,
    PrebuiltMessage,
    build,
    publisher,
)

KINDS = {
    ("headers", "id"): TASK_ID,
    ("headers", "root_id"): TASK_ID,
    ("headers", "redis_stream_id"): ENTRY_ID,
    ("headers", "argsrepr"): ARGSREPR,
    ("headers", "kwargsrepr"): KWARGSREPR,
    ("properties", "correlation_id"): TASK_ID,
}


def celery_headers(task_id: str, entry_id: str, argsrepr: str, kwargsrepr: str) -> dict[str, object]:
    return {
        "lang": "py", "task": "shop.handle", "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": task_id,
        "parent_id": None, "argsrepr": argsrepr, "kwargsrepr": kwargsrepr, "origin": "gen1@host",
        "ignore_result": False, "redis_stream": "orders", "redis_stream_id": entry_id,
    }  # fmt: skip


def properties(task_id: str) -> dict[str, object]:
    return {
        "content_type": "application/json", "content_encoding": "utf-8", "delivery_mode": 2,
        "priority": 0, "correlation_id": task_id, "reply_to": "",
    }  # fmt: skip


def py_amqp(values: tuple[str, str, str, str]) -> bytes:
    message = Message(b"", application_headers=celery_headers(*values), **properties(values[TASK_ID]))
    encoded: bytes = message._serialize_properties()
    return encoded


SAMPLE = ("2b1f6a56-5d8e-5b0c-9f8e-000000000001", "1700000000000-0", "[{'order_id': '1'}]", "{}")


@settings(max_examples=25, deadline=None)
@given(
    task_id=st.uuids().map(str),
    entry_id=st.from_regex(r"\A[0-9]{1,13}-[0-9]{1,5}\Z"),
    argsrepr=st.text(max_size=300),
    kwargsrepr=st.text(max_size=40),
)
def test_a_filled_header_is_py_amqps_encoding_of_that_message(
    task_id: str, entry_id: str, argsrepr: str, kwargsrepr: str
) -> None:
    header = build(celery_headers(*SAMPLE), properties(SAMPLE[TASK_ID]), KINDS, SAMPLE)
    assert header is not None
    values = (task_id, entry_id, argsrepr, kwargsrepr)
    assert header.fill(*values) == py_amqp(values)


def test_a_header_whose_values_cannot_be_found_is_refused_and_py_amqp_encodes_each_message() -> None:
    headers = celery_headers(*SAMPLE)
    assert build(headers, properties(SAMPLE[TASK_ID]), {("headers", "missing"): 7}, SAMPLE) is None  # no such value


def test_publish_frames_are_py_amqps_for_small_and_multi_frame_bodies() -> None:
    for body in (b"", b"{}", b"x" * 10_000, bytes(range(256)) * 300):
        sample = Message(body, application_headers=celery_headers(*SAMPLE), **properties(SAMPLE[TASK_ID]))
        made = publisher(1, 4096, "", "celery", sample)
        assert made is not None

        class Capture:
            frame_max = 4096
            bytes_sent = 0
            written: list[bytes] = []

            def write(self, data: bytes) -> None:
                self.written.append(bytes(data))

        capture = Capture()
        capture.written = []
        args = amqp_dumps("Bssbb", (0, "", "celery", True, False))
        frame_writer(capture, capture)(1, 1, spec.Basic.Publish, args, sample)
        assert made.frames(sample._serialize_properties(), body) == b"".join(capture.written)


def test_a_prebuilt_message_answers_with_the_header_it_was_given() -> None:
    message = PrebuiltMessage(b"body", b"\x01\x02", {"redis_stream_id": "1-0"})
    assert message._serialize_properties() == b"\x01\x02"
    assert message.properties["application_headers"] == {"redis_stream_id": "1-0"}

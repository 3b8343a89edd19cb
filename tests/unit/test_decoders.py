"""Decoders (stream_decode / per-stream decode): raw bytes, JSON in a field, FastStream's formats.

The FastStream values here are bytes FastStream itself wrote (0.5.48 and
0.7.8 publishing to a stream, copied from XRANGE); tests/e2e/test_decode.py
runs those releases as producer processes against real workers.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_redis_stream import EntryError, StreamConfigError, StreamEntry
from celery_redis_stream.config import load_config
from celery_redis_stream.entry import RawEntry, build_call, decode_as
from celery_redis_stream.testing import DeadLettered, preview, run

from .client.test_faststream import FS05_DICT, FS05_TEXT, FS07_DICT, FS07_TEXT, binary_message


def raw(*pairs: bytes) -> RawEntry:
    return RawEntry("s", "1-0", tuple(pairs))


def entry(decoder: str, *pairs: bytes) -> StreamEntry:
    return decode_as(decoder, raw(*pairs), max_bytes=10_000)


def reason_of(decoder: str, *pairs: bytes) -> tuple[str, str]:
    with pytest.raises(EntryError) as info:
        entry(decoder, *pairs)
    return info.value.reason, info.value.error


def test_raw_keeps_every_byte_pair_in_order_with_duplicates_and_no_text_fields() -> None:
    got = entry("raw", b"k", b"\xff\x00", b"k", b"\x89BIN", b"\xfe", b"")
    assert got.fields is None
    assert got.raw_fields == ((b"k", b"\xff\x00"), (b"k", b"\x89BIN"), (b"\xfe", b""))


def test_utf8_entries_carry_their_raw_fields_too() -> None:
    got = entry("utf-8", b"a", b"1", "é".encode(), b"2")
    assert got.fields == {"a": "1", "é": "2"}
    assert got.raw_fields == ((b"a", b"1"), ("é".encode(), b"2"))
    assert got.body is None and got.headers is None


def test_json_field_becomes_the_argument_in_every_call_shape() -> None:
    got = entry("json:payload", b"payload", b'{"order_id": 42, "tags": ["a"]}', b"source", b"node")
    assert got.body == {"order_id": 42, "tags": ["a"]} and got.fields == {"source": "node"}
    assert build_call(got, "fields", None, body=True) == ([{"order_id": 42, "tags": ["a"]}], {})
    assert build_call(got, "kwargs", None, body=True) == ([], {"order_id": 42, "tags": ["a"]})
    assert build_call(got, "entry", None, body=True) == (["s", "1-0", {"order_id": 42, "tags": ["a"]}], {})
    scalar = entry("json:payload", b"payload", b"[1, 2]")
    assert build_call(scalar, "fields", None, body=True) == ([[1, 2]], {})
    with pytest.raises(EntryError, match="needs a JSON object"):
        build_call(scalar, "kwargs", None, body=True)


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        ((b"other", b"1"), "field 'payload' (decode 'json:payload') is missing"),
        ((b"payload", b"{not json"), "field 'payload' is not JSON"),
        ((b"payload", b""), "field 'payload' is not JSON"),
    ],
)
def test_json_field_missing_or_not_json_is_a_decode_dead_letter(pairs: tuple[bytes, ...], error: str) -> None:
    reason, message = reason_of("json:payload", *pairs)
    assert reason == "decode" and error in message


@pytest.mark.parametrize(
    ("value", "body", "correlation"),
    [(FS05_DICT, {"a": 1}, "c1"), (FS05_TEXT, "hello", "c3"), (FS07_DICT, {"a": 1}, "c1"), (FS07_TEXT, "hello", "c3")],
    ids=["0.5-json", "0.5-text", "0.7-json", "0.7-text"],
)
def test_faststream_messages_give_their_body_and_headers(value: bytes, body: object, correlation: str) -> None:
    got = entry("faststream", b"__data__", value)
    assert got.body == body and got.fields == {}
    assert got.headers is not None and got.headers["correlation_id"] == correlation


def app_with(**conf: Any) -> Celery:
    app = Celery("dec", broker="redis://127.0.0.1:9/0", set_as_current=False)

    @app.task(name="dec.record", bind=True, shared=False)
    def record(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs, "correlation": self.request.get("faststream_correlation_id")}

    app.conf.update(**conf)
    return app


def hex_pairs(entry: StreamEntry) -> tuple[list[Any], dict[str, Any]]:
    return [[[n.hex(), v.hex()] for n, v in entry.raw_fields]], {"fields": entry.fields}


TASKS = {
    "fs": {"task": "dec.record", "decode": "faststream"},
    "js": {"task": "dec.record", "decode": "json:payload", "call": "kwargs"},
    "bin": {"task": "dec.record", "decode": "raw", "converter": "tests.unit.test_decoders:hex_pairs"},
}


def test_preview_and_run_decode_as_the_worker_does() -> None:
    app = app_with(stream_tasks=TASKS)
    shown = preview(app, "fs", [(b"__data__", FS07_DICT)])
    assert shown.args == [{"a": 1}] and shown.dead_letter is None
    assert shown.headers["correlation_id"] == shown.headers["faststream_correlation_id"] == "c1"
    assert run(app, "fs", [(b"__data__", FS05_TEXT)]).get() == {"args": ["hello"], "kwargs": {}, "correlation": "c3"}
    assert preview(app, "js", {"payload": '{"n": 1}'}).kwargs == {"n": 1}
    binary = preview(app, "bin", [(b"k", b"\xff"), (b"k", b"\x00")])
    assert binary.args == [[["6b", "ff"], ["6b", "00"]]] and binary.kwargs == {"fields": None}
    bad = preview(app, "js", {"payload": "nope"})
    assert bad.dead_letter is not None and bad.dead_letter.reason == "decode"
    with pytest.raises(DeadLettered, match="decode"):
        run(app, "fs", {"a": "b"})


def test_faststream_trace_context_in_its_headers_moves_to_the_message_headers() -> None:
    traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    value = binary_message([(b"correlation_id", b"c"), (b"traceparent", traceparent)], b"x")
    shown = preview(app_with(stream_tasks=TASKS), "fs", [(b"__data__", value)])
    assert shown.headers["traceparent"] == traceparent.decode() and shown.args == ["x"]


def test_stream_decode_applies_to_every_stream_and_a_stream_may_say_otherwise() -> None:
    app = app_with(
        stream_decode="json:data", stream_tasks={"a": "dec.record", "b": {"task": "dec.record", "decode": "utf-8"}}
    )
    decoders = {sc.stream: sc.decode for sc in load_config(app).streams}
    assert decoders == {"a": "json:data", "b": "utf-8"}
    assert load_config(app_with(stream_tasks={"a": "dec.record"})).streams[0].decode == "utf-8"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"stream_tasks": {"bin": {"task": "dec.record", "decode": "raw"}}}, "stream_tasks 'decode'"),
        ({"stream_tasks": {"s": {"task": "dec.record", "decode": "json:"}}}, "needs the name of the field"),
        ({"stream_tasks": {"s": {"task": "dec.record", "decode": "utf8"}}}, "expected one of"),
        ({"stream_tasks": {"s": "dec.record"}, "stream_decode": "xml"}, "stream_decode"),
        ({"stream_tasks": {"s": "dec.record"}, "stream_decode": "raw"}, "stream_decode.*converter"),
    ],
)
def test_bad_decode_settings_stop_the_worker_naming_setting_and_stream(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(StreamConfigError, match=message) as info:
        load_config(app_with(**conf))
    assert "'bin'" in str(info.value) or "'s'" in str(info.value)


DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON; json.loads raises RecursionError on it, not ValueError


@pytest.mark.parametrize(
    ("decoder", "pairs"),
    [
        ("json:j", (b"j", DEEP)),
        ("faststream", (b"__data__", DEEP)),  # the envelope itself
        ("faststream", (b"__data__", b'{"data": "' + DEEP + b'", "headers": {"content-type": "application/json"}}')),
        ("faststream", (b"__data__", binary_message([(b"content-type", b"application/json")], DEEP))),
    ],
)
def test_json_nested_too_deep_is_a_decode_dead_letter(decoder: str, pairs: tuple[bytes, ...]) -> None:
    with pytest.raises(EntryError) as info:
        decode_as(decoder, raw(*pairs), max_bytes=10**6)
    assert info.value.reason == "decode" and "recursion" in info.value.error


@pytest.mark.parametrize(
    ("pairs", "error"),
    [
        ((b"__data__", FS05_TEXT, b"\xff", b"x"), "not_utf8"),
        ((b"__data__", FS05_TEXT, b"a", b"1", b"a", b"2"), "duplicate_field"),
    ],
)
def test_faststream_entry_with_other_bad_fields_is_a_decode_dead_letter(pairs: tuple[bytes, ...], error: str) -> None:
    reason, message = reason_of("faststream", *pairs)
    assert reason == "decode" and error in message


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ((b"j", b"\xff\xfe{}"), "decode"),  # the JSON field not UTF-8: not JSON
        ((b"j", b"[1]", b"j", b"[2]"), "decode"),  # which one is the argument?
        ((b"j", b"[1]", b"other", b"\xff"), "not_utf8"),  # another field: as under utf-8
        ((b"j", b"[1]", b"o", b"1", b"o", b"2"), "duplicate_field"),
    ],
)
def test_json_field_not_utf8_or_repeated_is_a_decode_dead_letter(pairs: tuple[bytes, ...], reason: str) -> None:
    assert reason_of("json:j", *pairs)[0] == reason

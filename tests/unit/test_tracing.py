"""Trace fields out of the entry, into the headers; the producer's current context into new entries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider

from celery_redis_stream.entry import StreamEntry
from celery_redis_stream.tracing import NO_TRACE, attach_trace, detach_trace, inject_current, split_trace

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def tracer() -> Iterator[trace.Tracer]:
    yield TracerProvider().get_tracer("unit")


def entry(**fields: str) -> StreamEntry:
    return StreamEntry("orders", "1-0", dict(fields))


def test_split_trace_takes_the_named_fields_out_of_the_entry() -> None:
    e = entry(order_id="42", traceparent=TRACEPARENT, tracestate="a=b")
    assert split_trace(e, ("traceparent", "tracestate")) == {"traceparent": TRACEPARENT, "tracestate": "a=b"}
    assert e.fields == {"order_id": "42"}


def test_without_trace_fields_nothing_is_built_or_taken() -> None:
    e = entry(order_id="42")
    assert split_trace(e, ("traceparent",)) is NO_TRACE
    assert split_trace(entry(traceparent=TRACEPARENT), ()) is NO_TRACE
    assert e.fields == {"order_id": "42"}


def test_attach_makes_the_entrys_context_current_until_detached() -> None:
    assert attach_trace({}) is None  # no trace: nothing attached
    detach_trace(None)
    token = attach_trace({"traceparent": TRACEPARENT})
    try:
        span = trace.get_current_span().get_span_context()
        assert f"{span.trace_id:032x}" == TRACEPARENT.split("-")[1]
    finally:
        detach_trace(token)
    assert not trace.get_current_span().get_span_context().is_valid


def test_inject_current_adds_the_active_span_and_keeps_the_callers_fields(tracer: trace.Tracer) -> None:
    fields: dict[str | bytes, str] = {"order_id": "42"}
    inject_current(fields)
    assert fields == {"order_id": "42"}  # no active span: nothing added
    with tracer.start_as_current_span("produce") as span:
        inject_current(fields)
        mine: dict[str | bytes, str] = {b"traceparent": "mine"}
        inject_current(mine)
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert str(fields["traceparent"]).split("-")[1] == trace_id
    assert mine == {b"traceparent": "mine"}
    assert context.get_current() is not None

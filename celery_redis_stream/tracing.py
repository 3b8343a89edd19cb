"""Trace context: entry fields that travel as task message headers; OpenTelemetry imported lazily, never required."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Protocol

from .entry import StreamEntry

__all__ = ["CORRELATION_HEADERS", "attach_trace", "detach_trace", "inject_current", "producer_headers", "split_trace"]

NO_TRACE: dict[str, str] = {}


def split_trace(entry: StreamEntry, names: tuple[str, ...]) -> dict[str, str]:
    """Take the fields named in ``stream_trace_fields`` out of ``entry.fields`` and return them.

    Called on the entry ``decode()`` has just made (its ``fields`` dict is
    not shared yet), before the call shape is built, so a trace field never
    reaches the task's arguments, whatever the shape or converter; the caller
    puts them in the message headers.
    """
    fields: dict[str, str] = entry.fields  # type: ignore[assignment]  # never called on a raw entry (None)
    if not names or fields.keys().isdisjoint(names):
        return NO_TRACE
    return {name: fields.pop(name) for name in names if name in fields}


#: FastStream's correlation id travels in these task message headers: ``correlation_id`` as the
#: producer named it, and ``faststream_correlation_id``, which a task can read
#: (``self.request.faststream_correlation_id``): a Celery worker sets ``request.correlation_id``
#: to the task id from the message properties, whatever the headers say.
CORRELATION_HEADERS = ("correlation_id", "faststream_correlation_id")


def producer_headers(headers: Mapping[str, str], names: tuple[str, ...], trace: dict[str, str]) -> dict[str, str]:
    """``trace`` with what the producer's own message headers (FastStream's) give the task message.

    Its ``correlation_id`` (see CORRELATION_HEADERS) and the trace context
    fields named in ``stream_trace_fields`` (FastStream's OpenTelemetry
    middleware writes ``traceparent`` there). A trace field of the entry
    itself wins over the header.
    """
    out = dict(trace)
    correlation = headers.get("correlation_id")
    if correlation:
        for name in CORRELATION_HEADERS:
            out[name] = correlation
    for name in names:
        if name in headers and name not in out:
            out[name] = headers[name]
    return out


#: opentelemetry's context, propagate and trace modules.
Otel = tuple[ModuleType, ModuleType, ModuleType]

_modules: list[Otel | None] = []  # [(context, propagate, trace) or None], resolved on first use


class Carrier(Protocol):
    """Entry fields a trace context can be added to: a dict whose names and values may be str."""

    def __contains__(self, key: object, /) -> bool: ...

    def __setitem__(self, key: str, value: str, /) -> None: ...


def _otel() -> Otel | None:
    # Imported once and lazily: OpenTelemetry is optional, and a failed import
    # is not cached by Python (it would search sys.path again per entry).
    if not _modules:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError:
            _modules.append(None)
        else:
            _modules.append((context, propagate, trace))
    return _modules[0]


def attach_trace(trace: Mapping[str, str]) -> object | None:
    """Make the entry's trace context current for one ``send_task``; returns what :func:`detach_trace` needs.

    A ``before_task_publish`` receiver (opentelemetry-instrumentation-celery)
    starts a publish span in the current context and writes *its* context
    into the headers: without this, that span would start a new trace in the
    reader thread and overwrite the entry's ``traceparent``. Does nothing
    without a trace or without OpenTelemetry.
    """
    if not trace:
        return None
    otel = _otel()
    if otel is None:
        return None
    context, propagate, _ = otel
    token: object = context.attach(propagate.extract(trace))
    return token


def detach_trace(token: object | None) -> None:
    otel = _otel() if token is not None else None
    if otel is not None:
        otel[0].detach(token)


def inject_current(fields: Carrier) -> None:
    """Add the current trace context (W3C ``traceparent``/``tracestate``) to ``fields``.

    Does nothing when OpenTelemetry is not installed or no span is active;
    fields the caller set are kept.
    """
    otel = _otel()
    if otel is None:
        return
    _, propagate, trace = otel
    if not trace.get_current_span().get_span_context().is_valid:
        return
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    for key, value in carrier.items():
        if key not in fields and key.encode() not in fields:
            fields[key] = value

"""tests/workerapp.py with OpenTelemetry: the SDK and opentelemetry-instrumentation-celery, spans kept in the ledger.

Every finished span is RPUSHed as JSON to the ledger list ``spans`` (a
synchronous processor: a span is there once it ended), so a test can follow
a trace from its producer through the bridge into the task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.workerapp import app, ledger

__all__ = ["app"]


class LedgerExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            record: dict[str, Any] = {
                "name": span.name,
                "kind": span.kind.name,
                "trace_id": f"{ctx.trace_id:032x}",
                "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
                "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
            }
            ledger().rpush("spans", json.dumps(record))
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(LedgerExporter()))
trace.set_tracer_provider(provider)
CeleryInstrumentor().instrument()

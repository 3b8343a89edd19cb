"""benchmarks/benchapp.py with OpenTelemetry: the SDK and opentelemetry-instrumentation-celery, spans discarded.

A BatchSpanProcessor, as production set-ups use, in front of an exporter that
drops the spans: what is measured is the instrumentation, not an exporter.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.benchapp import app

__all__ = ["app"]


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(Discard()))
trace.set_tracer_provider(provider)
CeleryInstrumentor().instrument()

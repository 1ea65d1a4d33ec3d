"""``python -m durable_server.bench_tracing <durable arguments>``: the ``durable`` CLI with
tracing on, for ``make bench``'s "tracing" variant.

Every span is made and exported as with a real collector (the SDK's batch processor, as
the OTLP exporter uses), but to a sink in memory that only counts them, so the figure is
the engine's cost of tracing, not a collector's or the network's.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from durable_server.cli import main


class CountingExporter(SpanExporter):
    """Takes spans as an exporter does, and keeps their count."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


if __name__ == "__main__":
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(CountingExporter()))
    trace.set_tracer_provider(provider)
    sys.exit(main())

"""OpenTelemetry tracing: one trace per invocation, from the caller's Invoke to its end.

Only the OpenTelemetry API is imported here: without an SDK installed and configured every
span is a no-op (a few hundred nanoseconds; ``make bench`` measures it). The trace context
travels as W3C ``traceparent``/``tracestate`` strings:

- the caller's gRPC metadata -> the control plane's ``Invoke`` span (a SERVER span);
- that span's context -> the invocation record (``trace_context``), so every attempt, after
  any number of suspensions, wake-ups, crashes and redeliveries, is a child of it;
- an attempt span per attempt, a span per step the attempt runs (a step replayed from the
  journal is not run, so it has no new span);
- a ``ctx.call``/``ctx.send`` step's span -> the callee's record;
- a gRPC call over NATS: ``Grpc-Md-traceparent`` headers -> a SERVER span in the service.

:func:`configure_from_env` (called by ``durable worker``, ``durable server`` and
``durable dev``) sets up the SDK and the OTLP exporter from the standard ``OTEL_*``
variables when the ``otel`` extra is installed and an exporter is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = [
    "Span",
    "SpanKind",
    "Status",
    "StatusCode",
    "annotate",
    "configure_from_env",
    "context_of",
    "context_of_metadata",
    "current_carrier",
    "enabled",
    "metadata_with_context",
    "span",
    "stamp",
]

log = logging.getLogger("durable.tracing")

tracer = trace.get_tracer("durable")

#: The keys of a trace context in a carrier (what the W3C propagator writes).
_KEYS = ("traceparent", "tracestate")


def current_carrier() -> dict[str, str]:
    """The current span's context as W3C headers (empty when nothing is being traced)."""
    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    return carrier


def stamp(target: MutableMapping[str, str]) -> None:
    """Write the current trace context into a record's ``trace_context`` map."""
    carrier = current_carrier()
    if carrier:
        target.clear()
        target.update(carrier)


def annotate(attributes: Mapping[str, Any]) -> None:
    """Add attributes to the current span (a no-op when nothing records)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(dict(attributes))


def context_of(carrier: Mapping[str, str]) -> Context | None:
    """The context a stored or received carrier names; None when it names none."""
    if not carrier.get("traceparent"):
        return None
    return propagate.extract(dict(carrier))


def context_of_metadata(metadata: Sequence[tuple[str, Any]] | None) -> Context | None:
    """The trace context of gRPC metadata (``traceparent`` from a client in any language)."""
    found = {k.lower(): v for k, v in metadata or () if k.lower() in _KEYS and isinstance(v, str)}
    return context_of(found)


def metadata_with_context(metadata: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``metadata`` plus the current trace context, for an outgoing call."""
    return [*[(k, v) for k, v in metadata if k.lower() not in _KEYS], *current_carrier().items()]


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: Context | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Span]:
    """A span made current for the block; an exception that escapes marks it as an error
    (BaseExceptions, the engine's own signals such as suspension, do not)."""
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as err:
            if current.is_recording():
                current.set_status(Status(StatusCode.ERROR, f"{type(err).__name__}: {err}"))
            raise


def enabled() -> bool:
    """Whether an SDK tracer provider is installed (spans may go somewhere)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def configure_from_env(service_name: str) -> bool:
    """Install the OpenTelemetry SDK with the exporter ``OTEL_TRACES_EXPORTER`` names
    (``otlp``, ``console``; ``none`` turns it off), when an exporter or an OTLP endpoint
    is set, unless a provider was installed already (by the application). ``service_name``
    when ``OTEL_SERVICE_NAME`` is unset. True when it installed one."""
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name == "none" or not (exporter_name or endpoint):
        return False
    if enabled():
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning(
            "OTEL_* asks for traces but the OpenTelemetry SDK is not installed "
            "(pip install 'durable-nats[otel]'); tracing stays off"
        )
        return False
    exporter: Any
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing to %s as %s", exporter_name or "otlp", name)
    return True

"""OpenTelemetry tracing for one service process, and the W3C trace context that stream messages
and database rows carry between processes.

A span's context crosses a process boundary in three ways: gRPC metadata (the interceptors of
pm_grpc), stream message headers plus the message's own `trace_context` map (pm_streams), and the
`investigations.trace_context` column, which lets work that no message caused (the reconciler's
re-drives, deliveries) continue an investigation's trace. `trace_context()` captures the current
span's context as such a map; `parent_context()` turns a map back into a parent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

PROTOCOLS = ("http/protobuf", "grpc")
TRACE_CONTEXT_KEYS = ("traceparent", "tracestate")

# Messages and rows always carry W3C trace context (the proto contract says so), whatever
# OTEL_PROPAGATORS chooses for gRPC metadata; baggage is never copied into them.
_W3C = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Tracing:
    """The provider this process traces with; `shutdown()` flushes pending spans."""

    provider: TracerProvider
    # Whether spans leave the process (an OTLP endpoint or a test exporter is configured).
    exporting: bool = False

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer for one component of the service."""
        return self.provider.get_tracer(name)

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        self.provider.shutdown()


def otlp_exporter(protocol: str, endpoint: str | None, traces_endpoint: str | None = None) -> SpanExporter | None:
    """The OTLP span exporter for `protocol`, or None when neither endpoint is set.

    `endpoint` is the collector's base address (OTEL_EXPORTER_OTLP_ENDPOINT: OTLP/HTTP appends
    /v1/traces to it); `traces_endpoint` (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is used as given.
    Headers, timeout, compression and certificates come from the standard OTEL_EXPORTER_OTLP_*
    variables, which the exporters read themselves.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTLP protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if not (traces_endpoint or endpoint):
        return None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=traces_endpoint or endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=traces_endpoint or f"{(endpoint or '').rstrip('/')}/v1/traces")


def configure_tracing(
    service_name: str,
    version: str,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    sample_ratio: float = 1.0,
    *,
    otlp_traces_endpoint: str | None = None,
    otlp_protocol: str = "http/protobuf",
) -> Tracing:
    """Create the process's tracer provider and make it the global one.

    Spans are exported over OTLP when an endpoint is set (or to `exporter`, which tests use). A
    trace this process starts is recorded with probability `sample_ratio`; a span whose parent
    came with the request or message follows the parent's decision. Without an exporter nothing
    is recorded at all: spans are non-recording shells that still carry trace and span ids, so
    log lines and propagated context keep them, at next to no cost.
    """
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be between 0 and 1, got {sample_ratio}")
    if exporter is None:
        exporter = otlp_exporter(otlp_protocol, otlp_endpoint, otlp_traces_endpoint)
    sampler: Sampler = ParentBased(TraceIdRatioBased(sample_ratio)) if exporter is not None else ALWAYS_OFF
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": version}),
        sampler=sampler,
    )
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Tracing(provider, exporting=exporter is not None)


def trace_context(context: Context | None = None) -> dict[str, str]:
    """The W3C trace context (traceparent, tracestate) of the current span, or of `context`; {}
    when there is no valid span."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    return carrier


def parent_context(carrier: Mapping[str, str] | None) -> Context:
    """The parent a span should start under to continue the trace `carrier` names; an empty
    context (the span starts a new trace) when it names none or is malformed."""
    if not carrier or "traceparent" not in carrier:
        return Context()
    context = _W3C.extract({k: v for k, v in carrier.items() if k in TRACE_CONTEXT_KEYS})
    return context if trace.get_current_span(context).get_span_context().is_valid else Context()

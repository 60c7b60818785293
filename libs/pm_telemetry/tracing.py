"""OpenTelemetry tracing for one service process."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased


@dataclass(frozen=True, slots=True)
class Tracing:
    """The provider this process traces with; `shutdown()` flushes pending spans."""

    provider: TracerProvider

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer for one component of the service."""
        return self.provider.get_tracer(name)

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        self.provider.shutdown()


def configure_tracing(
    service_name: str,
    version: str,
    otlp_endpoint: str | None = None,
    exporter: SpanExporter | None = None,
    sample_ratio: float = 1.0,
) -> Tracing:
    """Create the process's tracer provider and make it the global one.

    Spans are exported over OTLP/HTTP when `otlp_endpoint` is set (or to `exporter`, which tests
    use); otherwise they are created, propagated and dropped, so trace ids still reach the logs.
    A trace this process starts is recorded with probability `sample_ratio`; a span whose parent
    came with the request follows the parent's decision. Unrecorded spans still carry trace ids
    (logs, propagation) but cost next to nothing, which matters under load.
    """
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be between 0 and 1, got {sample_ratio}")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": version}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Tracing(provider)

"""OpenTelemetry tracing for one service process."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


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
) -> Tracing:
    """Create the process's tracer provider and make it the global one.

    Spans are exported over OTLP/HTTP when `otlp_endpoint` is set (or to `exporter`, which tests
    use); otherwise they are created, propagated and dropped, so trace ids still reach the logs.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, "service.version": version}))
    if exporter is None and otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint.rstrip("/") + "/v1/traces")
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return Tracing(provider)

"""Logs, metrics and traces, set up by each service's composition root.

- `configure_logging`: JSON lines with service, trace and span ids and investigation id; values
  under secret-looking keys are redacted.
- `MetricsServer`: a Prometheus registry owned by the service (no import-time globals) served
  over HTTP on its own port.
- `configure_tracing`: an OpenTelemetry tracer provider, exporting OTLP when an endpoint is set;
  `trace_context` and `parent_context` carry a span's W3C context through messages and rows.
"""

from pm_telemetry.logs import bind_investigation, configure_logging, current_investigation_id, redact
from pm_telemetry.metrics import MetricsServer
from pm_telemetry.tracing import Tracing, configure_tracing, otlp_exporter, parent_context, trace_context

__all__ = [
    "MetricsServer",
    "Tracing",
    "bind_investigation",
    "configure_logging",
    "configure_tracing",
    "current_investigation_id",
    "otlp_exporter",
    "parent_context",
    "redact",
    "trace_context",
]

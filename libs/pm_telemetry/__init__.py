"""Logs, metrics and traces, set up by each service's composition root.

- `configure_logging`: JSON lines with service, trace id and investigation id; values under
  secret-looking keys are redacted.
- `MetricsServer`: a Prometheus registry owned by the service (no import-time globals) served
  over HTTP on its own port.
- `configure_tracing`: an OpenTelemetry tracer provider, exporting OTLP when an endpoint is set.
"""

from pm_telemetry.logs import bind_investigation, configure_logging, current_investigation_id, redact
from pm_telemetry.metrics import MetricsServer
from pm_telemetry.tracing import Tracing, configure_tracing

__all__ = [
    "MetricsServer",
    "Tracing",
    "bind_investigation",
    "configure_logging",
    "configure_tracing",
    "current_investigation_id",
    "redact",
]

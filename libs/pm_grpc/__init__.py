"""gRPC plumbing every service shares.

- `GrpcServer`: a grpc.aio server with health checking (NOT_SERVING until the service's
  dependencies answer), reflection, the interceptor chain (tracing, metrics, error mapping) and
  graceful shutdown.
- `set_http_status`: the response metadata Envoy turns into HTTP status and body.
- `OpsServicer`: liveness and readiness (pm.ops.v1.OpsService) from dependency probes.
- `ServiceSpec` / `service_main`: the start-up and shutdown sequence of a service process.
- `open_channel`: a client channel with tracing and keepalive.
"""

from pm_grpc.client import open_channel
from pm_grpc.errors import ErrorMappingInterceptor, abort_with
from pm_grpc.http import HTTP_BODY_KEY, HTTP_STATUS_KEY, request_headers, set_http_status
from pm_grpc.ops import OpsServicer, Probe
from pm_grpc.runtime import BuildContext, ServiceRuntime, ServiceSpec, run_service, service_main
from pm_grpc.server import GrpcServer, ServiceRegistration

__all__ = [
    "HTTP_BODY_KEY",
    "HTTP_STATUS_KEY",
    "ErrorMappingInterceptor",
    "GrpcServer",
    "OpsServicer",
    "Probe",
    "ServiceRegistration",
    "ServiceRuntime",
    "ServiceSpec",
    "BuildContext",
    "abort_with",
    "open_channel",
    "run_service",
    "service_main",
    "request_headers",
    "set_http_status",
]

"""A grpc.aio server with health checking, reflection, interceptors and graceful shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter, Histogram

from pm_grpc.errors import ErrorMappingInterceptor
from pm_grpc.http import HTTP_STATUS_KEY, Context

log = logging.getLogger(__name__)

# RPCs that get spans: all but health checks and reflection, which probes and tools send every
# few seconds and which would bury the traces that matter.
TRACED = filters.negate(filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection")))

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """A servicer and the generated function that adds it to a server."""

    name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: object

    def register(self, server: grpc.aio.Server) -> None:
        """Attach the servicer to `server`."""
        self.add_to_server(self.servicer, server)


# The HTTP status Envoy's transcoder gives a REST client for each gRPC code, when the servicer
# states none itself (x-pm-http-status, pm_grpc.http).
_HTTP_OF_CODE = {
    "OK": "200", "CANCELLED": "499", "UNKNOWN": "500", "INVALID_ARGUMENT": "400", "DEADLINE_EXCEEDED": "504",
    "NOT_FOUND": "404", "ALREADY_EXISTS": "409", "PERMISSION_DENIED": "403", "RESOURCE_EXHAUSTED": "429",
    "FAILED_PRECONDITION": "400", "ABORTED": "409", "OUT_OF_RANGE": "400", "UNIMPLEMENTED": "501",
    "INTERNAL": "500", "UNAVAILABLE": "503", "DATA_LOSS": "500", "UNAUTHENTICATED": "401",
}  # fmt: skip


def http_code(grpc_code: str, trailing: Any) -> str:
    """The HTTP status a REST client of the call saw: the servicer's own, else the code's."""
    for key, value in trailing or ():
        if key == HTTP_STATUS_KEY:
            return str(value)
    return _HTTP_OF_CODE.get(grpc_code, "500")


class _MetricsInterceptor(grpc.aio.ServerInterceptor):
    """pm_grpc_server_handled_total and pm_grpc_server_handling_seconds per method and code, and
    pm_http_responses_total: each call's HTTP status as a REST client through Envoy sees it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._handled = Counter(
            "pm_grpc_server_handled",
            "RPCs completed on the server, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self._http = Counter(
            "pm_http_responses",
            "Completed unary RPCs by the HTTP status a REST client sees (Envoy's transcoding).",
            ["grpc_service", "grpc_method", "code"],
            registry=registry,
        )
        self._seconds = Histogram(
            "pm_grpc_server_handling_seconds",
            "Time to handle an RPC, by method.",
            ["grpc_service", "grpc_method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        # Per method: the handler it was given and the observed one built for it. The server
        # looks up the same handler object for every call of a method, so each call reuses the
        # wrapper and its bound metric children instead of building them again.
        self._observed: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        cached = self._observed.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        observed = self._observe(handler_call_details.method, handler)
        self._observed[handler_call_details.method] = (handler, observed)
        return observed

    def _observe(self, full_method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        service, _, method = full_method.lstrip("/").partition("/")
        # The aio server calls behaviours with an aio context; the stubs type them for sync ones.
        inner: Any = handler.unary_unary
        seconds = self._seconds.labels(service, method)
        handled: dict[str, Any] = {}
        responses: dict[str, Any] = {}

        async def observed(request: Any, context: Context) -> Any:
            start = time.perf_counter()
            try:
                return await inner(request, context)
            finally:
                code = _code_name(context.code())
                counter = handled.get(code)
                if counter is None:
                    counter = handled[code] = self._handled.labels(service, method, code)
                counter.inc()
                status = http_code(code, context.trailing_metadata())
                response = responses.get(status)
                if response is None:
                    response = responses[status] = self._http.labels(service, method, status)
                response.inc()
                seconds.observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _code_name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return grpc.StatusCode.OK.name


class GrpcServer:
    """Serves the given registrations plus health and reflection on one listen address."""

    def __init__(
        self,
        listen: str,
        registrations: Sequence[ServiceRegistration],
        *,
        metrics_registry: CollectorRegistry,
        tracer_provider: TracerProvider | None = None,
        max_message_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self._listen = listen
        self._registrations = tuple(registrations)
        self._health = health.aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = [
            aio_server_interceptor(tracer_provider=tracer_provider, filter_=TRACED),  # type: ignore[no-untyped-call]
            _MetricsInterceptor(metrics_registry),
            ErrorMappingInterceptor(),
        ]
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        self.port = 0

    @property
    def service_names(self) -> tuple[str, ...]:
        """The application services this server offers."""
        return tuple(r.name for r in self._registrations)

    async def start(self) -> int:
        """Bind, start serving (health NOT_SERVING), and return the bound port."""
        for registration in self._registrations:
            registration.register(self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self.port = self._server.add_insecure_port(self._listen)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC listen address {self._listen}")
        await self.set_serving(False)
        await self._server.start()
        log.info("grpc server listening", extra={"listen": self._listen, "port": self.port})
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and each of its services."""
        status = _SERVING if serving else _NOT_SERVING
        for name in ("", *self.service_names):
            await self._health.set(name, status)

    async def stop(self, grace_seconds: float) -> None:
        """Refuse new RPCs, let in-flight ones finish within the grace period, then stop."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_seconds)

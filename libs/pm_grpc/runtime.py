"""The life of a service process: settings, telemetry, dependencies, gRPC, shutdown.

Each service describes itself with a `ServiceSpec`: its settings type and a `build` function,
its composition root, that opens every dependency inside an async context manager and yields a
`ServiceRuntime` (servicers, dependency probes, background loops). `run_service` does the rest:

1. JSON logging, tracing and the metrics endpoint;
2. `build` (dependencies are created lazily, so a database that is still starting does not
   crash the process);
3. the gRPC server starts with health NOT_SERVING and turns SERVING once every probe passes
   (and back, when a dependency goes away);
4. on SIGTERM/SIGINT: NOT_SERVING, background loops cancelled (work in flight is released, not
   acknowledged, so another replica picks it up), in-flight RPCs get the grace period, then
   dependencies close in reverse order and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pm.ops.v1 import ops_pb2_grpc
from pm_grpc.ops import OpsServicer, Probe, check_all
from pm_grpc.server import GrpcServer, ServiceRegistration
from pm_settings import ServiceSettings, SettingsError, load_settings
from pm_telemetry import MetricsServer, Tracing, configure_logging, configure_tracing

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)

READINESS_INTERVAL_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a composition root gets besides its settings."""

    metrics: MetricsServer
    tracing: Tracing
    # The process environment captured at start-up (for the environment secret source).
    environ: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ServiceRuntime:
    """What a service's composition root hands to the runtime."""

    registrations: Sequence[ServiceRegistration]
    probes: Mapping[str, Probe]
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ServiceSpec(Generic[S]):
    """A service: its name, settings type and composition root."""

    name: str
    settings_type: type[S]
    build: Callable[[S, BuildContext], AbstractAsyncContextManager[ServiceRuntime]]
    version: str = "0.1.0"


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _watch_readiness(server: GrpcServer, probes: Mapping[str, Probe]) -> None:
    serving: bool | None = None
    while True:
        checks = await check_all(probes, timeout=2.0)
        now_serving = all(c.healthy for c in checks.values())
        if now_serving != serving:
            await server.set_serving(now_serving)
            failing = {name: c.error for name, c in checks.items() if not c.healthy}
            log.info("health %s", "SERVING" if now_serving else "NOT_SERVING", extra={"failing": failing})
            serving = now_serving
        await asyncio.sleep(READINESS_INTERVAL_SECONDS)


async def _cancel_all(tasks: Sequence[asyncio.Task[None]], grace: float) -> bool:
    """Cancel `tasks` and wait for them; a task still running after `grace` seconds is cancelled
    again (a loop may have swallowed the first cancellation) and, if it still does not end, left
    behind with an error logged. Returns whether every task ended."""
    pending = {task for task in tasks if not task.done()}
    for attempt in range(3):
        if not pending:
            return True
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=max(grace, 1.0))
        if pending and attempt < 2:
            log.warning(
                "background tasks still running after cancel #%d: %s",
                attempt + 1,
                ", ".join(sorted(t.get_name() for t in pending)),
            )
    log.error("background tasks ignore cancellation: %s", ", ".join(sorted(t.get_name() for t in pending)))
    return not pending


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_service(
    spec: ServiceSpec[S],
    settings: S,
    environ: Mapping[str, str],
    stop: asyncio.Event | None = None,
) -> int:
    """Run the service until `stop` is set (or SIGTERM/SIGINT arrives); return the exit code."""
    service = f"pm-{spec.name}"
    configure_logging(service, settings.log_level)
    log.info("starting %s %s", service, spec.version, extra={"settings": settings.describe()})
    if stop is None:
        stop = asyncio.Event()
        _install_signal_handlers(stop)
    tracing = configure_tracing(
        settings.otel_service_name or service,
        spec.version,
        settings.otel_exporter_otlp_endpoint,
        sample_ratio=settings.trace_sample_ratio,
        otlp_traces_endpoint=settings.otel_exporter_otlp_traces_endpoint,
        otlp_protocol=settings.otel_exporter_otlp_protocol,
    )
    async with AsyncExitStack() as stack:
        stack.callback(tracing.shutdown)
        metrics_host, metrics_port = _split_listen(settings.metrics_listen)
        metrics = stack.enter_context(MetricsServer(metrics_host, metrics_port))
        runtime = await stack.enter_async_context(spec.build(settings, BuildContext(metrics, tracing, environ)))
        ops = OpsServicer(service, spec.version, runtime.probes)
        server = GrpcServer(
            settings.grpc_listen,
            [
                *runtime.registrations,
                ServiceRegistration("pm.ops.v1.OpsService", ops_pb2_grpc.add_OpsServiceServicer_to_server, ops),
            ],
            metrics_registry=metrics.registry,
            tracer_provider=tracing.provider,
        )
        await server.start()
        stack.push_async_callback(server.stop, settings.shutdown_grace_seconds)
        tasks = [asyncio.create_task(_watch_readiness(server, runtime.probes), name="readiness")]
        tasks += [
            asyncio.create_task(loop(), name=getattr(loop, "__name__", "background")) for loop in runtime.background
        ]
        stopped = asyncio.create_task(stop.wait(), name="stop")
        exit_code = 0
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopped and not task.cancelled() and task.exception() is not None:
                    log.error("background task %s failed", task.get_name(), exc_info=task.exception())
                    exit_code = 1
            log.info("stopping %s", service)
            await server.set_serving(False)
            if not await _cancel_all(tasks, settings.shutdown_grace_seconds):
                exit_code = 1
        finally:
            for task in (*tasks, stopped):
                task.cancel()
        # Leaving the stack stops the server (in-flight RPCs get the grace period), then closes
        # the dependencies in reverse order.
    log.info("stopped %s", service)
    return exit_code


def service_main(spec: ServiceSpec[S]) -> None:
    """Entry point of `python -m pm_<svc>` and of the service's pex."""
    try:
        environ = dict(os.environ)
        settings = load_settings(spec.settings_type, environ)
    except SettingsError as exc:
        print(f"pm-{spec.name}: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(asyncio.run(run_service(spec, settings, environ)))
    except OSError as exc:
        logging.getLogger(__name__).error("pm-%s cannot start: %s", spec.name, exc)
        sys.exit(1)

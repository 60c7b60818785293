"""Composition root of the worker: opens every dependency, closes them in reverse.

The worker serves no application RPCs, only health and readiness; it consumes agent tasks from
pm.agent.tasks and publishes their results (pm_worker.executor).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pm_errors import Unavailable
from pm_grpc import BuildContext, Probe, ServiceRuntime, ServiceSpec, open_channel
from pm_secrets import secret_source_from_settings
from pm_storage import s3_store_from_settings
from pm_streams import StreamBus
from pm_worker.executor import StepExecutor, new_worker_id
from pm_worker.settings import WorkerSettings


def registry_probe(channel: grpc.aio.Channel) -> Probe:
    """Readiness of the registry: its gRPC health says SERVING."""
    stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs lack the aio signatures

    async def probe() -> None:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service="pm.registry.v1.RegistryService"), timeout=2)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"registry unreachable: {exc.code().name}") from exc
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise Unavailable("registry is not serving")

    return probe


@asynccontextmanager
async def build(settings: WorkerSettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Open the stream bus, the object store, the registry channel and the secret source."""
    async with AsyncExitStack() as stack:
        bus = StreamBus(settings.redis_url, namespace=settings.stream_namespace)
        await bus.connect()
        stack.push_async_callback(bus.close)
        store = s3_store_from_settings(settings)
        registry = open_channel(settings.registry_addr, ctx.tracing.provider)
        stack.push_async_callback(registry.close)
        secrets = secret_source_from_settings(settings, ctx.environ)
        probes: dict[str, Probe] = {"redis": bus.ping, "object_store": store.ping, "registry": registry_probe(registry)}
        if settings.vault_addr:
            probes["vault"] = secrets.ping
        executor = StepExecutor(
            bus,
            store,
            registry,
            worker_id=settings.worker_id or new_worker_id(),
            reclaim_idle_ms=settings.step_reclaim_idle_ms,
            max_deliveries=settings.step_max_deliveries,
            concurrency=settings.steps_per_worker,
            candidates_per_iteration=settings.rule_candidates_per_iteration,
        )
        executor.subscribe()
        yield ServiceRuntime(registrations=[], probes=probes, background=[bus.run])


SPEC = ServiceSpec(name="worker", settings_type=WorkerSettings, build=build)

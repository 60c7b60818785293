"""Composition root of the orchestrator: opens every dependency, closes them in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from pm_db import open_pool, ping
from pm_grpc import BuildContext, Probe, ServiceRuntime, ServiceSpec
from pm_orchestrator.grpc_api import registrations
from pm_orchestrator.settings import OrchestratorSettings
from pm_secrets import secret_source_from_settings
from pm_storage import s3_store_from_settings
from pm_streams import StreamBus


@asynccontextmanager
async def build(settings: OrchestratorSettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Open the pool, the stream bus, the object store and the secret source."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, max_size=settings.database_pool_max, application_name="pm-orchestrator")
        )
        bus = StreamBus(settings.redis_url, namespace=settings.stream_namespace)
        await bus.connect()
        stack.push_async_callback(bus.close)
        store = s3_store_from_settings(settings)
        secrets = secret_source_from_settings(settings, ctx.environ)
        probes: dict[str, Probe] = {"database": partial(ping, pool), "redis": bus.ping, "object_store": store.ping}
        if settings.vault_addr:
            probes["vault"] = secrets.ping
        yield ServiceRuntime(registrations=registrations(), probes=probes)


SPEC = ServiceSpec(name="orchestrator", settings_type=OrchestratorSettings, build=build)

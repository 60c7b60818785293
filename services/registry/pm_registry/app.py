"""Composition root of the registry: opens every dependency, closes them in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from pm.registry.v1 import registry_pb2_grpc
from pm_db import open_pool, ping
from pm_grpc import BuildContext, Probe, ServiceRegistration, ServiceRuntime, ServiceSpec
from pm_registry.grpc_api import RegistryServicer
from pm_registry.settings import RegistrySettings
from pm_secrets import secret_source_from_settings


@asynccontextmanager
async def build(settings: RegistrySettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Open the pool (for the tool-call audit) and the secret source (MCP credentials)."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, max_size=settings.database_pool_max, application_name="pm-registry")
        )
        secrets = secret_source_from_settings(settings, ctx.environ)
        probes: dict[str, Probe] = {"database": partial(ping, pool)}
        if settings.vault_addr:
            probes["vault"] = secrets.ping
        yield ServiceRuntime(
            registrations=[
                ServiceRegistration(
                    "pm.registry.v1.RegistryService",
                    registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                    RegistryServicer(),
                )
            ],
            probes=probes,
        )


SPEC = ServiceSpec(name="registry", settings_type=RegistrySettings, build=build)

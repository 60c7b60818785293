"""Composition root of the registry: opens every dependency, closes them in reverse."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from pm.registry.v1 import registry_pb2_grpc
from pm_db import open_pool, ping
from pm_grpc import BuildContext, Probe, ServiceRegistration, ServiceRuntime, ServiceSpec
from pm_registry.config import RegistryConfig, load_config
from pm_registry.connections import ServerConnection
from pm_registry.grpc_api import RegistryServicer
from pm_registry.registry import Registry
from pm_registry.settings import RegistrySettings
from pm_registry.store import CallStore
from pm_secrets import secret_source_from_settings

log = logging.getLogger(__name__)
# The HTTP client of the MCP transports logs every request at INFO; failures are reported by us.
logging.getLogger("httpx2").setLevel(logging.WARNING)


@asynccontextmanager
async def build(settings: RegistrySettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Read the servers' file, open the pool (tool-call audit), the secret source and the MCP sessions.

    A file that does not validate stops the service at start-up with the problem named; an MCP
    server that is down only makes that server unhealthy (its session keeps being retried).
    """
    if settings.mcp_servers_file:
        config = load_config(settings.mcp_servers_file)
    else:
        log.warning("MCP_SERVERS_FILE is not set: the registry has no MCP servers")
        config = RegistryConfig()
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, max_size=settings.database_pool_max, application_name="pm-registry")
        )
        secrets = secret_source_from_settings(settings, ctx.environ)
        connections = [ServerConnection(server, secrets, ctx.environ) for server in config.servers]
        registry = Registry(
            config,
            connections,
            CallStore(pool),
            ctx.metrics.registry,
            result_max_chars=settings.mcp_result_max_chars,
            excerpt_chars=settings.mcp_excerpt_chars,
        )
        # MCP servers are not readiness probes: one server down must not take the registry out.
        probes: dict[str, Probe] = {"database": partial(ping, pool)}
        if settings.vault_addr:
            probes["vault"] = secrets.ping
        yield ServiceRuntime(
            registrations=[
                ServiceRegistration(
                    "pm.registry.v1.RegistryService",
                    registry_pb2_grpc.add_RegistryServiceServicer_to_server,
                    RegistryServicer(registry),
                )
            ],
            probes=probes,
            background=[connection.run for connection in connections],
        )


SPEC = ServiceSpec(name="registry", settings_type=RegistrySettings, build=build)

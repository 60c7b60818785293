"""Composition root of the ingest service: opens every dependency, closes them in reverse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from pm.ingest.v1 import ingest_pb2_grpc
from pm_db import open_pool, ping
from pm_grpc import BuildContext, Probe, ServiceRegistration, ServiceRuntime, ServiceSpec
from pm_ingest.grpc_api import IngestServicer
from pm_ingest.settings import IngestSettings
from pm_secrets import secret_source_from_settings
from pm_streams import StreamBus


@asynccontextmanager
async def build(settings: IngestSettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Open the pool, the stream publisher and the secret source."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, max_size=settings.database_pool_max, application_name="pm-ingest")
        )
        bus = StreamBus(settings.redis_url, namespace=settings.stream_namespace)
        await bus.connect()
        stack.push_async_callback(bus.close)
        secrets = secret_source_from_settings(settings, ctx.environ)
        probes: dict[str, Probe] = {"database": partial(ping, pool), "redis": bus.ping}
        if settings.vault_addr:
            probes["vault"] = secrets.ping
        yield ServiceRuntime(
            registrations=[
                ServiceRegistration(
                    "pm.ingest.v1.IngestService", ingest_pb2_grpc.add_IngestServiceServicer_to_server, IngestServicer()
                )
            ],
            probes=probes,
        )


SPEC = ServiceSpec(name="ingest", settings_type=IngestSettings, build=build)

"""Composition root of the ingest service: opens every dependency, closes them in reverse."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from pm.ingest.v1 import ingest_pb2_grpc
from pm_auth import open_api_access
from pm_db import open_pool, ping
from pm_grpc import BuildContext, Probe, ServiceRegistration, ServiceRuntime, ServiceSpec
from pm_ingest.grpc_api import IngestServicer
from pm_ingest.intake import Submissions
from pm_ingest.settings import IngestSettings
from pm_ingest.store import AuditLog, DomainResolver, IntakeStore
from pm_ingest.webhooks import Webhooks
from pm_secrets import secret_source_from_settings
from pm_streams import StreamBus
from pm_streams.outbox import OutboxRelay

log = logging.getLogger(__name__)


@asynccontextmanager
async def build(settings: IngestSettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Open the pool, the stream publisher, the rate-limit client and the secret source."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            # Intake never leaves session state on a connection, so the reset on release is skipped.
            open_pool(
                settings.database_url,
                max_size=settings.database_pool_max,
                application_name="pm-ingest",
                reset_on_release=False,
            )
        )
        bus = StreamBus(settings.redis_url, namespace=settings.stream_namespace)
        await bus.connect()
        stack.push_async_callback(bus.close)
        source = secret_source_from_settings(settings, ctx.environ)
        access = await open_api_access(stack, settings, source, settings.redis_url, settings.stream_namespace)
        secrets, auth, limiter = access.secrets, access.auth, access.limiter
        store = IntakeStore(pool)
        audit = AuditLog(pool)
        relay = OutboxRelay(
            pool,
            bus,
            ctx.metrics.registry,
            batch_size=settings.outbox_batch_size,
            poll_seconds=settings.outbox_poll_seconds,
        )
        webhooks = Webhooks(settings, store, audit, secrets, DomainResolver(pool), ctx.metrics.registry)
        submissions = Submissions(store, audit, delivery_window_seconds=settings.delivery_dedup_window_seconds)
        if settings.insecure_sources:
            log.warning(
                "webhooks accepted WITHOUT signatures (local use only): %s",
                ", ".join(sorted(settings.insecure_sources)),
            )
        probes: dict[str, Probe] = {"database": partial(ping, pool), "redis": bus.ping}
        if settings.vault_addr:
            probes["vault"] = source.ping
        servicer = IngestServicer(settings, auth, limiter, submissions, webhooks, relay)
        yield ServiceRuntime(
            registrations=[
                ServiceRegistration(
                    "pm.ingest.v1.IngestService", ingest_pb2_grpc.add_IngestServiceServicer_to_server, servicer
                )
            ],
            probes=probes,
            background=[relay.run, audit.run],
        )


SPEC = ServiceSpec(name="ingest", settings_type=IngestSettings, build=build)

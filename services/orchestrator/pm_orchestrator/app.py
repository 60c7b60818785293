"""Composition root of the orchestrator: opens every dependency, closes them in reverse."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

from pm.events.v1 import events_pb2
from pm_auth import open_api_access
from pm_db import open_pool, ping
from pm_grpc import BuildContext, Probe, ServiceRuntime, ServiceSpec, open_channel
from pm_orchestrator.analytics import AnalyticsServicer
from pm_orchestrator.delivery import Deliverer, Publishing
from pm_orchestrator.domains import DomainServicer
from pm_orchestrator.engine import Budget, Engine
from pm_orchestrator.grpc_api import Servicers, registrations
from pm_orchestrator.health_check import HealthCheck, HealthCheckServicer
from pm_orchestrator.jobs import health_check_config, scheduled_jobs
from pm_orchestrator.jobs_tools import RegistryTools
from pm_orchestrator.knowledge import KnowledgeServicer
from pm_orchestrator.meta import MetaServicer
from pm_orchestrator.metrics import EngineMetrics, QueueMetrics
from pm_orchestrator.onboarding import OnboardingServicer
from pm_orchestrator.queries import InvestigationQueries
from pm_orchestrator.scheduler import Scheduler, SchedulerMetrics
from pm_orchestrator.settings import OrchestratorSettings
from pm_orchestrator.similar import open_incident_memory
from pm_secrets import secret_source_from_settings
from pm_storage import s3_store_from_settings
from pm_streams import (
    GROUP_ORCHESTRATOR,
    STREAM_AGENT_RESULTS,
    STREAM_AGENT_TASKS,
    STREAM_INVESTIGATIONS,
    STREAM_INVESTIGATIONS_URGENT,
    StreamBus,
)
from pm_streams.outbox import OutboxRelay


@asynccontextmanager
async def build(settings: OrchestratorSettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
    """Open the pool, the stream bus, the object store and the secret source; subscribe the engine."""
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, max_size=settings.database_pool_max, application_name="pm-orchestrator")
        )
        bus = StreamBus(settings.redis_url, namespace=settings.stream_namespace)
        await bus.connect()
        stack.push_async_callback(bus.close)
        store = s3_store_from_settings(settings)
        source = secret_source_from_settings(settings, ctx.environ)
        access = await open_api_access(stack, settings, source, settings.redis_url, settings.stream_namespace)
        relay = OutboxRelay(
            pool,
            bus,
            ctx.metrics.registry,
            batch_size=settings.outbox_batch_size,
            poll_seconds=settings.outbox_poll_seconds,
        )
        budget = Budget(
            wall_seconds=settings.investigation_deadline_seconds,
            max_tool_calls=settings.investigation_max_tool_calls,
            max_cost_usd=settings.investigation_max_cost_usd,
        )
        publishing = Publishing(
            ticket_comments=settings.publish_ticket_comments,
            chat_channel=settings.publish_chat_channel,
            ticket_arguments=settings.publish_ticket_arguments,
            chat_arguments=settings.publish_chat_arguments,
            server=settings.publish_server,
            public_base_url=settings.public_base_url,
        )
        registry = open_channel(settings.registry_addr, ctx.tracing.provider)
        stack.push_async_callback(registry.close)
        # Similar incidents (docs/memory.md); memory is None when no embedding provider is usable.
        memory, recall = await open_incident_memory(stack, settings, pool, source, ctx.metrics.registry)
        engine = Engine(pool, store, relay, budget, publishing, EngineMetrics(ctx.metrics.registry), recall=recall)
        queues = QueueMetrics(
            bus,
            (STREAM_INVESTIGATIONS_URGENT, STREAM_INVESTIGATIONS, STREAM_AGENT_TASKS, STREAM_AGENT_RESULTS),
            ctx.metrics.registry,
        )
        # One consumer name per replica (the pod's host name), so XINFO CONSUMERS tells them apart.
        consumer = f"orchestrator-{socket.gethostname()}-{settings.grpc_listen.rpartition(':')[2]}"
        for stream in (STREAM_INVESTIGATIONS_URGENT, STREAM_INVESTIGATIONS):
            bus.subscribe(
                stream,
                group=GROUP_ORCHESTRATOR,
                consumer=consumer,
                message_type=events_pb2.InvestigationRequested,
                handler=engine.on_requested,
                reclaim_idle_ms=settings.message_reclaim_idle_ms,
            )
        bus.subscribe(
            STREAM_AGENT_RESULTS,
            group=GROUP_ORCHESTRATOR,
            consumer=consumer,
            message_type=events_pb2.AgentResult,
            handler=engine.on_result,
            reclaim_idle_ms=settings.message_reclaim_idle_ms,
        )
        # The health check (on demand and scheduled) and the other scheduled jobs (docs/operability.md).
        tools = RegistryTools(registry, server=settings.publish_server)
        health = HealthCheck(pool, tools, health_check_config(settings), relay.notify)
        scheduler = Scheduler(
            settings.database_url,
            pool,
            scheduled_jobs(settings, pool, tools, health, relay.notify) if settings.scheduled_jobs_enabled else [],
            SchedulerMetrics(ctx.metrics.registry),
            poll_seconds=settings.scheduler_poll_seconds,
            grace_seconds=settings.scheduler_misfire_grace_seconds,
            job_timeout_seconds=settings.scheduled_job_timeout_seconds,
            retention_days=settings.scheduled_job_runs_retention_days,
        )
        probes: dict[str, Probe] = {"database": partial(ping, pool), "redis": bus.ping, "object_store": store.ping}
        if settings.vault_addr:
            probes["vault"] = source.ping
        yield ServiceRuntime(
            # The RPCs not served yet answer UNIMPLEMENTED through the generated base class.
            registrations=registrations(
                Servicers(
                    investigations=InvestigationQueries(pool, access.auth, access.limiter, engine),
                    domains=DomainServicer(pool, access.auth, access.limiter),
                    onboarding=OnboardingServicer(pool, access.auth, access.limiter, registry),
                    knowledge=KnowledgeServicer(pool, access.auth, access.limiter),
                    meta=MetaServicer(pool, access.auth, access.limiter),
                    analytics=AnalyticsServicer(pool, access.auth, access.limiter, budget),
                    health_check=HealthCheckServicer(health, access.auth, access.limiter),
                )
            ),
            probes=probes,
            background=[
                bus.run,
                relay.run,
                queues.run,
                Deliverer(pool, source, registry, publishing, max_attempts=settings.callback_max_attempts).run,
                partial(engine.run_reconciler, settings.reconcile_interval_seconds, settings.reconcile_stale_seconds),
                *([scheduler.run] if settings.scheduled_jobs_enabled else []),
                *([memory.run] if memory is not None else []),
            ],
        )


SPEC = ServiceSpec(name="orchestrator", settings_type=OrchestratorSettings, build=build)

"""Composition root of the worker: opens every dependency, closes them in reverse.

The worker serves no application RPCs, only health and readiness; it consumes agent tasks from
pm.agent.tasks and publishes their results (pm_worker.executor).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pm_errors import Unavailable
from pm_grpc import BuildContext, Probe, ServiceRuntime, ServiceSpec, open_channel
from pm_secrets import secret_source_from_settings
from pm_settings import SettingsError
from pm_storage import s3_store_from_settings
from pm_streams import StreamBus
from pm_worker.executor import StepExecutor, new_worker_id
from pm_worker.llm.anthropic_api import AnthropicProvider
from pm_worker.llm.fallback import OpenAICompatibleProvider
from pm_worker.llm.loop import AgentLoop, Fallback, LoopSettings
from pm_worker.llm.protocol import ModelProvider
from pm_worker.llm.roles import LLMSetup
from pm_worker.rules.reasoner import ContextSources
from pm_worker.settings import WorkerSettings

log = logging.getLogger(__name__)


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
            llm=await _llm(settings, secrets, stack),
            metrics=ctx.metrics.registry,
            sources=ContextSources(
                ticket_arguments=settings.context_ticket_arguments, chat_arguments=settings.context_chat_arguments
            ),
        )
        executor.subscribe()
        yield ServiceRuntime(registrations=[], probes=probes, background=[bus.run])


SPEC = ServiceSpec(name="worker", settings_type=WorkerSettings, build=build)


async def _llm(settings: WorkerSettings, secrets: Any, stack: AsyncExitStack) -> LLMSetup | None:
    """The LLM reasoner when a key is configured (and the rules are not forced); None otherwise."""
    if settings.reasoner == "rule":
        return None
    anthropic_key = await secrets.get("anthropic-api-key")
    openai_key = await secrets.get("openai-api-key")
    primary: ModelProvider | None = None
    fallback: Fallback | None = None
    openai: OpenAICompatibleProvider | None = None
    if openai_key is not None and settings.openai_model:
        openai = OpenAICompatibleProvider(
            api_key=openai_key.get_secret_value(), base_url=settings.openai_base_url or None
        )
        stack.push_async_callback(openai.aclose)
    if anthropic_key is not None:
        primary = AnthropicProvider(
            api_key=anthropic_key.get_secret_value(), base_url=settings.anthropic_base_url or None
        )
        stack.push_async_callback(primary.aclose)
        if openai is not None:
            fallback = Fallback(openai, settings.openai_model)
    elif openai is not None:
        primary = openai
    if primary is None:
        if settings.reasoner == "llm":
            raise SettingsError(
                "REASONER=llm needs an LLM key: the secret anthropic-api-key (or ANTHROPIC_API_KEY), or"
                " openai-api-key (or OPENAI_API_KEY) with OPENAI_MODEL"
            )
        return None
    models = {
        "fast": settings.llm_model_fast,
        "balanced": settings.llm_model_balanced,
        "deep": settings.llm_model_deep,
    }
    if anthropic_key is None:  # only the OpenAI-compatible endpoint: its model for every mode
        models = dict.fromkeys(models, settings.openai_model)
    loop = AgentLoop(
        primary,
        fallback=fallback,
        settings=LoopSettings(
            max_turns=settings.llm_max_turns,
            max_tokens=settings.llm_max_tokens,
            context_limit_tokens=settings.llm_context_limit_tokens,
        ),
    )
    log.info(
        "LLM reasoner: %s (%s; roles by mode: %s)",
        getattr(primary, "name", "provider"),
        ", ".join(f"{k}={v}" for k, v in models.items()),
        "; ".join(f"{mode}: {', '.join(sorted(roles)) or 'none'}" for mode, roles in settings.llm_mode_roles.items()),
    )
    return LLMSetup(loop, models, mode_roles=settings.llm_mode_roles, limits=settings.llm_role_limits)

"""Settings of the worker (environment variables, read once in main())."""

import json
from typing import Any, Literal

from pydantic import Field, field_validator

from pm_settings import (
    ObjectStoreSettings,
    RedisSettings,
    RegistryClientSettings,
    ServiceSettings,
    argument_templates,
)
from pm_worker.llm.modes import DEFAULT_MODE_ROLES, DEFAULT_ROLE_LIMITS, mode_roles, role_limits
from pm_worker.rules.reasoner import ContextSources


class WorkerSettings(ServiceSettings, RedisSettings, ObjectStoreSettings, RegistryClientSettings):
    """REDIS_URL, S3_BUCKET and REGISTRY_ADDR are required."""

    grpc_listen: str = "0.0.0.0:50053"
    metrics_listen: str = "0.0.0.0:9103"
    # Agent steps one worker process runs at the same time.
    steps_per_worker: int = Field(default=1, ge=1, le=64)
    # This worker's consumer name in the workers group (a random one when unset).
    worker_id: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    # A step left unacknowledged this long (its worker died) is claimed and run by another.
    step_reclaim_idle_ms: int = Field(default=60_000, ge=1_000, le=3_600_000)
    # Deliveries of one task before it is dead-lettered.
    step_max_deliveries: int = Field(default=5, ge=1, le=50)
    # Candidate changes the rule reasoner verifies per HYPOTHESIZE ⇄ VERIFY iteration (one diff
    # each); the rest wait for the next iteration, and iterations are bounded by mode (1/3/5).
    rule_candidates_per_iteration: int = Field(default=4, ge=1, le=50)
    # Which reasoner runs: auto (the LLM for the roles LLM_MODE_ROLES gives it when a key is
    # configured, else the rules), rule, or llm (refuses to start without a key). Keys are
    # secrets: anthropic-api-key and openai-api-key (Vault first, then ANTHROPIC_API_KEY /
    # OPENAI_API_KEY).
    reasoner: Literal["auto", "rule", "llm"] = "auto"
    anthropic_base_url: str = ""
    # An OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp): the fallback when the
    # Anthropic API is unavailable, or the only provider when it has the only key.
    openai_base_url: str = ""
    openai_model: str = ""
    # The model of each tier.
    llm_model_fast: str = "claude-haiku-5-5"
    llm_model_balanced: str = "claude-sonnet-5-5"
    llm_model_deep: str = "claude-opus-5-5"
    llm_max_turns: int = Field(default=12, ge=1, le=100)
    llm_max_tokens: int = Field(default=4096, ge=256, le=64_000)
    llm_context_limit_tokens: int = Field(default=200_000, ge=8_000, le=2_000_000)
    # Which roles the LLM runs in each mode and on which tier (the others run the rule reasoner);
    # modes not given keep these (pm_worker.llm.modes, docs/llm.md).
    llm_mode_roles: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {mode: dict(roles) for mode, roles in DEFAULT_MODE_ROLES.items()}
    )
    # Conversation limits per LLM role; roles not given use LLM_MAX_TURNS and LLM_MAX_TOKENS.
    llm_role_limits: dict[str, dict[str, int]] = Field(
        default_factory=lambda: {role: dict(limits) for role, limits in DEFAULT_ROLE_LIMITS.items()}
    )

    # GATHER's context part: the arguments of the `tickets.get` tool (over {ticket_id}; only ids
    # that look like issue keys are looked up) and of the `comms.search` tool (over {service}, the
    # alerted service, and {channel}, the chat channel the investigation was asked from).
    context_ticket_arguments: dict[str, str] = Field(default_factory=lambda: dict(ContextSources().ticket_arguments))
    context_chat_arguments: dict[str, str] = Field(default_factory=lambda: dict(ContextSources().chat_arguments))

    @field_validator("context_ticket_arguments", mode="before")
    @classmethod
    def _ticket_arguments(cls, value: Any) -> dict[str, str]:
        return argument_templates(value, ("ticket_id",), required=True)

    @field_validator("context_chat_arguments", mode="before")
    @classmethod
    def _chat_arguments(cls, value: Any) -> dict[str, str]:
        return argument_templates(value, ("service", "channel"), required=True)

    @field_validator("llm_mode_roles", mode="before")
    @classmethod
    def _mode_roles(cls, value: Any) -> dict[str, dict[str, str]]:
        return mode_roles(_json(value))

    @field_validator("llm_role_limits", mode="before")
    @classmethod
    def _role_limits(cls, value: Any) -> dict[str, dict[str, int]]:
        return role_limits(_json(value))


def _json(value: Any) -> Any:
    """A JSON object given as text (an environment variable) parsed; anything else as it is."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    return value

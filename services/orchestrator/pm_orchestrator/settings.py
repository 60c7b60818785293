"""Settings of the orchestrator (environment variables, read once in main())."""

from pydantic import Field

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
    # Attempts of a callback delivery before it is given up (docs/engine.md).
    callback_max_attempts: int = Field(default=5, ge=1, le=20)

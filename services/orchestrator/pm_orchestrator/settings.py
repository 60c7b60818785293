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

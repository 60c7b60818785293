"""Settings of the orchestrator (environment variables, read once in main())."""

from pm_settings import DatabaseSettings, ObjectStoreSettings, RedisSettings, RegistryClientSettings, ServiceSettings


class OrchestratorSettings(
    ServiceSettings, DatabaseSettings, RedisSettings, ObjectStoreSettings, RegistryClientSettings
):
    """DATABASE_URL, REDIS_URL, S3_BUCKET and REGISTRY_ADDR are required."""

    grpc_listen: str = "0.0.0.0:50052"
    metrics_listen: str = "0.0.0.0:9102"

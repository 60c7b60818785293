"""Settings of the ingest service (environment variables, read once in main())."""

from pm_settings import DatabaseSettings, RedisSettings, ServiceSettings


class IngestSettings(ServiceSettings, DatabaseSettings, RedisSettings):
    """DATABASE_URL and REDIS_URL are required; the rest has defaults."""

    grpc_listen: str = "0.0.0.0:50051"
    metrics_listen: str = "0.0.0.0:9101"

"""Settings of the worker (environment variables, read once in main())."""

from pydantic import Field

from pm_settings import ObjectStoreSettings, RedisSettings, RegistryClientSettings, ServiceSettings


class WorkerSettings(ServiceSettings, RedisSettings, ObjectStoreSettings, RegistryClientSettings):
    """REDIS_URL, S3_BUCKET and REGISTRY_ADDR are required."""

    grpc_listen: str = "0.0.0.0:50053"
    metrics_listen: str = "0.0.0.0:9103"
    # Agent steps one worker process runs at the same time.
    steps_per_worker: int = Field(default=1, ge=1, le=64)

"""Settings of the registry (environment variables, read once in main())."""

from pm_settings import DatabaseSettings, ServiceSettings


class RegistrySettings(ServiceSettings, DatabaseSettings):
    """DATABASE_URL is required; MCP_SERVERS_FILE names the servers' YAML file."""

    grpc_listen: str = "0.0.0.0:50054"
    metrics_listen: str = "0.0.0.0:9104"
    mcp_servers_file: str | None = None

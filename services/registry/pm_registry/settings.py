"""Settings of the registry (environment variables, read once in main())."""

from pydantic import Field

from pm_settings import DatabaseSettings, ServiceSettings


class RegistrySettings(ServiceSettings, DatabaseSettings):
    """DATABASE_URL is required; MCP_SERVERS_FILE names the servers' YAML file (docs/registry.md)."""

    grpc_listen: str = "0.0.0.0:50054"
    metrics_listen: str = "0.0.0.0:9104"
    mcp_servers_file: str | None = None
    # Tool results returned to agents are cut to this many characters, with a truncation marker.
    mcp_result_max_chars: int = Field(default=60_000, ge=500, le=5_000_000)
    # How much of each (redacted) result is kept in mcp_tool_calls.result_excerpt.
    mcp_excerpt_chars: int = Field(default=2_000, ge=100, le=100_000)

"""The sandbox observability MCP server: incident snapshots served as real MCP tools."""

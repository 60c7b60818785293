"""The MCP server: one tool per query of an incident snapshot, over stdio or streamable HTTP.

Each tool is an `Incident` query method registered as it is: its keyword arguments, their types
and defaults, and its docstring are the tool's input schema and description.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from pm_sandbox.data import Incident, QueryError

TOOL_NAMES = (
    "get_alert",
    "search_logs",
    "query_metrics",
    "search_traces",
    "log_patterns",
    "list_deploys",
    "list_commits",
    "get_commit",
    "flag_changes",
    "get_ticket",
    "search_messages",
)


def _as_tool(query: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """`query` with QueryError reported to the client as a tool error naming the problem."""

    @functools.wraps(query)
    def tool(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return query(*args, **kwargs)
        except QueryError as exc:
            raise ToolError(str(exc)) from None

    return tool


def build_server(incident: Incident) -> MCPServer[Any]:
    """An MCP server whose tools answer from `incident`."""
    server: MCPServer[Any] = MCPServer(
        name="pm-sandbox",
        instructions=f"Observability, change and ticket data of incident snapshot {incident.name!r}.",
        version="0.1.0",
    )
    for name in TOOL_NAMES:
        server.tool(name=name)(_as_tool(getattr(incident, name)))
    return server
